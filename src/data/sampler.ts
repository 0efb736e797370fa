// The epoch sampler: which training samples go into global step k, independent of the worker count.
// Every epoch is a seeded permutation of the training set; step k of an epoch takes the next
// `globalBatch` indices (the incomplete tail batch is dropped, as DDP's drop_last does), and the
// coordinator gives each rank a contiguous, balanced slice of them.
import { shardRange } from '../comm/shard.ts';
import { Mulberry32, mixSeed } from './random.ts';

/** Salt that separates the sampler's stream from other uses of the run seed. */
const SAMPLER_STREAM = 0x5a3d;

export class EpochSampler {
  readonly stepsPerEpoch: number;
  private cachedEpoch = -1;
  private cachedPermutation = new Uint32Array(0);

  constructor(readonly datasetSize: number, readonly globalBatch: number, readonly seed: number) {
    if (!Number.isInteger(globalBatch) || globalBatch < 1) throw new RangeError(`global batch must be a positive integer, got ${globalBatch}`);
    if (globalBatch > datasetSize) throw new RangeError(`global batch ${globalBatch} is larger than the training set (${datasetSize} samples)`);
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

  /** The global batch of step `step` (0-based, counted over the whole run). */
  batch(step: number): Uint32Array {
    const epoch = this.epochOf(step);
    const offset = (step - epoch * this.stepsPerEpoch) * this.globalBatch;
    return this.permutation(epoch).slice(offset, offset + this.globalBatch);
  }

  /** Rank `rank`'s contiguous slice of step `step`'s batch. */
  slice(step: number, rank: number, worldSize: number): Uint32Array {
    const { start, end } = shardRange(this.globalBatch, worldSize, rank);
    return this.batch(step).subarray(start, end);
  }
}
