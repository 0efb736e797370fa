// DiLoCo (issue #17) end to end on the micro recipe: one worker with H = 1, outer lr 1 and no
// momentum trains as lockstep does; 1, 2 and 4 workers start every round from the same bits (the
// coordinator checks the outer weights' digest after every step and fails the run otherwise);
// only round ends move bytes; a kill -9 and a resume end with the digest of a straight run; a
// worker leaves and another joins between outer steps without a restart from the checkpoint. With
// --outer-overlap the merge keeps the inner steps (one worker: plain training again), the outer
// weights move K steps into the next round on every rank alike, and a resume from a checkpoint
// taken at a merge is exact.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MetricsRecord, RegroupRecord, StepRecord } from '../../src/coordinator/metrics.ts';
import { readCheckpoint, latestCheckpoint } from '../../src/train/checkpoint.ts';
import {
  MICRO_RECIPE,
  TOKEN,
  assertCompleteRun,
  checkpointAt,
  evalRecords,
  killGroup,
  needsData,
  pickPort,
  readMetrics,
  restartRecords,
  run,
  start,
  stepRecords,
  tempRunDir,
  uninterruptedDigest,
  waitUntil,
  type Running,
} from './cluster.ts';

const base = ['--recipe', MICRO_RECIPE, '--backend', 'auto'];

async function launch(args: string[], timeoutMs = 180_000): Promise<string> {
  const out = tempRunDir('diloco');
  const result = await run(['launch', ...base, ...args, '--out', out], { timeoutMs });
  assert.equal(result.code, 0, result.stdout + result.stderr);
  return out;
}

function relative(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b));
}

/** One worker's DiLoCo run with outer lr 1 and no momentum against plain training: the same losses within 1e-6; its step records. */
async function assertPlainTraining(steps: number, dilocoFlags: string[]): Promise<StepRecord[]> {
  const plain = await launch(['--workers', '1', '--steps', String(steps)]);
  const diloco = await launch([
    '--workers',
    '1',
    '--steps',
    String(steps),
    '--sync',
    'diloco',
    '--outer-lr',
    '1',
    '--outer-momentum',
    '0',
    ...dilocoFlags,
  ]);
  const [a, b] = [stepRecords(plain), stepRecords(diloco)];
  assert.equal(a.length, steps);
  assert.equal(b.length, steps);
  a.forEach((record, i) => {
    assert.ok(relative(record.loss, b[i]!.loss) <= 1e-6, `step ${record.step}: ${record.loss} vs ${b[i]!.loss}`);
  });
  const [ea, eb] = [evalRecords(plain).at(-1)!, evalRecords(diloco).at(-1)!];
  assert.ok(relative(ea.testLoss, eb.testLoss) <= 1e-6, `test loss ${ea.testLoss} vs ${eb.testLoss}`);
  return b;
}

test('1 worker, H = 1, outer lr 1, no momentum: the losses of plain training within 1e-6', {
  skip: needsData,
  timeout: 400_000,
}, async () => {
  await assertPlainTraining(8, ['--inner-steps', '1']);
});

test('1 worker, H = 4, --outer-overlap 2, outer lr 1, no momentum: the merge keeps the inner steps, plain training within 1e-6', {
  skip: needsData,
  timeout: 400_000,
}, async () => {
  // Plain training's step orders come one at a time; a round's come together, so each inner step
  // loads the next one's first micro-batch while it computes: the losses check those loads too.
  const records = await assertPlainTraining(10, ['--inner-steps', '4', '--outer-overlap', '2']);
  // The outer weights moved at the merge after step 6 only, then at the last round's end.
  assert.notEqual(records[5]!.paramDigest, records[6]!.paramDigest);
  assert.equal(records[6]!.paramDigest, records[8]!.paramDigest);
});

for (const [workers, wire] of [
  [1, 'fp32'],
  [2, 'bf16'],
  [4, 'int8'],
] as const) {
  test(`${workers} worker${workers > 1 ? 's' : ''}, --wire ${wire}: every round starts from the same bits; only round ends send`, {
    skip: needsData,
    timeout: 400_000,
  }, async () => {
    const out = await launch(['--workers', String(workers), '--steps', '10', '--sync', 'diloco', '--inner-steps', '4', '--wire', wire]);
    const records = stepRecords(out);
    assert.deepEqual(
      records.map((r) => r.step),
      Array.from({ length: 10 }, (_, i) => i + 1),
    );
    // Rounds end after steps 4, 8 and 10 (the run's end): the outer weights' digest changes there only.
    const roundEnds = new Set([4, 8, 10]);
    for (let i = 1; i < records.length; i++) {
      const changed = records[i]!.paramDigest !== records[i - 1]!.paramDigest;
      assert.equal(changed, roundEnds.has(records[i]!.step), `step ${records[i]!.step}: digest changed ${changed}`);
    }
    for (const record of records) {
      const sent = record.ranks.reduce((a, r) => a + r.bytesSent, 0);
      // Between rounds only heartbeats travel (a few bytes); a round's end moves the model.
      if (workers > 1 && roundEnds.has(record.step)) assert.ok(sent > 3000, `step ${record.step} sent ${sent} bytes`);
      if (!roundEnds.has(record.step)) assert.ok(sent < 500, `step ${record.step} sent ${sent} bytes mid-round`);
    }
    const checkpoint = readCheckpoint(latestCheckpoint(out)!);
    assert.equal(checkpoint.meta.paramDigest, records.at(-1)!.paramDigest);
    const names = Object.keys(checkpoint.state.optimizerState);
    for (let rank = 0; rank < workers; rank++) assert.ok(names.includes(`rank${rank}.inner.m`), `rank ${rank}'s inner state in ${names}`);
    assert.ok(names.includes('outer.momentum'));
  });
}

test('--outer-overlap 2: the exchange runs during the next round, every rank merges the same outer weights 2 steps in, a checkpoint comes at the merge', {
  skip: needsData,
  timeout: 400_000,
}, async () => {
  const out = await launch([
    '--workers',
    '4',
    '--steps',
    '10',
    '--checkpoint-every',
    '4',
    '--sync',
    'diloco',
    '--inner-steps',
    '4',
    '--outer-overlap',
    '2',
    '--wire',
    'bf16',
  ]);
  const records = stepRecords(out);
  assert.deepEqual(
    records.map((r) => r.step),
    Array.from({ length: 10 }, (_, i) => i + 1),
  );
  // Rounds end after steps 4, 8 and 10. Round 4's outer step is merged after step 6, so step 7 is the
  // first to report its weights; round 8's after step 10 (the run's last round is 2 steps long),
  // where the run's last outer step follows it at once.
  const changes = new Set([7, 10]);
  for (let i = 1; i < records.length; i++) {
    const changed = records[i]!.paramDigest !== records[i - 1]!.paramDigest;
    assert.equal(changed, changes.has(records[i]!.step), `step ${records[i]!.step}: digest changed ${changed}`);
  }
  // Round 4's exchange counts in the round it ran during (ending at step 8); step 10 carries round 8's and round 10's.
  for (const record of records) {
    const sent = record.ranks.reduce((a, r) => a + r.bytesSent, 0);
    if (record.step === 8 || record.step === 10) assert.ok(sent > 3000, `step ${record.step} sent ${sent} bytes`);
    else assert.ok(sent < 500, `step ${record.step} sent ${sent} bytes mid-round`);
  }
  // The checkpoint due at step 4 is taken at the merge, after step 6: the merged outer weights, and
  // each rank's local weights, which hold steps 5 and 6 beside them.
  const merged = readCheckpoint(join(out, 'checkpoints', 'step-000000006.ckpt'));
  assert.equal(merged.meta.paramDigest, records[6]!.paramDigest);
  const names = Object.keys(merged.state.optimizerState);
  for (let rank = 0; rank < 4; rank++) assert.ok(names.includes(`rank${rank}.local.params`), `rank ${rank}'s local weights in ${names}`);
  const final = readCheckpoint(latestCheckpoint(out)!);
  assert.equal(final.meta.step, 10);
  assert.equal(final.meta.paramDigest, records.at(-1)!.paramDigest);
  const local = Object.keys(final.state.optimizerState).filter((name) => name.endsWith('.local.params'));
  assert.deepEqual(local, [], "at the run's end the local weights are the outer ones");
});

for (const [overlap, checkpointStep] of [
  [[], 8],
  [['--outer-overlap', '2'], 10],
] as const) {
  const variant = overlap.length > 0 ? '; --outer-overlap 2, the checkpoint at a merge' : '';
  test(`kill -9 after a checkpoint and resume: the digest of a straight DiLoCo run (int8 error feedback included${variant})`, {
    skip: needsData,
    timeout: 500_000,
  }, async () => {
    const args = [
      '--workers',
      '2',
      ...base,
      '--steps',
      '16',
      '--checkpoint-every',
      '8',
      '--sync',
      'diloco',
      '--inner-steps',
      '4',
      ...overlap,
      '--wire',
      'int8',
    ];
    const expected = await uninterruptedDigest(args, 180_000);
    const crashed = tempRunDir('diloco-crashed');
    const b = start(['launch', ...args, '--out', crashed], { timeoutMs: 180_000, detached: true });
    await waitUntil(checkpointAt(crashed, checkpointStep), 170_000, `the checkpoint at step ${checkpointStep}`);
    killGroup(b.child);
    await b.finished;
    assert.ok(stepRecords(crashed).at(-1)!.step < 16, 'the run was killed before its end');
    const resumed = await run(['launch', '--workers', '2', '--backend', 'auto', '--resume', crashed], { timeoutMs: 180_000 });
    assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
    assertCompleteRun(crashed, 16, expected);
  });
}

/** What a running coordinator has logged so far: nothing before its first line, and a line being appended is not there yet. */
function loggedSoFar<T>(out: string, read: (runDir: string) => T[]): T[] {
  if (!existsSync(join(out, 'metrics.jsonl'))) return [];
  try {
    return read(out);
  } catch (err) {
    if (err instanceof SyntaxError) return [];
    throw err;
  }
}

/**
 * Waits for a run whose membership changed at round ends: it must end cleanly with every step
 * logged once, in order (nothing replayed), and no restart from a checkpoint. Its step and regroup records.
 */
async function regroupedRun(
  coordinator: Running,
  out: string,
  steps: number,
): Promise<{ records: StepRecord[]; regroups: RegroupRecord[] }> {
  const result = await coordinator.finished;
  assert.equal(result.code, 0, result.stdout + result.stderr);
  const records = stepRecords(out);
  // The final checkpoint holds the last step's outer weights.
  assertCompleteRun(out, steps, records.at(-1)!.paramDigest);
  assert.deepEqual(restartRecords(out), [], 'no restart from a checkpoint');
  const regroups = readMetrics(out).filter((r): r is RegroupRecord => r.kind === 'regroup');
  return { records, regroups };
}

// With --outer-overlap 2 the kill waits for step 23: every worker has then merged round 20's
// outer step (after its step 22), whose exchange a kill would break (a restart from the checkpoint).
for (const [overlap, killAfter] of [
  [[], 20],
  [['--outer-overlap', '2'], 23],
] as const) {
  const variant = overlap.length > 0 ? ' (--outer-overlap 2, after the merge)' : '';
  test(`a worker leaves mid-round and another joins at a round end${variant}: no restart from a checkpoint, one digest after the join`, {
    skip: needsData,
    timeout: 300_000,
  }, async () => {
    const steps = 240;
    const out = tempRunDir('diloco-churn');
    const port = pickPort();
    const timeoutMs = 240_000;
    // A kill -9 closes the connections at once; the heartbeat only has to outlast a loaded machine's stalls.
    const fast = ['--heartbeat-timeout', '30'];
    // No checkpoint before the end: a restart would have to go back to step 0 and log steps twice.
    const coordinator = start(
      ['coordinator', '--workers', '2', '--min-workers', '1', '--rejoin-timeout', '1', '--host', '127.0.0.1', '--port', String(port)]
        .concat(['--token', TOKEN, '--recipe', MICRO_RECIPE, '--steps', String(steps), '--checkpoint-every', '1000', '--out', out], fast)
        .concat(['--sync', 'diloco', '--inner-steps', '20', '--wire', 'int8', ...overlap]),
      { timeoutMs },
    );
    await coordinator.waitFor(/listening on/, 60_000);
    const worker = (): Running =>
      start(['worker', '--coordinator', `ws://127.0.0.1:${port}`, '--backend', 'auto', ...fast], {
        timeoutMs,
        env: { VIT_DIST_TOKEN: TOKEN },
      });
    const processes = [worker(), worker()];
    const logged = (): StepRecord[] => loggedSoFar(out, stepRecords);
    try {
      // Step 20's record comes after its outer step (with the overlap, step 23's after every merge):
      // the kill lands in the next round's inner steps, not in an outer exchange (a failure there
      // restarts from the checkpoint).
      await waitUntil(() => logged().some((s) => s.step >= killAfter), timeoutMs, `step ${killAfter}`);
      processes[1]!.child.kill('SIGKILL');
      await waitUntil(() => logged().some((s) => s.workers === 1), timeoutMs, 'a step with one worker');
      processes.push(worker());
      const { records, regroups } = await regroupedRun(coordinator, out, steps);
      assert.equal(regroups.length, 2, JSON.stringify(regroups));
      const [leave, join] = regroups;
      assert.deepEqual([leave!.left, leave!.joined, leave!.workers], [1, 0, 1]);
      assert.deepEqual([join!.left, join!.joined, join!.workers], [0, 1, 2]);
      for (const change of regroups) assert.equal(change.step % 20, 0, `regrouped at step ${change.step}, not a round end`);
      // The round the leaver left: its later steps have one worker's images, and the round closes on the survivor.
      const counts = records.map((s) => s.workers);
      assert.ok(counts[0] === 2 && counts.includes(1) && counts.at(-1) === 2, `workers per step: ${[...new Set(counts)].join(', ')}`);
      // The coordinator checked every step's digests; after the join both workers reported the same outer weights.
      const afterJoin = records.filter((s) => s.step > join!.step);
      assert.ok(afterJoin.length > 0 && afterJoin.every((s) => s.workers === 2));
      const joinRound = records.find((s) => s.step === join!.step)!;
      assert.ok(joinRound.ranks.length === 2 && joinRound.ranks[1]!.bytesReceived > 0, 'the joiner received the outer state');
    } finally {
      for (const p of [coordinator, ...processes]) p.child.kill('SIGKILL');
      await Promise.all([coordinator, ...processes].map((p) => p.finished));
    }
  });
}

test('--round-deadline: a stopped worker is dropped once the others have finished the round, which closes with them', {
  skip: needsData,
  timeout: 300_000,
}, async () => {
  const steps = 60;
  const out = tempRunDir('diloco-deadline');
  const port = pickPort();
  const timeoutMs = 240_000;
  // The heartbeat would notice a stopped worker after 60 s: the 2-second round deadline must come first.
  const coordinator = start(
    ['coordinator', '--workers', '3', '--min-workers', '2', '--round-deadline', '2', '--heartbeat-timeout', '60']
      .concat(['--host', '127.0.0.1', '--port', String(port), '--token', TOKEN, '--recipe', MICRO_RECIPE, '--global-batch', '48'])
      .concat(['--steps', String(steps), '--checkpoint-every', '1000', '--out', out, '--sync', 'diloco', '--inner-steps', '10']),
    { timeoutMs },
  );
  await coordinator.waitFor(/listening on/, 60_000);
  const processes = [0, 1, 2].map(() =>
    start(['worker', '--coordinator', `ws://127.0.0.1:${port}`, '--backend', 'auto', '--heartbeat-timeout', '60'], {
      timeoutMs,
      env: { VIT_DIST_TOKEN: TOKEN },
    }),
  );
  const logged = (): MetricsRecord[] => loggedSoFar(out, readMetrics);
  try {
    // After the first round's end (its record follows its outer step): the stop lands in inner steps.
    await waitUntil(() => logged().some((r) => r.kind === 'step' && r.step >= 10), timeoutMs, 'the first round end');
    processes[2]!.child.kill('SIGSTOP');
    await waitUntil(() => logged().some((r) => r.kind === 'regroup'), timeoutMs, 'the regroup');
    // Dropped and fenced; gone for good, so that the survivors' old ring closes at once.
    processes[2]!.child.kill('SIGKILL');
    const { records, regroups } = await regroupedRun(coordinator, out, steps);
    assert.equal(regroups.length, 1, JSON.stringify(regroups));
    const [drop] = regroups;
    assert.deepEqual([drop!.left, drop!.joined, drop!.workers], [1, 0, 2]);
    assert.equal(drop!.step % 10, 0);
    assert.ok(records.filter((s) => s.step > drop!.step).every((s) => s.workers === 2));
    // The coordinator's log names why the worker was dropped.
    assert.match(
      readFileSync(join(out, 'logs', 'coordinator.log'), 'utf8'),
      /did not finish the round within 2 s of the first worker \(--round-deadline\)/,
    );
  } finally {
    for (const p of [coordinator, ...processes]) p.child.kill('SIGKILL');
    await Promise.all([coordinator, ...processes].map((p) => p.finished));
  }
});

test('DiLoCo knobs without --sync diloco are refused, naming the flag', async () => {
  const result = await run(['launch', '--workers', '1', ...base, '--inner-steps', '5'], { timeoutMs: 30_000 });
  assert.equal(result.code, 1);
  assert.match(result.stderr, /--inner-steps, --outer-lr, --outer-momentum and --outer-overlap set DiLoCo's knobs: add --sync diloco/);
});

test('--wire int8 is refused on the lockstep ring, which sends fp32 or bf16', async () => {
  const result = await run(['launch', '--workers', '1', ...base, '--wire', 'int8'], { timeoutMs: 30_000 });
  assert.equal(result.code, 1);
  assert.match(result.stderr, /--wire int8 is for DiLoCo pseudo-gradients: add --sync diloco, or use fp32 or bf16/);
});
