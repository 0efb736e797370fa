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
import { loadTeacher } from '../../src/model/teacher.ts';
import { VisionTransformer } from '../../src/model/vit.ts';
import { exportTimmState } from '../../src/model/weights.ts';
import { paramDigest } from '../../src/train/digest.ts';
import { loadRecipe } from '../../src/train/recipe.ts';

await selectBackend({ requested: 'cpu' });

const recipe = loadRecipe(join(import.meta.dirname, '../fixtures/fmnist-micro.json'));
const config = createModelConfig(recipe.model, recipe.modelArgs);
const n = 3;
const images = new Float32Array(n * config.imageSize ** 2 * config.inChannels).map((_, i) => Math.sin(i));

/** A run directory holding one checkpoint of the micro recipe's model, and that model's logits on `images`. */
function savedRun(): { dir: string; file: string; params: Float32Array; logits: Float32Array } {
  const dir = mkdtempSync(join(tmpdir(), 'vit-dist-teacher-'));
  const model = new VisionTransformer(config);
  const params = model.initParams(7);
  const file = writeCheckpoint(join(dir, 'checkpoints'), {
    runId: 'teacher', step: 5, recipe, numParams: model.numParams, worldSize: 1, optimizerStep: 5, sampler: { seed: 0, step: 5 }, paramDigest: paramDigest(params),
  }, { params, optimizerState: {}, ema: null });
  model.setParams(params);
  const logits = model.logits(images, n);
  model.disposeParams();
  return { dir, file, params, logits };
}

test('a teacher loads from a run directory, a checkpoint file, or exported safetensors, with the architecture of its recipe', () => {
  const saved = savedRun();
  const exported = join(saved.dir, 'teacher.safetensors');
  writeSafetensors(exported, exportTimmState(new VisionTransformer(config).params, saved.params), { model: recipe.model, model_args: JSON.stringify(recipe.modelArgs) });
  for (const path of [saved.dir, saved.file, exported]) {
    const teacher = loadTeacher(path);
    assert.equal(teacher.config.embedDim, recipe.modelArgs.embedDim, `${path}: the recipe's modelArgs apply`);
    assert.deepEqual(teacher.logits(images, n), saved.logits, path);
    teacher.disposeParams();
  }
});

test('an unloadable teacher is an error naming its path', () => {
  const saved = savedRun();
  assert.throws(() => loadTeacher(join(saved.dir, 'missing')), /teacher .*missing: no such file or directory/);
  assert.throws(() => loadTeacher(mkdtempSync(join(tmpdir(), 'vit-dist-empty-run-'))), /teacher .*empty-run-.*: no checkpoint in/);
  const anonymous = join(saved.dir, 'anonymous.safetensors');
  writeSafetensors(anonymous, exportTimmState(new VisionTransformer(config).params, saved.params));
  assert.throws(() => loadTeacher(anonymous), /teacher .*anonymous.safetensors: the file's metadata names no model/);
});
