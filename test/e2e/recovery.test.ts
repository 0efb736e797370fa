// Clusters that survive (issues #5 and #15): a worker killed mid-step or frozen (SIGSTOP), a fenced
// worker waking up, a control link cut silently, a slow link, a coordinator restart, and fewer
// workers with --min-workers. Every interrupted run that
// keeps its worker count ends with the same parameters as an uninterrupted run: the steps
// replayed from the last checkpoint are exact.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  MICRO_RECIPE,
  TOKEN,
  assertCompleteRun,
  checkpointAt,
  killGroup,
  needsData,
  pickPort,
  restartRecords,
  start,
  startCoordinator,
  stepRecords,
  tempRunDir,
  uninterruptedDigest,
  waitUntil,
  type Running,
} from './cluster.ts';
import { FaultProxy } from './proxy.ts';

const STEPS = 40;
const RUN = ['--recipe', MICRO_RECIPE, '--steps', String(STEPS), '--checkpoint-every', '10'];
const FAST_FAILURE = ['--heartbeat-timeout', '3', '--rejoin-timeout', '30'];
const TIMEOUT_MS = 240_000;

const expectedDigest = (): Promise<string> => uninterruptedDigest(['--workers', '2', '--backend', 'wasm', ...RUN], TIMEOUT_MS);

async function stopAll(processes: Running[]): Promise<void> {
  for (const p of processes) p.child.kill('SIGKILL');
  await Promise.all(processes.map((p) => p.finished));
}

/**
 * A 2-worker launch cluster whose second worker gets `signal` once the checkpoint at step 10 exists.
 * The run must end exit 0, after one restart, on the uninterrupted run's digest; resolves with
 * launch's stdout and the pid signalled.
 */
async function launchSurvives(signal: NodeJS.Signals, prefix: string): Promise<{ stdout: string; pid: number }> {
  const expected = await expectedDigest();
  const out = tempRunDir(prefix);
  const launch = start(['launch', '--workers', '2', '--backend', 'wasm', ...RUN, ...FAST_FAILURE, '--out', out], {
    timeoutMs: TIMEOUT_MS,
    detached: true,
  });
  try {
    await waitUntil(checkpointAt(out, 10), TIMEOUT_MS, 'the checkpoint at step 10');
    const workers = execFileSync('pgrep', ['-P', String(launch.child.pid)], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map(Number);
    assert.equal(workers.length, 2, 'launch runs two worker processes');
    process.kill(workers[1]!, signal);
    const result = await launch.finished;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.match(result.stdout, /done: 40 steps, 1 restart/);
    assert.equal(restartRecords(out).length, 1);
    assertCompleteRun(out, STEPS, expected);
    return { stdout: result.stdout, pid: workers[1]! };
  } finally {
    killGroup(launch.child);
  }
}

test('launch replaces a worker killed with -9 mid-run; the run ends as if nothing happened', {
  skip: needsData,
  timeout: TIMEOUT_MS * 2,
}, async () => {
  const { stdout } = await launchSurvives('SIGKILL', 'respawn');
  assert.match(stdout, /local worker \d \(pid \d+\) exited with SIGKILL; starting a replacement \(1\/3\)/);
});

test('launch kills a worker frozen with SIGSTOP (declared lost by heartbeat, fenced) and replaces it; the run ends as if nothing happened', {
  skip: needsData,
  timeout: TIMEOUT_MS * 2,
}, async () => {
  const { stdout, pid } = await launchSurvives('SIGSTOP', 'frozen');
  assert.match(stdout, new RegExp(`local worker \\d \\(pid ${pid}\\) was declared lost \\(missed its heartbeat.*it is stopped: SIGKILL`));
  // Killed while the run went on, not by launch's clean-up at its end.
  const ended = stdout.indexOf(`lost process (pid ${pid}) ended with SIGKILL`);
  assert.ok(ended >= 0 && ended < stdout.indexOf('done: 40 steps'), stdout);
  assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, 'the frozen process is gone');
});

test('a fenced worker that wakes up exits with a clear message instead of rejoining; a replacement finishes the run exactly', {
  skip: needsData,
  timeout: TIMEOUT_MS * 2,
}, async () => {
  const expected = await expectedDigest();
  const out = tempRunDir('fenced');
  const { coordinator, url } = await startCoordinator(['--workers', '2', ...RUN, ...FAST_FAILURE, '--out', out], TIMEOUT_MS);
  const worker = (): Running =>
    start(['worker', '--coordinator', url, '--backend', 'wasm', '--heartbeat-timeout', '3'], {
      timeoutMs: TIMEOUT_MS,
      env: { VIT_DIST_TOKEN: TOKEN },
    });
  const survivor = worker();
  const sleeper = worker();
  let replacement: Running | null = null;
  try {
    await waitUntil(checkpointAt(out, 10), TIMEOUT_MS, 'the checkpoint at step 10');
    sleeper.child.kill('SIGSTOP');
    await coordinator.waitFor(/restart 1: /, TIMEOUT_MS);
    sleeper.child.kill('SIGCONT');
    const woken = await sleeper.finished;
    assert.equal(woken.code, 1, woken.stdout + woken.stderr);
    assert.match(
      woken.stderr,
      /vit-dist: error: this worker was stopped or blocked for [\d.]+ s, longer than --heartbeat-timeout 3 s, and lost the coordinator .*fenced/,
    );
    replacement = worker();
    const result = await coordinator.finished;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assertCompleteRun(out, STEPS, expected);
    assert.equal((await survivor.finished).code, 0);
  } finally {
    sleeper.child.kill('SIGCONT');
    await stopAll([coordinator, survivor, sleeper, ...(replacement ? [replacement] : [])]);
  }
});

test('a control link cut silently is detected by heartbeat; the worker reconnects and the run ends exactly', {
  skip: needsData,
  timeout: TIMEOUT_MS * 2,
}, async () => {
  const expected = await expectedDigest();
  const out = tempRunDir('cut');
  const port = pickPort();
  const coordinator = start(
    [
      'coordinator',
      '--workers',
      '2',
      '--host',
      '127.0.0.1',
      '--port',
      String(port),
      '--token',
      TOKEN,
      ...RUN,
      ...FAST_FAILURE,
      '--out',
      out,
    ],
    { timeoutMs: TIMEOUT_MS },
  );
  await coordinator.waitFor(/listening on/, 30_000);
  const proxy = await FaultProxy.start(port);
  const env = { VIT_DIST_TOKEN: TOKEN };
  const direct = start(['worker', '--coordinator', `ws://127.0.0.1:${port}`, '--backend', 'wasm', '--heartbeat-timeout', '3'], {
    timeoutMs: TIMEOUT_MS,
    env,
  });
  const proxied = start(['worker', '--coordinator', `ws://127.0.0.1:${proxy.port}`, '--backend', 'wasm', '--heartbeat-timeout', '3'], {
    timeoutMs: TIMEOUT_MS,
    env,
  });
  try {
    await waitUntil(checkpointAt(out, 10), TIMEOUT_MS, 'the checkpoint at step 10');
    assert.equal(proxy.freezeOpenConnections(), 1, 'one control connection goes through the proxy');
    const result = await coordinator.finished;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const [restart] = restartRecords(out);
    assert.ok(restart, 'the run restarted once');
    assert.match(restart.cause, /missed its heartbeat|failed: /);
    assertCompleteRun(out, STEPS, expected);
    assert.equal((await direct.finished).code, 0);
    assert.equal((await proxied.finished).code, 0);
  } finally {
    await stopAll([coordinator, direct, proxied]);
    await proxy.close();
  }
});

test('a slow control link (every chunk delayed) changes nothing in the result', { skip: needsData, timeout: TIMEOUT_MS * 2 }, async () => {
  const expected = await expectedDigest();
  const out = tempRunDir('slow');
  const port = pickPort();
  const coordinator = start(
    ['coordinator', '--workers', '2', '--host', '127.0.0.1', '--port', String(port), '--token', TOKEN, ...RUN, '--out', out],
    { timeoutMs: TIMEOUT_MS },
  );
  await coordinator.waitFor(/listening on/, 30_000);
  const proxy = await FaultProxy.start(port);
  proxy.delayMs = 40;
  const env = { VIT_DIST_TOKEN: TOKEN };
  const workers = [port, proxy.port].map((p) =>
    start(['worker', '--coordinator', `ws://127.0.0.1:${p}`, '--backend', 'wasm'], { timeoutMs: TIMEOUT_MS, env }),
  );
  try {
    const result = await coordinator.finished;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.equal(restartRecords(out).length, 0);
    assertCompleteRun(out, STEPS, expected);
  } finally {
    await stopAll([coordinator, ...workers]);
    await proxy.close();
  }
});

test('a coordinator killed with -9 and started again resumes from the run directory; workers reconnect', {
  skip: needsData,
  timeout: TIMEOUT_MS * 2,
}, async () => {
  const expected = await expectedDigest();
  const out = tempRunDir('coordinator-restart');
  const port = pickPort();
  const args = [
    'coordinator',
    '--workers',
    '2',
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '--token',
    TOKEN,
    ...RUN,
    ...FAST_FAILURE,
    '--out',
    out,
  ];
  const first = start(args, { timeoutMs: TIMEOUT_MS });
  await first.waitFor(/listening on/, 30_000);
  const env = { VIT_DIST_TOKEN: TOKEN };
  const workers = [0, 1].map(() =>
    start(
      ['worker', '--coordinator', `ws://127.0.0.1:${port}`, '--backend', 'wasm', '--heartbeat-timeout', '3', '--reconnect-timeout', '60'],
      { timeoutMs: TIMEOUT_MS, env },
    ),
  );
  let second: Running | null = null;
  try {
    await waitUntil(checkpointAt(out, 20), TIMEOUT_MS, 'the checkpoint at step 20');
    first.child.kill('SIGKILL');
    await first.finished;
    second = start(args, { timeoutMs: TIMEOUT_MS });
    const result = await second.finished;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.match(result.stdout, /resuming from .*step-0000000[234]0\.ckpt/);
    assertCompleteRun(out, STEPS, expected);
    for (const w of workers) assert.equal((await w.finished).code, 0);
  } finally {
    await stopAll([first, ...workers, ...(second ? [second] : [])]);
  }
});

test('--min-workers: the run carries on with fewer workers, then takes a late replacement in at a checkpoint', {
  skip: needsData,
  timeout: TIMEOUT_MS * 2,
}, async () => {
  // Long enough that one worker is still training when the late one has started up (seconds).
  const steps = 400;
  const out = tempRunDir('min-workers');
  const port = pickPort();
  const coordinator = start(
    [
      'coordinator',
      '--workers',
      '2',
      '--min-workers',
      '1',
      '--host',
      '127.0.0.1',
      '--port',
      String(port),
      '--token',
      TOKEN,
      '--recipe',
      MICRO_RECIPE,
      '--steps',
      String(steps),
      '--checkpoint-every',
      '10',
      '--heartbeat-timeout',
      '3',
      '--rejoin-timeout',
      '1',
      '--out',
      out,
    ],
    { timeoutMs: TIMEOUT_MS },
  );
  await coordinator.waitFor(/listening on/, 30_000);
  const env = { VIT_DIST_TOKEN: TOKEN };
  const worker = (): Running =>
    start(['worker', '--coordinator', `ws://127.0.0.1:${port}`, '--backend', 'wasm', '--heartbeat-timeout', '3'], {
      timeoutMs: TIMEOUT_MS,
      env,
    });
  const survivor = worker();
  const victim = worker();
  let late: Running | null = null;
  try {
    await waitUntil(checkpointAt(out, 10), TIMEOUT_MS, 'the checkpoint at step 10');
    victim.child.kill('SIGKILL');
    await waitUntil(() => stepRecords(out).some((s) => s.workers === 1), TIMEOUT_MS, 'a step with one worker');
    late = worker();
    const result = await coordinator.finished;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const records = stepRecords(out);
    assert.deepEqual(
      records.map((s) => s.step),
      Array.from({ length: steps }, (_, i) => i + 1),
    );
    assert.equal(records[0]!.workers, 2);
    assert.ok(
      records.some((s) => s.workers === 1),
      'some steps ran on one worker',
    );
    assert.equal(records.at(-1)!.workers, 2, 'the late worker was taken in');
    const causes = restartRecords(out).map((r) => r.cause);
    assert.ok(
      causes.some((c) => /new workers join at the checkpoint/.test(c)),
      causes.join('\n'),
    );
    assert.ok(records.every((s) => s.paramDigest.length === 16));
  } finally {
    await stopAll([coordinator, survivor, victim, ...(late ? [late] : [])]);
  }
});
