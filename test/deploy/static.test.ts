// Static checks of deploy/: the Dockerfile's essentials, the compose file (validated by docker-compose
// itself when installed, then cross-checked), and the Kubernetes manifests: rendered, every object
// validated against the Kubernetes schemas (kubernetes-models), no field the schema does not know, and
// the references between objects (selectors, Secret keys, claims, ports, worker count) consistent.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import yaml from 'js-yaml';
import { Namespace, PersistentVolumeClaim, Secret, Service } from 'kubernetes-models/v1';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';

const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));
const K8S = join(DEPLOY, 'k8s');
const ROOT = join(DEPLOY, '..');

type Obj = Record<string, any>;

function has(command: string, args: string[]): boolean {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 30_000 });
  return !r.error && r.status === 0;
}

/** NVIDIA_DRIVER_CAPABILITIES that mount the driver's Vulkan ICD, which the webgpu engine needs. */
function graphicsCapable(capabilities: string | undefined): boolean {
  const list = (capabilities ?? '').split(',');
  return list.includes('graphics') || list.includes('all');
}

/** Workers pick a GPU engine: auto (which takes the GPU adapter) or webgpu. */
const GPU_BACKENDS = ['auto', 'webgpu'];

/** `--name=value` or `--name value` from an argument list. */
function flag(args: string[], name: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === `--${name}`) return args[i + 1];
    if (args[i]!.startsWith(`--${name}=`)) return args[i]!.slice(name.length + 3);
  }
  return undefined;
}

describe('Dockerfile', () => {
  const dockerfile = readFileSync(join(DEPLOY, 'Dockerfile'), 'utf8');
  test('has the base image argument, a non-root user, the entrypoint, a health check and SIGTERM', () => {
    assert.match(dockerfile, /^ARG BASE_IMAGE=node:20-bookworm-slim$/m);
    assert.match(dockerfile, /^FROM \$\{BASE_IMAGE\}$/m);
    assert.match(dockerfile, /^RUN npm ci --omit=dev\b/m);
    const users = [...dockerfile.matchAll(/^USER (\S+)$/gm)].map((m) => m[1]!);
    assert.ok(users.length > 0 && !/^(0|root)\b/.test(users.at(-1)!), `last USER must be non-root, got ${users.at(-1)}`);
    assert.match(dockerfile, /^ENTRYPOINT \["node", "\/app\/bin\/vit-dist\.js"\]$/m);
    assert.match(dockerfile, /^HEALTHCHECK .*\n\s+CMD \["node", "-e", ".*process\.env\.VIT_DIST_HEALTH_PORT.*\/healthz/m);
    assert.match(dockerfile, /^STOPSIGNAL SIGTERM$/m);
  });
  test("carries the Vulkan loader and asks the NVIDIA runtime for the driver's Vulkan ICD (the webgpu engine)", () => {
    assert.match(dockerfile, /apt-get install [^\n]*\blibvulkan1\b/);
    assert.ok(
      graphicsCapable(dockerfile.match(/^ENV NVIDIA_DRIVER_CAPABILITIES=(\S+)$/m)?.[1]),
      'ENV NVIDIA_DRIVER_CAPABILITIES must include graphics',
    );
  });
  test('tsx, which bin/vit-dist.js loads at run time, is a production dependency', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    assert.ok(pkg.dependencies?.tsx, 'tsx must be in dependencies, or `npm ci --omit=dev` leaves it out of the image');
  });
  test('.dockerignore keeps node_modules, runs and .git out of the build context', () => {
    const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim());
    for (const entry of ['node_modules', 'runs', '.git']) assert.ok(ignored.includes(entry), `${entry} not ignored`);
  });
});

describe('docker-compose.yml', () => {
  const text = readFileSync(join(DEPLOY, 'docker-compose.yml'), 'utf8');
  const compose = yaml.load(text) as Obj;

  const noCompose = has('docker-compose', ['version']) ? false : 'docker-compose is not installed (apt-get install docker-compose)';
  if (noCompose) console.log(`SKIP docker-compose validation: ${noCompose}`);
  test('docker-compose config -q accepts it, and refuses a broken copy', { skip: noCompose }, () => {
    // The compose file names env_file vit-dist.env, which users copy from the example: do that in a scratch dir.
    const dir = mkdtempSync(join(tmpdir(), 'vit-dist-compose-'));
    try {
      copyFileSync(join(DEPLOY, 'vit-dist.env.example'), join(dir, 'vit-dist.env'));
      copyFileSync(join(DEPLOY, 'docker-compose.yml'), join(dir, 'docker-compose.yml'));
      const ok = spawnSync('docker-compose', ['config', '-q'], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
      assert.equal(ok.status, 0, `docker-compose config -q failed:\n${ok.stderr}`);
      // The negative control shows the validator does look at the services.
      writeFileSync(join(dir, 'docker-compose.yml'), text.replace('  coordinator:\n', '  coordinator:\n    no_such_key: 1\n'));
      const bad = spawnSync('docker-compose', ['config', '-q'], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
      assert.notEqual(bad.status, 0, 'docker-compose accepted an unknown service key');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('8 workers, each pinned to its own card, advertising its own service name', () => {
    const workers = Object.entries(compose.services as Record<string, Obj>).filter(([name]) => name.startsWith('worker-'));
    assert.equal(workers.length, 8);
    const gpus = new Set<string>();
    for (const [name, svc] of workers) {
      const devices = svc.deploy.resources.reservations.devices as Obj[];
      assert.equal(devices.length, 1, name);
      assert.ok(devices[0]!.capabilities.includes('gpu'), `${name}: a GPU request needs the gpu capability`);
      assert.ok(
        graphicsCapable(devices[0]!.capabilities.filter((c: string) => c !== 'gpu').join(',')),
        `${name}: the device request must include graphics (Vulkan)`,
      );
      assert.ok(graphicsCapable(svc.environment?.NVIDIA_DRIVER_CAPABILITIES), `${name}: NVIDIA_DRIVER_CAPABILITIES must include graphics`);
      assert.equal(devices[0]!.device_ids.length, 1, name);
      const id = String(devices[0]!.device_ids[0]);
      // The container is given that one card, which Vulkan and CUDA then list as index 0.
      assert.equal(flag(svc.command, 'gpu'), '0', `${name}: its one reserved card is GPU 0 inside the container`);
      assert.ok(GPU_BACKENDS.includes(flag(svc.command, 'backend')!), `${name}: --backend must be auto or webgpu`);
      assert.equal(flag(svc.command, 'advertise'), name, `${name}: ring neighbours reach it by service name`);
      assert.equal(flag(svc.command, 'coordinator'), 'ws://coordinator:29500', name);
      assert.equal(svc.restart, 'on-failure', name);
      assert.equal(svc.env_file, 'vit-dist.env', name);
      assert.ok(
        (svc.volumes as string[]).some((v) => v.endsWith(':/usr/share/datasets/fashion-mnist:ro')),
        `${name}: data mounted read-only`,
      );
      gpus.add(id);
    }
    assert.equal(gpus.size, 8, 'GPU ids must be distinct');
  });

  test('the coordinator waits for exactly the workers defined, writes to the named volume, reads the token file', () => {
    const coordinator = compose.services.coordinator as Obj;
    const workers = Object.keys(compose.services).filter((n) => n.startsWith('worker-')).length;
    assert.equal(Number(flag(coordinator.command, 'workers')), workers);
    assert.equal(coordinator.env_file, 'vit-dist.env');
    assert.match(readFileSync(join(DEPLOY, 'vit-dist.env.example'), 'utf8'), /^VIT_DIST_TOKEN=/m);
    const out = flag(coordinator.command, 'out')!;
    const runVolume = (coordinator.volumes as string[]).map((v) => v.split(':')).find(([, target]) => out.startsWith(`${target}/`));
    assert.ok(runVolume, `--out ${out} is not on a volume`);
    assert.ok(runVolume[0]! in compose.volumes, `${runVolume[0]} is not a named volume`);
  });
});

// ---- Kubernetes -------------------------------------------------------------------------------------

const CLUSTER_SCOPED = new Set(['Namespace']);

/**
 * A renderer for the subset of kustomize that deploy/k8s uses (`namespace` and a list of resource files),
 * for machines without kubectl. It refuses anything else, so it cannot silently render a kustomization
 * it does not understand; where kubectl is installed the test checks both renderings agree.
 */
function renderSubset(dir: string): Obj[] {
  const k = yaml.load(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Obj;
  const unsupported = Object.keys(k).filter((key) => !['apiVersion', 'kind', 'namespace', 'resources'].includes(key));
  assert.deepEqual(unsupported, [], `the built-in renderer handles only namespace and resources; use kubectl kustomize`);
  return (k.resources as string[]).flatMap((file) =>
    (yaml.loadAll(readFileSync(join(dir, file), 'utf8')) as Obj[]).filter(Boolean).map((o) => {
      if (k.namespace && !CLUSTER_SCOPED.has(o.kind)) o.metadata = { ...o.metadata, namespace: k.namespace };
      return o;
    }),
  );
}

function renderKubectl(dir: string): Obj[] | string {
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 60_000 });
  if (r.error) return `kubectl is not installed (${(r.error as NodeJS.ErrnoException).code})`;
  assert.equal(r.status, 0, `kubectl kustomize failed:\n${r.stderr}`);
  return (yaml.loadAll(r.stdout) as Obj[]).filter(Boolean);
}

const byKindName = (a: Obj, b: Obj) => `${a.kind}/${a.metadata.name}`.localeCompare(`${b.kind}/${b.metadata.name}`);

// The schema classes of the kinds deploy/k8s may contain.
const MODELS: Record<string, { prototype: { validate(): void }; new (data: any): { validate(): void } }> = {
  'v1/Namespace': Namespace,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim,
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
};

/**
 * Fields of `obj` the schema does not know. kubernetes-models validates types, enums and required
 * fields but ignores unknown properties (as the API server's non-strict mode does), so a misspelt
 * field such as `livenesProbe` would pass. Its compiled validator reads every property its schema
 * declares (and enumerates the keys of map-typed objects such as labels), so running it over a proxy
 * that records those reads tells which properties of each object the schema knows.
 */
function unknownFields(model: { prototype: { validate(): void } }, obj: Obj): string[] {
  const seen = new Map<object, { read: Set<string>; map: boolean }>();
  const record = (target: object) => seen.get(target) ?? seen.set(target, { read: new Set(), map: false }).get(target)!;
  const wrap = (value: unknown): unknown =>
    value !== null && typeof value === 'object'
      ? new Proxy(value, {
          get(target, key, receiver) {
            if (typeof key === 'string') record(target).read.add(key);
            return wrap(Reflect.get(target, key, receiver));
          },
          ownKeys(target) {
            record(target).map = true;
            return Reflect.ownKeys(target);
          },
        })
      : value;
  model.prototype.validate.call(wrap(obj));
  const unknown: string[] = [];
  const walk = (value: unknown, path: string): void => {
    if (Array.isArray(value)) {
      value.forEach((v, i) => {
        walk(v, `${path}[${i}]`);
      });
      return;
    }
    if (value === null || typeof value !== 'object') return;
    const rec = seen.get(value);
    for (const [key, child] of Object.entries(value)) {
      if (rec?.map || rec?.read.has(key)) walk(child, `${path}.${key}`);
      else unknown.push(`${path}.${key}`);
    }
  };
  walk(obj, obj.kind);
  return unknown;
}

function modelOf(o: Obj) {
  const model = MODELS[`${o.apiVersion}/${o.kind}`];
  assert.ok(model, `no schema for ${o.apiVersion} ${o.kind}`);
  return model;
}

const podsOf = (objects: Obj[]) => objects.filter((o) => o.kind === 'Deployment' || o.kind === 'StatefulSet');
const matches = (selector: Record<string, string>, labels: Record<string, string> = {}) =>
  Object.entries(selector).every(([k, v]) => labels[k] === v);

describe('Kubernetes manifests (deploy/k8s)', () => {
  const objects = renderSubset(K8S).sort(byKindName);
  const viaKubectl = renderKubectl(K8S);
  if (typeof viaKubectl === 'string') console.log(`rendering deploy/k8s with the built-in subset renderer only: ${viaKubectl}`);

  test('kubectl kustomize renders the same objects as the built-in renderer', {
    skip: typeof viaKubectl === 'string' ? viaKubectl : false,
  }, () => {
    assert.deepEqual((viaKubectl as Obj[]).sort(byKindName), objects);
  });

  test('every object validates against its Kubernetes schema', () => {
    assert.ok(objects.length >= 7);
    for (const o of objects) assert.doesNotThrow(() => new (modelOf(o))(o).validate(), `${o.kind}/${o.metadata?.name}`);
  });

  test('no object carries a field its schema does not know', () => {
    const unknown = objects.flatMap((o) => unknownFields(modelOf(o), o).map((f) => `${o.metadata.name}: ${f}`));
    assert.deepEqual(unknown, []);
  });

  test('the checks above catch a wrong type and a misspelt field', () => {
    const sts = structuredClone(objects.find((o) => o.kind === 'StatefulSet')!);
    sts.spec.replicas = 'eight';
    assert.throws(() => new StatefulSet(sts).validate());
    sts.spec.replicas = 8;
    sts.spec.template.spec.containers[0].livenesProbe = { httpGet: { path: '/healthz', port: 8080 } };
    assert.deepEqual(unknownFields(StatefulSet, sts), ['StatefulSet.spec.template.spec.containers[0].livenesProbe']);
  });

  test('Service selectors and workload selectors match their pods', () => {
    const workloads = podsOf(objects);
    for (const w of workloads)
      assert.ok(matches(w.spec.selector.matchLabels, w.spec.template.metadata.labels), `${w.metadata.name}: selector`);
    for (const svc of objects.filter((o) => o.kind === 'Service')) {
      const targets = workloads.filter((w) => matches(svc.spec.selector, w.spec.template.metadata.labels));
      assert.equal(targets.length, 1, `Service ${svc.metadata.name} selects ${targets.length} workloads`);
      for (const p of svc.spec.ports ?? []) {
        const names = targets[0]!.spec.template.spec.containers.flatMap((c: Obj) => c.ports ?? []).map((cp: Obj) => cp.name);
        assert.ok(typeof p.targetPort !== 'string' || names.includes(p.targetPort), `${svc.metadata.name}: targetPort ${p.targetPort}`);
      }
    }
  });

  test('Secret keys, claims and probe ports that the pods name exist', () => {
    for (const w of podsOf(objects)) {
      const spec = w.spec.template.spec;
      for (const c of spec.containers as Obj[]) {
        for (const e of c.env ?? []) {
          const ref = e.valueFrom?.secretKeyRef;
          if (!ref) continue;
          const secret = objects.find((o) => o.kind === 'Secret' && o.metadata.name === ref.name);
          assert.ok(secret, `${w.metadata.name}: no Secret ${ref.name}`);
          assert.ok(ref.key in { ...secret.data, ...secret.stringData }, `${w.metadata.name}: Secret ${ref.name} has no key ${ref.key}`);
        }
        const ports = (c.ports ?? []).map((p: Obj) => p.name);
        for (const probe of [c.readinessProbe, c.livenessProbe]) {
          assert.ok(probe?.httpGet?.path === '/healthz', `${w.metadata.name}: needs readiness and liveness probes on /healthz`);
          assert.ok(ports.includes(probe.httpGet.port), `${w.metadata.name}: probe port ${probe.httpGet.port}`);
        }
        assert.ok(c.resources?.requests && c.resources?.limits, `${w.metadata.name}: requests and limits`);
      }
      for (const v of spec.volumes ?? []) {
        if (!v.persistentVolumeClaim) continue;
        assert.ok(
          objects.some((o) => o.kind === 'PersistentVolumeClaim' && o.metadata.name === v.persistentVolumeClaim.claimName),
          v.name,
        );
      }
    }
  });

  test('workers: the coordinator waits for the StatefulSet replicas, and peers reach each other through the headless Service', () => {
    const coordinator = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'vit-dist-coordinator')!;
    const workers = objects.find((o) => o.kind === 'StatefulSet')!;
    const cArgs = coordinator.spec.template.spec.containers[0].args as string[];
    const wContainer = workers.spec.template.spec.containers[0] as Obj;
    const wArgs = wContainer.args as string[];
    assert.equal(Number(flag(cArgs, 'workers')), workers.spec.replicas);
    assert.equal(workers.spec.podManagementPolicy, 'Parallel');

    const headless = objects.find((o) => o.kind === 'Service' && o.metadata.name === workers.spec.serviceName)!;
    assert.equal(headless?.spec.clusterIP, 'None', 'serviceName must be a headless Service');
    assert.ok(matches(headless.spec.selector, workers.spec.template.metadata.labels));
    assert.equal(flag(wArgs, 'advertise'), `$(POD_NAME).${workers.spec.serviceName}.$(NAMESPACE).svc.cluster.local`);
    const fieldOf = (name: string) => wContainer.env.find((e: Obj) => e.name === name)?.valueFrom?.fieldRef?.fieldPath;
    assert.equal(fieldOf('POD_NAME'), 'metadata.name');
    assert.equal(fieldOf('NAMESPACE'), 'metadata.namespace');

    const url = new URL(flag(wArgs, 'coordinator')!);
    const control = objects.find((o) => o.kind === 'Service' && o.metadata.name === url.hostname);
    assert.ok(control, `no Service ${url.hostname}`);
    assert.ok(
      control.spec.ports.some((p: Obj) => p.port === Number(url.port)),
      `Service ${url.hostname} has no port ${url.port}`,
    );
    assert.ok(matches(control.spec.selector, coordinator.spec.template.metadata.labels));

    // One card per pod: inside the pod it is index 0, reached through the driver's Vulkan ICD.
    assert.equal(String(wContainer.resources.limits['nvidia.com/gpu']), '1');
    assert.equal(flag(wArgs, 'gpu'), '0');
    assert.ok(GPU_BACKENDS.includes(flag(wArgs, 'backend')!), '--backend must be auto or webgpu');
    assert.ok(
      graphicsCapable(wContainer.env.find((e: Obj) => e.name === 'NVIDIA_DRIVER_CAPABILITIES')?.value),
      'NVIDIA_DRIVER_CAPABILITIES must include graphics',
    );
  });
});
