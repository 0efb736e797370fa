import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyOverrides, listRecipes, loadRecipe, totalSteps, validateRecipe } from '../../src/train/recipe.ts';
import { peakLearningRate } from '../../src/train/schedule.ts';

const REQUIRED_RECIPES = [
  'deit-tiny',
  'deit-small',
  'deit-base',
  'deit-base-distilled',
  'augreg-vit-b16-i1k',
  'augreg-transfer-sgd',
  'deit-finetune-384',
  'fmnist-vit-tiny',
  'fmnist-deit-tiny-distilled',
];

/** The citation covering dotted `key`: its own, or one of a section it is in. */
function citation(sources: Record<string, string>, key: string): string | undefined {
  const parts = key.split('.');
  for (let n = parts.length; n > 0; n--) {
    const cited = sources[parts.slice(0, n).join('.')];
    if (cited !== undefined) return cited;
  }
  return undefined;
}

test("every recipe in recipes/ validates, and the issue's recipes are all there", () => {
  const names = listRecipes();
  for (const required of REQUIRED_RECIPES) assert.ok(names.includes(required), `recipes/${required}.json exists`);
  for (const name of names) assert.equal(loadRecipe(name).name, name, `${name}: the name field matches the file name`);
});

test('each recipe cites its lr, batch, run length, optimizer and weight decay, and only keys it has', () => {
  for (const name of listRecipes()) {
    const recipe = loadRecipe(name);
    const lengthKey = recipe.steps === null ? 'epochs' : 'steps';
    for (const key of ['optimizer.lr', 'globalBatch', lengthKey, 'optimizer.name', 'optimizer.weightDecay', 'lrScaling', 'clipNorm']) {
      assert.ok(citation(recipe.sources, key), `${name} cites "${key}"`);
    }
    for (const key of Object.keys(recipe.sources)) {
      let value: unknown = recipe;
      for (const part of key.split('.')) value = (value as Record<string, unknown>)[part];
      assert.notEqual(value, undefined, `${name}: sources cite "${key}", which the recipe does not have`);
    }
  }
});

test("the papers' values: DeiT scales lr linearly per 512, AugReg decays absolutely, the transfer uses SGD", () => {
  const deit = loadRecipe('deit-base');
  assert.deepEqual(
    [deit.optimizer.name, deit.optimizer.lr, deit.optimizer.weightDecay, deit.optimizer.decayConvention],
    ['adamw', 5e-4, 0.05, 'lr-scaled'],
  );
  assert.deepEqual(deit.lrScaling, { rule: 'linear', referenceBatch: 512 });
  assert.equal(peakLearningRate(deit), 1e-3, '5e-4 x 1024 / 512');
  assert.deepEqual(deit.ema, { decay: 0.99996 });
  const augreg = loadRecipe('augreg-vit-b16-i1k');
  assert.deepEqual(
    [augreg.optimizer.name, augreg.optimizer.decayConvention, augreg.clipNorm, augreg.globalBatch],
    ['adam', 'absolute', 1, 4096],
  );
  const transfer = loadRecipe('augreg-transfer-sgd');
  assert.deepEqual(
    [transfer.optimizer.name, transfer.optimizer.momentum, transfer.optimizer.weightDecay, transfer.globalBatch, transfer.clipNorm],
    ['sgd', 0.9, 0, 512, 1],
  );
  assert.equal(loadRecipe('deit-base-distilled').distillation.mode, 'hard');
});

test('the main job fmnist-vit-tiny is plain DeiT-style AdamW at its reference batch: no scaling, EMA, regularization or teacher', () => {
  const recipe = loadRecipe('fmnist-vit-tiny');
  assert.equal(recipe.optimizer.name, 'adamw');
  assert.equal(peakLearningRate(recipe), recipe.optimizer.lr);
  assert.equal(recipe.ema, null);
  assert.equal(recipe.distillation.mode, 'none');
  assert.deepEqual(Object.values(recipe.regularization), [0, 0, 0, 0]);
});

test('an unknown key is an error naming the key', () => {
  const recipe = { ...loadRecipe('fmnist-vit-tiny'), learningRate: 1 };
  assert.throws(() => validateRecipe(recipe, 'test'), /unknown key "learningRate"/);
  const nested = structuredClone(loadRecipe('fmnist-vit-tiny')) as unknown as { optimizer: Record<string, unknown> };
  nested.optimizer.nesterov = true;
  assert.throws(() => validateRecipe(nested, 'test'), /unknown key "optimizer.nesterov"/);
  const regularization = structuredClone(loadRecipe('fmnist-vit-tiny')) as unknown as { regularization: Record<string, unknown> };
  regularization.regularization.mixup = 0.8;
  assert.throws(() => validateRecipe(regularization, 'test'), /unknown key "regularization.mixup"/);
});

test('each optimizer takes exactly its own fields, naming the one missing or out of place', () => {
  const withOptimizer = (optimizer: Record<string, unknown>) => ({ ...loadRecipe('fmnist-vit-tiny'), optimizer });
  assert.throws(
    () => validateRecipe(withOptimizer({ ...loadRecipe('fmnist-vit-tiny').optimizer, momentum: 0.9 }), 'test'),
    /"optimizer.momentum" does not apply to adamw/,
  );
  assert.throws(() => validateRecipe(withOptimizer({ name: 'sgd', lr: 0.1, weightDecay: 0 }), 'test'), /missing key "optimizer.momentum"/);
  assert.throws(
    () => validateRecipe(withOptimizer({ name: 'sgd', lr: 0.1, momentum: 0.9, beta1: 0.9, weightDecay: 0 }), 'test'),
    /"optimizer.beta1" does not apply to sgd/,
  );
  const { decayConvention: _c, ...noConvention } = loadRecipe('fmnist-vit-tiny').optimizer;
  assert.throws(() => validateRecipe(withOptimizer(noConvention), 'test'), /missing key "optimizer.decayConvention"/);
  assert.throws(
    () => validateRecipe(withOptimizer({ ...noConvention, decayConvention: 'coupled' }), 'test'),
    /"optimizer.decayConvention" must be one of lr-scaled, absolute/,
  );
  assert.throws(
    () => validateRecipe(withOptimizer({ ...noConvention, name: 'lamb', decayConvention: 'absolute' }), 'test'),
    /"optimizer.name" must be one of adam, adamw, sgd/,
  );
});

test('cross-field rules: exactly one warmup, a teacher exactly when distilling, ema an object or null', () => {
  const recipe = loadRecipe('fmnist-vit-tiny');
  assert.throws(
    () => validateRecipe({ ...recipe, schedule: { warmupSteps: 5, warmupEpochs: 1, minLr: 0 } }, 'test'),
    /exactly one of "schedule.warmupSteps" and "schedule.warmupEpochs"/,
  );
  assert.throws(
    () => validateRecipe({ ...recipe, schedule: { warmupSteps: null, warmupEpochs: null, minLr: 0 } }, 'test'),
    /exactly one of/,
  );
  assert.throws(
    () => validateRecipe({ ...recipe, distillation: { mode: 'hard', alpha: 0.5, tau: 1, teacher: null } }, 'test'),
    /"distillation.teacher" must be null when/,
  );
  assert.throws(
    () => validateRecipe({ ...recipe, distillation: { mode: 'none', alpha: 0.5, tau: 1, teacher: 'x' } }, 'test'),
    /"distillation.teacher" must be null when/,
  );
  assert.throws(
    () => validateRecipe({ ...recipe, distillation: { mode: 'none', alpha: 0, tau: 1, teacher: 3 } }, 'test'),
    /"distillation.teacher" must be a string or null, got number/,
  );
  assert.throws(() => validateRecipe({ ...recipe, ema: 0.999 }, 'test'), /"ema" must be an object or null, got number/);
  assert.throws(() => validateRecipe({ ...recipe, ema: { decay: 2 } }, 'test'), /"ema.decay" must be at most 1/);
  assert.throws(
    () => validateRecipe({ ...recipe, data: { ...recipe.data, format: 'imagenet' } }, 'test'),
    /"data.format" must be one of fashion-mnist, idx, cifar10, cifar100, imagefolder, packed/,
  );
  assert.equal(validateRecipe({ ...recipe, data: { ...recipe.data, format: 'imagefolder' } }, 'test').data.format, 'imagefolder');
});

test('data rules: mixing fields per kind, repeats within the global batch, holdout and flags typed', () => {
  const recipe = loadRecipe('fmnist-vit-tiny');
  const withData = (data: object) => ({ ...recipe, data: { ...recipe.data, ...data } });
  assert.throws(
    () => validateRecipe(withData({ mixup: { kind: 'timm', mixupAlpha: 0.8 } }), 'test'),
    /missing key "data.mixup.cutmixAlpha" \(timm mixing needs mixupAlpha, cutmixAlpha, prob, switchProb\)/,
  );
  assert.throws(
    () => validateRecipe(withData({ mixup: { kind: 'big_vision', p: 0.5, prob: 1 } }), 'test'),
    /"data.mixup.prob" does not apply to big_vision mixing/,
  );
  assert.equal(validateRecipe(withData({ mixup: { kind: 'big_vision', p: 0.5 } }), 'test').data.mixup?.kind, 'big_vision');
  assert.throws(() => validateRecipe(withData({ repeats: 513 }), 'test'), /"data.repeats" \(513\) is larger than "globalBatch" \(512\)/);
  assert.equal(validateRecipe(withData({ repeats: 3 }), 'test').data.repeats, 3);
  assert.throws(() => validateRecipe(withData({ holdout: 0.9 }), 'test'), /"data.holdout" must be at most 0.5/);
  assert.throws(() => validateRecipe(withData({ skipCorrupt: 'yes' }), 'test'), /"data.skipCorrupt" must be true or false, got string/);
});

test('a wrong type or range is an error naming the key', () => {
  assert.throws(
    () => validateRecipe({ ...loadRecipe('fmnist-vit-tiny'), globalBatch: '512' }, 'test'),
    /"globalBatch" must be a finite number/,
  );
  assert.throws(() => validateRecipe({ ...loadRecipe('fmnist-vit-tiny'), globalBatch: 0 }, 'test'), /"globalBatch" must be at least 1/);
  assert.throws(
    () => validateRecipe({ ...loadRecipe('fmnist-vit-tiny'), microBatch: 100000 }, 'test'),
    /"microBatch" .* larger than "globalBatch"/,
  );
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
  // The new sections take overrides the same way.
  const tuned = applyOverrides(loadRecipe('deit-tiny'), {
    'ema.decay': '0.9998',
    'lrScaling.rule': 'sqrt',
    'schedule.warmupEpochs': '2',
    distillation: '{"mode":"soft","alpha":0.1,"tau":3,"teacher":"regnety_160"}',
  });
  assert.deepEqual([tuned.ema?.decay, tuned.lrScaling.rule, tuned.schedule.warmupEpochs, tuned.distillation.tau], [0.9998, 'sqrt', 2, 3]);
  assert.deepEqual(applyOverrides(loadRecipe('fmnist-vit-tiny'), { ema: '{"decay":0.999}' }).ema, { decay: 0.999 });
  assert.throws(() => applyOverrides(loadRecipe('fmnist-vit-tiny'), { 'ema.decay': '0.9' }), /"ema" is not a section of the recipe/);
  assert.throws(
    () => applyOverrides(loadRecipe('fmnist-vit-tiny'), { 'lrScaling.rule': 'cubic' }),
    /"lrScaling.rule" must be one of none, linear, sqrt/,
  );
});

test('unknown recipe names list the known ones', () => {
  assert.throws(() => loadRecipe('nope'), /no recipe "nope".*fmnist-vit-tiny/);
});

test('totalSteps: steps wins, else epochs times steps per epoch', () => {
  const recipe = loadRecipe('fmnist-vit-tiny');
  assert.equal(totalSteps({ ...recipe, steps: 5 }, 117), 5);
  assert.equal(totalSteps({ ...recipe, steps: null, epochs: 2 }, 117), 234);
});

test('every citation is pinned: code to a commit, a paper to a section, table or figure', () => {
  // A reference to one of these repositories must carry the commit it was read at.
  const code: [RegExp, string][] = [
    [/big_vision/, 'google-research/big_vision@'],
    [/facebookresearch\/deit|(?<!model-soups )main\.py|README_deit/, 'facebookresearch/deit@'],
    [/\btimm\b/, 'huggingface/pytorch-image-models@'],
    [/optax\.scale_by_adam/, 'google-deepmind/optax@'],
    [/torch\.optim\.AdamW/, 'pytorch/pytorch@'],
    [/model-soups/, 'mlfoundations/model-soups@'],
  ];
  const paper = /Touvron|Steiner|Wortsman|arXiv|Hinton/;
  const pinned = /(Section|Table|Figure|Appendix) \d|@[0-9a-f]{40}/;
  for (const name of listRecipes()) {
    for (const [key, cited] of Object.entries(loadRecipe(name).sources)) {
      for (const [mention, repo] of code) {
        if (mention.test(cited))
          assert.match(cited, new RegExp(`${repo}[0-9a-f]{40}`), `${name}: sources.${key} cites ${repo.slice(0, -1)} without a commit`);
      }
      if (paper.test(cited)) assert.match(cited, pinned, `${name}: sources.${key} cites a paper without a section, table or figure`);
    }
  }
});
