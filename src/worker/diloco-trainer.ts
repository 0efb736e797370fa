// One rank of DiLoCo (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of
// Language Models"). A round is H inner steps and one outer step:
//   inner: the recipe's step on this rank's slice of each global batch (global batch / workers),
//          with this rank's own optimizer state and no communication: a ShardedTrainer over a
//          ring of one;
//   outer: pseudo-gradient = outer weights - local weights -> ring reduce-scatter (each rank gets
//          the sum of its shard) -> mean over the workers -> Nesterov SGD on this rank's shard
//          (ZeRO-1: the outer momentum of shard r lives on rank r) -> ring all-gather -> every rank
//          starts the next round from the same outer weights, bit for bit.
// With --wire bf16 the reduce-scatter sends bf16 chunks (the ring's own bf16 wire, rounded to
// nearest even, summed in float32). With int8 each rank packs its pseudo-gradient's shards for the
// other ranks (pseudo-gradient-wire.ts) into one all-gather, which copies bits, and keeps what the
// packing lost for its next round (error feedback). With either, the all-gather of the new outer
// weights carries each owner's packed weight update instead, which every rank (the owner too) adds
// to the previous outer weights; the owner keeps what packing lost for the next round.
// The digest reported after every step is the outer weights', so the coordinator's check holds
// on every step and proves the workers start every round from the same bits.
import type { EvalCounts, ResumeState, ShardSnapshot, StepReport } from '../comm/control.ts';
import { packedWords, packInPlace, unpack, type PseudoGradientWire } from '../comm/pseudo-gradient-wire.ts';
import { RingPeer } from '../comm/ring.ts';
import { type GradientRing, sharedFloat32Array } from '../comm/ring-thread.ts';
import { FatalError } from '../common/errors.ts';
import { shardRange, type ElementRange } from '../common/shard.ts';
import type { BatchLoader } from '../data/loader.ts';
import type { ImageClassifier } from '../model/model.ts';
import { paramDigest } from '../train/digest.ts';
import { isRoundEnd, OuterOptimizer, pseudoGradient } from '../train/outer-optimizer.ts';
import type { SyncSettings } from '../train/recipe.ts';
import { ShardedTrainer, type StepSamples, type TrainerOptions } from './trainer.ts';

/** Checkpoint names of the state a DiLoCo rank keeps beside the outer weights. */
export const DILOCO_STATE = {
  /** Nesterov momentum of the outer optimizer (this rank's shard). */
  outerMomentum: 'outer.momentum',
  /** What packing this rank's shard of the outer update lost (bf16, int8; this rank's shard). */
  outerFeedback: 'outer.feedback',
  /** Prefix of the inner optimizer's state tensors (whole: each rank has its own). */
  innerPrefix: 'inner.',
  /** What packing this rank's pseudo-gradient lost (bf16, int8; whole). */
  innerFeedback: 'inner.feedback',
} as const;

export class DilocoTrainer {
  /** The outer weights: identical on every rank; the local weights return to them after every round. */
  private readonly outer: Float32Array;
  private readonly shard: ElementRange;
  private readonly outerOptimizer: OuterOptimizer;
  /** The pseudo-gradient, reduced in place. */
  private readonly pseudo: Float32Array;
  /** Error feedback of the packed pseudo-gradient (whole; int8) and of the packed outer update (this shard; bf16, int8); null when not packed. */
  private readonly innerFeedback: Float32Array | null;
  private readonly outerFeedback: Float32Array | null;
  private outerDigest: string;

  private constructor(
    private readonly model: ImageClassifier,
    private readonly ring: GradientRing,
    private readonly inner: ShardedTrainer,
    private readonly options: TrainerOptions,
    private readonly sync: SyncSettings,
    private readonly totalSteps: number,
    resume: ResumeState | null,
  ) {
    const n = model.numParams;
    // What the ring reads and writes is in shared memory, for the ring thread.
    this.outer = sharedFloat32Array(n);
    this.outer.set(inner.params);
    this.shard = shardRange(n, options.worldSize, options.rank);
    const shardLength = this.shard.end - this.shard.start;
    this.outerOptimizer = new OuterOptimizer(sync, shardLength);
    this.pseudo = sharedFloat32Array(n);
    const packed = sync.wire !== 'fp32';
    this.innerFeedback = sync.wire === 'int8' ? new Float32Array(n) : null;
    this.outerFeedback = packed ? new Float32Array(shardLength) : null;
    if (resume) {
      const state = resume.optimizerState;
      const momentum = state[DILOCO_STATE.outerMomentum];
      if (!momentum)
        throw new FatalError('DILOCO_RESUME', 'the checkpoint holds no outer optimizer state: it was not written by a DiLoCo run');
      this.outerOptimizer.restore(momentum);
      // A checkpoint written with another wire has no feedback for this one: it starts at zero.
      const outerFeedback = state[DILOCO_STATE.outerFeedback];
      if (this.outerFeedback && outerFeedback) this.outerFeedback.set(outerFeedback);
      const innerFeedback = state[DILOCO_STATE.innerFeedback];
      if (this.innerFeedback && innerFeedback) this.innerFeedback.set(innerFeedback);
    }
    this.outerDigest = paramDigest(this.outer);
  }

  /**
   * The rank's trainer: `resume` carries the outer weights, this rank's shard of the outer state
   * and, when the checkpoint had a rank of this number, its inner optimizer state (else it starts fresh).
   */
  static async create(
    model: ImageClassifier,
    ring: GradientRing,
    train: BatchLoader,
    options: TrainerOptions,
    sync: SyncSettings,
    totalSteps: number,
    generation: number,
    initialParams: Float32Array,
    resume: ResumeState | null,
  ): Promise<DilocoTrainer> {
    const { globalBatch, worldSize } = options;
    if (options.ema) throw new FatalError('DILOCO_EMA', "DiLoCo keeps no weights' EMA: set the recipe's ema to null");
    if (globalBatch % worldSize !== 0)
      throw new FatalError(
        'DILOCO_BATCH',
        `DiLoCo splits the global batch of ${globalBatch} evenly over the workers: ${worldSize} workers do not divide it`,
      );
    // The inner steps need no ring: a ring of one opens no socket and its collectives return at once.
    const solo = await RingPeer.listen({ rank: 0, worldSize: 1, generation, token: 'local' });
    const innerState = resume ? innerResume(resume) : null;
    const inner = new ShardedTrainer(
      model,
      solo,
      train,
      { ...options, rank: 0, worldSize: 1, globalBatch: globalBatch / worldSize },
      resume ? resume.params : initialParams,
      innerState,
    );
    return new DilocoTrainer(model, ring, inner, options, sync, totalSteps, resume);
  }

  digest(): string {
    return this.outerDigest;
  }

  /** One inner step; at a round's end, the outer step too. */
  async step(step: number, samples: StepSamples, lr: number): Promise<StepReport> {
    const trafficBefore = this.ring.traffic();
    const report = await this.inner.step(step, samples, lr);
    let outerMs = 0;
    if (isRoundEnd(this.sync, step + 1, this.totalSteps)) {
      const start = performance.now();
      await this.outerStep(step);
      outerMs = performance.now() - start;
    }
    const traffic = this.ring.traffic();
    return {
      ...report,
      paramDigest: this.outerDigest,
      commMs: report.commMs + outerMs,
      exposedCommMs: report.exposedCommMs + outerMs,
      bytesSent: traffic.sent - trafficBefore.sent,
      bytesReceived: traffic.received - trafficBefore.received,
    };
  }

  private async outerStep(step: number): Promise<void> {
    const { worldSize } = this.options;
    const local = this.inner.params;
    const { pseudo, outer, innerFeedback } = this;
    pseudoGradient(outer, local, innerFeedback, pseudo);
    const { wire } = this.sync;
    const packed = wire !== 'fp32' && worldSize > 1;
    if (wire === 'int8' && worldSize > 1) await this.reducePacked(step);
    else await this.ring.reduceScatter(pseudo, step, { wire: wire === 'bf16' ? 'bf16' : 'fp32' });
    const { start, end } = this.shard;
    const shardOuter = outer.subarray(start, end);
    const previous = packed ? shardOuter.slice() : null;
    this.outerOptimizer.step(shardOuter, pseudo.subarray(start, end), worldSize);
    if (previous) await this.gatherPackedUpdates(step, previous);
    else await this.ring.allGather(outer, step);
    local.set(outer);
    this.model.setParams(local);
    this.outerDigest = paramDigest(outer);
  }

  /** Words one packed shard takes (the largest shard's, so every slot has the same size). */
  private slotWords(wire: PseudoGradientWire): number {
    const { worldSize } = this.options;
    const largest = shardRange(this.pseudo.length, worldSize, 0);
    return packedWords(wire, largest.end - largest.start);
  }

  /**
   * Each rank packs its pseudo-gradient's shards for the other ranks into its region of one
   * all-gather (the slot of shard s in rank r's region: s, or s - 1 past r); afterwards each rank
   * adds the others' contributions to its own shard, which it kept in float32.
   */
  private async reducePacked(step: number): Promise<void> {
    const { worldSize, rank } = this.options;
    const wire = 'int8';
    const slot = this.slotWords(wire);
    const region = (worldSize - 1) * slot;
    const words = sharedWords(worldSize * region);
    const slotOf = (owner: number, shard: number): Uint32Array => {
      const { start, end } = shardRange(this.pseudo.length, worldSize, shard);
      const at = owner * region + (shard < owner ? shard : shard - 1) * slot;
      return words.subarray(at, at + packedWords(wire, end - start));
    };
    const feedback = this.innerFeedback!;
    for (let s = 0; s < worldSize; s++) {
      const { start, end } = shardRange(this.pseudo.length, worldSize, s);
      const values = this.pseudo.subarray(start, end);
      if (s === rank) {
        feedback.fill(0, start, end);
        continue;
      }
      feedback.set(values, start);
      packInPlace(wire, values, slotOf(rank, s));
      for (let i = start; i < end; i++) feedback[i] = feedback[i]! - this.pseudo[i]!;
    }
    await this.ring.allGather(new Float32Array(words.buffer, words.byteOffset, words.length), step);
    const own = this.pseudo.subarray(this.shard.start, this.shard.end);
    for (let q = 0; q < worldSize; q++) if (q !== rank) unpack(wire, slotOf(q, rank), own, true);
  }

  /**
   * The owner packs its shard's outer update (with its error feedback) into its region; every rank,
   * the owner too, adds each region's decoded update to the previous outer weights of that shard.
   */
  private async gatherPackedUpdates(step: number, previous: Float32Array): Promise<void> {
    const { worldSize, rank } = this.options;
    const { wire } = this.sync;
    const slot = this.slotWords(wire);
    const words = sharedWords(worldSize * slot);
    const { start, end } = this.shard;
    const shardOuter = this.outer.subarray(start, end);
    const feedback = this.outerFeedback!;
    const update = new Float32Array(shardOuter.length);
    for (let i = 0; i < update.length; i++) update[i] = shardOuter[i]! - previous[i]! + feedback[i]!;
    feedback.set(update);
    packInPlace(wire, update, words.subarray(rank * slot, rank * slot + packedWords(wire, update.length)));
    for (let i = 0; i < update.length; i++) feedback[i] = feedback[i]! - update[i]!;
    shardOuter.set(previous);
    await this.ring.allGather(new Float32Array(words.buffer, words.byteOffset, words.length), step);
    for (let q = 0; q < worldSize; q++) {
      const range = shardRange(this.outer.length, worldSize, q);
      const target = this.outer.subarray(range.start, range.end);
      unpack(wire, words.subarray(q * slot, q * slot + packedWords(wire, target.length)), target, true);
    }
  }

  evaluate(data: BatchLoader, start: number, end: number): Promise<EvalCounts> {
    return this.inner.evaluate(data, start, end);
  }

  /** This rank's shard of the outer weights and outer state, and its whole inner state (its own). */
  snapshot(): ShardSnapshot {
    const { start, end } = this.shard;
    const inner = this.inner.snapshot();
    const optimizerState: Record<string, Float32Array> = {
      [DILOCO_STATE.outerMomentum]: this.outerOptimizer.momentum.slice(),
    };
    for (const [name, tensor] of Object.entries(inner.optimizerState)) optimizerState[DILOCO_STATE.innerPrefix + name] = tensor;
    if (this.outerFeedback) optimizerState[DILOCO_STATE.outerFeedback] = this.outerFeedback.slice();
    if (this.innerFeedback) optimizerState[DILOCO_STATE.innerFeedback] = this.innerFeedback.slice();
    return { start, end, params: this.outer.slice(start, end), optimizerState, ema: null, optimizerStep: inner.optimizerStep };
  }
}

/** The inner trainer's resume state from a DiLoCo resume: null when the checkpoint had no rank of this number. */
function innerResume(resume: ResumeState): ResumeState | null {
  const entries = Object.entries(resume.optimizerState).filter(
    ([name]) => name.startsWith(DILOCO_STATE.innerPrefix) && name !== DILOCO_STATE.innerFeedback,
  );
  if (entries.length === 0) return null;
  const optimizerState = Object.fromEntries(entries.map(([name, tensor]) => [name.slice(DILOCO_STATE.innerPrefix.length), tensor]));
  return { params: resume.params, optimizerState, ema: null, optimizerStep: resume.optimizerStep };
}

/** u32 words in shared memory, for the ring thread to all-gather in place. */
function sharedWords(length: number): Uint32Array {
  const floats = sharedFloat32Array(length);
  return new Uint32Array(floats.buffer, floats.byteOffset, floats.length);
}
