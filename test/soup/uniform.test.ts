// The uniform soup's accumulator: the float64 sum of the ingredients, divided once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Mulberry32, gaussian } from '../../src/common/random.ts';
import { WeightSum } from '../../src/soup/uniform.ts';

const PARAMS = 4096;
const INGREDIENTS = 7;

/** Ingredients as fine-tunes of one start look: a shared vector plus small per-ingredient changes, at several scales. */
function ingredients(seed: number): Float32Array[] {
  const rng = new Mulberry32(seed);
  const start = Float32Array.from({ length: PARAMS }, (_, i) => gaussian(rng) * 10 ** ((i % 5) - 3));
  return Array.from({ length: INGREDIENTS }, () => start.map((v) => v + gaussian(rng) * 0.01 * Math.abs(v)));
}

/** The mean computed directly: for each parameter, the float64 sum over the ingredients, divided by their count. */
function directMean(xs: Float32Array[]): Float32Array {
  return Float32Array.from({ length: PARAMS }, (_, i) => xs.reduce((sum, x) => sum + x[i]!, 0) / xs.length);
}

test('the soup is the float64 mean of the ingredients, whatever their order', () => {
  const xs = ingredients(1);
  const sum = new WeightSum(PARAMS);
  for (const x of xs) sum.add(x);
  assert.equal(sum.count, INGREDIENTS);
  assert.deepEqual(sum.mean(), directMean(xs));
  // The float64 sum of float32 values this close is exact, so the order does not change a bit.
  const reversed = new WeightSum(PARAMS);
  for (const x of [...xs].reverse()) reversed.add(x);
  assert.deepEqual(reversed.mean(), sum.mean());
});

test('a running mean, which rounds at every update, stays within a float32 rounding of the soup', () => {
  const xs = ingredients(2);
  const sum = new WeightSum(PARAMS);
  const running = new Float64Array(PARAMS);
  xs.forEach((x, k) => {
    sum.add(x);
    for (let i = 0; i < PARAMS; i++) running[i]! += (x[i]! - running[i]!) / (k + 1);
  });
  const soup = sum.mean();
  for (let i = 0; i < PARAMS; i++) {
    const ulp = Math.abs(soup[i]!) * 2 ** -23;
    assert.ok(Math.abs(running[i]! - soup[i]!) <= ulp, `parameter ${i}: running mean ${running[i]}, soup ${soup[i]}`);
  }
});

test('meanWith is the mean with one more ingredient, and leaves the sum as it was', () => {
  const [a, b, c] = ingredients(3);
  const sum = new WeightSum(PARAMS);
  sum.add(a!);
  sum.add(b!);
  const candidate = sum.meanWith(c!);
  assert.equal(sum.count, 2);
  assert.deepEqual(candidate, directMean([a!, b!, c!]));
  assert.deepEqual(sum.mean(), directMean([a!, b!]));
});

test('a vector of another length and the mean of nothing are errors', () => {
  const sum = new WeightSum(3);
  assert.throws(() => sum.mean(), /mean of no ingredients/);
  assert.throws(() => sum.add(new Float32Array(4)), /4 values cannot join a soup of 3/);
  assert.throws(() => sum.meanWith(new Float32Array(2)), /2 values cannot join a soup of 3/);
});
