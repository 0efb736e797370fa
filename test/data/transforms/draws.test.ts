import { test } from 'node:test';
import assert from 'node:assert/strict';
import { permutation, randomInt, roundHalfEven, uniform } from '../../../src/data/transforms/draws.ts';
import { Mulberry32 } from '../../../src/common/random.ts';

test("roundHalfEven is Python 3's round", () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 2.5001, 7].map(roundHalfEven), [0, 2, 2, -0, -2, 2, 3, 7]);
});

test('randomInt covers both ends, uniform stays in [low, high), permutation is one', () => {
  const rng = new Mulberry32(11);
  const seen = new Set<number>();
  for (let i = 0; i < 1000; i++) {
    const v = randomInt(rng, 3, 7);
    assert.ok(Number.isInteger(v) && v >= 3 && v <= 7);
    seen.add(v);
    const u = uniform(rng, -2, 5);
    assert.ok(u >= -2 && u < 5);
  }
  assert.equal(seen.size, 5);
  const p = permutation(rng, 9);
  assert.deepEqual(
    [...p].sort((a, b) => a - b),
    [0, 1, 2, 3, 4, 5, 6, 7, 8],
  );
  assert.notDeepEqual(permutation(new Mulberry32(1), 9), permutation(new Mulberry32(2), 9));
});
