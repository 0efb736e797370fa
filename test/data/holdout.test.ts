import { test } from 'node:test';
import assert from 'node:assert/strict';
import { complementIndices, holdoutCount, holdoutIndices, subsetSource } from '../../src/data/holdout.ts';
import { checkSampleIndex, type ImageSource } from '../../src/data/source.ts';

/** A source whose sample i has label i % 3 and one pixel of value i. */
function countingSource(size: number): ImageSource {
  return {
    size,
    classes: ['a', 'b', 'c'],
    channels: 1,
    fixedSize: { height: 1, width: 1 },
    label: (i) => i % 3,
    read: async (i) => ({ data: Uint8Array.of(i), height: 1, width: 1, channels: 1 }),
    describe: (i) => `sample ${i}`,
  };
}

test('the held-out indices are sorted, distinct, in range and ceil(fraction * n) many', () => {
  for (const [n, fraction, expected] of [
    [1000, 0.01, 10],
    [1001, 0.01, 11],
    [100, 0.07, 7],
    [60000, 0.1, 6000],
    [3, 0.5, 2],
  ] as const) {
    const held = holdoutIndices(n, fraction, 17);
    assert.equal(held.length, expected, `${fraction} of ${n}`);
    for (let i = 1; i < held.length; i++) assert.ok(held[i - 1]! < held[i]!, 'sorted and distinct');
    assert.ok(held[held.length - 1]! < n);
  }
  assert.equal(holdoutIndices(1000, 0, 17).length, 0);
});

test('the holdout depends on the holdout seed only, and spreads over the whole training set', () => {
  const a = holdoutIndices(50000, 0.02, 7);
  assert.deepEqual(holdoutIndices(50000, 0.02, 7), a, 'same seed, same images');
  const b = holdoutIndices(50000, 0.02, 8);
  const overlap = a.filter((i) => b.includes(i)).length;
  // Two independent 2% draws share about 2% of their images.
  assert.ok(overlap < a.length / 10, `seeds 7 and 8 share ${overlap} of ${a.length} images`);
  // Not a block: the held-out images reach both ends of the training set.
  assert.ok(a[0]! < 1000 && a[a.length - 1]! > 49000);
  // A larger fraction with the same seed extends the smaller one (the same permutation's prefix).
  const larger = holdoutIndices(50000, 0.05, 7);
  assert.ok(a.every((i) => larger.includes(i)));
});

test('train and holdout are disjoint and together cover the training set', () => {
  const n = 997;
  const held = holdoutIndices(n, 0.1, 3);
  const train = complementIndices(n, held);
  assert.equal(train.length + held.length, n);
  const all = new Set([...train, ...held]);
  assert.equal(all.size, n);
  assert.ok(held.every((i) => !train.includes(i)));
  assert.throws(() => complementIndices(5, Uint32Array.of(3, 1)), /not sorted, distinct indices below 5/);
});

test('bad fractions are errors', () => {
  assert.throws(() => holdoutCount(100, 1), /holdout fraction must be in \[0, 1\), got 1/);
  assert.throws(() => holdoutCount(100, -0.1), /got -0.1/);
  assert.throws(() => holdoutCount(100, Number.NaN), /got NaN/);
  assert.throws(() => holdoutCount(2, 0.99), /holdout fraction 0.99 of 2 training images leaves none to train on/);
  assert.throws(() => holdoutCount(0, 0.5), /of 0 training images holds out none/);
});

test('a subset source maps its indices to the source samples', async () => {
  const subset = subsetSource(countingSource(10), Uint32Array.of(2, 5, 9));
  assert.equal(subset.size, 3);
  assert.deepEqual(subset.classes, ['a', 'b', 'c']);
  assert.deepEqual(
    [0, 1, 2].map((i) => subset.label(i)),
    [2, 2, 0],
  );
  assert.deepEqual([...(await subset.read(1)).data], [5]);
  assert.equal(subset.describe(2), 'sample 9');
  assert.throws(() => subset.label(3), /sample index 3 is outside 0..2 of a subset of 3 samples/);
  await assert.rejects(subset.read(-1), /sample index -1 is outside/);
  assert.throws(() => subsetSource(countingSource(10), Uint32Array.of(10)), /sample index 10 is outside 0..9/);
  assert.throws(() => checkSampleIndex(1.5, 4, 'x'), /sample index 1.5 is outside 0..3 of x/);
});

test('a subset passes a decode-time crop through to its source, and only when the source has one', async () => {
  assert.equal(subsetSource(countingSource(10), Uint32Array.of(2)).readRegion, undefined);
  const asked: number[] = [];
  const cropping: ImageSource = {
    ...countingSource(10),
    readRegion: async (i) => {
      asked.push(i);
      return { data: Uint8Array.of(i), height: 1, width: 1, channels: 1 };
    },
  };
  const subset = subsetSource(cropping, Uint32Array.of(4, 7));
  assert.deepEqual([...(await subset.readRegion!(1, () => null)).data], [7]);
  assert.deepEqual(asked, [7]);
  await assert.rejects(
    subset.readRegion!(2, () => null),
    /sample index 2 is outside 0..1/,
  );
});
