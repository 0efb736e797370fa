// Which images an evaluation reads: the recipe's data settings, changed by flags, and guarded so
// that the held-out split stays the one the models never trained on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { DEFAULT_HOLDOUT, DEFAULT_HOLDOUT_SEED, resolveEvalData } from '../../src/soup/eval-data.ts';
import { applyOverrides, loadRecipe } from '../../src/train/recipe.ts';

const base = applyOverrides(loadRecipe(fileURLToPath(new URL('../fixtures/fmnist-micro.json', import.meta.url))), {
  'data.holdout': 0.1,
  'data.holdoutSeed': 3,
});
const a = { name: 'runs/a', data: base.data };

test("the model's data settings (a recipe's or an export's) give the data; --data and --pipeline may change it", () => {
  assert.deepEqual(resolveEvalData([a], {}, true), {
    spec: { format: 'fashion-mnist', path: base.data.path, holdout: 0.1, holdoutSeed: 3 },
    pipeline: base.data.evalPipeline,
  });
  const moved = resolveEvalData([a, { name: 'b.safetensors', data: null }], { data: '/elsewhere', pipeline: 'normalize(imagenet)' }, true);
  assert.deepEqual([moved.spec.path, moved.pipeline, moved.spec.holdout], ['/elsewhere', 'normalize(imagenet)', 0.1]);
});

test('on the held-out split, a flag may not contradict what chose the held-out images, and recipes must agree on it', () => {
  assert.throws(
    () => resolveEvalData([a], { holdout: 0.2 }, true),
    /--holdout 0.2 differs from data.holdout 0.1 in the data settings of runs\/a: the held-out split would include images it trained on/,
  );
  assert.throws(() => resolveEvalData([a], { holdoutSeed: 0 }, true), /--holdout-seed 0 differs from data.holdoutSeed 3/);
  assert.throws(() => resolveEvalData([a], { format: 'idx' }, true), /--format idx differs from data.format "fashion-mnist"/);
  assert.deepEqual(resolveEvalData([a], { holdout: 0.1, holdoutSeed: 3 }, true).spec.holdout, 0.1, 'agreeing flags are fine');
  const other = { name: 'runs/b', data: applyOverrides(base, { 'data.holdoutSeed': 4 }).data };
  assert.throws(() => resolveEvalData([a, other], {}, true), /runs\/a and runs\/b hold out different images \(data.holdoutSeed 3 and 4\)/);
  // Off the held-out split (eval --split val) the flags simply win.
  assert.deepEqual(resolveEvalData([a], { holdout: 0.2, format: 'idx' }, false).spec, {
    format: 'idx',
    path: base.data.path,
    holdout: 0.2,
    holdoutSeed: 3,
  });
});

test('without data settings, --data, --format and --pipeline are required; the held-out fraction and seed have defaults', () => {
  const file = { name: 'soup.safetensors', data: null };
  assert.throws(
    () => resolveEvalData([file], { data: '/d' }, true),
    /soup.safetensors carries no recipe or data settings in its metadata: pass --format, --pipeline/,
  );
  assert.deepEqual(resolveEvalData([file], { data: '/d', format: 'cifar10', pipeline: 'normalize(cifar10)' }, true), {
    spec: { format: 'cifar10', path: '/d', holdout: DEFAULT_HOLDOUT, holdoutSeed: DEFAULT_HOLDOUT_SEED },
    pipeline: 'normalize(cifar10)',
  });
});
