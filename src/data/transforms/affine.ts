// Affine warps for RandAugment's rotate, shear and translate, with Pillow's sampling rules
// (libImaging/Geometry.c, behind Image.transform(AFFINE) and Image.rotate): output pixel (x, y)
// takes the input at the position M·(x + ½, y + ½), where pixel i covers [i, i + 1); a position
// outside the input gets the fill colour; inside, nearest takes the pixel it falls in, bilinear
// and bicubic interpolate between pixel centres with edge pixels repeated and truncate to uint8.
// Pillow's transform bicubic is the a = -1 cubic, not the a = -0.5 of its resize.
import type { RawImage } from '../source.ts';
import { checkImage, createImage } from './image.ts';

export type WarpInterpolation = 'nearest' | 'bilinear' | 'bicubic';

/** [a, b, c, d, e, f]: the input position of output position (x, y) is (a x + b y + c, d x + e y + f). */
export type AffineMatrix = readonly [number, number, number, number, number, number];

/** Image.rotate rounds its matrix coefficients to 15 decimals (round(x, 15)). */
const ROTATE_DECIMALS = 1e15;

/** Image.rotate(degrees) of Pillow: counter-clockwise about the image centre, same size. */
export function pilRotateMatrix(height: number, width: number, degrees: number): AffineMatrix {
  const angle = (-degrees * Math.PI) / 180;
  const round15 = (v: number): number => Math.round(v * ROTATE_DECIMALS) / ROTATE_DECIMALS;
  const a = round15(Math.cos(angle));
  const b = round15(Math.sin(angle));
  const d = round15(-Math.sin(angle));
  const e = round15(Math.cos(angle));
  const cx = width / 2;
  const cy = height / 2;
  return [a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy];
}

/**
 * Converts a map between pixel indices (TensorFlow's ImageProjectiveTransform: the input index of
 * output index (x, y) is (a x + b y + c, ...)) to this module's pixel-area convention.
 */
export function fromIndexConvention(m: AffineMatrix): AffineMatrix {
  const [a, b, c, d, e, f] = m;
  return [a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e)];
}

/**
 * tensorflow_addons' image.rotate(radians): about the centre of the corner pixels
 * ((w - 1) / 2, (h - 1) / 2), in pixel-index coordinates (convert with fromIndexConvention).
 */
export function tfRotateMatrix(height: number, width: number, degrees: number): AffineMatrix {
  const radians = (degrees * Math.PI) / 180;
  const cos = Math.cos(radians);
  const sin = Math.sin(radians);
  const xOffset = (width - 1 - (cos * (width - 1) - sin * (height - 1))) / 2;
  const yOffset = (height - 1 - (sin * (width - 1) + cos * (height - 1))) / 2;
  return [cos, -sin, xOffset, sin, cos, yOffset];
}

/** Pillow's BICUBIC macro of Geometry.c: the a = -1 cubic through v1..v4 at fraction d past v2. */
function cubic(v1: number, v2: number, v3: number, v4: number, d: number): number {
  const p2 = v3 - v1;
  const p3 = 2 * (v1 - v2) + v3 - v4;
  const p4 = -v1 + v2 - v3 + v4;
  return v2 + d * (p2 + d * (p3 + d * p4));
}

/** Warps `img` by `m` (see AffineMatrix), same size out; `fill` holds one value per channel. */
export function warpAffine(img: RawImage, m: AffineMatrix, interpolation: WarpInterpolation, fill: readonly number[]): RawImage {
  checkImage(img, 'warpAffine');
  const { height, width, channels, data } = img;
  if (fill.length !== channels) throw new RangeError(`warpAffine: fill has ${fill.length} values for a ${channels}-channel image`);
  const out = createImage(height, width, channels);
  const dst = out.data;
  const [a, b, c, d, e, f] = m;
  const stride = width * channels;
  const maxX = width - 1;
  const maxY = height - 1;
  let o = 0;
  for (let y = 0; y < height; y++) {
    const yc = y + 0.5;
    for (let x = 0; x < width; x++, o += channels) {
      const xc = x + 0.5;
      const xin = a * xc + b * yc + c;
      const yin = d * xc + e * yc + f;
      if (!(xin >= 0 && xin < width && yin >= 0 && yin < height)) {
        for (let ch = 0; ch < channels; ch++) dst[o + ch] = fill[ch]!;
        continue;
      }
      if (interpolation === 'nearest') {
        const p = Math.floor(yin) * stride + Math.floor(xin) * channels;
        for (let ch = 0; ch < channels; ch++) dst[o + ch] = data[p + ch]!;
        continue;
      }
      const xs = xin - 0.5;
      const ys = yin - 0.5;
      const x0 = Math.floor(xs);
      const y0 = Math.floor(ys);
      const dx = xs - x0;
      const dy = ys - y0;
      if (interpolation === 'bilinear') {
        const c0 = (x0 < 0 ? 0 : x0) * channels;
        const c1 = (x0 + 1 > maxX ? maxX : x0 + 1) * channels;
        const r0 = (y0 < 0 ? 0 : y0) * stride;
        const hasNext = y0 + 1 <= maxY;
        const r1 = (y0 + 1) * stride;
        for (let ch = 0; ch < channels; ch++) {
          const top = data[r0 + c0 + ch]! + (data[r0 + c1 + ch]! - data[r0 + c0 + ch]!) * dx;
          const bottom = hasNext ? data[r1 + c0 + ch]! + (data[r1 + c1 + ch]! - data[r1 + c0 + ch]!) * dx : top;
          dst[o + ch] = Math.trunc(top + (bottom - top) * dy);
        }
        continue;
      }
      // Bicubic: taps x0-1..x0+2 and rows y0-1..y0+2; a row past the image repeats the row
      // before it, as Pillow's BICUBIC_BODY does.
      const xb = x0 - 1;
      const yb = y0 - 1;
      const k0 = (xb < 0 ? 0 : xb > maxX ? maxX : xb) * channels;
      const k1 = (xb + 1 < 0 ? 0 : xb + 1 > maxX ? maxX : xb + 1) * channels;
      const k2 = (xb + 2 > maxX ? maxX : xb + 2) * channels;
      const k3 = (xb + 3 > maxX ? maxX : xb + 3) * channels;
      const r0 = (yb < 0 ? 0 : yb > maxY ? maxY : yb) * stride;
      const has1 = yb + 1 >= 0 && yb + 1 <= maxY;
      const has2 = yb + 2 <= maxY;
      const has3 = yb + 3 <= maxY;
      for (let ch = 0; ch < channels; ch++) {
        let p = r0 + ch;
        const v1 = cubic(data[p + k0]!, data[p + k1]!, data[p + k2]!, data[p + k3]!, dx);
        p = (yb + 1) * stride + ch;
        const v2 = has1 ? cubic(data[p + k0]!, data[p + k1]!, data[p + k2]!, data[p + k3]!, dx) : v1;
        p += stride;
        const v3 = has2 ? cubic(data[p + k0]!, data[p + k1]!, data[p + k2]!, data[p + k3]!, dx) : v2;
        p += stride;
        const v4 = has3 ? cubic(data[p + k0]!, data[p + k1]!, data[p + k2]!, data[p + k3]!, dx) : v3;
        const v = cubic(v1, v2, v3, v4, dy);
        dst[o + ch] = v <= 0 ? 0 : v >= 255 ? 255 : Math.trunc(v);
      }
    }
  }
  return out;
}
