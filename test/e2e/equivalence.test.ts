// Invariant 5 of issue #2: with the same seed and recipe, 1, 2 and 4 workers produce the same loss
// at every step (only the summation order differs), and every run keeps its workers bit-identical
// (the coordinator checks the parameter digests after every step and would stop the run).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MICRO_RECIPE, needsData, run, stepRecords, tempRunDir } from './cluster.ts';

const STEPS = 20;
const MAX_RELATIVE_DIFFERENCE = 1e-4;

test('1, 2 and 4 workers give the same loss at every step', { skip: needsData, timeout: 300_000 }, async () => {
  const losses = new Map<number, number[]>();
  for (const workers of [1, 2, 4]) {
    const out = tempRunDir(`equiv${workers}`);
    const result = await run(
      ['launch', '--workers', String(workers), '--recipe', MICRO_RECIPE, '--steps', String(STEPS), '--backend', 'auto', '--out', out],
      { timeoutMs: 240_000 },
    );
    assert.equal(result.code, 0, `launch --workers ${workers} failed:\n${result.stdout}\n${result.stderr}`);
    const steps = stepRecords(out);
    assert.deepEqual(
      steps.map((s) => s.step),
      Array.from({ length: STEPS }, (_, i) => i + 1),
    );
    assert.ok(steps.every((s) => s.workers === workers && /^[0-9a-f]{16}$/.test(s.paramDigest)));
    losses.set(
      workers,
      steps.map((s) => s.loss),
    );
  }
  const reference = losses.get(1)!;
  assert.ok(reference[STEPS - 1]! < reference[0]!, 'the loss falls');
  for (const workers of [2, 4]) {
    losses.get(workers)!.forEach((loss, i) => {
      const relative = Math.abs(loss - reference[i]!) / Math.abs(reference[i]!);
      assert.ok(
        relative < MAX_RELATIVE_DIFFERENCE,
        `step ${i + 1}: ${workers} workers ${loss} vs 1 worker ${reference[i]} (relative ${relative})`,
      );
    });
  }
});

test('with dropout, stochastic depth and label smoothing on, 1 and 2 workers still give the same loss at every step', {
  skip: needsData,
  timeout: 300_000,
}, async () => {
  // Masks are drawn per sample from (seed, step, sample index), so they do not depend on which rank or micro-batch a sample lands in.
  const regularized = [
    '--set',
    'modelArgs.depth=2',
    '--set',
    'regularization.dropout=0.1',
    '--set',
    'regularization.dropPath=0.2',
    '--set',
    'regularization.labelSmoothing=0.1',
  ];
  const losses: number[][] = [];
  for (const workers of [1, 2]) {
    const out = tempRunDir(`regularized${workers}`);
    const result = await run(
      [
        'launch',
        '--workers',
        String(workers),
        '--recipe',
        MICRO_RECIPE,
        '--steps',
        String(STEPS),
        '--backend',
        'auto',
        ...regularized,
        '--out',
        out,
      ],
      { timeoutMs: 240_000 },
    );
    assert.equal(result.code, 0, `launch --workers ${workers} failed:\n${result.stdout}\n${result.stderr}`);
    losses.push(stepRecords(out).map((s) => s.loss));
  }
  const plainOut = tempRunDir('unregularized');
  const plain = await run(
    [
      'launch',
      '--workers',
      '1',
      '--recipe',
      MICRO_RECIPE,
      '--steps',
      String(STEPS),
      '--backend',
      'auto',
      '--set',
      'modelArgs.depth=2',
      '--out',
      plainOut,
    ],
    { timeoutMs: 240_000 },
  );
  assert.equal(plain.code, 0, plain.stdout + plain.stderr);
  const [one, two] = losses as [number[], number[]];
  assert.notEqual(stepRecords(plainOut)[0]!.loss, one[0], 'the regularizers are in effect');
  assert.equal(two.length, STEPS);
  two.forEach((loss, i) => {
    const relative = Math.abs(loss - one[i]!) / Math.abs(one[i]!);
    assert.ok(relative < MAX_RELATIVE_DIFFERENCE, `step ${i + 1}: 2 workers ${loss} vs 1 worker ${one[i]} (relative ${relative})`);
  });
});
