// The Kubernetes manifests' own container specs, run: no API server can be installed here, so this test renders
// the cpu overlay (kubectl kustomize where installed, else the built-in renderer) and makes one container per pod
// on the test engine (docker.ts) from each pod template exactly as a kubelet would read it: image, command, args
// with $(VAR) expanded, env (values, the downward API's pod name and namespace, the Secret's key), ports, the
// security context (user, read-only root, no capabilities, no privilege escalation), resource limits, volumes
// (the PVC as a Docker volume, emptyDir as tmpfs) and the restart policy. Pods get their Kubernetes names as host
// names and their Services' DNS names as network aliases. The probes run inside the containers. The Job's
// coordinator must train a short run to completion (exit 0), with every StatefulSet replica in the ring.
// The probes run while the coordinator waits for the last replica, so they cannot race the run's end.
// What the test changes: the image is its own build of deploy/Dockerfile standing in for vit-dist:latest (as
// `kustomize edit set image` would), built without the data set (no network in the build), so the workers get
// the host's Fashion-MNIST mounted where the image keeps it, and --steps and --checkpoint-every are appended to
// the coordinator's args to make the run short.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { containerLogs, dockerApi, dockerSkipReason, ensureTestImage, FMNIST, TEST_IMAGE, waitExit } from './docker.ts';
import { flag, K8S, matches, type Obj, renderKubectl, renderSubset } from './k8s-render.ts';

const OVERLAY = join(K8S, 'cpu');
const STEPS = 8;
const CHECKPOINT_EVERY = 4;
const SPEC_IMAGE = 'vit-dist:latest';

const reason = await dockerSkipReason();
if (reason) console.log(`SKIP deploy manifests: ${reason}`);

const cleanups: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch((err) => console.log(`# cleanup: ${err}`));
});

/** An Engine API call that must succeed; its parsed body. */
async function api(method: string, path: string, body?: unknown): Promise<any> {
  const r = await dockerApi(method, path, 60_000, body);
  assert.ok(r.status >= 200 && r.status < 300, `docker ${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** Kubernetes quantities: memory ("4Gi", "512Mi", "1G") in bytes, CPU ("2", "500m") in cores. */
function bytesOf(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q);
  assert.ok(m, `memory quantity ${q}`);
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 }[m[2] ?? ''] ?? 1;
  return Math.round(Number(m[1]) * unit);
}
const coresOf = (q: string): number => (q.endsWith('m') ? Number(q.slice(0, -1)) / 1000 : Number(q));

/** `$(VAR)` references in a command or argument replaced from the container's env, as the kubelet does (`$$` escapes). */
function expand(text: string, env: Record<string, string>): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (match, name?: string) =>
    match === '$$' ? '$' : name !== undefined && name in env ? env[name]! : match,
  );
}

interface Pod {
  name: string;
  namespace: string;
  workload: Obj;
}

/** A container's environment, resolved as the kubelet would for this pod. */
function environment(container: Obj, pod: Pod, objects: Obj[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of (container.env ?? []) as Obj[]) {
    if (e.value !== undefined) env[e.name] = expand(String(e.value), env);
    else if (e.valueFrom?.fieldRef) {
      const field = e.valueFrom.fieldRef.fieldPath;
      assert.ok(['metadata.name', 'metadata.namespace'].includes(field), `${pod.name}: fieldRef ${field} is not supported here`);
      env[e.name] = field === 'metadata.name' ? pod.name : pod.namespace;
    } else if (e.valueFrom?.secretKeyRef) {
      const { name, key } = e.valueFrom.secretKeyRef;
      const secret = objects.find((o) => o.kind === 'Secret' && o.metadata.name === name);
      assert.ok(secret, `${pod.name}: no Secret ${name}`);
      env[e.name] = secret.stringData?.[key] ?? Buffer.from(secret.data?.[key] ?? '', 'base64').toString('utf8');
    } else assert.fail(`${pod.name}: env ${e.name} has a source this test does not resolve`);
  }
  return env;
}

/** The DNS names a pod is reached by: its Services' names, and under its StatefulSet's headless Service its own. */
function dnsNames(pod: Pod, objects: Obj[]): string[] {
  const zone = (name: string) => [
    name,
    `${name}.${pod.namespace}`,
    `${name}.${pod.namespace}.svc`,
    `${name}.${pod.namespace}.svc.cluster.local`,
  ];
  const services = objects.filter((o) => o.kind === 'Service' && matches(o.spec.selector, pod.workload.spec.template.metadata.labels));
  const names = services.flatMap((s) => zone(s.metadata.name));
  if (pod.workload.kind === 'StatefulSet') names.push(...zone(`${pod.name}.${pod.workload.spec.serviceName}`));
  return names;
}

const RESTART = { Always: 'always', OnFailure: 'on-failure', Never: 'no' } as Record<string, string>;

/** Creates (not starts) the container of a one-container pod; its id. */
async function createPod(pod: Pod, objects: Obj[], network: string, volumes: Record<string, string>, extraMounts: Obj[], cpus: number) {
  const spec = pod.workload.spec.template.spec as Obj;
  assert.equal(spec.containers.length, 1, `${pod.name}: one container per pod`);
  const c = spec.containers[0] as Obj;
  assert.equal(c.image, SPEC_IMAGE, `${pod.name}: image`);
  const env = environment(c, pod, objects);
  const security = { ...spec.securityContext, ...c.securityContext };
  assert.ok(security.runAsNonRoot && security.runAsUser > 0, `${pod.name}: runs as a non-root user`);
  const mounts = ((c.volumeMounts ?? []) as Obj[]).map((m) => {
    const volume = (spec.volumes as Obj[]).find((v) => v.name === m.name)!;
    if (volume.persistentVolumeClaim)
      return { Type: 'volume', Source: volumes[volume.persistentVolumeClaim.claimName], Target: m.mountPath, ReadOnly: !!m.readOnly };
    assert.ok(volume.emptyDir, `${pod.name}: volume ${m.name} is neither a claim nor an emptyDir`);
    return { Type: 'tmpfs', Target: m.mountPath };
  });
  const limits = c.resources?.limits ?? {};
  const body = {
    Image: TEST_IMAGE,
    Hostname: pod.name,
    ...(c.command ? { Entrypoint: c.command.map((a: string) => expand(a, env)) } : {}),
    Cmd: (c.args ?? []).map((a: string) => expand(a, env)),
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    User: `${security.runAsUser}:${security.runAsGroup ?? security.runAsUser}`,
    ExposedPorts: Object.fromEntries(
      ((c.ports ?? []) as Obj[]).map((p) => [`${p.containerPort}/${(p.protocol ?? 'TCP').toLowerCase()}`, {}]),
    ),
    HostConfig: {
      NetworkMode: network,
      ReadonlyRootfs: !!security.readOnlyRootFilesystem,
      CapDrop: security.capabilities?.drop ?? [],
      SecurityOpt: security.allowPrivilegeEscalation === false ? ['no-new-privileges'] : [],
      Mounts: [...mounts, ...extraMounts],
      RestartPolicy: { Name: RESTART[spec.restartPolicy ?? 'Always'] },
      ...(limits.memory ? { Memory: bytesOf(limits.memory) } : {}),
      // The engine refuses a CPU limit above its own CPU count; a node with fewer cores would not schedule the pod.
      ...(limits.cpu ? { NanoCpus: Math.round(Math.min(coresOf(limits.cpu), cpus) * 1e9) } : {}),
    },
    NetworkingConfig: { EndpointsConfig: { [network]: { Aliases: dnsNames(pod, objects) } } },
  };
  const created = await api('POST', `/containers/create?name=${network}-${pod.name}`, body);
  cleanups.push(() => dockerApi('DELETE', `/containers/${created.Id}?force=1`));
  return { id: created.Id as string, container: c };
}

/** Runs an httpGet probe inside the container (the probe's named port resolved from the container's ports); its exit code. */
function probe(id: string, container: Obj, which: 'readinessProbe' | 'livenessProbe'): number {
  const { path, port } = container[which].httpGet;
  const number = typeof port === 'number' ? port : container.ports.find((p: Obj) => p.name === port)?.containerPort;
  assert.ok(number, `probe port ${port}`);
  const script = `fetch('http://127.0.0.1:${number}${path}').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(2))`;
  return spawnSync('docker', ['exec', id, 'node', '-e', script], { timeout: 60_000 }).status ?? -1;
}

test("containers made from the cpu overlay's rendered pod specs train a short run to completion", {
  skip: reason,
  timeout: 900_000,
}, async () => {
  ensureTestImage();
  const viaKubectl = renderKubectl(OVERLAY);
  const objects = typeof viaKubectl === 'string' ? renderSubset(OVERLAY) : viaKubectl;
  console.log(
    `rendered deploy/k8s/cpu with ${typeof viaKubectl === 'string' ? `the built-in renderer (${viaKubectl})` : 'kubectl kustomize'}`,
  );
  const job = objects.find((o) => o.kind === 'Job')!;
  const sts = objects.find((o) => o.kind === 'StatefulSet')!;
  const namespace = job.metadata.namespace as string;
  job.spec.template.spec.containers[0].args.push(`--steps=${STEPS}`, `--checkpoint-every=${CHECKPOINT_EVERY}`);

  const started = Date.now();
  const tag = `vitdist-k8s-${process.pid}`;
  // An internal network: no gateway, so nothing in it can reach past the engine's namespace.
  const network = await api('POST', '/networks/create', { Name: tag, Driver: 'bridge', Internal: true, CheckDuplicate: true });
  cleanups.push(() => dockerApi('DELETE', `/networks/${network.Id}`));
  const claims: Record<string, string> = {};
  for (const pvc of objects.filter((o) => o.kind === 'PersistentVolumeClaim')) {
    const volume = await api('POST', '/volumes/create', { Name: `${tag}-${pvc.metadata.name}` });
    claims[pvc.metadata.name] = volume.Name;
    cleanups.push(() => dockerApi('DELETE', `/volumes/${volume.Name}?force=1`));
  }
  const cpus = (await api('GET', '/info')).NCPU as number;
  const data = [{ Type: 'bind', Source: FMNIST, Target: FMNIST, ReadOnly: true }];

  // A Job's pod is named after the Job plus a random suffix; a StatefulSet's pods by ordinal.
  const coordinatorPod = { name: `${job.metadata.name}-${randomBytes(3).toString('hex').slice(0, 5)}`, namespace, workload: job };
  const coordinator = await createPod(coordinatorPod, objects, tag, claims, [], cpus);
  const workers = [];
  for (let ordinal = 0; ordinal < sts.spec.replicas; ordinal++)
    workers.push(await createPod({ name: `${sts.metadata.name}-${ordinal}`, namespace, workload: sts }, objects, tag, claims, data, cpus));
  // The coordinator and all workers but the last first: the coordinator waits for the last, so the others hold
  // their connections while both probes of every container run (the workers share one pod template).
  const last = workers.at(-1)!;
  await api('POST', `/containers/${coordinator.id}/start`);
  for (const w of workers.slice(0, -1)) await api('POST', `/containers/${w.id}/start`);
  for (const pod of [coordinator, ...workers.slice(0, -1)])
    for (const which of ['readinessProbe', 'livenessProbe'] as const) {
      let code = -1;
      for (let attempt = 0; attempt < 90 && code !== 0; attempt++) {
        code = probe(pod.id, pod.container, which);
        if (code !== 0) await sleep(1000);
      }
      assert.equal(code, 0, `${which} of ${pod.container.name} ${pod.id.slice(0, 12)} did not pass:\n${await containerLogs(pod.id)}`);
    }
  await api('POST', `/containers/${last.id}/start`);

  const code = await waitExit(coordinator.id, 600_000);
  const logs = await containerLogs(coordinator.id);
  assert.equal(code, 0, `the Job's coordinator exited ${code}:\n${logs}`);
  assert.match(logs, new RegExp(`ring of ${sts.spec.replicas} workers formed`));
  const done = new RegExp(`done: ${STEPS} steps, final test accuracy ([\\d.]+)%, parameter digest ([0-9a-f]+)`).exec(logs);
  assert.ok(done, `no final line in the coordinator's log:\n${logs}`);

  // The run on the claim's volume.
  const out = flag(job.spec.template.spec.containers[0].args, 'out')!;
  const mountpoint = (await api('GET', `/volumes/${claims['vit-dist-runs']}`)).Mountpoint as string;
  const metrics = readFileSync(join(mountpoint, out.replace(/^\/runs\//, ''), 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const steps = metrics.filter((l) => l.kind === 'step');
  assert.equal(steps.length, STEPS);
  assert.equal(steps.at(-1).paramDigest, done[2]);
  assert.equal((metrics.filter((l) => l.kind === 'eval').at(-1).testAccuracy * 100).toFixed(2), done[1]);
  for (const s of steps) assert.equal(s.workers, sts.spec.replicas);
  // Each worker was told the run is over and left cleanly (the StatefulSet's Always policy starts it again).
  for (const w of workers) {
    let logs = '';
    for (let attempt = 0; attempt < 60 && !/worker finished/.test(logs); attempt++) {
      if (attempt > 0) await sleep(1000);
      logs = await containerLogs(w.id);
    }
    assert.match(logs, /worker finished/);
  }
  console.log(
    `${sts.spec.replicas} workers, ${STEPS} steps, test accuracy ${done[1]}%, digest ${done[2]}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
});
