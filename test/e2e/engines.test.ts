// The same run on every engine (issue #11): 20 steps of the micro recipe on wasm and on tensorflow
// give the same loss at every step to 1e-3 relative. Not the same bits: the engines sum in other
// orders (XNNPACK's and oneDNN's blocked products), so their digests differ; within one engine, the
// equivalence and resume tests hold on whichever engine `auto` picks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MICRO_RECIPE, needsData, run, start, startCoordinator, stepRecords, tempRunDir, TOKEN } from './cluster.ts';
import { tensorflowUnavailable } from '../model/helpers.ts';

const STEPS = 20;
const MAX_RELATIVE_DIFFERENCE = 1e-3;

test('wasm and tensorflow train the same 20 steps to the same loss at every step', {
  skip: needsData || tensorflowUnavailable,
  timeout: 300_000,
}, async () => {
  const losses = new Map<string, number[]>();
  for (const backend of ['wasm', 'tensorflow']) {
    const out = tempRunDir(`engine-${backend}`);
    const result = await run(
      ['launch', '--workers', '2', '--recipe', MICRO_RECIPE, '--steps', String(STEPS), '--backend', backend, '--out', out],
      { timeoutMs: 240_000 },
    );
    assert.equal(result.code, 0, `launch --backend ${backend} failed:\n${result.stdout}\n${result.stderr}`);
    assert.match(result.stdout, new RegExp(`backends: ${backend}, ${backend}\\)`));
    if (backend === 'tensorflow') {
      assert.match(
        result.stdout,
        /launching 2 local workers x \d+ TensorFlow threads? each \(\d+ cores shared among 2 workers; --threads overrides\)/,
      );
      assert.doesNotMatch(result.stderr, /oneDNN|cpu_feature_guard/, "TensorFlow's INFO lines stay off launch's console");
    }
    for (const worker of [0, 1]) {
      const log = readFileSync(join(out, 'logs', `worker-${worker}.log`), 'utf8');
      assert.match(log, new RegExp(`"backend":"${backend}"`));
      if (backend === 'tensorflow') assert.match(log, /native TensorFlow [\d.]+ via @tensorflow\/tfjs-node on CPU, \d+ intra-op threads?/);
    }
    for (const record of stepRecords(out)) {
      assert.deepEqual(
        record.ranks.map((r) => r.rank),
        [0, 1],
        `step ${record.step} has each rank's figures`,
      );
      for (const r of record.ranks) {
        assert.ok(r.bytesSent > 0 && r.bytesReceived > 0, `step ${record.step}, rank ${r.rank}: the ring's traffic is counted`);
        assert.ok(
          r.exposedCommMs <= r.commMs && r.dataWaitMs >= 0,
          `step ${record.step}, rank ${r.rank}: exposed communication within commMs`,
        );
      }
    }
    losses.set(
      backend,
      stepRecords(out).map((s) => s.loss),
    );
  }
  const wasm = losses.get('wasm')!;
  const tensorflow = losses.get('tensorflow')!;
  assert.equal(tensorflow.length, STEPS);
  assert.ok(wasm[STEPS - 1]! < wasm[0]!, 'the loss falls');
  tensorflow.forEach((loss, i) => {
    const relative = Math.abs(loss - wasm[i]!) / Math.abs(wasm[i]!);
    assert.ok(relative < MAX_RELATIVE_DIFFERENCE, `step ${i + 1}: tensorflow ${loss} vs wasm ${wasm[i]} (relative ${relative})`);
  });
});

test('a worker on another engine than rank 0 is a warning on the coordinator console', {
  skip: needsData || tensorflowUnavailable,
  timeout: 120_000,
}, async () => {
  const { coordinator, url } = await startCoordinator(
    ['--workers', '2', '--recipe', MICRO_RECIPE, '--steps', '2', '--out', tempRunDir('mixed')],
    100_000,
  );
  const workers = ['wasm', 'tensorflow'].map((backend) =>
    start(['worker', '--coordinator', url, '--token', TOKEN, '--backend', backend], { timeoutMs: 100_000 }),
  );
  const finished = await coordinator.finished;
  await Promise.all(workers.map((w) => w.finished));
  assert.equal(finished.code, 0, finished.stdout + finished.stderr);
  assert.match(
    finished.stdout,
    /warning: rank 0 runs (wasm|tensorflow) but rank 1 runs (tensorflow|wasm): their gradients round differently/,
  );
});
