// Conversion between the flat parameter vector and timm's state_dict: the same names, and each
// tensor in timm's layout (PyTorch Linear weights [out, in], the patch conv [D, C, p, p]), so a
// model trained here loads into timm and a timm/DeiT checkpoint loads here. Generic over the
// ParamSpec table: any parameter a model declares converts through its timmPerm, so the convnet's
// state_dict (its PyTorch module's names, convolutions [out, in, kh, kw]) moves the same way.
import { InputError } from '../common/errors.ts';
import { DATA_FORMATS } from '../data/source.ts';
import type { RecipeData } from '../train/recipe.ts';
import type { ModelArgs, ParamSpec } from './model.ts';
import { resamplePosEmbed } from './pos-embed.ts';
import type { Tensor } from './safetensors.ts';

/** Classifier heads (the ViT's head and head_dist, the convnet's head.fc), whose shape depends on the class count: replaced rather than loaded when fine-tuning. */
const HEAD_PATTERN = /^head(_dist)?\./;

/** `data` of row-major `shape` with its axes reordered: result axis k is input axis perm[k]. */
function permute(data: Float32Array, shape: number[], perm: number[]): Float32Array {
  const rank = shape.length;
  const inStrides = new Array<number>(rank);
  for (let axis = rank - 1, stride = 1; axis >= 0; axis--) {
    inStrides[axis] = stride;
    stride *= shape[axis]!;
  }
  const outShape = perm.map((axis) => shape[axis]!);
  const strides = perm.map((axis) => inStrides[axis]!); // input stride of each output axis
  const out = new Float32Array(data.length);
  const index = new Array<number>(rank).fill(0); // odometer over the output, last axis fastest
  let source = 0;
  for (let i = 0; i < out.length; i++) {
    out[i] = data[source]!;
    for (let k = rank - 1; k >= 0; k--) {
      index[k]! += 1;
      source += strides[k]!;
      if (index[k]! < outShape[k]!) break;
      source -= strides[k]! * outShape[k]!;
      index[k] = 0;
    }
  }
  return out;
}

function inversePerm(perm: number[]): number[] {
  const inverse = new Array<number>(perm.length);
  perm.forEach((axis, k) => {
    inverse[axis] = k;
  });
  return inverse;
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

const showShape = (shape: number[]): string => `[${shape.join(', ')}]`;

function numParamsOf(specs: ParamSpec[]): number {
  const last = specs[specs.length - 1];
  return last ? last.offset + last.size : 0;
}

function checkLength(specs: ParamSpec[], flat: Float32Array): void {
  const numParams = numParamsOf(specs);
  if (flat.length !== numParams) throw new Error(`the model has ${numParams} parameters, the vector ${flat.length}`);
}

/** Every parameter as a timm state_dict tensor, in the table's (timm's) order. */
export function exportTimmState(specs: ParamSpec[], flat: Float32Array): Map<string, Tensor> {
  checkLength(specs, flat);
  const state = new Map<string, Tensor>();
  for (const spec of specs) {
    const internal = flat.slice(spec.offset, spec.offset + spec.size);
    state.set(spec.name, { shape: [...spec.timmShape], data: spec.timmPerm ? permute(internal, spec.shape, spec.timmPerm) : internal });
  }
  return state;
}

/**
 * Strict by default. For fine-tuning, allowHeadMismatch lets a head (head.*, head_dist.*) of another
 * class count keep its value from `init`, the model's fresh initialization, and resamples a
 * pos_embed of another grid (another resolution or patch size), as timm does when it creates a
 * pretrained model at another size. A strict load (predict, a teacher) keeps refusing both: there
 * the file is meant to be the model.
 */
export type ImportOptions = { allowHeadMismatch: false } | { allowHeadMismatch: true; init: Float32Array };

export interface ImportResult {
  params: Float32Array;
  /** Head tensors left at their fresh initialization because the file's class count differs. */
  replaced: { name: string; fileShape: number[]; modelShape: number[] }[];
  /** pos_embed's patch tokens resized bicubically from the file's grid to the model's, the prefix tokens kept. */
  posEmbedResampled: { fileShape: number[]; modelShape: number[]; fromGrid: [number, number]; toGrid: [number, number] } | null;
}

/**
 * The square grids of a file's and a model's position embeddings [1, prefix + g*g, D] of the same
 * D, or null when either token count is not the prefix tokens plus a square.
 */
function posEmbedGrids(fileShape: number[], modelShape: number[], numPrefixTokens: number): { from: number; to: number } | null {
  const side = (shape: number[]): number | null => {
    if (shape.length !== 3 || shape[0] !== 1) return null;
    const g = Math.round(Math.sqrt(shape[1]! - numPrefixTokens));
    return g > 0 && g * g === shape[1]! - numPrefixTokens ? g : null;
  };
  const from = side(fileShape);
  const to = side(modelShape);
  return from !== null && to !== null && fileShape[2] === modelShape[2] ? { from, to } : null;
}

/**
 * The flat vector from timm-named tensors. Like PyTorch's strict load_state_dict, every parameter
 * must be present with its exact shape (but for what ImportOptions lets fine-tuning adapt) and the
 * file may hold nothing else: a missing or leftover tensor means the file belongs to another architecture.
 */
export function importTimmState(specs: ParamSpec[], tensors: Map<string, Tensor>, options: ImportOptions): ImportResult {
  let params: Float32Array;
  if (options.allowHeadMismatch) {
    checkLength(specs, options.init);
    params = options.init.slice();
  } else {
    params = new Float32Array(numParamsOf(specs)); // every value is loaded from the file
  }
  const replaced: ImportResult['replaced'] = [];
  let posEmbedResampled: ImportResult['posEmbedResampled'] = null;
  // The class token, and DeiT's distillation token after it: timm's num_prefix_tokens.
  const numPrefixTokens: 1 | 2 = specs.some((s) => s.name === 'dist_token') ? 2 : 1;
  for (const spec of specs) {
    const tensor = tensors.get(spec.name);
    if (!tensor) throw new Error(`tensor "${spec.name}" is missing (the model expects shape ${showShape(spec.timmShape)})`);
    if (!sameShape(tensor.shape, spec.timmShape)) {
      if (options.allowHeadMismatch && HEAD_PATTERN.test(spec.name)) {
        replaced.push({ name: spec.name, fileShape: tensor.shape, modelShape: spec.timmShape });
        continue;
      }
      const grids =
        options.allowHeadMismatch && spec.name === 'pos_embed' ? posEmbedGrids(tensor.shape, spec.timmShape, numPrefixTokens) : null;
      if (grids) {
        // pos_embed has timm's layout internally (no timmPerm): the resampled tensor goes in as is.
        const { from, to } = grids;
        params.set(resamplePosEmbed(tensor.data, [from, from], [to, to], numPrefixTokens, spec.timmShape[2]!), spec.offset);
        posEmbedResampled = { fileShape: tensor.shape, modelShape: spec.timmShape, fromGrid: [from, from], toGrid: [to, to] };
        continue;
      }
      throw new Error(
        `tensor "${spec.name}" has shape ${showShape(tensor.shape)} in the file, the model expects ${showShape(spec.timmShape)}`,
      );
    }
    params.set(spec.timmPerm ? permute(tensor.data, spec.timmShape, inversePerm(spec.timmPerm)) : tensor.data, spec.offset);
  }
  const known = new Set(specs.map((s) => s.name));
  const unexpected = [...tensors.keys()].filter((name) => !known.has(name));
  if (unexpected.length > 0) throw new Error(`the file holds tensors the model does not have: ${unexpected.join(', ')}`);
  return { params, replaced, posEmbedResampled };
}

/**
 * Metadata keys `vit-dist export` and `vit-dist soup` write, so a file names the architecture its
 * tensors belong to and the data it was trained on.
 */
export const META_MODEL = 'model';
export const META_MODEL_ARGS = 'model_args';
export const META_DATA = 'data';

/** The data settings a file of weights records: what chose its held-out images, its pipelines (with their normalization), and the class count. */
export type ExportedData = Pick<RecipeData, 'format' | 'path' | 'holdout' | 'holdoutSeed' | 'trainPipeline' | 'evalPipeline'> & {
  numClasses: number;
};

/** The metadata of a file of weights: its format, model, model arguments and, when known, data settings, beside `extra`. */
export function weightsMetadata(
  model: string,
  modelArgs: ModelArgs,
  data: ExportedData | null,
  extra: Record<string, string>,
): Record<string, string> {
  return {
    format: 'pt', // as timm's and transformers' files: the tensors are a PyTorch state_dict
    [META_MODEL]: model,
    [META_MODEL_ARGS]: JSON.stringify(modelArgs),
    ...(data ? { [META_DATA]: JSON.stringify(data) } : {}),
    ...extra,
  };
}

/** The data settings a recipe trains on, as a file of weights records them. */
export function exportedData(data: RecipeData, numClasses: number): ExportedData {
  const { format, path, holdout, holdoutSeed, trainPipeline, evalPipeline } = data;
  return { format, path, holdout, holdoutSeed, trainPipeline, evalPipeline, numClasses };
}

const EXPORTED_DATA_TYPES: Record<keyof ExportedData, 'string' | 'number'> = {
  format: 'string',
  path: 'string',
  holdout: 'number',
  holdoutSeed: 'number',
  trainPipeline: 'string',
  evalPipeline: 'string',
  numClasses: 'number',
};

/** The data settings stored under `data`, or null when the file has none (a timm file, an older export). `where` names the file in errors. */
export function dataFromMetadata(metadata: Record<string, string>, where: string): ExportedData | null {
  const raw = metadata[META_DATA];
  if (raw === undefined) return null;
  let data: unknown;
  try {
    data = JSON.parse(raw);
  } catch (err) {
    throw new InputError('WEIGHTS_METADATA_INVALID', `${where}: metadata ${META_DATA} is not JSON (${(err as Error).message})`, {
      cause: err,
    });
  }
  const record = (typeof data === 'object' && data !== null ? data : {}) as Record<string, unknown>;
  for (const [key, type] of Object.entries(EXPORTED_DATA_TYPES)) {
    if (typeof record[key] !== type)
      throw new InputError('WEIGHTS_METADATA_INVALID', `${where}: metadata ${META_DATA} lacks ${type} "${key}"`);
  }
  if (!(DATA_FORMATS as readonly unknown[]).includes(record.format))
    throw new InputError('WEIGHTS_METADATA_INVALID', `${where}: metadata ${META_DATA} names an unknown format "${String(record.format)}"`);
  return record as ExportedData;
}

/**
 * The architecture arguments stored under `model_args` (a recipe's modelArgs), or {} when the file
 * has none (a timm file). `where` names the file in errors.
 */
export function modelArgsFromMetadata(metadata: Record<string, string>, where: string): ModelArgs {
  const raw = metadata[META_MODEL_ARGS];
  if (raw === undefined) return {};
  let args: unknown;
  try {
    args = JSON.parse(raw);
  } catch (err) {
    throw new Error(`${where}: metadata ${META_MODEL_ARGS} is not JSON (${(err as Error).message})`, { cause: err });
  }
  // Architecture arguments are numbers and flags; createModelConfig checks their names, the model's constructor their values.
  if (typeof args !== 'object' || args === null || Object.values(args).some((v) => typeof v !== 'number' && typeof v !== 'boolean')) {
    throw new Error(`${where}: metadata ${META_MODEL_ARGS} is not an object of numbers and booleans`);
  }
  return args as ModelArgs;
}
