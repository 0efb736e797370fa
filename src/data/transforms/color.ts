// PIL's ImageEnhance operations, shared by RandAugment (timm and big_vision) and color jitter
// (torchvision's ColorJitter on PIL images calls the same ImageEnhance classes): each blends the
// image with a "degenerate" version of itself, Image.blend(degenerate, image, factor) — factor 0
// gives the degenerate image, 1 the image, above 1 extrapolates. Image.blend computes in float32
// and truncates (libImaging/Blend.c); big_vision's TF blend does the same, so one blend serves.
import type { Mulberry32 } from '../../common/random.ts';
import type { RawImage } from '../source.ts';
import { permutation, uniform } from './draws.ts';
import { checkImage, createImage } from './image.ts';
import { applyLut } from './tone.ts';

/** Differences degenerate → image range over -255..255. */
const DIFFERENCES = 511;
const MAX_DIFFERENCE = 255;

/** fround(factor · d) for every difference d, in float32 as Image.blend multiplies. */
function blendProducts(factor: number): Float32Array {
  const products = new Float32Array(DIFFERENCES);
  const f = Math.fround(factor);
  for (let d = -MAX_DIFFERENCE; d <= MAX_DIFFERENCE; d++) products[d + MAX_DIFFERENCE] = f * d;
  return products;
}

function blended(base: number, value: number, products: Float32Array): number {
  const t = Math.fround(base + products[value - base + MAX_DIFFERENCE]!);
  return t <= 0 ? 0 : t >= 255 ? 255 : Math.trunc(t);
}

/** Image.blend(degenerate, img, factor), `degenerate` being an image of img's shape. */
export function blend(degenerate: Uint8Array, img: RawImage, factor: number): RawImage {
  checkImage(img, 'blend');
  if (degenerate.length !== img.data.length)
    throw new RangeError(`blend: degenerate image has ${degenerate.length} values, the image ${img.data.length}`);
  const products = blendProducts(factor);
  const out = createImage(img.height, img.width, img.channels);
  const src = img.data;
  const dst = out.data;
  for (let i = 0; i < src.length; i++) dst[i] = blended(degenerate[i]!, src[i]!, products);
  return out;
}

/** Image.blend with a constant degenerate image of value `base` in every channel. */
export function blendWithConstant(base: number, img: RawImage, factor: number): RawImage {
  const products = blendProducts(factor);
  const table = new Uint8Array(256);
  for (let v = 0; v < 256; v++) table[v] = blended(base, v, products);
  return applyLut(img, table);
}

/** PIL's convert('L') of RGB pixels, ITU-R 601-2 luma in 16-bit fixed point, rounded (Convert.c's L24). */
function luma(r: number, g: number, b: number): number {
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

/** The gray level of every pixel (a grayscale image is its own). */
export function luminance(img: RawImage): Uint8Array {
  checkImage(img, 'luminance');
  if (img.channels === 1) return img.data;
  const { data } = img;
  const gray = new Uint8Array(img.height * img.width);
  for (let p = 0, i = 0; p < gray.length; p++, i += 3) gray[p] = luma(data[i]!, data[i + 1]!, data[i + 2]!);
  return gray;
}

/** ImageEnhance.Brightness: blend with black. */
export function adjustBrightness(img: RawImage, factor: number): RawImage {
  return blendWithConstant(0, img, factor);
}

/** ImageEnhance.Contrast's degenerate gray: the mean gray level, rounded. */
export function pilContrastMean(img: RawImage): number {
  const gray = luminance(img);
  let sum = 0;
  for (let i = 0; i < gray.length; i++) sum += gray[i]!;
  return Math.trunc(sum / gray.length + 0.5);
}

/** ImageEnhance.Contrast: blend with a uniform gray of level `mean` (PIL's by default). */
export function adjustContrast(img: RawImage, factor: number, mean: number = pilContrastMean(img)): RawImage {
  return blendWithConstant(mean, img, factor);
}

/**
 * ImageEnhance.Color (torchvision's adjust_saturation): blend with the image's grayscale. A
 * grayscale image is its own degenerate image, so saturation changes nothing there.
 */
export function adjustSaturation(img: RawImage, factor: number): RawImage {
  checkImage(img, 'adjustSaturation');
  if (img.channels === 1) return img;
  const gray = luminance(img);
  const degenerate = new Uint8Array(img.data.length);
  for (let p = 0, i = 0; p < gray.length; p++, i += 3) {
    const v = gray[p]!;
    degenerate[i] = v;
    degenerate[i + 1] = v;
    degenerate[i + 2] = v;
  }
  return blend(degenerate, img, factor);
}

/** Weights of ImageFilter.SMOOTH: centre 5, its 8 neighbours 1, over 13. */
const SMOOTH_CENTER_WEIGHT = 5;
const SMOOTH_SCALE = 13;

/**
 * ImageFilter.SMOOTH as Pillow applies it (Filter.c): interior pixels rounded to nearest, the
 * border rows and columns copied. (big_vision's TF port truncates instead: at most one level.)
 */
export function smooth(img: RawImage): Uint8Array {
  checkImage(img, 'smooth');
  const { height, width, channels, data } = img;
  const out = data.slice();
  const stride = width * channels;
  for (let y = 1; y < height - 1; y++) {
    for (let x = 1; x < width - 1; x++) {
      const center = y * stride + x * channels;
      for (let c = 0; c < channels; c++) {
        const p = center + c;
        const sum =
          data[p - stride - channels]! +
          data[p - stride]! +
          data[p - stride + channels]! +
          data[p - channels]! +
          SMOOTH_CENTER_WEIGHT * data[p]! +
          data[p + channels]! +
          data[p + stride - channels]! +
          data[p + stride]! +
          data[p + stride + channels]!;
        // round(sum / 13) exactly: no sum is a tie, and float32 cannot land on the other side.
        out[p] = Math.floor((2 * sum + SMOOTH_SCALE) / (2 * SMOOTH_SCALE));
      }
    }
  }
  return out;
}

/** ImageEnhance.Sharpness: blend with the smoothed image. */
export function adjustSharpness(img: RawImage, factor: number): RawImage {
  return blend(smooth(img), img, factor);
}

/** torchvision ColorJitter's strengths: each factor is drawn from [max(0, 1 - v), 1 + v]; 0 disables. */
export interface ColorJitterOptions {
  readonly brightness: number;
  readonly contrast: number;
  readonly saturation: number;
}

const JITTER_ADJUSTMENTS = [adjustBrightness, adjustContrast, adjustSaturation] as const;

/**
 * torchvision's ColorJitter (without hue): a random order of the three adjustments first, then
 * the factor of each enabled one, each applied in that order.
 */
export function colorJitter(img: RawImage, rng: Mulberry32, options: ColorJitterOptions): RawImage {
  const strengths = [options.brightness, options.contrast, options.saturation];
  for (const s of strengths) {
    if (!(Number.isFinite(s) && s >= 0))
      throw new RangeError(`colorJitter: strengths must be finite and >= 0, got ${strengths.join(', ')}`);
  }
  const order = permutation(rng, JITTER_ADJUSTMENTS.length);
  const factors = strengths.map((s) => (s > 0 ? uniform(rng, Math.max(0, 1 - s), 1 + s) : null));
  let out = img;
  for (const k of order) {
    const factor = factors[k];
    if (factor !== null && factor !== undefined) out = JITTER_ADJUSTMENTS[k]!(out, factor);
  }
  return out;
}
