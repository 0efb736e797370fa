import { test } from 'node:test';
import assert from 'node:assert/strict';
import { learningRate } from '../../src/train/schedule.ts';

const config = { baseLr: 1e-3, minLr: 1e-5, warmupSteps: 10, totalSteps: 110 };

test('linear warmup reaches the base rate at the last warmup step', () => {
  assert.equal(learningRate(config, 0), 1e-4);
  assert.ok(Math.abs(learningRate(config, 4) - 5e-4) < 1e-15);
  assert.equal(learningRate(config, 9), 1e-3);
  for (let s = 1; s < 10; s++) assert.ok(learningRate(config, s) > learningRate(config, s - 1));
});

test('cosine decay from the base rate to the minimum at the last step', () => {
  assert.equal(learningRate(config, 10), 1e-3);
  assert.ok(Math.abs(learningRate(config, 109) - 1e-5) < 1e-15);
  const mid = learningRate(config, 10 + 99 / 2);
  assert.ok(Math.abs(mid - (1e-5 + 0.5 * (1e-3 - 1e-5))) < 1e-12, 'half-way is the midpoint');
  for (let s = 11; s < 110; s++) assert.ok(learningRate(config, s) <= learningRate(config, s - 1));
});

test('no warmup starts at the base rate; out-of-range steps are refused', () => {
  assert.equal(learningRate({ ...config, warmupSteps: 0 }, 0), 1e-3);
  assert.throws(() => learningRate(config, 110), /outside/);
  assert.throws(() => learningRate(config, -1), /outside/);
});
