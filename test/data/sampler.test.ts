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

test('one repeat keeps the batches the sampler drew before repeated augmentation existed', () => {
  // Pinned from the sampler without the repeats option: runs and their digests must not change.
  const sampler = new EpochSampler(20, 6, 3);
  const pinned = [
    [3, 12, 1, 4, 14, 5],
    [17, 18, 11, 6, 10, 15],
    [9, 7, 8, 13, 19, 2],
    [15, 6, 0, 5, 2, 8],
    [19, 17, 7, 1, 13, 11],
  ];
  assert.deepEqual(
    [0, 1, 2, 3, 4].map((step) => [...sampler.batch(step)]),
    pinned,
  );
  assert.deepEqual([...new EpochSampler(20, 6, 3, 1).batch(4)], pinned[4]);
  const slice = sampler.slice(4, 1, 4);
  assert.deepEqual([...slice.indices], [7, 1]);
  assert.deepEqual([...slice.repeats], [0, 0]);
  assert.equal(slice.offset, 2);
});

test('rank slices are contiguous, balanced and cover the batch whatever the worker count', () => {
  const sampler = new EpochSampler(1000, 10, 1);
  for (const worldSize of [1, 2, 3, 4, 7]) {
    const slices = Array.from({ length: worldSize }, (_, r) => sampler.slice(5, r, worldSize));
    assert.deepEqual(
      slices.flatMap((s) => [...s.indices]),
      [...sampler.batch(5)],
    );
    const sizes = slices.map((s) => s.indices.length);
    assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `balanced for N=${worldSize}: ${sizes}`);
  }
});

test('with 3 repeats a batch holds B/3 distinct images from the permutation, each at j, j + B/3, j + 2B/3', () => {
  const sampler = new EpochSampler(100, 12, 5, 3);
  const distinct = 4;
  assert.equal(sampler.distinctPerBatch, distinct);
  assert.equal(sampler.stepsPerEpoch, 8);
  const whole = sampler.slice(0, 0, 1);
  assert.deepEqual([...whole.repeats], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
  for (let step = 0; step < 8; step++) {
    const batch = sampler.batch(step);
    const images = sampler.permutation(0).subarray(step * distinct, (step + 1) * distinct);
    assert.deepEqual([...batch], [...images, ...images, ...images], `step ${step} repeats the permutation's next ${distinct} images`);
  }
  const second = sampler.batch(8);
  assert.deepEqual([...second.subarray(0, distinct)], [...sampler.permutation(1).subarray(0, distinct)], 'step 8 starts epoch 1');
});

test('the repeats of an image land on different ranks when the world size is at least the repeat count', () => {
  const globalBatch = 48;
  const sampler = new EpochSampler(1000, globalBatch, 11, 3);
  for (const worldSize of [3, 4, 8]) {
    for (const step of [0, 7, 20, 40]) {
      const ranksOf = new Map<number, number[]>();
      const repeatsOf = new Map<number, number[]>();
      for (let rank = 0; rank < worldSize; rank++) {
        const { indices, repeats } = sampler.slice(step, rank, worldSize);
        indices.forEach((index, k) => {
          ranksOf.set(index, [...(ranksOf.get(index) ?? []), rank]);
          repeatsOf.set(index, [...(repeatsOf.get(index) ?? []), repeats[k]!]);
        });
      }
      assert.equal(ranksOf.size, globalBatch / 3);
      for (const [index, ranks] of ranksOf) {
        assert.equal(new Set(ranks).size, 3, `N=${worldSize} step ${step}: image ${index} on ranks ${ranks}`);
        assert.deepEqual(repeatsOf.get(index), [0, 1, 2]);
      }
    }
  }
  // Fewer ranks than repeats: some rank must hold two copies of an image.
  const { indices } = sampler.slice(0, 0, 2);
  assert.ok(new Set(indices).size < indices.length, 'N=2 < 3 repeats puts repeats on a shared rank');
});

test("with repeats the ranks' slices and offsets put the global batch back together whatever the world size", () => {
  const sampler = new EpochSampler(1000, 48, 2, 3);
  const repeats = Array.from({ length: 48 }, (_, p) => Math.floor(p / 16));
  for (const worldSize of [1, 2, 3, 4, 5, 8]) {
    const slices = Array.from({ length: worldSize }, (_, r) => sampler.slice(9, r, worldSize));
    assert.deepEqual(
      slices.flatMap((s) => [...s.indices]),
      [...sampler.batch(9)],
      `indices for N=${worldSize}`,
    );
    assert.deepEqual(
      slices.flatMap((s) => [...s.repeats]),
      repeats,
      `repeats for N=${worldSize}`,
    );
    let offset = 0;
    for (const s of slices) {
      assert.equal(s.offset, offset);
      offset += s.indices.length;
    }
  }
});

test('bad batch sizes and repeat counts are refused', () => {
  assert.throws(() => new EpochSampler(10, 0, 0), /positive integer/);
  assert.throws(() => new EpochSampler(10, 11, 0), /larger than the training set/);
  for (const repeats of [0, 1.5, 256])
    assert.throws(() => new EpochSampler(1000, 510, 0, repeats), /repeated augmentation count must be an integer/);
});

test('a global batch that the repeats do not divide drops the last copies of its last images', () => {
  const sampler = new EpochSampler(100, 10, 0, 3);
  assert.equal(sampler.distinctPerBatch, 4);
  const batch = [...sampler.batch(0)];
  const images = batch.slice(0, 4);
  assert.deepEqual(batch, [...images, ...images, ...images.slice(0, 2)]);
  assert.deepEqual([...sampler.slice(0, 0, 1).repeats], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
  // 3 ranks of at most 4 positions: every copy of an image on its own rank.
  const ranks = [0, 1, 2].map((rank) => [...sampler.slice(0, rank, 3).indices]);
  for (const image of images) assert.ok(ranks.every((r) => r.filter((i) => i === image).length <= 1));
});
