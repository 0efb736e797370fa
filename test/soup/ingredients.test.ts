// Ingredients: loading a run directory, a checkpoint file or a .safetensors file (the weights, or
// the checkpoint's EMA with --use-ema), and refusing to mix architectures with an error that
// names the tensor and both ingredients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runExportCommand } from '../../src/cli/weights-commands.ts';
import { writeCheckpoint } from '../../src/coordinator/checkpoint.ts';
import { createModel, modelParamSpecs, type ModelArgs, type ModelConfig } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { writeSafetensors } from '../../src/model/safetensors.ts';
import { META_MODEL, META_MODEL_ARGS, exportTimmState, exportedData } from '../../src/model/weights.ts';
import { resolveEvalData } from '../../src/soup/eval-data.ts';
import { assertSameArchitecture, loadIngredient, type IngredientInfo } from '../../src/soup/ingredients.ts';
import { paramDigest } from '../../src/train/digest.ts';
import { applyOverrides, loadRecipe, type Recipe } from '../../src/train/recipe.ts';

const MICRO = fileURLToPath(new URL('../fixtures/fmnist-micro.json', import.meta.url));
const recipe = loadRecipe(MICRO);
const config = createModelConfig(recipe.model, recipe.modelArgs);
const tempDir = (): string => mkdtempSync(join(tmpdir(), 'vit-dist-ingredients-'));

/** A run directory with one checkpoint of `recipe`'s model: params from seed 1, the EMA (when kept) from seed 2. */
function savedRun(r: Recipe, ema: boolean): { dir: string; file: string; params: Float32Array; ema: Float32Array | null } {
  const dir = tempDir();
  const model = createModel(createModelConfig(r.model, r.modelArgs));
  const params = model.initParams(1);
  const average = ema ? model.initParams(2) : null;
  const optimizerState = { m: new Float32Array(model.numParams).fill(3), v: new Float32Array(model.numParams).fill(4) };
  const file = writeCheckpoint(
    join(dir, 'checkpoints'),
    {
      runId: 'ingredient',
      step: 7,
      recipe: r,
      numParams: model.numParams,
      worldSize: 1,
      optimizerStep: 7,
      sampler: { seed: 0, step: 7 },
      paramDigest: paramDigest(params),
    },
    { params, optimizerState, ema: average },
  );
  return { dir, file, params, ema: average };
}

/** `params` exported as vit-dist export writes them: timm names, the model in the metadata (unless `metadata` says otherwise). */
function exported(
  dir: string,
  name: string,
  c: ModelConfig,
  model: string,
  params: Float32Array,
  metadata?: Record<string, string>,
): string {
  const path = join(dir, name);
  writeSafetensors(
    path,
    exportTimmState(modelParamSpecs(c), params),
    metadata ?? { [META_MODEL]: model, [META_MODEL_ARGS]: JSON.stringify(recipe.modelArgs) },
  );
  return path;
}

test('an ingredient loads from a run directory, a checkpoint file or a .safetensors file, with its architecture and recipe', () => {
  const run = savedRun(recipe, false);
  const file = exported(run.dir, 'weights.safetensors', config, recipe.model, run.params);
  for (const path of [run.dir, run.file, file]) {
    const ingredient = loadIngredient(path, { useEma: false });
    assert.equal(ingredient.name, path);
    assert.deepEqual(ingredient.params, run.params, path);
    assert.equal(ingredient.model, recipe.model);
    assert.deepEqual(ingredient.config, config);
    assert.deepEqual(ingredient.specs, modelParamSpecs(config));
    assert.equal(ingredient.recipe === null, path === file, `${path}: a checkpoint carries its recipe, a .safetensors file none`);
  }
  assert.equal(loadIngredient(run.dir, { useEma: false }).file, run.file, 'a run directory means its newest checkpoint');
});

test("--use-ema picks the checkpoint's moving average; without one, or from a .safetensors file, it is an error naming the file", () => {
  const withEma = savedRun(applyOverrides(recipe, { ema: '{"decay": 0.99}' }), true);
  assert.deepEqual(loadIngredient(withEma.dir, { useEma: true }).params, withEma.ema);
  assert.deepEqual(loadIngredient(withEma.dir, { useEma: false }).params, withEma.params);

  const without = savedRun(recipe, false);
  assert.throws(
    () => loadIngredient(without.dir, { useEma: true }),
    (err: Error) => err.message.includes(without.file) && /holds no EMA/.test(err.message),
  );
  const file = exported(without.dir, 'plain.safetensors', config, recipe.model, without.params);
  assert.throws(
    () => loadIngredient(file, { useEma: true }),
    (err: Error) => err.message.includes(file) && /one set of weights/.test(err.message),
  );
});

test('nothing loadable is an error naming the path', () => {
  const dir = tempDir();
  assert.throws(() => loadIngredient(join(dir, 'missing'), { useEma: false }), /ingredient .*missing: no such file or directory/);
  assert.throws(() => loadIngredient(dir, { useEma: false }), /ingredient .*: no checkpoint in/);
  const anonymous = exported(dir, 'anonymous.safetensors', config, recipe.model, createModel(config).initParams(0), {});
  assert.throws(
    () => loadIngredient(anonymous, { useEma: false }),
    /ingredient .*anonymous.safetensors: the file's metadata names no model/,
  );
  assert.throws(() => loadIngredient(anonymous, { useEma: false, role: 'model' }), /^Error: model .*anonymous/);
});

/** An ingredient's description, as assertSameArchitecture sees it, for a model and changes to its architecture. */
function info(name: string, model: string, modelArgs: ModelArgs): IngredientInfo {
  const c = createModelConfig(model, modelArgs);
  return { name, file: name, model, modelArgs, config: c, specs: modelParamSpecs(c), recipe: null, data: null };
}

test('ingredients of one architecture pass; every mismatch is an error naming the tensor and both ingredients', () => {
  const base = info('runs/a', recipe.model, recipe.modelArgs);
  assertSameArchitecture(base, info('runs/b', recipe.model, recipe.modelArgs));

  const cases: [string, IngredientInfo, RegExp][] = [
    [
      'another class count',
      info('runs/classes', recipe.model, { ...recipe.modelArgs, numClasses: 5 }),
      /ingredients runs\/a and runs\/classes do not share an architecture: tensor "head.weight" is \[10, 16\] in runs\/a, \[5, 16\] in runs\/classes \(numClasses 10 in runs\/a, 5 in runs\/classes\)/,
    ],
    [
      'an extra tensor (one more block)',
      info('runs/deeper', recipe.model, { ...recipe.modelArgs, depth: 2 }),
      /tensor "blocks.1.norm1.weight" is in runs\/deeper but not in runs\/a/,
    ],
    [
      'a missing tensor (the other way round)',
      info('runs/deeper', recipe.model, { ...recipe.modelArgs, depth: 2 }),
      /tensor "blocks.1.norm1.weight" is in runs\/deeper but not in runs\/a/,
    ],
    [
      'another shape',
      info('runs/wider', recipe.model, { ...recipe.modelArgs, embedDim: 32, numHeads: 2 }),
      /tensor "cls_token" is \[1, 1, 16\] in runs\/a, \[1, 1, 32\] in runs\/wider/,
    ],
    [
      'another model (a distillation token)',
      info('runs/deit', 'deit_fmnist_tiny_distilled', recipe.modelArgs),
      /tensor "pos_embed" is \[1, 17, 16\] in runs\/a, \[1, 18, 16\] in runs\/deit/,
    ],
    [
      'another family',
      info('runs/convnet', 'convnet_fmnist_small', {}),
      /tensor "cls_token" is in runs\/a but not in runs\/convnet \(family vit in runs\/a, convnet in runs\/convnet\)/,
    ],
    [
      'the same tensors in another architecture (head count)',
      info('runs/heads', recipe.model, { ...recipe.modelArgs, numHeads: 4 }),
      /ingredients runs\/a and runs\/heads do not share an architecture: numHeads 2 in runs\/a, 4 in runs\/heads/,
    ],
  ];
  for (const [what, other, message] of cases) {
    const [a, b] = what.startsWith('a missing') ? [other, base] : [base, other];
    assert.throws(() => assertSameArchitecture(a, b), message, what);
  }
  // Two registry names of one architecture are still two models.
  assert.throws(
    () => assertSameArchitecture(info('a.safetensors', 'vit_tiny_patch16_224', {}), info('b.safetensors', 'deit_tiny_patch16_224', {})),
    /a.safetensors is a vit_tiny_patch16_224, b.safetensors a deit_tiny_patch16_224/,
  );
});

test('a .safetensors ingredient and a checkpoint ingredient of different class counts are refused when loaded', () => {
  const run = savedRun(recipe, false);
  const fiveClasses = createModelConfig(recipe.model, { ...recipe.modelArgs, numClasses: 5 });
  const file = exported(run.dir, 'five.safetensors', fiveClasses, recipe.model, createModel(fiveClasses).initParams(3), {
    [META_MODEL]: recipe.model,
    [META_MODEL_ARGS]: JSON.stringify({ ...recipe.modelArgs, numClasses: 5 }),
  });
  const { params: _a, ...first } = loadIngredient(run.dir, { useEma: false });
  const { params: _b, ...second } = loadIngredient(file, { useEma: false });
  assert.throws(
    () => assertSameArchitecture(first, second),
    (err: Error) => err.message.includes('"head.weight"') && err.message.includes(run.dir) && err.message.includes(file),
  );
});

test('an export records its data settings, so the evaluation of two exports needs no data flags (flags still win)', (t) => {
  t.mock.method(console, 'log', () => {});
  const files = [1, 2].map((seed) => {
    const run = savedRun(applyOverrides(recipe, { seed, 'data.holdout': 0.1 }), false);
    const out = join(run.dir, 'export.safetensors');
    runExportCommand({ checkpoint: run.dir, out });
    return out;
  });
  const ingredients = files.map((file) => loadIngredient(file, { useEma: false }));
  for (const ingredient of ingredients) {
    assert.equal(ingredient.recipe, null);
    assert.deepEqual(ingredient.data, exportedData({ ...recipe.data, holdout: 0.1 }, config.numClasses));
  }
  const sources = ingredients.map((i) => ({ name: i.name, data: i.data }));
  assert.deepEqual(resolveEvalData(sources, {}, true), {
    spec: { format: recipe.data.format, path: recipe.data.path, holdout: 0.1, holdoutSeed: recipe.data.holdoutSeed },
    pipeline: recipe.data.evalPipeline,
  });
  assert.equal(resolveEvalData(sources, { data: '/elsewhere' }, true).spec.path, '/elsewhere');
});
