import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EpochSampler } from '../../src/data/sampler.ts';

test('each epoch is a seeded permutation; steps take consecutive batches, the tail is dropped', () => {
  const sampler = new EpochSampler(103, 10, 7);
  assert.equal(sampler.stepsPerEpoch, 10);
  const seen = new Set<number>();
  for (let step = 0; step < 10; step++) for (const i of sampler.batch(step)) seen.add(i);
  assert.equal(seen.size, 100, 'no sample repeats within an epoch');
  assert.notDeepEqual([...sampler.batch(0)], [...sampler.batch(10)], 'epochs are shuffled differently');
  assert.deepEqual([...new EpochSampler(103, 10, 7).batch(13)], [...sampler.batch(13)], 'same seed, same batches');
  assert.notDeepEqual([...new EpochSampler(103, 10, 8).batch(0)], [...sampler.batch(0)], 'another seed, other batches');
});

test('rank slices are contiguous, balanced and cover the batch whatever the worker count', () => {
  const sampler = new EpochSampler(1000, 10, 1);
  for (const worldSize of [1, 2, 3, 4, 7]) {
    const slices = Array.from({ length: worldSize }, (_, r) => [...sampler.slice(5, r, worldSize)]);
    assert.deepEqual(slices.flat(), [...sampler.batch(5)]);
    const sizes = slices.map((s) => s.length);
    assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `balanced for N=${worldSize}: ${sizes}`);
  }
});

test('bad batch sizes are refused', () => {
  assert.throws(() => new EpochSampler(10, 0, 0), /positive integer/);
  assert.throws(() => new EpochSampler(10, 11, 0), /larger than the training set/);
});
