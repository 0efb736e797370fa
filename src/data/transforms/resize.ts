// Separable image resampling with Pillow's algorithm (libImaging/Resample.c, the resize behind
// torchvision's and timm's PIL transforms): for each output pixel, a filter centred on the
// matching source position, its support widened by the scale factor when downscaling (so
// downscaling antialiases), weights normalised to sum 1 and turned into 22-bit fixed point; a
// horizontal pass into a uint8 buffer, then a vertical pass. Following it step for step keeps
// the results within one level of PIL's (the tests check against PIL on generated images).
import type { RawImage } from '../source.ts';
import { checkImage, createImage } from './image.ts';

export type Interpolation = 'bilinear' | 'bicubic';
export const INTERPOLATIONS: readonly Interpolation[] = ['bilinear', 'bicubic'];

/** Fixed-point fraction bits of the weights: Pillow's PRECISION_BITS (32 - 8 - 2). */
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
/** Added to every sum so that the final shift rounds to nearest. */
const HALF = 1 << (PRECISION_BITS - 1);
/** The `a` of Keys' cubic convolution kernel: -0.5, as Pillow's resize uses. */
const CUBIC_A = -0.5;

interface Filter {
  /** Half-width of the kernel at scale 1, in source pixels. */
  readonly support: number;
  readonly weight: (x: number) => number;
}

const FILTERS: Record<Interpolation, Filter> = {
  bilinear: {
    support: 1,
    weight: (x) => {
      const t = Math.abs(x);
      return t < 1 ? 1 - t : 0;
    },
  },
  bicubic: {
    support: 2,
    weight: (x) => {
      const t = Math.abs(x);
      if (t < 1) return ((CUBIC_A + 2) * t - (CUBIC_A + 3)) * t * t + 1;
      if (t < 2) return (((t - 5) * t + 8) * t - 4) * CUBIC_A;
      return 0;
    },
  },
};

/** Per output index: the first source index and tap count, and `taps` fixed-point weights. */
interface Coefficients {
  readonly taps: number;
  readonly bounds: Int32Array;
  readonly weights: Int32Array;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for a source of `inSize` pixels. */
function coefficients(inSize: number, outSize: number, filter: Filter): Coefficients {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const taps = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * taps);
  const row = new Float64Array(taps);
  const inverse = 1 / filterScale;
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - first;
    let sum = 0;
    for (let k = 0; k < count; k++) {
      const w = filter.weight((k + first - center + 0.5) * inverse);
      row[k] = w;
      sum += w;
    }
    for (let k = 0; k < count; k++) {
      const w = sum !== 0 ? row[k]! / sum : row[k]!;
      weights[o * taps + k] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[o * 2] = first;
    bounds[o * 2 + 1] = count;
  }
  return { taps, bounds, weights };
}

// Scratch buffers reused across calls (each worker thread has its own module instance, and a
// resize never runs inside another): large temporaries would otherwise cost an allocation and a
// zero fill per image.
let rowScratch = new Uint8Array(0);
let accScratch = new Int32Array(0);

function scratchRows(length: number): Uint8Array {
  if (rowScratch.length < length) rowScratch = new Uint8Array(length);
  return rowScratch;
}

function scratchAccumulator(length: number): Int32Array {
  if (accScratch.length < length) accScratch = new Int32Array(length);
  return accScratch;
}

function clip8(sum: number): number {
  const v = sum >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Horizontal pass: rows [rowStart, rowStart + rows) of `src` (row length `srcWidth` pixels),
 * columns from `colStart`, resampled to `c.bounds.length / 2` columns into `dst`.
 */
function resampleRows(
  src: Uint8Array,
  srcWidth: number,
  channels: number,
  rowStart: number,
  rows: number,
  colStart: number,
  c: Coefficients,
  dst: Uint8Array,
): void {
  const outWidth = c.bounds.length >> 1;
  const { taps, bounds, weights } = c;
  let o = 0;
  if (channels === 3) {
    for (let y = 0; y < rows; y++) {
      const rowBase = ((rowStart + y) * srcWidth + colStart) * 3;
      for (let x = 0; x < outWidth; x++) {
        const count = bounds[2 * x + 1]!;
        const kBase = x * taps;
        let p = rowBase + bounds[2 * x]! * 3;
        let s0 = HALF,
          s1 = HALF,
          s2 = HALF;
        let k = 0;
        for (; k + 2 <= count; k += 2, p += 6) {
          const w = weights[kBase + k]!;
          const v = weights[kBase + k + 1]!;
          s0 += src[p]! * w + src[p + 3]! * v;
          s1 += src[p + 1]! * w + src[p + 4]! * v;
          s2 += src[p + 2]! * w + src[p + 5]! * v;
        }
        if (k < count) {
          const w = weights[kBase + k]!;
          s0 += src[p]! * w;
          s1 += src[p + 1]! * w;
          s2 += src[p + 2]! * w;
        }
        dst[o++] = clip8(s0);
        dst[o++] = clip8(s1);
        dst[o++] = clip8(s2);
      }
    }
    return;
  }
  for (let y = 0; y < rows; y++) {
    const rowBase = ((rowStart + y) * srcWidth + colStart) * channels;
    for (let x = 0; x < outWidth; x++) {
      const count = bounds[2 * x + 1]!;
      const kBase = x * taps;
      const start = rowBase + bounds[2 * x]! * channels;
      for (let ch = 0; ch < channels; ch++) {
        let s = HALF;
        for (let k = 0, p = start + ch; k < count; k++, p += channels) s += src[p]! * weights[kBase + k]!;
        dst[o++] = clip8(s);
      }
    }
  }
}

/**
 * Vertical pass: `cols` pixels wide from column `colStart` of `src` (row length `srcWidth`);
 * the source row of bound b is `rowOffset + b`. Each output row accumulates whole source rows
 * (sequential reads) into `acc`.
 */
function resampleColumns(
  src: Uint8Array,
  srcWidth: number,
  channels: number,
  rowOffset: number,
  colStart: number,
  cols: number,
  c: Coefficients,
  dst: Uint8Array,
): void {
  const outHeight = c.bounds.length >> 1;
  const { taps, bounds, weights } = c;
  const stride = srcWidth * channels;
  const lineLength = cols * channels;
  const acc = scratchAccumulator(lineLength);
  for (let y = 0; y < outHeight; y++) {
    const count = bounds[2 * y + 1]!;
    const kBase = y * taps;
    acc.fill(HALF, 0, lineLength);
    const base = (rowOffset + bounds[2 * y]!) * stride + colStart * channels;
    // Four, then two, then one source row per sweep: fewer loads and stores of `acc`.
    let k = 0;
    for (; k + 4 <= count; k += 4) {
      const b0 = base + k * stride,
        b1 = b0 + stride,
        b2 = b1 + stride,
        b3 = b2 + stride;
      const w0 = weights[kBase + k]!,
        w1 = weights[kBase + k + 1]!,
        w2 = weights[kBase + k + 2]!,
        w3 = weights[kBase + k + 3]!;
      for (let i = 0; i < lineLength; i++) acc[i] += src[b0 + i]! * w0 + src[b1 + i]! * w1 + src[b2 + i]! * w2 + src[b3 + i]! * w3;
    }
    for (; k + 2 <= count; k += 2) {
      const b0 = base + k * stride,
        b1 = b0 + stride;
      const w0 = weights[kBase + k]!,
        w1 = weights[kBase + k + 1]!;
      for (let i = 0; i < lineLength; i++) acc[i] += src[b0 + i]! * w0 + src[b1 + i]! * w1;
    }
    for (; k < count; k++) {
      const b0 = base + k * stride;
      const w0 = weights[kBase + k]!;
      for (let i = 0; i < lineLength; i++) acc[i] += src[b0 + i]! * w0;
    }
    const o = y * lineLength;
    for (let i = 0; i < lineLength; i++) dst[o + i] = clip8(acc[i]!);
  }
}

/** A rectangle of an image, in pixels. */
export interface Box {
  readonly top: number;
  readonly left: number;
  readonly height: number;
  readonly width: number;
}

function checkBox(img: RawImage, box: Box, where: string): void {
  const { top, left, height, width } = box;
  const ok =
    [top, left, height, width].every(Number.isInteger) &&
    top >= 0 &&
    left >= 0 &&
    height > 0 &&
    width > 0 &&
    top + height <= img.height &&
    left + width <= img.width;
  if (!ok)
    throw new RangeError(
      `${where}: box top=${top} left=${left} height=${height} width=${width} is not inside the ${img.height}x${img.width} image`,
    );
}

/**
 * Resizes `img` (or the `box` of it: the same as cropping first, then resizing) to
 * `height` x `width`, as PIL's Image.resize with BILINEAR or BICUBIC.
 */
export function resize(img: RawImage, height: number, width: number, interpolation: Interpolation, box?: Box): RawImage {
  checkImage(img, 'resize');
  if (!(Number.isInteger(height) && height > 0 && Number.isInteger(width) && width > 0)) {
    throw new RangeError(`resize: target size ${height}x${width} is not a positive integer size`);
  }
  const region = box ?? { top: 0, left: 0, height: img.height, width: img.width };
  checkBox(img, region, 'resize');
  const filter = FILTERS[interpolation];
  const { channels } = img;
  const needHorizontal = width !== region.width;
  const needVertical = height !== region.height;
  if (!needHorizontal && !needVertical) return crop(img, region);
  const out = createImage(height, width, channels);
  if (!needVertical) {
    resampleRows(img.data, img.width, channels, region.top, height, region.left, coefficients(region.width, width, filter), out.data);
    return out;
  }
  const vertical = coefficients(region.height, height, filter);
  if (!needHorizontal) {
    resampleColumns(img.data, img.width, channels, region.top, region.left, width, vertical, out.data);
    return out;
  }
  // Only the rows the vertical pass reads go through the horizontal pass (as Pillow does).
  const firstRow = vertical.bounds[0]!;
  const lastRow = vertical.bounds[vertical.bounds.length - 2]! + vertical.bounds[vertical.bounds.length - 1]!;
  const rows = lastRow - firstRow;
  const temp = scratchRows(rows * width * channels);
  resampleRows(img.data, img.width, channels, region.top + firstRow, rows, region.left, coefficients(region.width, width, filter), temp);
  resampleColumns(temp, width, channels, -firstRow, 0, width, vertical, out.data);
  return out;
}

/** The `box` of `img` as a new image. */
export function crop(img: RawImage, box: Box): RawImage {
  checkImage(img, 'crop');
  checkBox(img, box, 'crop');
  const { channels } = img;
  const out = createImage(box.height, box.width, channels);
  const line = box.width * channels;
  for (let y = 0; y < box.height; y++) {
    const start = ((box.top + y) * img.width + box.left) * channels;
    out.data.set(img.data.subarray(start, start + line), y * line);
  }
  return out;
}
