// The teacher of DeiT's distillation: any model vit-dist can load, run forward only. Two sources:
// - a vit-dist checkpoint (a run directory, meaning its newest checkpoint, or a .ckpt file): the
//   architecture is its recipe's model and modelArgs, the weights its parameters;
// - a .safetensors file with timm tensor names: the architecture is the `model` (and `model_args`)
//   of its metadata, which `vit-dist export` writes; a file without them names no architecture.
import { existsSync, statSync } from 'node:fs';
import { latestCheckpoint, readCheckpoint } from '../coordinator/checkpoint.ts';
import { validateRecipe } from '../train/recipe.ts';
import { createModelConfig } from './registry.ts';
import { readSafetensors } from './safetensors.ts';
import { paramSpecs, VisionTransformer, type VitConfig } from './vit.ts';
import { META_MODEL, importTimmState, modelArgsFromMetadata } from './weights.ts';

/**
 * The model at `path` with its weights uploaded, ready for `logits`. Throws an error naming the
 * path when there is nothing loadable there. Needs a TF.js backend selected.
 */
export function loadTeacher(path: string): VisionTransformer {
  if (!existsSync(path)) throw new Error(`teacher ${path}: no such file or directory`);
  const { config, params } = path.endsWith('.safetensors') ? fromSafetensors(path) : fromCheckpoint(path);
  const model = new VisionTransformer(config);
  if (params.length !== model.numParams) throw new Error(`teacher ${path}: holds ${params.length} parameters, its model has ${model.numParams}`);
  model.setParams(params);
  return model;
}

function fromCheckpoint(path: string): { config: VitConfig; params: Float32Array } {
  const file = statSync(path).isDirectory() ? latestCheckpoint(path) : path;
  if (!file) throw new Error(`teacher ${path}: no checkpoint in ${path} or its checkpoints/ folder`);
  const { meta, state } = readCheckpoint(file);
  const recipe = validateRecipe(meta.recipe, `the recipe in teacher checkpoint ${file}`);
  return { config: createModelConfig(recipe.model, recipe.modelArgs), params: state.params };
}

function fromSafetensors(path: string): { config: VitConfig; params: Float32Array } {
  const { tensors, metadata } = readSafetensors(path);
  const name = metadata[META_MODEL];
  if (name === undefined) throw new Error(`teacher ${path}: the file's metadata names no model (vit-dist export writes "${META_MODEL}")`);
  const config = createModelConfig(name, modelArgsFromMetadata(metadata, `teacher ${path}`));
  try {
    return { config, params: importTimmState(paramSpecs(config), tensors, { allowHeadMismatch: false }).params };
  } catch (err) {
    throw new Error(`teacher ${path}: ${(err as Error).message}`);
  }
}
