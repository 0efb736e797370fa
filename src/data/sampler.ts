// The epoch sampler: which training samples go into global step k, independent of the worker count.
// Every epoch is a seeded permutation of the training set; step k of an epoch takes the next
// `globalBatch` indices (the incomplete tail batch is dropped, as DDP's drop_last does), and the
// coordinator gives each rank a contiguous, balanced slice of them.
//
// Repeated augmentation (DeiT's RASampler) with r repeats: a global batch of B holds d = ceil(B / r)
// distinct images, taken in order from the epoch's permutation, and the image at distinct position
// j sits at positions j, j + d, j + 2d, ... (those below B) with repeat numbers 0, 1, 2, ...; when r
// does not divide B the last copies of the batch's last images fall off its end, as RASampler drops
// the tail of its repeated list. Each copy gets its own augmentation because the per-sample
// generator is seeded with the repeat number. An epoch keeps floor(n / B) steps, so it sees about
// n / r distinct images, as RASampler keeps an epoch at n samples.
import { shardRange } from '../common/shard.ts';
import { Mulberry32, mixSeed } from '../common/random.ts';

/** Salt that separates the sampler's stream from other uses of the run seed. */
const SAMPLER_STREAM = 0x5a3d;

/** Most repeats of one image per batch: repeat numbers travel as one byte each. */
const MAX_REPEATS = 255;

/** A rank's share of one global batch. */
export interface BatchSlice {
  /** Sample index at each of the rank's positions. */
  indices: Uint32Array;
  /** Repeat number (0 to repeats - 1) at each position: which augmented copy of its image it is. */
  repeats: Uint8Array;
  /** Position of the slice's first sample in the global batch (to number micro-batches globally). */
  offset: number;
}

export class EpochSampler {
  readonly stepsPerEpoch: number;
  /** Distinct images per global batch: globalBatch / repeats. */
  readonly distinctPerBatch: number;
  private cachedEpoch = -1;
  private cachedPermutation = new Uint32Array(0);

  constructor(
    readonly datasetSize: number,
    readonly globalBatch: number,
    readonly seed: number,
    readonly repeats = 1,
  ) {
    if (!Number.isInteger(globalBatch) || globalBatch < 1)
      throw new RangeError(`global batch must be a positive integer, got ${globalBatch}`);
    if (globalBatch > datasetSize)
      throw new RangeError(`global batch ${globalBatch} is larger than the training set (${datasetSize} samples)`);
    if (!Number.isInteger(repeats) || repeats < 1 || repeats > MAX_REPEATS) {
      throw new RangeError(`repeated augmentation count must be an integer in [1, ${MAX_REPEATS}], got ${repeats}`);
    }
    this.distinctPerBatch = Math.ceil(globalBatch / repeats);
    this.stepsPerEpoch = Math.floor(datasetSize / globalBatch);
  }

  epochOf(step: number): number {
    return Math.floor(step / this.stepsPerEpoch);
  }

  /** The seeded permutation of epoch `epoch` (Fisher-Yates). */
  permutation(epoch: number): Uint32Array {
    if (epoch !== this.cachedEpoch) {
      const perm = new Uint32Array(this.datasetSize);
      for (let i = 0; i < perm.length; i++) perm[i] = i;
      const rng = new Mulberry32(mixSeed(this.seed, SAMPLER_STREAM, epoch));
      for (let i = perm.length - 1; i > 0; i--) {
        const j = Math.floor(rng.next() * (i + 1));
        const t = perm[i]!;
        perm[i] = perm[j]!;
        perm[j] = t;
      }
      this.cachedEpoch = epoch;
      this.cachedPermutation = perm;
    }
    return this.cachedPermutation;
  }

  /**
   * The sample indices of step `step`'s global batch (0-based, counted over the whole run): the
   * step's distinct images, repeated `repeats` times one after the other. With one repeat this is
   * the next `globalBatch` indices of the epoch's permutation.
   */
  batch(step: number): Uint32Array {
    const epoch = this.epochOf(step);
    const distinct = this.distinctPerBatch;
    const offset = (step - epoch * this.stepsPerEpoch) * distinct;
    const images = this.permutation(epoch).subarray(offset, offset + distinct);
    const batch = new Uint32Array(this.globalBatch);
    for (let r = 0; r < this.repeats; r++) batch.set(images.subarray(0, Math.min(distinct, this.globalBatch - r * distinct)), r * distinct);
    return batch;
  }

  /** The repeat number of position `position` of any global batch. */
  repeatAt(position: number): number {
    return Math.floor(position / this.distinctPerBatch);
  }

  /**
   * Rank `rank`'s contiguous slice of step `step`'s batch.
   *
   * The repeats of one image are d = ceil(B/r) positions apart and a rank's slice holds at most
   * ceil(B/N) positions. When N >= r, ceil(B/N) <= ceil(B/r) = d, so no slice can reach from one
   * copy to the next: every repeat of an image lands on a different rank. When N < r, the r copies
   * cannot all find a rank of their own, and some ranks hold two or more copies of an image.
   */
  slice(step: number, rank: number, worldSize: number): BatchSlice {
    const { start, end } = shardRange(this.globalBatch, worldSize, rank);
    const repeats = new Uint8Array(end - start);
    for (let position = start; position < end; position++) repeats[position - start] = this.repeatAt(position);
    return { indices: this.batch(step).subarray(start, end), repeats, offset: start };
  }
}
