// RandAugment (Cubuk et al., 2019) in its two reference forms:
// (a) timm's (timm/data/auto_augment.py: rand_augment_transform, RandAugment, AugmentOp), as DeiT
//     trains with 'rand-m9-mstd0.5-inc1', on PIL images: ops chosen uniformly with replacement, each
//     applied with probability 0.5 at a magnitude drawn around M, geometric ops bicubic (DeiT's
//     train interpolation) with timm's img_mean fill;
// (b) big_vision's randaug(num_layers, magnitude) (big_vision/pp/autoaugment.py,
//     distort_image_with_randaugment, forked from the TF EfficientNet autoaugment.py), as AugReg
//     trains: each layer applies one uniformly chosen op of 16, always, at magnitude M (above 10 it
//     extrapolates), geometric ops nearest-neighbour (tensorflow_addons' default) filled with 128.
// Both map a magnitude to op arguments with the same level functions over a maximum level of 10
// (timm's _LEVEL_DENOM, TF's _MAX_LEVEL), which are shared here; the pixel operations are
// PIL's, shared with color jitter (color.ts, tone.ts, affine.ts).
// Grayscale images go through the same ops channel-wise: Color (saturation) leaves them as they
// are (a gray image is its own grayscale), contrast blends with their mean, fills take one value.
import { gaussian, type Mulberry32 } from '../../common/random.ts';
import type { RawImage } from '../source.ts';
import { type AffineMatrix, fromIndexConvention, pilRotateMatrix, tfRotateMatrix, warpAffine } from './affine.ts';
import { adjustBrightness, adjustContrast, adjustSaturation, adjustSharpness } from './color.ts';
import { randomInt, roundHalfEven, uniform } from './draws.ts';
import { createImage } from './image.ts';
import { PIL_EQUALIZE_DIVISOR, TF_EQUALIZE_DIVISOR, autocontrast, equalize, invert, posterize, solarize, solarizeAdd } from './tone.ts';

/** One RandAugment op: the image, the (noisy) magnitude, the generator for its sign or position draws, the fill per channel. */
export type RandAugmentOp = (img: RawImage, magnitude: number, rng: Mulberry32, fill: readonly number[]) => RawImage;

// ---- Level functions (timm's LEVEL_TO_ARG / TF's level_to_arg) ----

const MAX_LEVEL = 10;
const ROTATE_MAX_DEGREES = 30;
const SHEAR_MAX = 0.3;
const POSTERIZE_MAX_BITS = 4;
const SOLARIZE_LEVELS = 256;
const SOLARIZE_ADD_MAX = 110;
/** _enhance_level_to_arg: factor 0.1 at level 0 to 1.9 at level 10. */
const ENHANCE_MIN = 0.1;
const ENHANCE_SPAN = 1.8;
/** timm's _enhance_increasing_level_to_arg: 1 ± up to 0.9, kept >= 0.1. */
const ENHANCE_INCREASING_SPAN = 0.9;

/**
 * timm's _randomly_negate: negative when the draw is above 1/2 (one draw). TF's
 * _randomly_negate_tensor negates on the other half; the distribution is the same.
 */
function randomlyNegate(rng: Mulberry32, v: number): number {
  return rng.next() > 0.5 ? -v : v;
}

const rotateDegrees = (m: number, rng: Mulberry32): number => randomlyNegate(rng, (m / MAX_LEVEL) * ROTATE_MAX_DEGREES);
const shearFactor = (m: number, rng: Mulberry32): number => randomlyNegate(rng, (m / MAX_LEVEL) * SHEAR_MAX);
const posterizeBits = (m: number): number => Math.trunc((m / MAX_LEVEL) * POSTERIZE_MAX_BITS);
const solarizeThreshold = (m: number): number => Math.trunc((m / MAX_LEVEL) * SOLARIZE_LEVELS);
const solarizeAddAmount = (m: number): number => Math.trunc((m / MAX_LEVEL) * SOLARIZE_ADD_MAX);
const enhanceFactor = (m: number): number => (m / MAX_LEVEL) * ENHANCE_SPAN + ENHANCE_MIN;
const enhanceIncreasingFactor = (m: number, rng: Mulberry32): number =>
  Math.max(ENHANCE_MIN, 1 + randomlyNegate(rng, (m / MAX_LEVEL) * ENHANCE_INCREASING_SPAN));

// ---- (a) timm ----

/** timm's AugmentOp applies each chosen op with this probability (rand_augment_ops: prob=0.5). */
const TIMM_OP_PROBABILITY = 0.5;
/** timm's _translate_rel_level_to_arg default: up to 45% of the image side. */
const TIMM_TRANSLATE_PCT = 0.45;
/** hparams['interpolation'] that timm's create_transform passes with DeiT's train_interpolation 'bicubic'. */
const TIMM_WARP = 'bicubic';
/** mstd above this means uniform magnitudes in [0, M] (rand_augment_transform). */
const TIMM_UNIFORM_MSTD = 100;
const TIMM_DEFAULT_LAYERS = 2;

function pilWarp(img: RawImage, m: AffineMatrix, fill: readonly number[]): RawImage {
  return warpAffine(img, m, TIMM_WARP, fill);
}

const TIMM_OPS = {
  AutoContrast: (img) => autocontrast(img),
  Equalize: (img) => equalize(img, PIL_EQUALIZE_DIVISOR),
  Invert: (img) => invert(img),
  Rotate: (img, m, rng, fill) => pilWarp(img, pilRotateMatrix(img.height, img.width, rotateDegrees(m, rng)), fill),
  Posterize: (img, m) => posterize(img, posterizeBits(m)),
  PosterizeIncreasing: (img, m) => posterize(img, POSTERIZE_MAX_BITS - posterizeBits(m)),
  Solarize: (img, m) => solarize(img, solarizeThreshold(m)),
  SolarizeIncreasing: (img, m) => solarize(img, SOLARIZE_LEVELS - solarizeThreshold(m)),
  SolarizeAdd: (img, m) => solarizeAdd(img, solarizeAddAmount(m)),
  Color: (img, m) => adjustSaturation(img, enhanceFactor(m)),
  ColorIncreasing: (img, m, rng) => adjustSaturation(img, enhanceIncreasingFactor(m, rng)),
  Contrast: (img, m) => adjustContrast(img, enhanceFactor(m)),
  ContrastIncreasing: (img, m, rng) => adjustContrast(img, enhanceIncreasingFactor(m, rng)),
  Brightness: (img, m) => adjustBrightness(img, enhanceFactor(m)),
  BrightnessIncreasing: (img, m, rng) => adjustBrightness(img, enhanceIncreasingFactor(m, rng)),
  Sharpness: (img, m) => adjustSharpness(img, enhanceFactor(m)),
  SharpnessIncreasing: (img, m, rng) => adjustSharpness(img, enhanceIncreasingFactor(m, rng)),
  ShearX: (img, m, rng, fill) => pilWarp(img, [1, shearFactor(m, rng), 0, 0, 1, 0], fill),
  ShearY: (img, m, rng, fill) => pilWarp(img, [1, 0, 0, shearFactor(m, rng), 1, 0], fill),
  TranslateXRel: (img, m, rng, fill) =>
    pilWarp(img, [1, 0, randomlyNegate(rng, (m / MAX_LEVEL) * TIMM_TRANSLATE_PCT) * img.width, 0, 1, 0], fill),
  TranslateYRel: (img, m, rng, fill) =>
    pilWarp(img, [1, 0, 0, 0, 1, randomlyNegate(rng, (m / MAX_LEVEL) * TIMM_TRANSLATE_PCT) * img.height], fill),
} satisfies Record<string, RandAugmentOp>;

export type TimmOpName = keyof typeof TIMM_OPS;
/** timm's NAME_TO_OP with LEVEL_TO_ARG folded in, PIL semantics. */
export const TIMM_RAND_AUGMENT_OPS: Readonly<Record<TimmOpName, RandAugmentOp>> = TIMM_OPS;

/** timm's _RAND_TRANSFORMS. */
export const TIMM_RAND_TRANSFORMS: readonly TimmOpName[] = [
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'SolarizeAdd',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateXRel',
  'TranslateYRel',
];
/** timm's _RAND_INCREASING_TRANSFORMS (config 'inc1'): severity grows with the magnitude for every op. */
export const TIMM_RAND_INCREASING_TRANSFORMS: readonly TimmOpName[] = [
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'PosterizeIncreasing',
  'SolarizeIncreasing',
  'SolarizeAdd',
  'ColorIncreasing',
  'ContrastIncreasing',
  'BrightnessIncreasing',
  'SharpnessIncreasing',
  'ShearX',
  'ShearY',
  'TranslateXRel',
  'TranslateYRel',
];

export interface TimmRandAugmentConfig {
  /** 'm': the magnitude M (default 10). */
  readonly magnitude: number;
  /** 'n': ops per image (default 2). */
  readonly numLayers: number;
  /** 'mstd': std of the per-op magnitude noise; Infinity (mstd > 100) draws uniformly in [0, M]. */
  readonly magnitudeStd: number;
  /** 'mmax': the magnitude is clipped to [0, mmax] (default 10). */
  readonly magnitudeMax: number;
  /** 'inc1': the increasing op set. */
  readonly increasing: boolean;
}

/**
 * Parses timm's config string, e.g. 'rand-m9-mstd0.5-inc1': 'rand' then '-'-separated sections
 * of a key and a number (m, n, mstd, mmax, inc). timm ignores sections without a number and
 * treats any 'incN' as inc1 (bool('0') is True); here both are errors, as is the 'w' weight
 * choice (not implemented).
 */
export function parseTimmRandAugmentConfig(text: string): TimmRandAugmentConfig {
  const fail = (why: string): never => {
    throw new Error(
      `RandAugment config "${text}": ${why} (expected e.g. rand-m9-mstd0.5-inc1: m magnitude, n ops, mstd magnitude noise, mmax magnitude ceiling, inc 0|1)`,
    );
  };
  const [head, ...sections] = text.trim().split('-');
  if (head !== 'rand') fail(`must start with "rand", got "${head}"`);
  let magnitude = MAX_LEVEL;
  let numLayers = TIMM_DEFAULT_LAYERS;
  let magnitudeStd = 0;
  let magnitudeMax = MAX_LEVEL;
  let increasing = false;
  const integer = (key: string, value: string, min: number): number => {
    const v = Number(value);
    if (!/^\d+$/.test(value) || v < min) fail(`section "${key}${value}" needs an integer >= ${min}`);
    return v;
  };
  for (const section of sections) {
    const match = /^([a-z]+)(\d.*)$/.exec(section);
    if (!match) fail(`section "${section}" is not a key followed by a number`);
    const [, key, value] = match!;
    switch (key) {
      case 'm':
        magnitude = integer(key, value!, 0);
        break;
      case 'n':
        numLayers = integer(key, value!, 1);
        break;
      case 'mmax':
        magnitudeMax = integer(key, value!, 1);
        break;
      case 'inc': {
        const v = integer(key, value!, 0);
        if (v > 1) fail(`section "${section}" must be inc0 or inc1`);
        increasing = v === 1;
        break;
      }
      case 'mstd': {
        const v = Number(value);
        if (!(Number.isFinite(v) && v >= 0)) fail(`section "${section}" needs a number >= 0`);
        magnitudeStd = v > TIMM_UNIFORM_MSTD ? Infinity : v;
        break;
      }
      case 'w':
        fail('weighted op choice ("w") is not supported');
        break;
      default:
        fail(`unknown section "${section}"`);
    }
  }
  return { magnitude, numLayers, magnitudeStd, magnitudeMax, increasing };
}

/** timm's img_mean fill: each channel mean of the normalization as a uint8 level, round(255 · mean). */
export function timmFill(mean: readonly number[]): number[] {
  return mean.map((m) => Math.min(255, roundHalfEven(255 * m)));
}

/**
 * timm's RandAugment.__call__: numLayers op indices drawn first (uniform, with replacement), then
 * for each op AugmentOp.__call__: one draw for the 0.5 probability, the magnitude noise (2 draws
 * for a Gaussian, 1 for a uniform) if applied, then the op's own sign draw if it has one.
 */
export function timmRandAugment(img: RawImage, rng: Mulberry32, config: TimmRandAugmentConfig, fill: readonly number[]): RawImage {
  const names = config.increasing ? TIMM_RAND_INCREASING_TRANSFORMS : TIMM_RAND_TRANSFORMS;
  const chosen: TimmOpName[] = [];
  for (let i = 0; i < config.numLayers; i++) chosen.push(names[randomInt(rng, 0, names.length - 1)]!);
  let out = img;
  for (const name of chosen) {
    if (rng.next() > TIMM_OP_PROBABILITY) continue;
    let magnitude = config.magnitude;
    if (config.magnitudeStd === Infinity) magnitude = uniform(rng, 0, magnitude);
    else if (config.magnitudeStd > 0) magnitude += config.magnitudeStd * gaussian(rng);
    magnitude = Math.max(0, Math.min(magnitude, config.magnitudeMax));
    out = TIMM_RAND_AUGMENT_OPS[name](out, magnitude, rng, fill);
  }
  return out;
}

// ---- (b) big_vision ----

/** distort_image_with_randaugment's replace_value: [128] * 3. */
export const BIG_VISION_FILL_LEVEL = 128;
const BIG_VISION_WARP = 'nearest';

/** The absolute pixel sizes of big_vision's translate and cutout at level 10. */
export interface BigVisionHParams {
  readonly translateConst: number;
  readonly cutoutConst: number;
}

/**
 * distort_image_with_randaugment's HParams(cutout_const=40, translate_const=100), in pixels
 * whatever the image size (sized for 224 px ImageNet crops: a small image needs smaller ones).
 */
export const BIG_VISION_RANDAUG_HPARAMS: BigVisionHParams = { translateConst: 100, cutoutConst: 40 };

function tfWarp(img: RawImage, m: AffineMatrix, fill: readonly number[]): RawImage {
  return warpAffine(img, fromIndexConvention(m), BIG_VISION_WARP, fill);
}

/**
 * The TF contrast's degenerate gray: a bug of the TF port kept by big_vision — the "mean" is the
 * sum of the histogram counts over 256, i.e. pixel count / 256, clipped to 255 and truncated.
 */
export function tfContrastMean(img: RawImage): number {
  return Math.min(255, Math.trunc(Math.fround((img.height * img.width) / 256)));
}

/** Cutout: a square of side up to 2·pad centred on a uniform pixel (2 draws), filled. */
function cutout(img: RawImage, pad: number, rng: Mulberry32, fill: readonly number[]): RawImage {
  const { height, width, channels } = img;
  const cy = randomInt(rng, 0, height - 1);
  const cx = randomInt(rng, 0, width - 1);
  const out = createImage(height, width, channels);
  out.data.set(img.data);
  const y1 = Math.min(height, cy + pad);
  const x1 = Math.min(width, cx + pad);
  for (let y = Math.max(0, cy - pad); y < y1; y++) {
    for (let x = Math.max(0, cx - pad); x < x1; x++) {
      const p = (y * width + x) * channels;
      for (let c = 0; c < channels; c++) out.data[p + c] = fill[c]!;
    }
  }
  return out;
}

/** distort_image_with_randaugment's available_ops, in its order. */
export const BIG_VISION_RANDAUG_TRANSFORMS = [
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateX',
  'TranslateY',
  'Cutout',
  'SolarizeAdd',
] as const;

export type BigVisionOpName = (typeof BIG_VISION_RANDAUG_TRANSFORMS)[number];

/** big_vision's NAME_TO_FUNC with level_to_arg folded in, TF semantics. */
export function bigVisionRandaugOps(hparams: BigVisionHParams): Readonly<Record<BigVisionOpName, RandAugmentOp>> {
  const translate = (m: number, rng: Mulberry32): number => randomlyNegate(rng, (m / MAX_LEVEL) * hparams.translateConst);
  return {
    AutoContrast: (img) => autocontrast(img),
    Equalize: (img) => equalize(img, TF_EQUALIZE_DIVISOR),
    Invert: (img) => invert(img),
    Rotate: (img, m, rng, fill) => tfWarp(img, tfRotateMatrix(img.height, img.width, rotateDegrees(m, rng)), fill),
    Posterize: (img, m) => posterize(img, posterizeBits(m)),
    Solarize: (img, m) => solarize(img, solarizeThreshold(m)),
    Color: (img, m) => adjustSaturation(img, enhanceFactor(m)),
    Contrast: (img, m) => adjustContrast(img, enhanceFactor(m), tfContrastMean(img)),
    Brightness: (img, m) => adjustBrightness(img, enhanceFactor(m)),
    Sharpness: (img, m) => adjustSharpness(img, enhanceFactor(m)),
    ShearX: (img, m, rng, fill) => tfWarp(img, [1, shearFactor(m, rng), 0, 0, 1, 0], fill),
    ShearY: (img, m, rng, fill) => tfWarp(img, [1, 0, 0, shearFactor(m, rng), 1, 0], fill),
    TranslateX: (img, m, rng, fill) => tfWarp(img, [1, 0, translate(m, rng), 0, 1, 0], fill),
    TranslateY: (img, m, rng, fill) => tfWarp(img, [1, 0, 0, 0, 1, translate(m, rng)], fill),
    Cutout: (img, m, rng, fill) => cutout(img, Math.trunc((m / MAX_LEVEL) * hparams.cutoutConst), rng, fill),
    SolarizeAdd: (img, m) => solarizeAdd(img, solarizeAddAmount(m)),
  };
}

/** The ops with big_vision's own constants. */
export const BIG_VISION_RANDAUG_OPS = bigVisionRandaugOps(BIG_VISION_RANDAUG_HPARAMS);

/**
 * big_vision's randaug(num_layers, magnitude): per layer one op index (one draw), the op applied
 * always (the per-op probabilities TF draws are never used: no op takes `prob`), then the op's
 * sign or position draws. Geometric ops and cutout fill with 128 in every channel.
 */
export function bigVisionRandAugment(
  img: RawImage,
  rng: Mulberry32,
  numLayers: number,
  magnitude: number,
  ops: Readonly<Record<BigVisionOpName, RandAugmentOp>> = BIG_VISION_RANDAUG_OPS,
): RawImage {
  const fill = new Array<number>(img.channels).fill(BIG_VISION_FILL_LEVEL);
  let out = img;
  for (let layer = 0; layer < numLayers; layer++) {
    const name = BIG_VISION_RANDAUG_TRANSFORMS[randomInt(rng, 0, BIG_VISION_RANDAUG_TRANSFORMS.length - 1)]!;
    out = ops[name](out, magnitude, rng, fill);
  }
  return out;
}
