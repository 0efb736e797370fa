import { test } from 'node:test';
import assert from 'node:assert/strict';
import { learningRate, peakLearningRate, recipeSchedule, scaleLearningRate, warmupStepsOf } from '../../src/train/schedule.ts';
import { loadRecipe } from '../../src/train/recipe.ts';

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

test('lr scaling rules: none, linear (DeiT: x batch / 512), square root', () => {
  assert.equal(scaleLearningRate(5e-4, 'none', 1024, 512), 5e-4);
  assert.equal(scaleLearningRate(5e-4, 'linear', 1024, 512), 1e-3);
  assert.equal(scaleLearningRate(5e-4, 'linear', 256, 512), 2.5e-4);
  assert.equal(scaleLearningRate(1e-3, 'sqrt', 1024, 4096), 5e-4);
  assert.equal(scaleLearningRate(1e-3, 'sqrt', 4096, 4096), 1e-3);
});

test('warmup in epochs resolves to whole steps; warmup in steps is taken as is', () => {
  assert.equal(warmupStepsOf({ warmupSteps: null, warmupEpochs: 5, minLr: 0 }, 1251), 6255);
  assert.equal(warmupStepsOf({ warmupSteps: null, warmupEpochs: 0.5, minLr: 0 }, 117), 59);
  assert.equal(warmupStepsOf({ warmupSteps: 50, warmupEpochs: null, minLr: 0 }, 117), 50);
});

test("a recipe's schedule: scaled peak, resolved warmup, its floor and length", () => {
  const deit = loadRecipe('deit-tiny');
  const stepsPerEpoch = Math.floor(1_281_167 / deit.globalBatch);
  assert.deepEqual(recipeSchedule(deit, stepsPerEpoch, 300 * stepsPerEpoch), {
    baseLr: 1e-3,
    minLr: 1e-5,
    warmupSteps: 5 * stepsPerEpoch,
    totalSteps: 300 * stepsPerEpoch,
  });
  const fmnist = loadRecipe('fmnist-vit-tiny');
  const steps = {
    ...fmnist,
    optimizer: { ...fmnist.optimizer, lr: 0.002 },
    schedule: { warmupSteps: 50, warmupEpochs: null, minLr: 1e-5 },
  };
  assert.deepEqual(
    recipeSchedule(steps, 117, 351),
    { baseLr: 0.002, minLr: 1e-5, warmupSteps: 50, totalSteps: 351 },
    'warmup given in steps is taken as is',
  );
  assert.equal(peakLearningRate({ ...steps, globalBatch: 2048, lrScaling: { rule: 'sqrt', referenceBatch: 512 } }), 0.004);
});
