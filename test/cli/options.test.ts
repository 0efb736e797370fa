import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveRecipe, type RunFlags } from '../../src/cli/options.ts';
import { loadRecipe } from '../../src/train/recipe.ts';
import { commOptionsOf } from '../../src/worker/trainer.ts';

function flags(extra: Partial<RunFlags>): RunFlags {
  return {
    recipe: 'fmnist-vit-tiny',
    set: {},
    joinTimeout: 1,
    stepTimeout: 1,
    rejoinTimeout: 1,
    heartbeatTimeout: 1,
    maxRestarts: 0,
    logLevel: 'info',
    ...extra,
  };
}

test("--global-batch below the micro-batch shrinks the micro-batch to each worker's share, and says so", (t) => {
  const log = t.mock.method(console, 'log', () => {});
  assert.equal(loadRecipe('fmnist-vit-tiny').microBatch, 256);
  const recipe = resolveRecipe(flags({ globalBatch: 64 }), null, 2);
  assert.deepEqual([recipe.globalBatch, recipe.microBatch], [64, 32]);
  assert.deepEqual(
    log.mock.calls.map((c) => c.arguments[0]),
    ["--global-batch 64 is below the recipe's micro-batch 256: micro-batch 32, each of 2 workers' share"],
  );
  assert.equal(resolveRecipe(flags({ globalBatch: 100 }), null, 3).microBatch, 34, 'the share rounds up');
  assert.equal(resolveRecipe(flags({ globalBatch: 64 }), null, 1).microBatch, 64);
});

test('--global-batch at or above the micro-batch, or an explicit --micro-batch, leave the micro-batch as given', (t) => {
  const log = t.mock.method(console, 'log', () => {});
  assert.equal(resolveRecipe(flags({ globalBatch: 256 }), null, 4).microBatch, 256);
  assert.equal(resolveRecipe(flags({ globalBatch: 64, microBatch: 16 }), null, 2).microBatch, 16);
  assert.throws(
    () => resolveRecipe(flags({ globalBatch: 64, microBatch: 128 }), null, 2),
    /"microBatch" \(128\) is larger than "globalBatch" \(64\)/,
  );
  assert.equal(log.mock.callCount(), 0);
});

test('--wire and --bucket-mb set the recipe comm section, keeping what the other leaves; trainer defaults fill the rest', () => {
  const plain = resolveRecipe(flags({}), null, 2);
  assert.equal(plain.comm, undefined);
  assert.deepEqual(commOptionsOf(plain), { wire: 'fp32', bucketElements: (25 * 2 ** 20) / 4 });
  const bf16 = resolveRecipe(flags({ wire: 'bf16' }), null, 2);
  assert.deepEqual(bf16.comm, { wire: 'bf16' });
  const both = resolveRecipe(flags({ bucketMb: 0 }), bf16, 2);
  assert.deepEqual(commOptionsOf(both), { wire: 'bf16', bucketElements: null });
  assert.throws(() => resolveRecipe(flags({ set: { comm: '{"wire":"fp8"}' } }), null, 2), /"comm.wire" must be one of fp32, bf16/);
});
