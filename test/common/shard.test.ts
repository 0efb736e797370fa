import assert from 'node:assert/strict';
import { test } from 'node:test';
import { chunkRanges, shardRange } from '../../src/common/shard.ts';

test('shards are contiguous, cover everything and differ in size by at most one', () => {
  for (const length of [0, 1, 2, 7, 8, 9, 1001, 100003]) {
    for (let worldSize = 1; worldSize <= 9; worldSize++) {
      let next = 0;
      const sizes: number[] = [];
      for (let rank = 0; rank < worldSize; rank++) {
        const { start, end } = shardRange(length, worldSize, rank);
        assert.equal(start, next, `length ${length} N ${worldSize} rank ${rank}`);
        next = end;
        sizes.push(end - start);
      }
      assert.equal(next, length);
      assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1);
    }
  }
});

test('the first length % N shards get the extra element', () => {
  assert.deepEqual(
    [0, 1, 2].map((rank) => shardRange(8, 3, rank)),
    [
      { start: 0, end: 3 },
      { start: 3, end: 6 },
      { start: 6, end: 8 },
    ],
  );
  assert.deepEqual(shardRange(2, 4, 3), { start: 2, end: 2 });
});

test('shardRange rejects bad arguments', () => {
  assert.throws(() => shardRange(-1, 2, 0), RangeError);
  assert.throws(() => shardRange(10, 0, 0), RangeError);
  assert.throws(() => shardRange(10, 2, 2), RangeError);
  assert.throws(() => shardRange(1.5, 2, 0), RangeError);
});

test('chunkRanges cuts a range into the fewest bounded consecutive chunks, of near-equal sizes', () => {
  assert.deepEqual(chunkRanges({ start: 10, end: 25 }, 6), [
    { start: 10, end: 15 },
    { start: 15, end: 20 },
    { start: 20, end: 25 },
  ]);
  assert.deepEqual(chunkRanges({ start: 0, end: 10 }, 4), [
    { start: 0, end: 4 },
    { start: 4, end: 7 },
    { start: 7, end: 10 },
  ]);
  assert.deepEqual(chunkRanges({ start: 3, end: 9 }, 6), [{ start: 3, end: 9 }]);
  assert.deepEqual(chunkRanges({ start: 5, end: 5 }, 4), []);
  assert.throws(() => chunkRanges({ start: 0, end: 4 }, 0), RangeError);
});
