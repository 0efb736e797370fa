// The image for real: build deploy/Dockerfile, run a coordinator and 2 workers as containers on a
// user-defined network (workers find the coordinator and each other by name, as in compose), train the
// micro recipe, check the image's HEALTHCHECK command against both roles, and read metrics.jsonl from
// the bind-mounted run directory.
//
// Needs a local Docker engine on a unix socket (.ci/docker.sh starts one in its own network namespace,
// with the base image node:20-bookworm-slim built locally). Nothing here dials a container address:
// readiness is read from the containers' logs and the health checks run inside them (docker exec), so
// the only traffic from this process is on the Docker socket. The image build has no network: npm
// installs from a cache filled here beforehand from the npm registry.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chownSync, cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MICRO_RECIPE = join(ROOT, 'test/fixtures/fmnist-micro.json');
const FMNIST = '/usr/share/datasets/fashion-mnist';
const CI_SOCKET = '/run/vitdist-docker.sock';
const CI_STATUS = '/run/vitdist-docker.status';
const BASE_IMAGE = 'node:20-bookworm-slim';
const IMAGE = 'vit-dist:container-test';
const NPM_CACHE = process.env.VIT_DIST_NPM_CACHE ?? '/var/cache/vit-dist/npm-cache';
const IMAGE_UID = 10001; // the Dockerfile's USER
const TOKEN = 'container-test-token';
const STEPS = 6;

process.env.DOCKER_HOST ??= existsSync(CI_SOCKET) ? `unix://${CI_SOCKET}` : 'unix:///var/run/docker.sock';
process.env.TESTCONTAINERS_RYUK_DISABLED = 'true'; // Ryuk is an image that would have to be pulled; cleanup is ours
process.env.TESTCONTAINERS_HOST_OVERRIDE ??= '127.0.0.1'; // no gateway discovery; no port of a container is ever dialled

/** One Docker Engine API call over the unix socket; resolves with the status and the body (parsed when JSON). */
function dockerApi(method: string, path: string, timeoutMs = 30_000): Promise<{ status: number; body: any; raw: Buffer }> {
  const socketPath = new URL(process.env.DOCKER_HOST!).pathname;
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        let body: unknown = raw.toString('utf8');
        try {
          body = JSON.parse(body as string);
        } catch {
          /* not JSON */
        }
        resolve({ status: res.statusCode ?? 0, body, raw });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`docker ${method} ${path}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** A container's stdout and stderr: the API multiplexes them in frames of an 8-byte header and a payload. */
async function containerLogs(id: string): Promise<string> {
  const { raw } = await dockerApi('GET', `/containers/${id}/logs?stdout=1&stderr=1`);
  let text = '';
  for (let at = 0; at + 8 <= raw.length; at += 8 + raw.readUInt32BE(at + 4))
    text += raw.subarray(at + 8, at + 8 + raw.readUInt32BE(at + 4)).toString('utf8');
  return text;
}

/** Why the test cannot run here, or false. */
async function skipReason(): Promise<string | false> {
  if (existsSync(CI_STATUS)) {
    const status = readFileSync(CI_STATUS, 'utf8').trim();
    if (status.startsWith('docker unavailable')) return status;
  }
  if (!process.env.DOCKER_HOST!.startsWith('unix://')) return `DOCKER_HOST=${process.env.DOCKER_HOST} is not a local unix socket`;
  try {
    const ping = await dockerApi('GET', '/_ping', 10_000);
    if (ping.status !== 200) return `no Docker engine at ${process.env.DOCKER_HOST} (ping answered ${ping.status})`;
  } catch (err) {
    return `no Docker engine at ${process.env.DOCKER_HOST} (${(err as Error).message}); .ci/docker.sh starts one`;
  }
  if ((await dockerApi('GET', `/images/${BASE_IMAGE}/json`)).status !== 200) {
    return `base image ${BASE_IMAGE} is not in the local engine and no registry is reachable; .ci/docker.sh builds it`;
  }
  if (!existsSync(join(FMNIST, 'train-images-idx3-ubyte.gz')))
    return `Fashion-MNIST is not installed at ${FMNIST} (apt-get install dataset-fashion-mnist)`;
  return false;
}

/** npm's cache holding every production dependency, so `npm ci --offline` works in the network-less build. */
function ensureNpmCache(): void {
  const scratch = mkdtempSync(join(tmpdir(), 'vit-dist-npm-'));
  try {
    for (const f of ['package.json', 'package-lock.json']) cpSync(join(ROOT, f), join(scratch, f));
    const r = spawnSync(
      'npm',
      ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', '--cache', NPM_CACHE],
      { cwd: scratch, encoding: 'utf8', timeout: 300_000 },
    );
    assert.equal(r.status, 0, `filling the npm cache failed:\n${r.stderr}`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** The repository as a build context (what .dockerignore lets through is decided by the build), plus the npm cache. */
function buildContext(): string {
  const ctx = mkdtempSync(join(tmpdir(), 'vit-dist-ctx-'));
  const skip = new Set(['node_modules', '.git', 'runs', 'test', 'bench', 'docs']);
  for (const entry of readdirSync(ROOT)) if (!skip.has(entry)) cpSync(join(ROOT, entry), join(ctx, entry), { recursive: true });
  cpSync(NPM_CACHE, join(ctx, '.npm-cache'), { recursive: true });
  return ctx;
}

const reason = await skipReason();
if (reason) console.log(`SKIP deploy containers: ${reason}`);

const cleanups: Array<() => Promise<unknown> | unknown> = [];
after(async () => {
  for (const cleanup of cleanups.reverse())
    await Promise.resolve()
      .then(cleanup)
      .catch((err) => console.log(`# cleanup: ${err}`));
});

test('the image trains: a coordinator and 2 workers as containers on one network', { skip: reason, timeout: 300_000 }, async () => {
  const { GenericContainer, Network, Wait } = await import('testcontainers');

  ensureNpmCache();
  const ctx = buildContext();
  cleanups.push(() => rmSync(ctx, { recursive: true, force: true }));
  // Untag the previous image first (keeping its layers as cache), so a failed build cannot pass as the old image.
  await dockerApi('DELETE', `/images/${IMAGE}?noprune=1`);
  const started = Date.now();
  const image = await GenericContainer.fromDockerfile(ctx, 'deploy/Dockerfile')
    .withBuildArgs({ WITH_FASHION_MNIST: '0', NPM_OFFLINE: '1', WITH_VULKAN: '0' })
    .withCache(true)
    .build(IMAGE, { deleteOnExit: false });
  console.log(`image built in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const healthcheck = (await dockerApi('GET', `/images/${IMAGE}/json`)).body.Config.Healthcheck.Test as string[];
  assert.equal(healthcheck[0], 'CMD');

  const runs = mkdtempSync(join(tmpdir(), 'vit-dist-runs-'));
  chownSync(runs, IMAGE_UID, IMAGE_UID); // the container's user writes the run directory
  cleanups.push(() => rmSync(runs, { recursive: true, force: true }));

  const network = await new Network().start();
  cleanups.push(() => network.stop());

  const coordinator = await image
    .withName(`vit-dist-test-coordinator-${process.pid}`)
    .withNetwork(network)
    .withNetworkAliases('coordinator')
    .withEnvironment({ VIT_DIST_TOKEN: TOKEN })
    .withBindMounts([
      { source: runs, target: '/runs' },
      { source: MICRO_RECIPE, target: '/fixtures/fmnist-micro.json', mode: 'ro' },
    ])
    .withCommand([
      'coordinator',
      '--workers',
      '2',
      '--recipe',
      '/fixtures/fmnist-micro.json',
      '--out',
      '/runs/micro',
      '--steps',
      String(STEPS),
      '--checkpoint-every',
      '3',
      '--join-timeout',
      '120',
    ])
    .withWaitStrategy(Wait.forLogMessage(/coordinator listening on ws:\/\/0\.0\.0\.0:29500/))
    .withStartupTimeout(60_000)
    .start();
  cleanups.push(() => coordinator.stop({ timeout: 10_000 }));
  const coordinatorHealth = await coordinator.exec(healthcheck.slice(1));
  assert.equal(coordinatorHealth.exitCode, 0, `coordinator HEALTHCHECK failed: ${coordinatorHealth.output}`);

  // Workers one at a time: worker-0 is checked while it waits, connected, for worker-1.
  const workers = [];
  for (const i of [0, 1]) {
    const worker = await new GenericContainer(IMAGE)
      .withName(`vit-dist-test-worker-${i}-${process.pid}`)
      .withNetwork(network)
      .withNetworkAliases(`worker-${i}`)
      .withEnvironment({ VIT_DIST_TOKEN: TOKEN, VIT_DIST_HEALTH_PORT: '8080' })
      .withBindMounts([{ source: FMNIST, target: FMNIST, mode: 'ro' }])
      .withCommand([
        'worker',
        '--coordinator',
        'ws://coordinator:29500',
        '--ring-host',
        '0.0.0.0',
        '--advertise',
        `worker-${i}`,
        '--health-port',
        '8080',
      ])
      .withWaitStrategy(Wait.forLogMessage(/joined the coordinator/))
      .withStartupTimeout(60_000)
      .start();
    cleanups.push(() => worker.stop({ timeout: 10_000 }));
    workers.push(worker);
    if (i === 0) {
      const workerHealth = await worker.exec(healthcheck.slice(1));
      assert.equal(workerHealth.exitCode, 0, `worker HEALTHCHECK failed: ${workerHealth.output}`);
    }
  }

  const exited = await dockerApi('POST', `/containers/${coordinator.getId()}/wait`, 180_000);
  const logs = await containerLogs(coordinator.getId());
  assert.equal(exited.body.StatusCode, 0, `coordinator exited ${exited.body.StatusCode}:\n${logs}`);
  assert.match(logs, new RegExp(`done: ${STEPS} steps`));

  const lines = readFileSync(join(runs, 'micro/metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const steps = lines.filter((l) => l.kind === 'step');
  assert.deepEqual(
    steps.map((s) => s.step),
    Array.from({ length: STEPS }, (_, k) => k + 1),
  );
  for (const s of steps) {
    assert.equal(s.workers, 2);
    assert.ok(Number.isFinite(s.loss) && s.loss > 0, `step ${s.step}: loss ${s.loss}`);
  }
  assert.ok(
    readdirSync(join(runs, 'micro/checkpoints')).some((f) => f.endsWith('.ckpt')),
    'no checkpoint written',
  );

  // The run is over: both workers leave by themselves.
  for (const worker of workers) {
    const done = await dockerApi('POST', `/containers/${worker.getId()}/wait`, 60_000);
    assert.equal(
      done.body.StatusCode,
      0,
      `worker ${worker.getName()} exited ${done.body.StatusCode}:\n${await containerLogs(worker.getId())}`,
    );
  }
});
