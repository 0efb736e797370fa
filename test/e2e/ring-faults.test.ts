// Faults on a ring link between two workers: a FaultProxy sits in front of one worker's ring
// server (the worker binds --ring-port and advertises the proxy), so the link its ring neighbour
// opens to it runs through the proxy while the control connections stay direct. A link cut
// silently must be caught by the ring's own heartbeat (the step timeout is far longer than the
// test), and a slow or narrow link must change nothing in the result.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MICRO_RECIPE,
  TOKEN,
  assertCompleteRun,
  checkpointAt,
  needsData,
  pickPort,
  restartRecords,
  start,
  startCoordinator,
  tempRunDir,
  uninterruptedDigest,
  waitUntil,
  type Running,
} from './cluster.ts';
import { FaultProxy } from './proxy.ts';

const STEPS = 40;
const RUN = ['--recipe', MICRO_RECIPE, '--steps', String(STEPS), '--checkpoint-every', '10'];
const HEARTBEAT = ['--heartbeat-timeout', '3'];
const TIMEOUT_MS = 240_000;
/** Bandwidth of the throttled link: a step's ring traffic takes a noticeable part of a second. */
const THROTTLE_BYTES_PER_SECOND = 100_000;

const expectedDigest = (): Promise<string> => uninterruptedDigest(['--workers', '2', '--backend', 'wasm', ...RUN], TIMEOUT_MS);

interface Cluster {
  coordinator: Running;
  workers: Running[];
  proxy: FaultProxy;
  /** Wall time when the coordinator started. */
  startedAt: number;
}

/**
 * A coordinator and two workers; the second worker's ring server sits behind a FaultProxy. With
 * two workers each is the other's successor, so exactly one ring link runs through the proxy.
 */
async function startCluster(out: string, configure: (proxy: FaultProxy) => void): Promise<Cluster> {
  const startedAt = Date.now();
  const { coordinator, url } = await startCoordinator(
    ['--workers', '2', ...RUN, ...HEARTBEAT, '--rejoin-timeout', '30', '--out', out],
    TIMEOUT_MS,
  );
  const ringPort = pickPort();
  const proxy = await FaultProxy.start(ringPort);
  configure(proxy);
  const env = { VIT_DIST_TOKEN: TOKEN };
  const worker = (extra: string[]): Running =>
    start(['worker', '--coordinator', url, '--backend', 'wasm', ...HEARTBEAT, ...extra], { timeoutMs: TIMEOUT_MS, env });
  const workers = [worker([]), worker(['--ring-port', String(ringPort), '--advertise', `127.0.0.1:${proxy.port}`])];
  return { coordinator, workers, proxy, startedAt };
}

async function stopCluster({ coordinator, workers, proxy }: Cluster): Promise<void> {
  const all = [coordinator, ...workers];
  for (const p of all) p.child.kill('SIGKILL');
  await Promise.all(all.map((p) => p.finished));
  await proxy.close();
}

test('a ring link cut silently is caught by the ring heartbeat; the ring restarts from the checkpoint and ends exactly', {
  skip: needsData,
  timeout: TIMEOUT_MS * 2,
}, async () => {
  const expected = await expectedDigest();
  const out = tempRunDir('ring-cut');
  const cluster = await startCluster(out, () => undefined);
  try {
    await waitUntil(checkpointAt(out, 10), TIMEOUT_MS, 'the checkpoint at step 10');
    assert.equal(cluster.proxy.freezeOpenConnections(), 1, 'one ring link goes through the proxy');
    const result = await cluster.coordinator.finished;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const records = restartRecords(out);
    assert.equal(records.length, 1, 'the run restarted once');
    // Whichever worker reports first: the one that timed out, or its neighbour, whose ring the
    // first one closed with that reason.
    assert.match(records[0]!.cause, /failed: .*no heartbeat from (predecessor|successor) rank [01] for 3 s/);
    assert.equal(records[0]!.step, 10, 'resumed from the checkpoint at step 10');
    assertCompleteRun(out, STEPS, expected);
    for (const worker of cluster.workers) assert.equal((await worker.finished).code, 0);
  } finally {
    await stopCluster(cluster);
  }
});

test('a ring link delaying every chunk by 30 ms changes nothing in the result', { skip: needsData, timeout: TIMEOUT_MS * 2 }, async () => {
  const expected = await expectedDigest();
  const out = tempRunDir('ring-delay');
  const cluster = await startCluster(out, (proxy) => (proxy.delayMs = 30));
  try {
    const result = await cluster.coordinator.finished;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.ok(cluster.proxy.bytesForwarded > 0, 'the ring link ran through the proxy');
    assert.equal(restartRecords(out).length, 0);
    assertCompleteRun(out, STEPS, expected);
  } finally {
    await stopCluster(cluster);
  }
});

test('a throttled ring link changes nothing in the result', { skip: needsData, timeout: TIMEOUT_MS * 2 }, async () => {
  const expected = await expectedDigest();
  const out = tempRunDir('ring-throttle');
  const cluster = await startCluster(out, (proxy) => (proxy.bytesPerSecond = THROTTLE_BYTES_PER_SECOND));
  try {
    const result = await cluster.coordinator.finished;
    const elapsedMs = Date.now() - cluster.startedAt;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    // Each direction carries at most THROTTLE_BYTES_PER_SECOND: the run cannot have been faster.
    const minimumMs = (cluster.proxy.bytesForwarded / (2 * THROTTLE_BYTES_PER_SECOND)) * 1000;
    assert.ok(
      cluster.proxy.bytesForwarded > 0 && elapsedMs >= minimumMs,
      `${cluster.proxy.bytesForwarded} bytes through the proxy in ${elapsedMs} ms`,
    );
    assert.equal(restartRecords(out).length, 0);
    assertCompleteRun(out, STEPS, expected);
  } finally {
    await stopCluster(cluster);
  }
});
