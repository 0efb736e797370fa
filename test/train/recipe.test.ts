import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyOverrides, listRecipes, loadRecipe, totalSteps, validateRecipe } from '../../src/train/recipe.ts';

test('every recipe in recipes/ validates and cites sources', () => {
  const names = listRecipes();
  assert.ok(names.includes('fmnist-vit-tiny'));
  for (const name of names) {
    const recipe = loadRecipe(name);
    assert.equal(recipe.name, name, `${name}: the name field matches the file name`);
    assert.ok(Object.keys(recipe.sources).length > 0, `${name} cites its sources`);
  }
});

test('an unknown key is an error naming the key', () => {
  const recipe = { ...loadRecipe('fmnist-vit-tiny'), learningRate: 1 };
  assert.throws(() => validateRecipe(recipe, 'test'), /unknown key "learningRate"/);
  const nested = structuredClone(loadRecipe('fmnist-vit-tiny')) as unknown as { optimizer: Record<string, unknown> };
  nested.optimizer.momentum = 0.9;
  assert.throws(() => validateRecipe(nested, 'test'), /unknown key "optimizer.momentum"/);
});

test('a wrong type or range is an error naming the key', () => {
  assert.throws(() => validateRecipe({ ...loadRecipe('fmnist-vit-tiny'), globalBatch: '512' }, 'test'), /"globalBatch" must be a finite number/);
  assert.throws(() => validateRecipe({ ...loadRecipe('fmnist-vit-tiny'), globalBatch: 0 }, 'test'), /"globalBatch" must be at least 1/);
  assert.throws(() => validateRecipe({ ...loadRecipe('fmnist-vit-tiny'), microBatch: 100000 }, 'test'), /"microBatch" .* larger than "globalBatch"/);
  const { seed: _seed, ...missing } = loadRecipe('fmnist-vit-tiny');
  assert.throws(() => validateRecipe(missing, 'test'), /missing key "seed"/);
});

test('overrides parse values and are validated again', () => {
  const recipe = applyOverrides(loadRecipe('fmnist-vit-tiny'), { 'optimizer.lr': '0.01', steps: 7, 'data.path': '/x' });
  assert.equal(recipe.optimizer.lr, 0.01);
  assert.equal(recipe.steps, 7);
  assert.equal(recipe.data.path, '/x');
  assert.throws(() => applyOverrides(loadRecipe('fmnist-vit-tiny'), { 'optimizer.lrr': '1' }), /unknown key "optimizer.lrr"/);
  assert.equal(applyOverrides(loadRecipe('fmnist-vit-tiny'), { 'modelArgs.depth': '1' }).modelArgs.depth, 1);
  assert.throws(() => applyOverrides(loadRecipe('fmnist-vit-tiny'), { 'modelArgs.width': '1' }), /unknown key "modelArgs.width"/);
  assert.throws(() => applyOverrides(loadRecipe('fmnist-vit-tiny'), { 'optimizer.lr': 'fast' }), /"optimizer.lr" must be a finite number/);
});

test('unknown recipe names list the known ones', () => {
  assert.throws(() => loadRecipe('nope'), /no recipe "nope".*fmnist-vit-tiny/);
});

test('totalSteps: steps wins, else epochs times steps per epoch', () => {
  const recipe = loadRecipe('fmnist-vit-tiny');
  assert.equal(totalSteps({ ...recipe, steps: 5 }, 117), 5);
  assert.equal(totalSteps({ ...recipe, steps: null, epochs: 2 }, 117), 234);
});
