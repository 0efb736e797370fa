import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clipFactor, sumOfSquares } from '../../src/train/clip.ts';

test('sumOfSquares', () => {
  assert.equal(sumOfSquares(Float32Array.of(3, 4)), 25);
  assert.equal(sumOfSquares(new Float32Array(0)), 0);
});

test('clipFactor is min(1, maxNorm / norm)', () => {
  assert.equal(clipFactor(0.5, 1), 1);
  assert.equal(clipFactor(1, 1), 1);
  assert.equal(clipFactor(4, 1), 0.25);
  assert.equal(clipFactor(10, 2), 0.2);
  assert.equal(clipFactor(0, 1), 1, 'a zero gradient is not divided by zero');
  assert.equal(clipFactor(100, 0), 1, 'maxNorm 0 disables clipping');
});

test('clipping scales the global norm down to maxNorm', () => {
  const g = Float32Array.of(3, 4, 12);
  const norm = Math.sqrt(sumOfSquares(g));
  const f = clipFactor(norm, 1);
  const clipped = g.map((x) => x * f);
  assert.ok(Math.abs(Math.sqrt(sumOfSquares(clipped)) - 1) < 1e-6);
});
