// uint8 HWC pixels to the model's float input, (x / 255 - mean[c]) / std[c], written straight
// into the caller's batch buffer.
import type { RawImage } from '../source.ts';
import { FASHION_MNIST_MEAN, FASHION_MNIST_STD } from '../fashion-mnist.ts';
import { checkImage } from './image.ts';

export interface NormalizationStats {
  readonly mean: readonly number[];
  readonly std: readonly number[];
}

/** timm's IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD. */
export const IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225] as const;
/** timm's IMAGENET_INCEPTION_MEAN / _STD: values to [-1, 1], as big_vision's value_range(-1, 1). */
export const IMAGENET_INCEPTION_MEAN = [0.5, 0.5, 0.5] as const;
export const IMAGENET_INCEPTION_STD = [0.5, 0.5, 0.5] as const;

/** Statistics by the name a pipeline's normalize(NAME) uses. */
export const NORMALIZATIONS: Readonly<Record<string, NormalizationStats>> = {
  imagenet: { mean: IMAGENET_DEFAULT_MEAN, std: IMAGENET_DEFAULT_STD },
  inception: { mean: IMAGENET_INCEPTION_MEAN, std: IMAGENET_INCEPTION_STD },
  'fashion-mnist': { mean: [FASHION_MNIST_MEAN], std: [FASHION_MNIST_STD] },
};

const LEVELS = 256;

/** A per-channel table of the normalized value of every uint8 level (computed once per pipeline). */
export function normalizationTable(stats: NormalizationStats): Float32Array {
  const channels = stats.mean.length;
  if (stats.std.length !== channels) throw new RangeError(`normalization: ${channels} means but ${stats.std.length} standard deviations`);
  const table = new Float32Array(channels * LEVELS);
  for (let c = 0; c < channels; c++) {
    const std = stats.std[c]!;
    if (!(std > 0)) throw new RangeError(`normalization: standard deviation ${std} of channel ${c} is not positive`);
    for (let v = 0; v < LEVELS; v++) table[c * LEVELS + v] = (v / 255 - stats.mean[c]!) / std;
  }
  return table;
}

/** Writes the normalized pixels of `img` (HWC, float32) into out[offset ...]; `table` from normalizationTable. */
export function normalizeInto(img: RawImage, table: Float32Array, out: Float32Array, offset: number): void {
  checkImage(img, 'normalize');
  const { channels, data } = img;
  if (table.length !== channels * LEVELS)
    throw new RangeError(`normalize: statistics for ${table.length / LEVELS} channels, image has ${channels}`);
  if (!(Number.isInteger(offset) && offset >= 0 && offset + data.length <= out.length)) {
    throw new RangeError(`normalize: ${data.length} values at offset ${offset} do not fit an output of ${out.length}`);
  }
  if (channels === 1) {
    for (let i = 0; i < data.length; i++) out[offset + i] = table[data[i]!]!;
    return;
  }
  // Three channels (checkImage allows only 1 or 3).
  for (let i = 0, o = offset; i < data.length; i += 3, o += 3) {
    out[o] = table[data[i]!]!;
    out[o + 1] = table[LEVELS + data[i + 1]!]!;
    out[o + 2] = table[2 * LEVELS + data[i + 2]!]!;
  }
}
