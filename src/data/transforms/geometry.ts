// Crops and flips: torchvision's RandomResizedCrop (the DeiT and timm training crop), the
// horizontal flip, the evaluation resize-and-centre-crop of timm, and CIFAR's padded random crop.
import type { Mulberry32 } from '../../common/random.ts';
import type { ImageRegion, RawImage } from '../source.ts';
import { randomInt, roundHalfEven, uniform } from './draws.ts';
import { checkImage, createImage } from './image.ts';
import { type Box, type Interpolation, crop, resize } from './resize.ts';

/** torchvision's RandomResizedCrop.get_params tries this many boxes before its fallback. */
const CROP_ATTEMPTS = 10;

export interface RandomResizedCropOptions {
  /** Side of the square output. */
  readonly size: number;
  /** Range of the box's area as a fraction of the image's. */
  readonly scale?: readonly [number, number];
  /** Range of the box's aspect ratio (width / height), drawn log-uniformly. */
  readonly ratio?: readonly [number, number];
  readonly interpolation?: Interpolation;
}

export const DEFAULT_CROP_SCALE: readonly [number, number] = [0.08, 1];
export const DEFAULT_CROP_RATIO: readonly [number, number] = [3 / 4, 4 / 3];

/**
 * torchvision's RandomResizedCrop.get_params (0.14): up to 10 draws of (area fraction, log
 * aspect) until the box fits, then its position; otherwise the centred box of the whole image
 * clamped to the ratio range. Draws: 2 per attempt, 2 more for the position of a box that fits.
 */
export function randomResizedCropBox(
  height: number,
  width: number,
  rng: Mulberry32,
  scale: readonly [number, number] = DEFAULT_CROP_SCALE,
  ratio: readonly [number, number] = DEFAULT_CROP_RATIO,
): Box {
  const area = height * width;
  const logRatio = [Math.log(ratio[0]), Math.log(ratio[1])] as const;
  for (let attempt = 0; attempt < CROP_ATTEMPTS; attempt++) {
    const targetArea = area * uniform(rng, scale[0], scale[1]);
    const aspect = Math.exp(uniform(rng, logRatio[0], logRatio[1]));
    const w = roundHalfEven(Math.sqrt(targetArea * aspect));
    const h = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const top = randomInt(rng, 0, height - h);
      const left = randomInt(rng, 0, width - w);
      return { top, left, height: h, width: w };
    }
  }
  const inRatio = width / height;
  const minRatio = Math.min(ratio[0], ratio[1]);
  const maxRatio = Math.max(ratio[0], ratio[1]);
  let w = width;
  let h = height;
  if (inRatio < minRatio) h = roundHalfEven(w / minRatio);
  else if (inRatio > maxRatio) w = roundHalfEven(h * maxRatio);
  return { top: Math.floor((height - h) / 2), left: Math.floor((width - w) / 2), height: h, width: w };
}

/** RandomResizedCrop: a random box (randomResizedCropBox) resized to size x size. */
export function randomResizedCrop(img: RawImage, rng: Mulberry32, options: RandomResizedCropOptions): RawImage {
  checkImage(img, 'randomResizedCrop');
  const region = randomResizedCropRegion(img.height, img.width, rng, options);
  return resize(img, region.height, region.width, region.interpolation, region.box);
}

/** randomResizedCrop of a height x width image as a region for a source to decode: the same draws, the same box. */
export function randomResizedCropRegion(height: number, width: number, rng: Mulberry32, options: RandomResizedCropOptions): ImageRegion {
  const box = randomResizedCropBox(height, width, rng, options.scale, options.ratio);
  return { box, height: options.size, width: options.size, interpolation: options.interpolation ?? 'bicubic' };
}

/** Mirrors the image left to right. */
export function flipLeftRight(img: RawImage): RawImage {
  checkImage(img, 'flipLeftRight');
  const { height, width, channels, data } = img;
  const out = createImage(height, width, channels);
  const dst = out.data;
  const stride = width * channels;
  for (let y = 0; y < height; y++) {
    const row = y * stride;
    // One source pixel forward, one destination pixel backward; the channel loop unrolled for RGB.
    if (channels === 3) {
      for (let from = row, to = row + stride - 3; from < row + stride; from += 3, to -= 3) {
        dst[to] = data[from]!;
        dst[to + 1] = data[from + 1]!;
        dst[to + 2] = data[from + 2]!;
      }
    } else {
      for (let from = row, to = row + stride - 1; from < row + stride; from++, to--) dst[to] = data[from]!;
    }
  }
  return out;
}

/**
 * torchvision's CenterCrop: the centred size x size box (offsets rounded as Python's round); an
 * image smaller than the crop is padded with zeros around it first, as torchvision does.
 */
export function centerCrop(img: RawImage, size: number): RawImage {
  checkImage(img, 'centerCrop');
  if (img.height >= size && img.width >= size) return crop(img, centerCropBox(img.height, img.width, size));
  const { channels } = img;
  const padTop = Math.max(0, Math.floor((size - img.height) / 2));
  const padLeft = Math.max(0, Math.floor((size - img.width) / 2));
  const top = img.height > size ? roundHalfEven((img.height - size) / 2) : 0;
  const left = img.width > size ? roundHalfEven((img.width - size) / 2) : 0;
  const out = createImage(size, size, channels);
  const rows = Math.min(size, img.height);
  const line = Math.min(size, img.width) * channels;
  for (let y = 0; y < rows; y++) {
    const from = ((top + y) * img.width + left) * channels;
    out.data.set(img.data.subarray(from, from + line), ((padTop + y) * size + padLeft) * channels);
  }
  return out;
}

/** centerCrop's box in a height x width image at least size x size. */
export function centerCropBox(height: number, width: number, size: number): Box {
  return { top: roundHalfEven((height - size) / 2), left: roundHalfEven((width - size) / 2), height: size, width: size };
}

/**
 * centerCrop of a height x width image as a region for a source to decode, or null when the image
 * is smaller than the crop (the zero padding is the op's own).
 */
export function centerCropRegion(height: number, width: number, size: number): ImageRegion | null {
  if (height < size || width < size) return null;
  // No resize happens (the box is size x size), so the filter is never used.
  return { box: centerCropBox(height, width, size), height: size, width: size, interpolation: 'bilinear' };
}

/** timm's default evaluation crop fraction (crop_pct). */
export const DEFAULT_CROP_PCT = 0.875;

/** The size the short side is resized to before the evaluation crop: floor(size / cropPct), as timm. */
export function evalResizeSize(size: number, cropPct: number): number {
  return Math.floor(size / cropPct);
}

/**
 * timm's evaluation transform: the short side resized to floor(size / cropPct) keeping the aspect
 * ratio (the long side truncated, as torchvision's Resize(int)), bicubic, then the centre crop.
 */
export function resizeShortCenterCrop(
  img: RawImage,
  size: number,
  cropPct: number = DEFAULT_CROP_PCT,
  interpolation: Interpolation = 'bicubic',
): RawImage {
  checkImage(img, 'resizeShortCenterCrop');
  const [height, width] = evalResizeShape(img.height, img.width, size, cropPct);
  return centerCrop(resize(img, height, width, interpolation), size);
}

/** The size resizeShortCenterCrop resizes a height x width image to before its crop. */
function evalResizeShape(height: number, width: number, size: number, cropPct: number): [number, number] {
  const short = evalResizeSize(size, cropPct);
  return height <= width ? [short, Math.trunc((short * width) / height)] : [Math.trunc((short * height) / width), short];
}

/**
 * resizeShortCenterCrop of a height x width image as a region for a source to decode: the whole
 * image resized, then the centre crop of the resized image; null when the resized image is
 * smaller than the crop (only with cropPct above 1, which pipelines refuse).
 */
export function resizeShortCenterCropRegion(
  height: number,
  width: number,
  size: number,
  cropPct: number = DEFAULT_CROP_PCT,
  interpolation: Interpolation = 'bicubic',
): ImageRegion | null {
  const [resizedHeight, resizedWidth] = evalResizeShape(height, width, size, cropPct);
  if (resizedHeight < size || resizedWidth < size) return null;
  return {
    box: { top: 0, left: 0, height, width },
    height: resizedHeight,
    width: resizedWidth,
    interpolation,
    crop: centerCropBox(resizedHeight, resizedWidth, size),
  };
}

/**
 * torchvision's RandomCrop(size, padding=pad) as CIFAR training uses it: the image padded with
 * `pad` zero pixels on every side, then a uniformly placed size x size crop of that (no draws
 * when the padded image is exactly the crop's size).
 */
export function padRandomCrop(img: RawImage, rng: Mulberry32, size: number, pad: number): RawImage {
  checkImage(img, 'padRandomCrop');
  const paddedHeight = img.height + 2 * pad;
  const paddedWidth = img.width + 2 * pad;
  if (paddedHeight < size || paddedWidth < size) {
    throw new RangeError(`padRandomCrop: crop ${size} is larger than the padded ${paddedHeight}x${paddedWidth} image`);
  }
  let top = 0;
  let left = 0;
  if (paddedHeight !== size || paddedWidth !== size) {
    top = randomInt(rng, 0, paddedHeight - size);
    left = randomInt(rng, 0, paddedWidth - size);
  }
  const { channels } = img;
  const out = createImage(size, size, channels);
  // Output (y, x) is padded (top + y, left + x), i.e. source (top + y - pad, left + x - pad).
  const x0 = Math.max(0, pad - left);
  const x1 = Math.min(size, img.width + pad - left);
  if (x1 <= x0) return out;
  for (let y = 0; y < size; y++) {
    const sy = top + y - pad;
    if (sy < 0 || sy >= img.height) continue;
    const from = (sy * img.width + (left + x0 - pad)) * channels;
    out.data.set(img.data.subarray(from, from + (x1 - x0) * channels), (y * size + x0) * channels);
  }
  return out;
}
