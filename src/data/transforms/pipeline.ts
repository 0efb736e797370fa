// A per-sample transform pipeline named by a string in big_vision's style: ops separated by '|',
// each a name with optional arguments in parentheses, e.g. the DeiT training pipeline
//   random_resized_crop(224)|flip_lr|rand_augment(rand-m9-mstd0.5-inc1)|normalize(imagenet)|random_erasing(0.25)
// uint8 ops come first, then normalize exactly once (it writes the float output), then float ops.
// Every random draw comes from the generator passed to apply, op after op, so the pixels of a
// sample depend only on the image and the generator's seed.
// A leading crop or resize (random_resized_crop, inception_crop, resize, center_crop,
// resize_short_center_crop) is also offered as the pipeline's `head`: a source that can decode
// just a region of an image (ImageSource.readRegion) does that op's work while decoding, with the
// op's own draws, and the rest of the pipeline runs on the small image.
import { InputError } from '../../common/errors.ts';
import type { Mulberry32 } from '../../common/random.ts';
import type { ImageRegion, RawImage } from '../source.ts';
import { colorJitter } from './color.ts';
import { randomErasing } from './erasing.ts';
import {
  DEFAULT_CROP_PCT,
  DEFAULT_CROP_RATIO,
  DEFAULT_CROP_SCALE,
  centerCrop,
  centerCropRegion,
  flipLeftRight,
  padRandomCrop,
  randomResizedCrop,
  randomResizedCropRegion,
  resizeShortCenterCrop,
  resizeShortCenterCropRegion,
} from './geometry.ts';
import { NORMALIZATIONS, type NormalizationStats, normalizationTable, normalizeInto } from './normalize.ts';
import {
  BIG_VISION_RANDAUG_HPARAMS,
  bigVisionRandAugment,
  bigVisionRandaugOps,
  parseTimmRandAugmentConfig,
  timmFill,
  timmRandAugment,
} from './rand-augment.ts';
import { INTERPOLATIONS, type Interpolation, resize } from './resize.ts';

export interface Pipeline {
  /** The pipeline's text as given (for logs). */
  readonly text: string;
  /** Channels of the input images (and of the output). */
  readonly channels: number;
  /** Transforms `img` and writes its float32 HWC result to out[offset ...]. */
  apply(img: RawImage, rng: Mulberry32, out: Float32Array, offset: number): void;
  /** The output's shape for an input of this size. */
  outputShape(inputHeight: number, inputWidth: number): { height: number; width: number; channels: number };
  /** The leading crop or resize as a region for a source to decode, or null when the pipeline starts otherwise. */
  readonly head: PipelineHead | null;
}

/**
 * A pipeline split after its first op, for sources that decode regions: region() then rest()
 * draw from the generator what apply() would.
 */
export interface PipelineHead {
  /**
   * The first op's region of an image of the stored size height x width, drawing the op's random
   * numbers from `rng`; null (without drawing) when this image needs the op itself, as a centre
   * crop larger than the image does: then apply() the whole pipeline to the whole image.
   */
  region(height: number, width: number, rng: Mulberry32): ImageRegion | null;
  /** The ops after the first on the region the source decoded; as apply(). */
  rest(img: RawImage, rng: Mulberry32, out: Float32Array, offset: number): void;
}

type ArgValue = number | string;

interface ArgSpec {
  readonly name: string;
  readonly type: 'integer' | 'number' | 'string';
  /** Inclusive bounds of a numeric argument. */
  readonly min?: number;
  readonly max?: number;
  /** Above this but not equal (e.g. a probability's or a fraction's 0). */
  readonly above?: number;
  readonly choices?: readonly string[];
  /** Present on optional arguments, which follow the required ones. */
  readonly default?: ArgValue;
  /** An optional argument without a default: absent, it is undefined. */
  readonly optional?: boolean;
}

/** What an op's builder may use besides its arguments. */
interface BuildContext {
  readonly channels: number;
  /** The pipeline's normalization (timm's RandAugment fills with its mean). */
  readonly stats: NormalizationStats;
}

interface Uint8Stage {
  apply(img: RawImage, rng: Mulberry32): RawImage;
  outputSize(height: number, width: number): readonly [number, number];
  /** For a crop or resize a source can do while decoding: the region apply() would take (see PipelineHead.region). */
  region?(height: number, width: number, rng: Mulberry32): ImageRegion | null;
}

interface FloatStage {
  apply(data: Float32Array, offset: number, height: number, width: number, channels: number, rng: Mulberry32): void;
}

/** Parsed arguments in the order of the op's ArgSpec; an absent optional argument without default is undefined. */
type Args = readonly (ArgValue | undefined)[];

type OpSpec =
  | { readonly stage: 'uint8'; readonly args: readonly ArgSpec[]; readonly build: (args: Args, ctx: BuildContext) => Uint8Stage }
  | { readonly stage: 'normalize'; readonly args: readonly ArgSpec[]; readonly build: (args: Args, channels: number) => NormalizationStats }
  | { readonly stage: 'float'; readonly args: readonly ArgSpec[]; readonly build: (args: Args) => FloatStage };

/** The code of an error in the argument values of one op, raised by its builder; the pipeline adds the op's label. */
const BAD_ARGUMENT = 'PIPELINE_BAD_ARGUMENT';

const sizeArg = (name: string): ArgSpec => ({ name, type: 'integer', min: 1 });
const interpolationArg = (fallback: Interpolation): ArgSpec => ({
  name: 'interpolation',
  type: 'string',
  choices: INTERPOLATIONS,
  default: fallback,
});
const square = (size: number) => (): readonly [number, number] => [size, size];
const sameSize = (height: number, width: number): readonly [number, number] => [height, width];

/** big_vision's inception_crop defaults: area_min 5 (%), area_max 100; aspect range (0.75, 1.33) of decode_jpeg_and_inception_crop and sample_distorted_bounding_box; method bilinear. */
const INCEPTION_AREA_MIN_PCT = 5;
const INCEPTION_AREA_MAX_PCT = 100;
const INCEPTION_RATIO: readonly [number, number] = [0.75, 1.33];
const PERCENT = 100;
/** big_vision's get_randaug defaults. */
const RANDAUG_DEFAULT_LAYERS = 2;
const RANDAUG_DEFAULT_MAGNITUDE = 10;
/** DeiT's re_prob. */
const DEFAULT_ERASING_PROBABILITY = 0.25;
const FLIP_PROBABILITY = 0.5;

/** Every op a pipeline may name: its stage, its arguments and how to build it. */
export const PIPELINE_OPS: Readonly<Record<string, OpSpec>> = {
  random_resized_crop: {
    stage: 'uint8',
    args: [
      sizeArg('size'),
      { name: 'scale_min', type: 'number', above: 0, max: 1, default: DEFAULT_CROP_SCALE[0] },
      { name: 'scale_max', type: 'number', above: 0, max: 1, default: DEFAULT_CROP_SCALE[1] },
      interpolationArg('bicubic'),
    ],
    build: ([size, scaleMin, scaleMax, interpolation]) => {
      if ((scaleMin as number) > (scaleMax as number))
        throw new InputError(BAD_ARGUMENT, `scale_min ${scaleMin} is above scale_max ${scaleMax}`);
      const options = {
        size: size as number,
        scale: [scaleMin as number, scaleMax as number] as const,
        ratio: DEFAULT_CROP_RATIO,
        interpolation: interpolation as Interpolation,
      };
      return {
        apply: (img, rng) => randomResizedCrop(img, rng, options),
        outputSize: square(options.size),
        region: (height, width, rng) => randomResizedCropRegion(height, width, rng, options),
      };
    },
  },
  // big_vision's inception_crop (pp/ops_image.py) samples its box with TF's
  // sample_distorted_bounding_box; here the box comes from torchvision's algorithm with
  // big_vision's area range (percent, default 5..100) and aspect range, resized bilinearly
  // (big_vision's default method; this resize antialiases when downscaling, TF's default does not).
  inception_crop: {
    stage: 'uint8',
    args: [
      sizeArg('size'),
      { name: 'area_min', type: 'number', above: 0, max: PERCENT, default: INCEPTION_AREA_MIN_PCT },
      { name: 'area_max', type: 'number', above: 0, max: PERCENT, default: INCEPTION_AREA_MAX_PCT },
    ],
    build: ([size, areaMin, areaMax]) => {
      if ((areaMin as number) > (areaMax as number)) throw new InputError(BAD_ARGUMENT, `area_min ${areaMin} is above area_max ${areaMax}`);
      const options = {
        size: size as number,
        scale: [(areaMin as number) / PERCENT, (areaMax as number) / PERCENT] as const,
        ratio: INCEPTION_RATIO,
        interpolation: 'bilinear' as const,
      };
      return {
        apply: (img, rng) => randomResizedCrop(img, rng, options),
        outputSize: square(options.size),
        region: (height, width, rng) => randomResizedCropRegion(height, width, rng, options),
      };
    },
  },
  flip_lr: {
    stage: 'uint8',
    args: [],
    build: () => ({ apply: (img, rng) => (rng.next() < FLIP_PROBABILITY ? flipLeftRight(img) : img), outputSize: sameSize }),
  },
  rand_augment: {
    stage: 'uint8',
    args: [{ name: 'config', type: 'string' }],
    build: ([config], ctx) => {
      let parsed: ReturnType<typeof parseTimmRandAugmentConfig>;
      try {
        parsed = parseTimmRandAugmentConfig(config as string);
      } catch (error) {
        throw new InputError(BAD_ARGUMENT, (error as Error).message, { cause: error });
      }
      const fill = timmFill(ctx.stats.mean);
      return { apply: (img, rng) => timmRandAugment(img, rng, parsed, fill), outputSize: sameSize };
    },
  },
  // The optional translate_const and cutout_const (pixels at level 10; big_vision's 100 and 40,
  // sized for 224 px) let small images keep a proportionate augmentation.
  randaug: {
    stage: 'uint8',
    args: [
      { name: 'num_layers', type: 'integer', min: 1, default: RANDAUG_DEFAULT_LAYERS },
      { name: 'magnitude', type: 'number', min: 0, default: RANDAUG_DEFAULT_MAGNITUDE },
      { name: 'translate_const', type: 'number', min: 0, default: BIG_VISION_RANDAUG_HPARAMS.translateConst },
      { name: 'cutout_const', type: 'number', min: 0, default: BIG_VISION_RANDAUG_HPARAMS.cutoutConst },
    ],
    build: ([numLayers, magnitude, translateConst, cutoutConst]) => {
      const ops = bigVisionRandaugOps({ translateConst: translateConst as number, cutoutConst: cutoutConst as number });
      return {
        apply: (img, rng) => bigVisionRandAugment(img, rng, numLayers as number, magnitude as number, ops),
        outputSize: sameSize,
      };
    },
  },
  color_jitter: {
    stage: 'uint8',
    args: [
      { name: 'brightness', type: 'number', min: 0 },
      { name: 'contrast', type: 'number', min: 0 },
      { name: 'saturation', type: 'number', min: 0 },
    ],
    build: ([brightness, contrast, saturation]) => {
      const options = { brightness: brightness as number, contrast: contrast as number, saturation: saturation as number };
      return { apply: (img, rng) => colorJitter(img, rng, options), outputSize: sameSize };
    },
  },
  resize: {
    stage: 'uint8',
    args: [sizeArg('height'), sizeArg('width'), interpolationArg('bilinear')],
    build: ([height, width, interpolation]) => ({
      apply: (img) => resize(img, height as number, width as number, interpolation as Interpolation),
      outputSize: () => [height as number, width as number],
      region: (storedHeight, storedWidth) => ({
        box: { top: 0, left: 0, height: storedHeight, width: storedWidth },
        height: height as number,
        width: width as number,
        interpolation: interpolation as Interpolation,
      }),
    }),
  },
  center_crop: {
    stage: 'uint8',
    args: [sizeArg('size')],
    build: ([size]) => ({
      apply: (img) => centerCrop(img, size as number),
      outputSize: square(size as number),
      region: (height, width) => centerCropRegion(height, width, size as number),
    }),
  },
  resize_short_center_crop: {
    stage: 'uint8',
    args: [sizeArg('size'), { name: 'crop_pct', type: 'number', above: 0, max: 1, default: DEFAULT_CROP_PCT }],
    build: ([size, cropPct]) => ({
      apply: (img) => resizeShortCenterCrop(img, size as number, cropPct as number),
      outputSize: square(size as number),
      region: (height, width) => resizeShortCenterCropRegion(height, width, size as number, cropPct as number),
    }),
  },
  pad_random_crop: {
    stage: 'uint8',
    args: [sizeArg('size'), { name: 'pad', type: 'integer', min: 0 }],
    build: ([size, pad]) => ({
      apply: (img, rng) => padRandomCrop(img, rng, size as number, pad as number),
      outputSize: square(size as number),
    }),
  },
  // normalize(NAME) with a named set of per-channel statistics, or normalize(MEAN, STD) with one
  // mean and std for every channel (big_vision's value_range(-1, 1) is normalize(0.5, 0.5)).
  normalize: {
    stage: 'normalize',
    args: [
      { name: 'stats', type: 'string' },
      { name: 'std', type: 'number', above: 0, optional: true },
    ],
    build: ([stats, std], channels) => {
      if (std === undefined) {
        const named = NORMALIZATIONS[stats as string];
        if (!named)
          throw new InputError(
            BAD_ARGUMENT,
            `argument stats must be one of ${Object.keys(NORMALIZATIONS).join(', ')} or a mean followed by a std, got "${stats}"`,
          );
        return named;
      }
      const mean = Number(stats);
      if (stats === '' || !Number.isFinite(mean))
        throw new InputError(BAD_ARGUMENT, `argument stats must be a number when a std follows, got "${stats}"`);
      return { mean: new Array<number>(channels).fill(mean), std: new Array<number>(channels).fill(std as number) };
    },
  },
  random_erasing: {
    stage: 'float',
    args: [{ name: 'probability', type: 'number', min: 0, max: 1, default: DEFAULT_ERASING_PROBABILITY }],
    build: ([probability]) => ({
      apply: (data, offset, height, width, channels, rng) =>
        randomErasing(data, offset, height, width, channels, rng, { probability: probability as number }),
    }),
  },
};

interface OpCall {
  readonly name: string;
  readonly spec: OpSpec;
  readonly args: Args;
  /** "op 2 (flip_lr)" for error messages. */
  readonly label: string;
}

const OP_SYNTAX = /^([a-z_][a-z0-9_]*)\s*(?:\(([^()]*)\))?$/;
const INTEGER_SYNTAX = /^[+-]?\d+$/;
const QUOTED = /^(['"])(.*)\1$/;

function describeArgs(spec: OpSpec): string {
  const describe = (a: ArgSpec): string => (a.default !== undefined ? `${a.name}=${a.default}` : a.optional ? `[${a.name}]` : a.name);
  return spec.args.length === 0 ? 'no arguments' : spec.args.map(describe).join(', ');
}

function coerce(raw: string, arg: ArgSpec, fail: (why: string) => never): ArgValue {
  if (arg.type === 'string') {
    const value = QUOTED.exec(raw)?.[2] ?? raw;
    if (arg.choices && !arg.choices.includes(value)) fail(`argument ${arg.name} must be one of ${arg.choices.join(', ')}, got "${value}"`);
    return value;
  }
  const value = Number(raw);
  if (raw === '' || !Number.isFinite(value) || (arg.type === 'integer' && !INTEGER_SYNTAX.test(raw))) {
    fail(`argument ${arg.name} must be ${arg.type === 'integer' ? 'an integer' : 'a number'}, got "${raw}"`);
  }
  const bounds = [
    arg.above !== undefined ? `> ${arg.above}` : arg.min !== undefined ? `>= ${arg.min}` : '',
    arg.max !== undefined ? `<= ${arg.max}` : '',
  ]
    .filter(Boolean)
    .join(' and ');
  const outside =
    (arg.above !== undefined && !(value > arg.above)) ||
    (arg.min !== undefined && value < arg.min) ||
    (arg.max !== undefined && value > arg.max);
  if (outside) fail(`argument ${arg.name} must be ${bounds}, got ${raw}`);
  return value;
}

function parseCall(source: string, index: number, pipelineText: string): OpCall {
  const where = `pipeline "${pipelineText}": op ${index + 1}`;
  const text = source.trim();
  if (text === '') throw new InputError('PIPELINE_INVALID', `${where} is empty (ops are separated by "|")`);
  const match = OP_SYNTAX.exec(text);
  if (!match) throw new InputError('PIPELINE_INVALID', `${where} "${text}" is not NAME or NAME(ARG, ...)`);
  const name = match[1]!;
  const spec = PIPELINE_OPS[name];
  if (!spec) throw new InputError('PIPELINE_INVALID', `${where}: unknown op "${name}" (known: ${Object.keys(PIPELINE_OPS).join(', ')})`);
  const label = `${where} (${name})`;
  const fail = (why: string): never => {
    throw new InputError('PIPELINE_INVALID', `${label}: ${why}`);
  };
  const inner = match[2]?.trim() ?? '';
  const raws = inner === '' ? [] : inner.split(',').map((s) => s.trim());
  const required = spec.args.filter((a) => a.default === undefined && !a.optional).length;
  if (raws.length < required || raws.length > spec.args.length) {
    const expected = required === spec.args.length ? `${required}` : `${required} to ${spec.args.length}`;
    fail(`takes ${expected} argument(s) (${describeArgs(spec)}), got ${raws.length}`);
  }
  const args = spec.args.map((arg, i) => (i < raws.length ? coerce(raws[i]!, arg, fail) : arg.default));
  return { name, spec, args, label };
}

/**
 * Parses a pipeline for images of `input.channels` channels. Throws, naming the op and the
 * argument, on an unknown op, a wrong argument count, type or range, a normalization for another
 * channel count, and a missing, repeated or misplaced normalize.
 */
export function parsePipeline(text: string, input: { channels: number }): Pipeline {
  const { channels } = input;
  if (channels !== 1 && channels !== 3)
    throw new InputError('PIPELINE_INVALID', `pipeline "${text}": input images have 1 or 3 channels, got ${channels}`);
  const calls = text.split('|').map((source, i) => parseCall(source, i, text));
  const normalizeAt = calls.map((c, i) => (c.spec.stage === 'normalize' ? i : -1)).filter((i) => i >= 0);
  if (normalizeAt.length === 0)
    throw new InputError(
      'PIPELINE_INVALID',
      `pipeline "${text}": no normalize op; a pipeline must end its uint8 ops with normalize(${Object.keys(NORMALIZATIONS).join('|')})`,
    );
  if (normalizeAt.length > 1)
    throw new InputError(
      'PIPELINE_INVALID',
      `pipeline "${text}": normalize appears ${normalizeAt.length} times (ops ${normalizeAt.map((i) => i + 1).join(', ')}); it must appear once`,
    );
  const split = normalizeAt[0]!;
  for (const [i, call] of calls.entries()) {
    if (i < split && call.spec.stage === 'float')
      throw new InputError('PIPELINE_INVALID', `${call.label} works on normalized float pixels and must come after normalize`);
    if (i > split && call.spec.stage === 'uint8')
      throw new InputError('PIPELINE_INVALID', `${call.label} works on uint8 pixels and must come before normalize`);
  }
  const build = <T>(call: OpCall, make: () => T): T => {
    try {
      return make();
    } catch (error) {
      if (error instanceof InputError && error.code === BAD_ARGUMENT)
        throw new InputError(BAD_ARGUMENT, `${call.label}: ${error.message}`, { cause: error });
      throw error;
    }
  };
  const normalizeCall = calls[split]!;
  const stats = build(normalizeCall, () =>
    (normalizeCall.spec as Extract<OpSpec, { stage: 'normalize' }>).build(normalizeCall.args, channels),
  );
  if (stats.mean.length !== channels) {
    throw new InputError(
      'PIPELINE_INVALID',
      `${normalizeCall.label}: argument stats "${normalizeCall.args[0]}" is for ${stats.mean.length}-channel images, the input has ${channels}`,
    );
  }
  const table = normalizationTable(stats);
  const ctx: BuildContext = { channels, stats };
  const uint8Stages: Uint8Stage[] = [];
  const floatStages: FloatStage[] = [];
  for (const call of calls) {
    const spec = call.spec;
    if (spec.stage === 'uint8') uint8Stages.push(build(call, () => spec.build(call.args, ctx)));
    else if (spec.stage === 'float') floatStages.push(build(call, () => spec.build(call.args)));
  }
  const outputShape = (inputHeight: number, inputWidth: number) => {
    let size: readonly [number, number] = [inputHeight, inputWidth];
    for (const stage of uint8Stages) size = stage.outputSize(size[0], size[1]);
    return { height: size[0], width: size[1], channels };
  };
  const run = (img: RawImage, rng: Mulberry32, out: Float32Array, offset: number, firstStage: number): void => {
    if (img.channels !== channels)
      throw new RangeError(`pipeline "${text}": built for ${channels}-channel images, got ${img.channels} channels`);
    let current = img;
    for (let s = firstStage; s < uint8Stages.length; s++) current = uint8Stages[s]!.apply(current, rng);
    normalizeInto(current, table, out, offset);
    for (const stage of floatStages) stage.apply(out, offset, current.height, current.width, channels, rng);
  };
  const region = uint8Stages[0]?.region;
  return {
    text,
    channels,
    outputShape,
    apply: (img, rng, out, offset) => run(img, rng, out, offset, 0),
    head: region ? { region, rest: (img, rng, out, offset) => run(img, rng, out, offset, 1) } : null,
  };
}
