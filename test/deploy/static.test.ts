// Static checks of deploy/: the Dockerfile's essentials, the compose files (validated by docker-compose
// itself when installed, then cross-checked: the GPU file is the CPU file plus what GPUs need), and the
// Kubernetes overlays: rendered, every object validated against the Kubernetes schemas (kubernetes-models),
// no field the schema does not know, and the references between objects (selectors, Secret keys, claims,
// ports, worker count) consistent.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import yaml from 'js-yaml';
import { Namespace, PersistentVolumeClaim, Secret, Service } from 'kubernetes-models/v1';
import { StatefulSet } from 'kubernetes-models/apps/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { byKindName, flag, K8S, matches, OVERLAYS, type Obj, podsOf, renderKubectl, renderSubset } from './k8s-render.ts';

const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));
const ROOT = join(DEPLOY, '..');

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

/** `docker-compose config` of `files` (copied with the env file into a scratch directory), parsed; or its error. */
function composeConfig(
  files: Record<string, string>,
  env: Record<string, string> = {},
): { status: number | null; config: Obj; stderr: string } {
  const dir = mkdtempSync(join(tmpdir(), 'vit-dist-compose-'));
  try {
    copyFileSync(join(DEPLOY, 'vit-dist.env.example'), join(dir, 'vit-dist.env'));
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    const r = spawnSync('docker-compose', ['-f', Object.keys(files)[0]!, 'config'], {
      cwd: dir,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, ...env },
    });
    return { status: r.status, config: r.status === 0 ? (yaml.load(r.stdout) as Obj) : {}, stderr: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('compose files: docker-compose.cpu.yml and the GPU file docker-compose.yml that extends it', () => {
  const cpuText = readFileSync(join(DEPLOY, 'docker-compose.cpu.yml'), 'utf8');
  const gpuText = readFileSync(join(DEPLOY, 'docker-compose.yml'), 'utf8');
  const cpu = yaml.load(cpuText) as Obj;
  const gpu = yaml.load(gpuText) as Obj;
  const both = { 'docker-compose.yml': gpuText, 'docker-compose.cpu.yml': cpuText };
  const gpuWorkers = Object.entries(gpu.services as Record<string, Obj>).filter(([name]) => name.startsWith('worker-'));

  const noCompose = has('docker-compose', ['version']) ? false : 'docker-compose is not installed (apt-get install docker-compose)';
  if (noCompose) console.log(`SKIP docker-compose validation: ${noCompose}`);

  test('docker-compose config accepts both files, and refuses a broken copy', { skip: noCompose }, () => {
    const ok = composeConfig(both);
    assert.equal(ok.status, 0, `docker-compose config (GPU) failed:\n${ok.stderr}`);
    const okCpu = composeConfig({ 'docker-compose.cpu.yml': cpuText });
    assert.equal(okCpu.status, 0, `docker-compose config (CPU) failed:\n${okCpu.stderr}`);
    // The negative control shows the validator does look at the services.
    const bad = composeConfig({ 'docker-compose.cpu.yml': cpuText.replace('  coordinator:\n', '  coordinator:\n    no_such_key: 1\n') });
    assert.notEqual(bad.status, 0, 'docker-compose accepted an unknown service key');
  });

  test('CPU: VIT_DIST_WORKERS alone sets the worker count, and nothing asks for a GPU', { skip: noCompose }, () => {
    for (const workers of ['2', '5']) {
      const { status, config, stderr } = composeConfig({ 'docker-compose.cpu.yml': cpuText }, { VIT_DIST_WORKERS: workers });
      assert.equal(status, 0, stderr);
      assert.equal(flag(config.services.coordinator.command, 'workers'), workers);
      assert.equal(String(config.services.worker.scale), workers);
    }
    assert.deepEqual(Object.keys(cpu.services).sort(), ['coordinator', 'worker']);
    assert.doesNotMatch(cpuText, /nvidia|device_ids|--gpu/, 'the CPU file must not mention GPUs');
  });

  test('GPU: the same services plus one per card, each pinned to its own card with the Vulkan capability', () => {
    assert.equal(gpuWorkers.length, 8);
    const cards = new Set<string>();
    const cpuWorker = cpu.services.worker as Obj;
    for (const [name, svc] of gpuWorkers) {
      assert.deepEqual(svc.extends, { file: 'docker-compose.cpu.yml', service: 'worker' }, name);
      assert.equal(svc.scale, 1, `${name}: one container per card`);
      // Its command is the CPU worker's plus --gpu=0: the container is given one card, which Vulkan and CUDA list as 0.
      assert.deepEqual(svc.command, [...cpuWorker.command.slice(0, 2), '--gpu=0', ...cpuWorker.command.slice(2)], name);
      assert.ok(GPU_BACKENDS.includes(flag(svc.command, 'backend')!), `${name}: --backend must be auto or webgpu`);
      assert.ok(graphicsCapable(svc.environment?.NVIDIA_DRIVER_CAPABILITIES), `${name}: NVIDIA_DRIVER_CAPABILITIES must include graphics`);
      const devices = svc.deploy.resources.reservations.devices as Obj[];
      assert.equal(devices.length, 1, name);
      assert.ok(devices[0]!.capabilities.includes('gpu'), `${name}: a GPU request needs the gpu capability`);
      assert.ok(
        graphicsCapable(devices[0]!.capabilities.filter((c: string) => c !== 'gpu').join(',')),
        `${name}: the device request must include graphics (Vulkan)`,
      );
      assert.equal(devices[0]!.device_ids.length, 1, name);
      cards.add(String(devices[0]!.device_ids[0]));
      const extra = Object.keys(svc).filter((k) => !['extends', 'scale', 'command', 'environment', 'deploy'].includes(k));
      assert.deepEqual(extra, [], `${name}: differs from the CPU worker only in what GPUs need`);
    }
    assert.equal(cards.size, 8, 'GPU ids must be distinct');
  });

  test("GPU: the coordinator is the CPU file's with --workers set to the worker services defined", () => {
    const coordinator = gpu.services.coordinator as Obj;
    assert.deepEqual(coordinator.extends, { file: 'docker-compose.cpu.yml', service: 'coordinator' });
    assert.deepEqual(Object.keys(coordinator).sort(), ['command', 'extends']);
    const expected = (cpu.services.coordinator.command as string[]).map((a) =>
      a.startsWith('--workers=') ? `--workers=${gpuWorkers.length}` : a,
    );
    assert.deepEqual(coordinator.command, expected);
  });

  test('GPU, resolved: workers carry the token, the data and the restart policy of the CPU worker', { skip: noCompose }, () => {
    const { status, config, stderr } = composeConfig(both);
    assert.equal(status, 0, stderr);
    for (const [name] of gpuWorkers) {
      const svc = config.services[name] as Obj;
      assert.equal(svc.restart, 'on-failure', name);
      assert.ok(svc.environment.VIT_DIST_TOKEN, `${name}: token from vit-dist.env`);
      assert.ok(
        (svc.volumes as string[]).some((v) => v.endsWith(':/usr/share/datasets/fashion-mnist:ro')),
        `${name}: data mounted read-only`,
      );
    }
  });

  test('the coordinator writes to the named volume and reads the token file', () => {
    const coordinator = cpu.services.coordinator as Obj;
    assert.equal(coordinator.env_file, 'vit-dist.env');
    assert.equal(cpu.services.worker.env_file, 'vit-dist.env');
    assert.match(readFileSync(join(DEPLOY, 'vit-dist.env.example'), 'utf8'), /^VIT_DIST_TOKEN=/m);
    const out = flag(coordinator.command, 'out')!;
    const runVolume = (coordinator.volumes as string[]).map((v) => v.split(':')).find(([, target]) => out.startsWith(`${target}/`));
    assert.ok(runVolume, `--out ${out} is not on a volume`);
    assert.ok(runVolume[0]! in cpu.volumes && runVolume[0]! in gpu.volumes, `${runVolume[0]} is not a named volume in both files`);
    // Replicas of one service reach each other by host name: they bind the ring on a wildcard and advertise nothing.
    const worker = cpu.services.worker.command as string[];
    assert.equal(flag(worker, 'ring-host'), '0.0.0.0');
    assert.equal(flag(worker, 'advertise'), undefined);
    assert.equal(flag(worker, 'coordinator'), 'ws://coordinator:29500');
    assert.equal(cpu.services.worker.restart, 'on-failure');
  });
});

// ---- Kubernetes -------------------------------------------------------------------------------------

// The schema classes of the kinds deploy/k8s may contain.
const MODELS: Record<string, { prototype: { validate(): void }; new (data: any): { validate(): void } }> = {
  'v1/Namespace': Namespace,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim,
  'apps/v1/StatefulSet': StatefulSet,
  'batch/v1/Job': Job,
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

/** The labels a workload's pods carry, and the selector it finds them by (a Job's is generated from its uid). */
const podLabels = (w: Obj): Record<string, string> => w.spec.template.metadata.labels;

for (const overlay of OVERLAYS) {
  describe(`Kubernetes manifests (deploy/k8s/${overlay})`, () => {
    const objects = renderSubset(join(K8S, overlay)).sort(byKindName);
    const viaKubectl = renderKubectl(join(K8S, overlay));
    if (typeof viaKubectl === 'string')
      console.log(`rendering deploy/k8s/${overlay} with the built-in subset renderer only: ${viaKubectl}`);
    const coordinator = objects.find((o) => o.kind === 'Job' && o.metadata.name === 'vit-dist-coordinator')!;
    const workers = objects.find((o) => o.kind === 'StatefulSet')!;
    const wContainer = workers.spec.template.spec.containers[0] as Obj;
    const wArgs = wContainer.args as string[];

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
      const sts = structuredClone(workers);
      sts.spec.replicas = 'eight';
      assert.throws(() => new StatefulSet(sts).validate());
      sts.spec.replicas = 8;
      sts.spec.template.spec.containers[0].livenesProbe = { httpGet: { path: '/healthz', port: 8080 } };
      assert.deepEqual(unknownFields(StatefulSet, sts), ['StatefulSet.spec.template.spec.containers[0].livenesProbe']);
      const job = structuredClone(coordinator);
      job.spec.template.spec.restartPolicy = 'Sometimes';
      assert.throws(() => new Job(job).validate());
    });

    test('the coordinator is a Job: one pod, run once, restarted in place after a crash', () => {
      assert.ok(coordinator, 'no Job vit-dist-coordinator');
      assert.equal(objects.filter((o) => o.kind === 'Deployment').length, 0);
      assert.equal(coordinator.spec.parallelism, 1);
      assert.equal(coordinator.spec.completions, 1);
      assert.equal(coordinator.spec.template.spec.restartPolicy, 'OnFailure');
      assert.ok(coordinator.spec.backoffLimit >= 1);
    });

    test('Service selectors and workload selectors match their pods', () => {
      const workloads = podsOf(objects);
      for (const w of workloads.filter((o) => o.spec.selector))
        assert.ok(matches(w.spec.selector.matchLabels, podLabels(w)), `${w.metadata.name}: selector`);
      for (const svc of objects.filter((o) => o.kind === 'Service')) {
        const targets = workloads.filter((w) => matches(svc.spec.selector, podLabels(w)));
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
          // A worker is ready while connected to the coordinator (/readyz), alive while its training loop moves (/healthz).
          assert.ok(['/healthz', '/readyz'].includes(c.readinessProbe?.httpGet?.path), `${w.metadata.name}: needs a readiness probe`);
          assert.ok(c.livenessProbe?.httpGet?.path === '/healthz', `${w.metadata.name}: needs a liveness probe on /healthz`);
          for (const probe of [c.readinessProbe, c.livenessProbe]) {
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

    test("the workers' liveness probe asks the worker's own /healthz on its --health-port, with generous timing", () => {
      assert.equal(wContainer.readinessProbe.httpGet.path, '/readyz', 'ready while connected to the coordinator');
      const port = wContainer.ports.find((p: Obj) => p.name === wContainer.livenessProbe.httpGet.port);
      assert.equal(String(port.containerPort), flag(wArgs, 'health-port'));
      const { periodSeconds = 10, failureThreshold = 3 } = wContainer.livenessProbe;
      assert.ok(periodSeconds * failureThreshold >= 120, 'a worker must be silent for minutes before it is restarted');
    });

    test('workers: the coordinator waits for the StatefulSet replicas, and peers reach each other through the headless Service', () => {
      const cArgs = coordinator.spec.template.spec.containers[0].args as string[];
      assert.equal(Number(flag(cArgs, 'workers')), workers.spec.replicas);
      assert.equal(workers.spec.podManagementPolicy, 'Parallel');

      const headless = objects.find((o) => o.kind === 'Service' && o.metadata.name === workers.spec.serviceName)!;
      assert.equal(headless?.spec.clusterIP, 'None', 'serviceName must be a headless Service');
      assert.ok(matches(headless.spec.selector, podLabels(workers)));
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
      assert.ok(matches(control.spec.selector, podLabels(coordinator)));
    });

    if (overlay === 'gpu')
      test('GPU: one card per pod, index 0 inside it, reached through the driver Vulkan ICD', () => {
        assert.equal(workers.spec.replicas, 8);
        assert.equal(String(wContainer.resources.limits['nvidia.com/gpu']), '1');
        assert.equal(String(wContainer.resources.requests['nvidia.com/gpu']), '1');
        assert.equal(flag(wArgs, 'gpu'), '0');
        assert.ok(GPU_BACKENDS.includes(flag(wArgs, 'backend')!), '--backend must be auto or webgpu');
        assert.ok(
          graphicsCapable(wContainer.env.find((e: Obj) => e.name === 'NVIDIA_DRIVER_CAPABILITIES')?.value),
          'NVIDIA_DRIVER_CAPABILITIES must include graphics',
        );
      });
    else
      test('CPU: nothing asks for a GPU', () => {
        assert.doesNotMatch(JSON.stringify(objects), /nvidia|--gpu/);
      });
  });
}
