// What the container tests (compose.test.ts, manifests.test.ts) share: the Docker engine they talk to, why they
// cannot run, and the image they run, built once from deploy/Dockerfile and reused while its inputs stay the same.
//
// The engine is a local one on a unix socket: .ci/docker.sh starts one in its own network namespace (no route
// off the machine), with the base image node:20-bookworm-slim built locally. Nothing here dials a container
// address: the only traffic from the test process is on the Docker socket. The image build has no network:
// npm installs from a cache filled here beforehand from the npm registry.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const FMNIST = '/usr/share/datasets/fashion-mnist';
const CI_SOCKET = '/run/vitdist-docker.sock';
const CI_STATUS = '/run/vitdist-docker.status';
const BASE_IMAGE = 'node:20-bookworm-slim';
/** The image the tests run; a label on it records a hash of what it was built from. */
export const TEST_IMAGE = 'vit-dist:test';
const CONTEXT_LABEL = 'vit-dist.test-context';
const NPM_CACHE = process.env.VIT_DIST_NPM_CACHE ?? '/var/cache/vit-dist/npm-cache';
/** No network in the build: no data set from apt (the tests mount the host's), npm from the cache, no GPU loaders. */
const BUILD_ARGS = { WITH_FASHION_MNIST: '0', NPM_OFFLINE: '1', WITH_VULKAN: '0' };
/** Left out of the build context (the Dockerfile's .dockerignore trims it further). */
const NOT_IN_CONTEXT = new Set(['node_modules', '.git', 'runs', 'test', 'bench', 'docs']);

process.env.DOCKER_HOST ??= existsSync(CI_SOCKET) ? `unix://${CI_SOCKET}` : 'unix:///var/run/docker.sock';

/** One Docker Engine API call over the unix socket, with an optional JSON body; resolves with the status and the body (parsed when JSON). */
export function dockerApi(
  method: string,
  path: string,
  timeoutMs = 30_000,
  json?: unknown,
): Promise<{ status: number; body: any; raw: Buffer }> {
  const socketPath = new URL(process.env.DOCKER_HOST!).pathname;
  const payload = json === undefined ? null : Buffer.from(JSON.stringify(json));
  const headers = payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {};
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, headers, timeout: timeoutMs }, (res) => {
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
    req.end(payload ?? undefined);
  });
}

/** A container's stdout and stderr: the API multiplexes them in frames of an 8-byte header and a payload. */
export async function containerLogs(id: string): Promise<string> {
  const { raw } = await dockerApi('GET', `/containers/${id}/logs?stdout=1&stderr=1`);
  let text = '';
  for (let at = 0; at + 8 <= raw.length; at += 8 + raw.readUInt32BE(at + 4))
    text += raw.subarray(at + 8, at + 8 + raw.readUInt32BE(at + 4)).toString('utf8');
  return text;
}

/** Waits for a container to stop; its exit code. */
export async function waitExit(id: string, timeoutMs: number): Promise<number> {
  const { status, body } = await dockerApi('POST', `/containers/${id}/wait`, timeoutMs);
  assert.equal(status, 200, `waiting for container ${id}: ${JSON.stringify(body)}`);
  return body.StatusCode as number;
}

/** A docker CLI command against the test engine (the classic builder: the engine may predate BuildKit's client). */
export function docker(args: string[], timeoutMs = 120_000): string {
  const r = spawnSync('docker', args, { encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, DOCKER_BUILDKIT: '0' } });
  assert.equal(r.status, 0, `docker ${args.join(' ')} failed (${r.error?.message ?? `exit ${r.status}`}):\n${r.stderr}`);
  return r.stdout;
}

/** Runs the image's HEALTHCHECK command inside a running container; its exit code. */
export async function runHealthcheck(containerId: string): Promise<number> {
  const test = (await dockerApi('GET', `/images/${TEST_IMAGE}/json`)).body.Config.Healthcheck.Test as string[];
  assert.equal(test[0], 'CMD');
  const r = spawnSync('docker', ['exec', containerId, ...test.slice(1)], { encoding: 'utf8', timeout: 60_000 });
  return r.status ?? -1;
}

/** Why the container tests cannot run here, or false. */
export async function dockerSkipReason(): Promise<string | false> {
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
  if (spawnSync('docker', ['--version']).status !== 0) return 'the docker command-line client is not installed (apt-get install docker.io)';
  if ((await dockerApi('GET', `/images/${BASE_IMAGE}/json`)).status !== 200) {
    return `base image ${BASE_IMAGE} is not in the local engine and no registry is reachable; .ci/docker.sh builds it`;
  }
  if (!existsSync(join(FMNIST, 'train-images-idx3-ubyte.gz')))
    return `Fashion-MNIST is not installed at ${FMNIST} (apt-get install dataset-fashion-mnist)`;
  return false;
}

/**
 * npm's cache holding every production dependency, so `npm ci --offline` works in the network-less build. Filled
 * once per package-lock.json (a stamp beside it says for which): each fill rewrites index entries, and a changed
 * cache would invalidate the image's `npm ci` layer, minutes of build.
 */
function ensureNpmCache(): void {
  const lock = readFileSync(join(ROOT, 'package-lock.json'));
  const stamp = `${NPM_CACHE}.filled-for`;
  const lockHash = createHash('sha256').update(lock).digest('hex');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === lockHash) return;
  const scratch = mkdtempSync(join(tmpdir(), 'vit-dist-npm-'));
  try {
    for (const f of ['package.json', 'package-lock.json']) cpSync(join(ROOT, f), join(scratch, f));
    const r = spawnSync(
      'npm',
      ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', '--cache', NPM_CACHE],
      { cwd: scratch, encoding: 'utf8', timeout: 300_000 },
    );
    assert.equal(r.status, 0, `filling the npm cache failed:\n${r.stderr}`);
    writeFileSync(stamp, lockHash);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** The files of the build context, relative to the repository root, sorted: what git tracks or would (not its ignored files). */
function contextFiles(): string[] {
  const r = spawnSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, `git ls-files failed in ${ROOT}:\n${r.stderr}`);
  return r.stdout
    .split('\0')
    .filter((f) => f && !NOT_IN_CONTEXT.has(f.split('/')[0]!) && existsSync(join(ROOT, f)))
    .sort();
}

/** What the image is built from: the context's files (the npm cache follows package-lock.json) and the build arguments. */
function contextHash(files: string[]): string {
  const hash = createHash('sha256').update(JSON.stringify(BUILD_ARGS));
  for (const f of files)
    hash
      .update(`${f}\0`)
      .update(readFileSync(join(ROOT, f)))
      .update('\0');
  return hash.digest('hex').slice(0, 16);
}

/**
 * TEST_IMAGE built from this checkout, built at most once while its inputs are unchanged: each test file runs in
 * its own process, and the second finds the image labelled with the same context hash. Says which, and how long
 * the build took.
 */
export function ensureTestImage(): void {
  const files = contextFiles();
  const hash = contextHash(files);
  const existing = spawnSync('docker', ['image', 'inspect', '--format', `{{index .Config.Labels "${CONTEXT_LABEL}"}}`, TEST_IMAGE], {
    encoding: 'utf8',
  });
  if (existing.status === 0 && existing.stdout.trim() === hash) {
    console.log(`image ${TEST_IMAGE} reused (context ${hash})`);
    return;
  }
  const previous = existing.status === 0 ? docker(['image', 'inspect', '--format', '{{.Id}}', TEST_IMAGE]).trim() : null;
  const started = Date.now();
  ensureNpmCache();
  const ctx = mkdtempSync(join(tmpdir(), 'vit-dist-ctx-'));
  try {
    for (const f of files) cpSync(join(ROOT, f), join(ctx, f));
    // npm's own logs stay out: they change with every npm run, and the layer cache with them.
    cpSync(NPM_CACHE, join(ctx, '.npm-cache'), { recursive: true, filter: (path) => !path.startsWith(join(NPM_CACHE, '_logs')) });
    // Untag the previous image first (its layers stay as cache), so a failed build cannot pass as the old image.
    spawnSync('docker', ['rmi', '--no-prune', TEST_IMAGE], { encoding: 'utf8' });
    docker(
      [
        'build',
        '--pull=false',
        '-f',
        'deploy/Dockerfile',
        ...Object.entries(BUILD_ARGS).flatMap(([k, v]) => ['--build-arg', `${k}=${v}`]),
        '--label',
        `${CONTEXT_LABEL}=${hash}`,
        '-t',
        TEST_IMAGE,
        ctx,
      ],
      900_000,
    );
  } finally {
    rmSync(ctx, { recursive: true, force: true });
  }
  // The superseded image, untagged now, would otherwise pile up (the engine refuses while a container uses it).
  if (previous && previous !== docker(['image', 'inspect', '--format', '{{.Id}}', TEST_IMAGE]).trim())
    spawnSync('docker', ['rmi', previous], { encoding: 'utf8' });
  console.log(`image ${TEST_IMAGE} built in ${((Date.now() - started) / 1000).toFixed(1)} s (context ${hash})`);
}
