// `vit-dist export` (a checkpoint's weights as timm-compatible safetensors) and `vit-dist predict`
// (logits of a model on an idx file, a folder of images or a .npy array, written as .npy), plus
// the .npy format they use.
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { latestCheckpoint, readCheckpoint } from '../train/checkpoint.ts';
import { readIdx } from '../data/idx.ts';
import { decodeImage, IMAGE_EXTENSIONS } from '../data/image-folder.ts';
import { Mulberry32 } from '../common/random.ts';
import type { RawImage } from '../data/source.ts';
import { luminance } from '../data/transforms/color.ts';
import { parsePipeline } from '../data/transforms/pipeline.ts';
import type { BackendChoice } from '../model/backend.ts';
import { createModelConfig } from '../model/registry.ts';
import { readSafetensors, writeSafetensors } from '../model/safetensors.ts';
import { createModel, modelParamSpecs, type ModelConfig } from '../model/model.ts';
import {
  META_MODEL,
  dataFromMetadata,
  exportTimmState,
  exportedData,
  importTimmState,
  modelArgsFromMetadata,
  weightsMetadata,
} from '../model/weights.ts';
import { validateRecipe } from '../train/recipe.ts';
import { InputError } from '../common/errors.ts';

/** Images per forward pass in predict: bounds the activations' memory. */
export const DEFAULT_PREDICT_BATCH = 256;
/** The evaluation pipelines predict applies when --pipeline is not given: timm's eval transform for RGB models, Fashion-MNIST's for one channel. */
const DEFAULT_PREDICT_PIPELINES = {
  rgb: (size: number) => `resize_short_center_crop(${size},0.875)|normalize(imagenet)`,
  gray: (size: number) => `resize(${size},${size})|normalize(fashion-mnist)`,
  idx: () => 'normalize(fashion-mnist)',
};

// ---------------------------------------------------------------------------------------------
// .npy (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html): magic, version,
// header length (u16 in version 1, u32 in 2 and 3), a Python dict literal padded with spaces to a
// multiple of 64 bytes, then the raw values. Only little-endian float32 in C order is used here.

const NPY_MAGIC = Buffer.from('\x93NUMPY', 'latin1');
const NPY_ALIGNMENT = 64;
const NPY_FLOAT32 = '<f4';

export interface NpyArray {
  shape: number[];
  data: Float32Array;
}

export function readNpyFloat32(path: string): NpyArray {
  const bytes = readFileSync(path);
  const fail = (problem: string): never => {
    throw new Error(`${path}: ${problem}`);
  };
  if (bytes.length < NPY_MAGIC.length + 4 || !bytes.subarray(0, NPY_MAGIC.length).equals(NPY_MAGIC))
    fail('not a .npy file (bad magic bytes)');
  const major = bytes[NPY_MAGIC.length]!;
  const lengthAt = NPY_MAGIC.length + 2;
  const [headerLength, headerStart] =
    major === 1 ? [bytes.readUInt16LE(lengthAt), lengthAt + 2] : [bytes.readUInt32LE(lengthAt), lengthAt + 4];
  if (headerStart + headerLength > bytes.length) fail('truncated .npy header');
  const header = bytes.subarray(headerStart, headerStart + headerLength).toString('latin1');
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined)
    fail(`unreadable .npy header ${JSON.stringify(header.trim())}`);
  if (descr !== NPY_FLOAT32) fail(`dtype '${descr}' is not supported: expected little-endian float32 ('${NPY_FLOAT32}')`);
  if (fortran === 'True') fail('Fortran-ordered arrays are not supported (save a C-contiguous array)');
  const shape = shapeText!
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const dataStart = headerStart + headerLength;
  if (bytes.length - dataStart !== 4 * count)
    fail(`shape (${shape.join(', ')}) needs ${4 * count} bytes of data, the file holds ${bytes.length - dataStart}`);
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) data[i] = bytes.readFloatLE(dataStart + 4 * i);
  return { shape, data };
}

export function writeNpyFloat32(path: string, shape: number[], data: Float32Array): void {
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(', ');
  let header = `{'descr': '${NPY_FLOAT32}', 'fortran_order': False, 'shape': (${dims}), }`;
  const prefix = NPY_MAGIC.length + 4; // magic, version, u16 header length
  header += `${' '.repeat((NPY_ALIGNMENT - ((prefix + header.length + 1) % NPY_ALIGNMENT)) % NPY_ALIGNMENT)}\n`; // the newline ends the padded header
  const out = Buffer.alloc(prefix + header.length + 4 * data.length);
  NPY_MAGIC.copy(out, 0);
  out[NPY_MAGIC.length] = 1; // version 1.0
  out[NPY_MAGIC.length + 1] = 0;
  out.writeUInt16LE(header.length, NPY_MAGIC.length + 2);
  out.write(header, prefix, 'latin1');
  for (let i = 0; i < data.length; i++) out.writeFloatLE(data[i]!, prefix + header.length + 4 * i);
  writeFileSync(path, out);
}

// ---------------------------------------------------------------------------------------------

export interface ExportFlags {
  checkpoint: string;
  out: string;
  useEma?: boolean;
}

/** A checkpoint file, or the newest checkpoint in a run directory. */
function resolveCheckpoint(path: string): string {
  if (!existsSync(path)) throw new InputError('USAGE', `--checkpoint ${path}: no such file or directory`);
  if (statSync(path).isFile()) return path;
  const latest = latestCheckpoint(path);
  if (!latest) throw new InputError('USAGE', `--checkpoint ${path}: no checkpoint found in ${path} or its checkpoints/ folder`);
  return latest;
}

export function runExportCommand(flags: ExportFlags): void {
  const path = resolveCheckpoint(flags.checkpoint);
  const { meta, state } = readCheckpoint(path);
  const recipe = validateRecipe(meta.recipe, `the recipe in ${path}`);
  if (flags.useEma && !state.ema)
    throw new InputError('USAGE', `--use-ema: checkpoint ${path} holds no EMA of the weights (its recipe keeps none)`);
  const params = flags.useEma ? state.ema! : state.params;
  const config = createModelConfig(recipe.model, recipe.modelArgs);
  writeSafetensors(
    flags.out,
    exportTimmState(modelParamSpecs(config), params),
    weightsMetadata(recipe.model, recipe.modelArgs, exportedData(recipe.data, config.numClasses), { step: String(meta.step) }),
  );
  console.log(
    `exported ${flags.useEma ? 'the EMA weights' : 'the weights'} of ${recipe.model} at step ${meta.step} (${path}) to ${flags.out}`,
  );
}

export interface PredictFlags {
  /** Absent: the model the weights' metadata names. */
  model?: string;
  weights: string;
  input: string;
  out: string;
  backend: BackendChoice;
  batch: number;
  pipeline?: string;
}

/**
 * The architecture: the named model, with the recipe's changes that export recorded when the file
 * was exported from that same model (a file from timm records none and gets the registry's config).
 */
function predictConfig(model: string, metadata: Record<string, string>, weightsPath: string): ModelConfig {
  // `model_args` describe the exported model; they apply only when --model names that model.
  if (metadata[META_MODEL] !== model) return createModelConfig(model);
  return createModelConfig(model, modelArgsFromMetadata(metadata, weightsPath));
}

/**
 * NHWC float32 images for the model: a .npy array as it is; an idx file or a folder of images
 * (sorted by file name; RGB, or gray for a one-channel model) through an evaluation pipeline.
 */
async function readImages(
  path: string,
  config: ModelConfig,
  pipelineText: string | undefined,
): Promise<{ images: Float32Array; n: number; names: string[] | null }> {
  if (!existsSync(path)) throw new InputError('USAGE', `--input ${path}: no such file or directory`);
  const { imageSize, inChannels } = config;
  const expected = [imageSize, imageSize, inChannels];
  const wrongShape = (shape: number[]) =>
    new Error(`--input ${path} has shape [${shape.join(', ')}], the model takes [n, ${expected.join(', ')}]`);
  if (path.endsWith('.npy')) {
    const { shape, data } = readNpyFloat32(path);
    if (shape.length !== 4 || shape.slice(1).some((d, i) => d !== expected[i])) throw wrongShape(shape);
    return { images: data, n: shape[0]!, names: null };
  }
  const folder = statSync(path).isDirectory();
  const names = folder
    ? readdirSync(path)
        .filter((f) => IMAGE_EXTENSIONS.has(extname(f).toLowerCase()))
        .sort()
    : null;
  if (names?.length === 0) throw new InputError('USAGE', `--input ${path}: no ${[...IMAGE_EXTENSIONS].join('/')} files in the folder`);
  const stored = names ? null : readIdx(path);
  // Rank 3 is [n, height, width] of one channel, as MNIST and Fashion-MNIST are stored.
  const storedShape = stored && (stored.shape.length === 3 ? [...stored.shape, 1] : stored.shape);
  if (storedShape && (storedShape.length !== 4 || storedShape[3] !== inChannels)) throw wrongShape(storedShape);
  const text =
    pipelineText ??
    (names
      ? (inChannels === 1 ? DEFAULT_PREDICT_PIPELINES.gray : DEFAULT_PREDICT_PIPELINES.rgb)(imageSize)
      : DEFAULT_PREDICT_PIPELINES.idx());
  const pipeline = parsePipeline(text, { channels: inChannels });
  const n = names ? names.length : storedShape![0]!;
  const sampleSize = imageSize * imageSize * inChannels;
  const images = new Float32Array(n * sampleSize);
  for (let i = 0; i < n; i++) {
    const image = names ? await folderImage(join(path, names[i]!), inChannels) : idxImage(stored!.data, storedShape!, i);
    const shape = pipeline.outputShape(image.height, image.width);
    if (shape.height !== imageSize || shape.width !== imageSize)
      throw new Error(
        `--pipeline "${text}" makes ${shape.height}x${shape.width} images of ${names?.[i] ?? path}, the model takes ${imageSize}x${imageSize}`,
      );
    // Evaluation pipelines draw nothing; a fixed generator keeps a random op (if asked for) reproducible.
    pipeline.apply(image, new Mulberry32(i), images, i * sampleSize);
  }
  return { images, n, names };
}

function idxImage(data: Uint8Array, [, height, width, channels]: number[], index: number): RawImage {
  const size = height! * width! * channels!;
  return { data: data.subarray(index * size, (index + 1) * size), height: height!, width: width!, channels: channels! };
}

async function folderImage(file: string, channels: number): Promise<RawImage> {
  const rgb = await decodeImage(file);
  // PIL's convert('L') luma, as torchvision's Grayscale.
  return channels === 1 ? { data: luminance(rgb), height: rgb.height, width: rgb.width, channels: 1 } : rgb;
}

export async function runPredictCommand(flags: PredictFlags): Promise<void> {
  const { tensors, metadata } = readSafetensors(flags.weights);
  const modelName = flags.model ?? metadata[META_MODEL];
  if (modelName === undefined)
    throw new InputError(
      'USAGE',
      `--weights ${flags.weights}: its metadata names no model (vit-dist export writes "${META_MODEL}"): pass --model`,
    );
  const model = createModel(predictConfig(modelName, metadata, flags.weights));
  const { params } = importTimmState(model.params, tensors, { allowHeadMismatch: false });
  // The weights' own evaluation pipeline applies when they were exported from this very model.
  const recorded = metadata[META_MODEL] === modelName ? dataFromMetadata(metadata, flags.weights)?.evalPipeline : undefined;
  const { images, n, names } = await readImages(flags.input, model.config, flags.pipeline ?? recorded);
  // Loaded only now: the backends (wasm, native TensorFlow) are heavy, and other commands do not need them.
  const { selectBackend } = await import('../model/backend.ts');
  await selectBackend({ requested: flags.backend });
  model.setParams(params);
  const { imageSize, inChannels, numClasses } = model.config;
  const imageValues = imageSize * imageSize * inChannels;
  const logits = new Float32Array(n * numClasses);
  for (let start = 0; start < n; start += flags.batch) {
    const count = Math.min(flags.batch, n - start);
    logits.set(model.logits(images.subarray(start * imageValues), count), start * numClasses);
  }
  model.disposeParams();
  writeNpyFloat32(flags.out, [n, numClasses], logits);
  // Row i of the logits is the i-th file in name order; the list beside them says which.
  if (names) writeFileSync(`${flags.out}.files.txt`, names.map((name) => `${name}\n`).join(''));
  console.log(
    `wrote logits [${n}, ${numClasses}] of ${modelName} on ${flags.input} to ${flags.out}${names ? ` (rows in the order of ${flags.out}.files.txt)` : ''}`,
  );
}
