// Loading a distillation teacher from what vit-dist writes: a run directory, a checkpoint file, or
// the .safetensors of `vit-dist export` (whose metadata names the architecture).
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeCheckpoint } from '../../src/coordinator/checkpoint.ts';
import { selectBackend } from '../../src/model/backend.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { writeSafetensors } from '../../src/model/safetensors.ts';
import { loadTeacher, readSavedWeights } from '../../src/model/teacher.ts';
import { createModel } from '../../src/model/model.ts';
import { exportTimmState, exportedData, weightsMetadata } from '../../src/model/weights.ts';
import { paramDigest } from '../../src/train/digest.ts';
import { loadRecipe, type Recipe } from '../../src/train/recipe.ts';

await selectBackend({ requested: 'cpu' });

const recipe = loadRecipe(join(import.meta.dirname, '../fixtures/fmnist-micro.json'));
const config = createModelConfig(recipe.model, recipe.modelArgs);
const n = 3;
const images = new Float32Array(n * config.imageSize ** 2 * config.inChannels).map((_, i) => Math.sin(i));

/** A run directory holding one checkpoint of `run`'s model (with a moving average when `ema`), and that model's logits on `images`. */
function savedRun(
  run: Recipe = recipe,
  ema = false,
): { dir: string; file: string; params: Float32Array; logits: Float32Array; ema: Float32Array | null } {
  const dir = mkdtempSync(join(tmpdir(), 'vit-dist-teacher-'));
  const model = createModel(createModelConfig(run.model, run.modelArgs));
  const params = model.initParams(7);
  const average = ema ? params.map((v) => v / 2) : null;
  const file = writeCheckpoint(
    join(dir, 'checkpoints'),
    {
      runId: 'teacher',
      step: 5,
      recipe: run,
      numParams: model.numParams,
      worldSize: 1,
      optimizerStep: 5,
      sampler: { seed: 0, step: 5 },
      paramDigest: paramDigest(params),
    },
    { params, optimizerState: {}, ema: average },
  );
  model.setParams(params);
  const logits = model.logits(images, n);
  model.disposeParams();
  return { dir, file, params, logits, ema: average };
}

test('a teacher loads from a run directory, a checkpoint file, or exported safetensors, with the architecture of its recipe', () => {
  const saved = savedRun();
  const exported = join(saved.dir, 'teacher.safetensors');
  writeSafetensors(exported, exportTimmState(createModel(config).params, saved.params), {
    model: recipe.model,
    model_args: JSON.stringify(recipe.modelArgs),
  });
  for (const path of [saved.dir, saved.file, exported]) {
    const teacher = loadTeacher(path);
    assert.deepEqual(teacher.config, config, `${path}: the recipe's modelArgs apply`);
    assert.deepEqual(teacher.logits(images, n), saved.logits, path);
    teacher.disposeParams();
  }
});

test('an unloadable teacher is an error naming its path', () => {
  const saved = savedRun();
  assert.throws(() => loadTeacher(join(saved.dir, 'missing')), /teacher .*missing: no such file or directory/);
  assert.throws(() => loadTeacher(mkdtempSync(join(tmpdir(), 'vit-dist-empty-run-'))), /teacher .*empty-run-.*: no checkpoint in/);
  const anonymous = join(saved.dir, 'anonymous.safetensors');
  writeSafetensors(anonymous, exportTimmState(createModel(config).params, saved.params));
  assert.throws(() => loadTeacher(anonymous), /teacher .*anonymous.safetensors: the file's metadata names no model/);
});

test('a convolutional teacher loads from a checkpoint whose recipe names it, or from its exported safetensors', () => {
  const convRecipe: Recipe = { ...recipe, model: 'convnet_fmnist_small', modelArgs: {} };
  const saved = savedRun(convRecipe);
  const exported = join(saved.dir, 'teacher.safetensors');
  writeSafetensors(exported, exportTimmState(createModel(createModelConfig('convnet_fmnist_small')).params, saved.params), {
    model: 'convnet_fmnist_small',
    model_args: '{}',
  });
  for (const path of [saved.dir, exported]) {
    const teacher = loadTeacher(path);
    assert.equal(teacher.config.family, 'convnet', path);
    assert.deepEqual(teacher.logits(images, n), saved.logits, path);
    teacher.disposeParams();
  }
});

test('readSavedWeights: the weights, their architecture, and the recipe and moving average of a checkpoint', () => {
  const saved = savedRun(recipe, true);
  const fromRun = readSavedWeights(saved.dir, 'ingredient');
  assert.equal(fromRun.file, saved.file);
  assert.equal(fromRun.model, recipe.model);
  assert.deepEqual(fromRun.modelArgs, recipe.modelArgs);
  assert.deepEqual(fromRun.config, config);
  assert.deepEqual(fromRun.params, saved.params);
  assert.deepEqual(fromRun.ema, saved.ema);
  assert.equal(fromRun.recipe?.name, recipe.name);
  assert.deepEqual(fromRun.data, exportedData(recipe.data, config.numClasses));
  // An export records the data settings beside the model; a file without them has none.
  const exported = join(saved.dir, 'model.safetensors');
  writeSafetensors(
    exported,
    exportTimmState(createModel(config).params, saved.params),
    weightsMetadata(recipe.model, recipe.modelArgs, fromRun.data, {}),
  );
  const fromFile = readSavedWeights(exported, 'ingredient');
  assert.deepEqual(
    { ...fromFile, params: null },
    { file: exported, model: recipe.model, modelArgs: recipe.modelArgs, config, params: null, ema: null, recipe: null, data: fromRun.data },
  );
  const withoutData = join(saved.dir, 'without-data.safetensors');
  writeSafetensors(
    withoutData,
    exportTimmState(createModel(config).params, saved.params),
    weightsMetadata(recipe.model, recipe.modelArgs, null, {}),
  );
  assert.equal(readSavedWeights(withoutData, 'ingredient').data, null);
  const badData = join(saved.dir, 'bad-data.safetensors');
  writeSafetensors(badData, exportTimmState(createModel(config).params, saved.params), {
    model: recipe.model,
    data: JSON.stringify({ ...fromRun.data, format: 'jpeg-zip' }),
  });
  assert.throws(
    () => readSavedWeights(badData, 'model'),
    /model .*bad-data\.safetensors: metadata data names an unknown format "jpeg-zip"/,
  );
  assert.deepEqual(fromFile.params, saved.params);
  // Errors name the role and the path.
  assert.throws(
    () => readSavedWeights(join(saved.dir, 'nothing'), 'ingredient'),
    /^Error: ingredient .*nothing: no such file or directory/,
  );
  const otherArch = join(saved.dir, 'other.safetensors');
  writeSafetensors(otherArch, exportTimmState(createModel(config).params, saved.params), { model: 'convnet_fmnist_small' });
  assert.throws(() => readSavedWeights(otherArch, 'model'), /^Error: model .*other\.safetensors: tensor "stem\.conv\.weight" is missing/);
  const badArgs = join(saved.dir, 'bad-args.safetensors');
  writeSafetensors(badArgs, exportTimmState(createModel(config).params, saved.params), {
    model: recipe.model,
    model_args: '{"widths": 3}',
  });
  assert.throws(
    () => readSavedWeights(badArgs, 'teacher'),
    /^Error: teacher .*bad-args\.safetensors: model 'vit_fmnist_tiny' has no argument widths/,
  );
});
