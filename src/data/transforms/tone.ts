// Per-channel lookup-table operations of RandAugment: PIL's ImageOps.autocontrast, equalize,
// invert, posterize, solarize, and timm's solarize_add; big_vision's TF ports
// (pp/autoaugment.py) compute the same tables, except that its equalize divides by 255 where
// PIL divides by 256 (hence the `divisor` argument).
import type { RawImage } from '../source.ts';
import { checkImage, createImage } from './image.ts';

const LEVELS = 256;

/** Maps every channel of every pixel through `lut` (256 entries, shared by all channels). */
export function applyLut(img: RawImage, lut: Uint8Array): RawImage {
  checkImage(img, 'applyLut');
  const out = createImage(img.height, img.width, img.channels);
  const src = img.data;
  const dst = out.data;
  for (let i = 0; i < src.length; i++) dst[i] = lut[src[i]!]!;
  return out;
}

/** Maps channel c through `luts[c * 256 ...]`. */
function applyChannelLuts(img: RawImage, luts: Uint8Array): RawImage {
  const { channels } = img;
  const out = createImage(img.height, img.width, channels);
  const src = img.data;
  const dst = out.data;
  for (let i = 0; i < src.length; i += channels) {
    for (let c = 0; c < channels; c++) dst[i + c] = luts[c * LEVELS + src[i + c]!]!;
  }
  return out;
}

/** The 256-bin histogram of each channel, channel after channel. */
function histograms(img: RawImage): Int32Array {
  const { channels, data } = img;
  const hist = new Int32Array(channels * LEVELS);
  for (let i = 0; i < data.length; i += channels) {
    for (let c = 0; c < channels; c++) hist[c * LEVELS + data[i + c]!]!++;
  }
  return hist;
}

function identityInto(luts: Uint8Array, c: number): void {
  for (let v = 0; v < LEVELS; v++) luts[c * LEVELS + v] = v;
}

/** ImageOps.autocontrast (no cutoff): stretches each channel's [min, max] to [0, 255]. */
export function autocontrast(img: RawImage): RawImage {
  checkImage(img, 'autocontrast');
  const hist = histograms(img);
  const luts = new Uint8Array(img.channels * LEVELS);
  for (let c = 0; c < img.channels; c++) {
    const h = hist.subarray(c * LEVELS, (c + 1) * LEVELS);
    let lo = 0;
    while (lo < LEVELS - 1 && h[lo] === 0) lo++;
    let hi = LEVELS - 1;
    while (hi > 0 && h[hi] === 0) hi--;
    if (hi <= lo) {
      identityInto(luts, c);
      continue;
    }
    const scale = 255 / (hi - lo);
    const offset = -lo * scale;
    for (let v = 0; v < LEVELS; v++) {
      const mapped = Math.trunc(v * scale + offset);
      luts[c * LEVELS + v] = mapped < 0 ? 0 : mapped > 255 ? 255 : mapped;
    }
  }
  return applyChannelLuts(img, luts);
}

/** PIL's ImageOps.equalize divides the count by 256; big_vision's TF port by 255. */
export const PIL_EQUALIZE_DIVISOR = 256;
export const TF_EQUALIZE_DIVISOR = 255;

/** Histogram equalization of each channel (ImageOps.equalize's table with the given divisor). */
export function equalize(img: RawImage, divisor: number = PIL_EQUALIZE_DIVISOR): RawImage {
  checkImage(img, 'equalize');
  const hist = histograms(img);
  const luts = new Uint8Array(img.channels * LEVELS);
  for (let c = 0; c < img.channels; c++) {
    const h = hist.subarray(c * LEVELS, (c + 1) * LEVELS);
    let total = 0;
    let last = 0;
    for (let v = 0; v < LEVELS; v++) {
      if (h[v] !== 0) {
        total += h[v]!;
        last = h[v]!;
      }
    }
    const step = Math.floor((total - last) / divisor);
    if (step === 0) {
      // One distinct value (or too few pixels): PIL and TF leave the channel as it is.
      identityInto(luts, c);
      continue;
    }
    let n = Math.floor(step / 2);
    for (let v = 0; v < LEVELS; v++) {
      const mapped = Math.floor(n / step);
      luts[c * LEVELS + v] = mapped > 255 ? 255 : mapped;
      n += h[v]!;
    }
  }
  return applyChannelLuts(img, luts);
}

function lut(map: (v: number) => number): Uint8Array {
  const table = new Uint8Array(LEVELS);
  for (let v = 0; v < LEVELS; v++) table[v] = map(v);
  return table;
}

export function invert(img: RawImage): RawImage {
  return applyLut(
    img,
    lut((v) => 255 - v),
  );
}

/** Keeps the `bits` most significant bits (0 gives black; 8 or more leaves the image as it is). */
export function posterize(img: RawImage, bits: number): RawImage {
  if (bits >= 8)
    return applyLut(
      img,
      lut((v) => v),
    );
  const mask = ~((1 << (8 - Math.max(bits, 0))) - 1) & 0xff;
  return applyLut(
    img,
    lut((v) => v & mask),
  );
}

/** Inverts the values at or above `threshold` (a threshold of 256 or more changes nothing). */
export function solarize(img: RawImage, threshold: number): RawImage {
  return applyLut(
    img,
    lut((v) => (v < threshold ? v : 255 - v)),
  );
}

/** SolarizeAdd's threshold, in timm and big_vision alike. */
export const SOLARIZE_ADD_THRESHOLD = 128;

/** Adds `add` (clipped to 255) to the values below `threshold`. */
export function solarizeAdd(img: RawImage, add: number, threshold: number = SOLARIZE_ADD_THRESHOLD): RawImage {
  return applyLut(
    img,
    lut((v) => (v < threshold ? Math.min(255, Math.max(0, v + add)) : v)),
  );
}
