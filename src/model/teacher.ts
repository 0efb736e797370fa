// Saved weights and the model they belong to, as DeiT's distillation teacher (and a soup's
// ingredients) need them: any model vit-dist can load, of any family. Two sources:
// - a vit-dist checkpoint (a run directory, meaning its newest checkpoint, or a .ckpt file): the
//   architecture is its recipe's model and modelArgs, the weights its parameters;
// - a .safetensors file with the state_dict names: the architecture is the `model` (and
//   `model_args`) of its metadata, which `vit-dist export` writes; a file without them names no architecture.
import { existsSync, statSync } from 'node:fs';
import { latestCheckpoint, readCheckpoint } from '../train/checkpoint.ts';
import { validateRecipe, type Recipe } from '../train/recipe.ts';
import { createModel, modelParamSpecs, type ImageClassifier, type ModelArgs, type ModelConfig } from './model.ts';
import { createModelConfig } from './registry.ts';
import { readSafetensors } from './safetensors.ts';
import { META_MODEL, dataFromMetadata, exportedData, importTimmState, modelArgsFromMetadata, type ExportedData } from './weights.ts';

export interface SavedWeights {
  /** The file read: a run directory's newest checkpoint, or the file given. */
  file: string;
  /** The registry name of the architecture, and its changes. */
  model: string;
  modelArgs: ModelArgs;
  config: ModelConfig;
  /** The flat parameter vector in the model's layout. */
  params: Float32Array;
  /** A checkpoint's moving average of the weights when its run kept one; null otherwise and for .safetensors. */
  ema: Float32Array | null;
  /** A checkpoint's recipe; null for a .safetensors file. */
  recipe: Recipe | null;
  /** The data the weights were trained on: a checkpoint's recipe's, a .safetensors file's metadata's; null when the file records none. */
  data: ExportedData | null;
}

/**
 * The weights at `path` and the architecture they belong to. Errors start with `role` and the path
 * ("teacher runs/a: ...") and say why nothing loadable is there.
 */
export function readSavedWeights(path: string, role: string): SavedWeights {
  if (!existsSync(path)) throw new Error(`${role} ${path}: no such file or directory`);
  return path.endsWith('.safetensors') ? fromSafetensors(path, role) : fromCheckpoint(path, role);
}

/**
 * The model at `path` with its weights uploaded, ready for `logits`. Throws an error naming the
 * path when there is nothing loadable there. Needs a TF.js backend selected.
 */
export function loadTeacher(path: string): ImageClassifier {
  const { config, params } = readSavedWeights(path, 'teacher');
  const model = createModel(config);
  if (params.length !== model.numParams)
    throw new Error(`teacher ${path}: holds ${params.length} parameters, its model has ${model.numParams}`);
  model.setParams(params);
  return model;
}

function fromCheckpoint(path: string, role: string): SavedWeights {
  const file = statSync(path).isDirectory() ? latestCheckpoint(path) : path;
  if (!file) throw new Error(`${role} ${path}: no checkpoint in ${path} or its checkpoints/ folder`);
  const { meta, state } = readCheckpoint(file);
  const recipe = validateRecipe(meta.recipe, `the recipe in ${role} checkpoint ${file}`);
  const config = createModelConfig(recipe.model, recipe.modelArgs);
  return {
    file,
    model: recipe.model,
    modelArgs: recipe.modelArgs,
    config,
    params: state.params,
    ema: state.ema,
    recipe,
    data: exportedData(recipe.data, config.numClasses),
  };
}

function fromSafetensors(path: string, role: string): SavedWeights {
  const { tensors, metadata } = readSafetensors(path);
  const model = metadata[META_MODEL];
  if (model === undefined) throw new Error(`${role} ${path}: the file's metadata names no model (vit-dist export writes "${META_MODEL}")`);
  const modelArgs = modelArgsFromMetadata(metadata, `${role} ${path}`);
  const data = dataFromMetadata(metadata, `${role} ${path}`);
  try {
    const config = createModelConfig(model, modelArgs);
    const { params } = importTimmState(modelParamSpecs(config), tensors, { allowHeadMismatch: false });
    return { file: path, model, modelArgs, config, params, ema: null, recipe: null, data };
  } catch (err) {
    throw new Error(`${role} ${path}: ${(err as Error).message}`, { cause: err });
  }
}
