// The held-out split: a fixed part of the training files that is never trained on, for model
// selection without touching the evaluation set (big_vision's "minival", the held-out set of model
// soups). It is chosen by its own seed, not the run's: a sweep that trains with different run seeds
// must hold out the very same images for its models to be comparable (and soupable).
import { Mulberry32, mixSeed } from '../common/random.ts';
import { checkSampleIndex, type ImageSource, type RawImage } from './source.ts';

/** Salt that separates the held-out choice from other streams drawn from the same seed. */
const HOLDOUT_STREAM = 0x401d;
/** A few ulps of slack, so that e.g. 0.07 * 100 (7.000000000000001 in floating point) holds out 7, not 8. */
const PRODUCT_ROUNDING_SLACK = 4 * Number.EPSILON;

/** How many of `trainSize` images the fraction holds out: ceil(fraction * trainSize). */
export function holdoutCount(trainSize: number, fraction: number): number {
  if (!Number.isFinite(fraction) || fraction < 0 || fraction >= 1) {
    throw new RangeError(`holdout fraction must be in [0, 1), got ${fraction}`);
  }
  if (fraction === 0) return 0;
  const count = Math.ceil(fraction * trainSize * (1 - PRODUCT_ROUNDING_SLACK));
  if (count === 0) throw new RangeError(`holdout fraction ${fraction} of ${trainSize} training images holds out none`);
  if (count >= trainSize) throw new RangeError(`holdout fraction ${fraction} of ${trainSize} training images leaves none to train on`);
  return count;
}

/**
 * The held-out indices, sorted: the first ceil(fraction * trainSize) entries of a permutation
 * seeded by `holdoutSeed` alone (a partial Fisher-Yates shuffle). Depends on nothing else: not the
 * run seed, the worker count or the epoch.
 */
export function holdoutIndices(trainSize: number, fraction: number, holdoutSeed: number): Uint32Array {
  const count = holdoutCount(trainSize, fraction);
  const perm = new Uint32Array(trainSize);
  for (let i = 0; i < trainSize; i++) perm[i] = i;
  const rng = new Mulberry32(mixSeed(holdoutSeed, HOLDOUT_STREAM));
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(rng.next() * (trainSize - i));
    const t = perm[i]!;
    perm[i] = perm[j]!;
    perm[j] = t;
  }
  return perm.slice(0, count).sort();
}

/** The indices of 0..size-1 that are not in `excluded` (sorted, distinct), in increasing order. */
export function complementIndices(size: number, excluded: Uint32Array): Uint32Array {
  const out = new Uint32Array(size - excluded.length);
  let e = 0;
  let o = 0;
  for (let i = 0; i < size; i++) {
    if (e < excluded.length && excluded[e] === i) e++;
    else out[o++] = i;
  }
  if (e !== excluded.length || o !== out.length)
    throw new RangeError(`the excluded indices are not sorted, distinct indices below ${size}`);
  return out;
}

/** The samples `indices` of `source` (in that order) as a source of their own. */
export function subsetSource(source: ImageSource, indices: Uint32Array): ImageSource {
  for (const index of indices) checkSampleIndex(index, source.size, 'the source of a subset');
  const size = indices.length;
  const what = `a subset of ${size} samples`;
  return {
    size,
    classes: source.classes,
    channels: source.channels,
    fixedSize: source.fixedSize,
    label(index: number): number {
      checkSampleIndex(index, size, what);
      return source.label(indices[index]!);
    },
    async read(index: number): Promise<RawImage> {
      checkSampleIndex(index, size, what);
      return source.read(indices[index]!);
    },
    describe(index: number): string {
      checkSampleIndex(index, size, what);
      return source.describe(indices[index]!);
    },
    // Pass the decode-time crop through: without it a held-out run would take the slower whole-image path, with other pixels.
    ...(source.readRegion && {
      async readRegion(index: number, choose: Parameters<NonNullable<ImageSource['readRegion']>>[1]): Promise<RawImage> {
        checkSampleIndex(index, size, what);
        return source.readRegion!(indices[index]!, choose);
      },
    }),
  };
}
