// The CPU compose file as a user runs it: `docker-compose up` on the test engine (docker.ts) trains a short run to
// the end, twice: once undisturbed, once with a worker's process killed mid-run (kill -9, as an OOM kill does),
// which compose's restart policy brings back and the ring takes in again from the last checkpoint. Both runs
// must end on the same parameter digest, printed by the coordinator and written to metrics.jsonl on the run
// volume. What the test adds to the user's files: the image name, a token, 2 workers, and --steps and
// --checkpoint-every appended to the coordinator's own command through an override file.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import yaml from 'js-yaml';
import { containerLogs, dockerApi, dockerSkipReason, ensureTestImage, ROOT, runHealthcheck, TEST_IMAGE, waitExit } from './docker.ts';

const CPU_FILE = join(ROOT, 'deploy/docker-compose.cpu.yml');
const STEPS = 12;
const CHECKPOINT_EVERY = 4;
/** The killed run loses its worker after this step, past the first checkpoint. */
const KILL_AFTER_STEP = 6;
const WORKERS = 2;
const RUN_DIR = 'fmnist-vit-tiny'; // the CPU file's --out=/runs/fmnist-vit-tiny
const HOST_PORT = 30_000 + (process.pid % 20_000);

async function skipReason(): Promise<string | false> {
  const r = spawnSync('docker-compose', ['version'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error || r.status !== 0) return 'docker-compose is not installed (apt-get install docker-compose)';
  return dockerSkipReason();
}

const reason = await skipReason();
if (reason) console.log(`SKIP deploy compose: ${reason}`);

const cleanups: Array<() => unknown> = [];
after(() => {
  for (const cleanup of cleanups.reverse()) {
    try {
      cleanup();
    } catch (err) {
      console.log(`# cleanup: ${err}`);
    }
  }
});

/** The user's CPU file, an env file with a token, and an override that makes the run short, in a scratch directory. */
function projectDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'vit-dist-compose-'));
  copyFileSync(CPU_FILE, join(dir, 'docker-compose.cpu.yml'));
  writeFileSync(join(dir, 'vit-dist.env'), 'VIT_DIST_TOKEN=compose-test-token\n');
  const command = (yaml.load(readFileSync(CPU_FILE, 'utf8')) as any).services.coordinator.command as string[];
  const short = { services: { coordinator: { command: [...command, `--steps=${STEPS}`, `--checkpoint-every=${CHECKPOINT_EVERY}`] } } };
  writeFileSync(join(dir, 'short-run.yml'), yaml.dump(short));
  return dir;
}

function compose(dir: string, project: string, args: string[], timeoutMs = 180_000): string {
  const r = spawnSync('docker-compose', ['-p', project, '-f', 'docker-compose.cpu.yml', '-f', 'short-run.yml', ...args], {
    cwd: dir,
    encoding: 'utf8',
    timeout: timeoutMs,
    // A host port of its own (in the engine's network namespace on CI), so a cluster already up there does not collide.
    env: { ...process.env, VIT_DIST_IMAGE: TEST_IMAGE, VIT_DIST_WORKERS: String(WORKERS), VIT_DIST_PORT: String(HOST_PORT) },
  });
  assert.equal(r.status, 0, `docker-compose ${args.join(' ')} failed (${r.error?.message ?? `exit ${r.status}`}):\n${r.stderr}`);
  return r.stdout;
}

/** The run directory on the project's volume, where the engine keeps it (a local engine: readable from here). */
async function runDirectory(project: string): Promise<string> {
  const volume = await dockerApi('GET', `/volumes/${project}_vit-dist-runs`);
  assert.equal(volume.status, 200, `no volume ${project}_vit-dist-runs`);
  return join(volume.body.Mountpoint as string, RUN_DIR);
}

function readMetrics(runDir: string): any[] {
  const path = join(runDir, 'metrics.jsonl');
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((line) => line.endsWith('}'))
    .map((line) => JSON.parse(line));
}

interface RunResult {
  digest: string;
  accuracy: string;
  restarts: number;
}

/** `up -d`, optionally kill a worker's process mid-run, wait for the coordinator, check log and volume, `down -v`. */
async function composeRun(dir: string, project: string, killWorker: boolean): Promise<RunResult> {
  const started = Date.now();
  cleanups.push(() => compose(dir, project, ['down', '-v', '-t', '5']));
  // The undisturbed run starts with one worker, so the coordinator waits, and checks the image's HEALTHCHECK in
  // both roles meanwhile (a worker's answers while it holds its coordinator connection); `up` again adds the rest.
  compose(dir, project, killWorker ? ['up', '-d'] : ['up', '-d', '--scale', 'worker=1']);
  const coordinator = compose(dir, project, ['ps', '-q', 'coordinator']).trim();
  if (!killWorker) {
    const first = compose(dir, project, ['ps', '-q', 'worker']).trim();
    let healthy = false;
    for (let attempt = 0; attempt < 90 && !healthy; attempt++) {
      healthy = (await runHealthcheck(coordinator)) === 0 && (await runHealthcheck(first)) === 0;
      if (!healthy) await sleep(1000);
    }
    assert.ok(healthy, `the HEALTHCHECK did not pass in the coordinator and a waiting worker:\n${await containerLogs(first)}`);
    compose(dir, project, ['up', '-d']);
  }
  const workers = compose(dir, project, ['ps', '-q', 'worker']).trim().split('\n');
  assert.equal(workers.length, WORKERS, `docker-compose started ${workers.length} workers`);
  const runDir = await runDirectory(project);

  if (killWorker) {
    const deadline = Date.now() + 300_000;
    while (!readMetrics(runDir).some((l) => l.kind === 'step' && l.step >= KILL_AFTER_STEP)) {
      assert.ok(Date.now() < deadline, `no step ${KILL_AFTER_STEP} within 300 s:\n${await containerLogs(coordinator)}`);
      await sleep(200);
    }
    // The coordinator is frozen for the kill, so the run cannot end before the worker is gone.
    assert.equal((await dockerApi('POST', `/containers/${coordinator}/pause`)).status, 204, 'pausing the coordinator');
    try {
      const last = readMetrics(runDir)
        .filter((l) => l.kind === 'step')
        .at(-1);
      assert.ok(last.step < STEPS, 'the run ended before the worker could be killed');
      // kill -9 from outside, as the kernel's OOM killer would: `docker kill` would count as a deliberate stop,
      // which restart policies honour by staying down.
      const victim = (await dockerApi('GET', `/containers/${workers[1]}/json`)).body;
      process.kill(victim.State.Pid as number, 'SIGKILL');
      console.log(`killed ${victim.Name} (pid ${victim.State.Pid}) after step ${last.step}`);
    } finally {
      await dockerApi('POST', `/containers/${coordinator}/unpause`);
    }
  }

  const code = await waitExit(coordinator, 600_000);
  const logs = await containerLogs(coordinator);
  assert.equal(code, 0, `coordinator exited ${code}:\n${logs}`);
  const done = new RegExp(`done: ${STEPS} steps(?:, (\\d+) restarts?)?, final test accuracy ([\\d.]+)%, parameter digest ([0-9a-f]+)`).exec(
    logs,
  );
  assert.ok(done, `no final line in the coordinator's log:\n${logs}`);
  const [, restarts = '0', accuracy, digest] = done;
  for (const worker of workers) {
    const exit = await waitExit(worker, 120_000);
    assert.equal(exit, 0, `worker ${worker} exited ${exit}:\n${await containerLogs(worker)}`);
  }
  if (killWorker) {
    const restarted = (await dockerApi('GET', `/containers/${workers[1]}/json`)).body.RestartCount as number;
    assert.ok(restarted >= 1, 'the killed worker was not restarted by its restart policy');
  }

  // The same figures on the run volume.
  const metrics = readMetrics(runDir);
  const steps = metrics.filter((l) => l.kind === 'step');
  assert.deepEqual(
    steps.map((s) => s.step),
    Array.from({ length: STEPS }, (_, k) => k + 1),
    'metrics.jsonl tells one history',
  );
  assert.equal(steps.at(-1).paramDigest, digest);
  for (const s of steps) assert.equal(s.workers, WORKERS);
  const evals = metrics.filter((l) => l.kind === 'eval');
  assert.equal((evals.at(-1).testAccuracy * 100).toFixed(2), accuracy);
  assert.equal(metrics.filter((l) => l.kind === 'restart').length, Number(restarts));
  assert.ok(
    readdirSync(join(runDir, 'checkpoints')).some((f) => f.endsWith('.ckpt')),
    'no checkpoint on the volume',
  );
  compose(dir, project, ['down', '-v', '-t', '5']);
  assert.equal((await dockerApi('GET', `/volumes/${project}_vit-dist-runs`)).status, 404, 'down -v left the run volume');
  console.log(
    `${project}: ${STEPS} steps, ${restarts} restarts, test accuracy ${accuracy}%, digest ${digest}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  return { digest: digest!, accuracy: accuracy!, restarts: Number(restarts) };
}

test('docker-compose runs the CPU cluster to the end, and through a killed worker to the same digest', {
  skip: reason,
  timeout: 1_500_000,
}, async () => {
  ensureTestImage();
  const dir = projectDir();
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));

  const undisturbed = await composeRun(dir, `vitdist-compose-${process.pid}-a`, false);
  assert.equal(undisturbed.restarts, 0);
  // Fashion-MNIST has 10 classes; a model that learnt nothing scores about 10%.
  assert.ok(Number(undisturbed.accuracy) > 20, `test accuracy ${undisturbed.accuracy}% after ${STEPS} steps`);

  const killed = await composeRun(dir, `vitdist-compose-${process.pid}-b`, true);
  assert.ok(killed.restarts >= 1, 'the killed worker caused no restart');
  assert.equal(killed.digest, undisturbed.digest, 'the interrupted run must end on the undisturbed run digest');
  assert.equal(killed.accuracy, undisturbed.accuracy);
});
