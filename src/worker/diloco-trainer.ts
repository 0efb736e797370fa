// One rank of DiLoCo (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of
// Language Models"). A round is H inner steps (step orders) and one outer step (an `outer` order):
//   inner: the recipe's step on this worker's slice of each global batch (globalBatch / slots:
//          its data slot's), with its own optimizer state and no communication: a ShardedTrainer
//          over a ring of one;
//   outer: pseudo-gradient = outer weights - local weights -> ring reduce-scatter (each rank gets
//          the sum of its shard) -> ring all-gather of those sums -> every rank divides by the
//          workers that reported and steps the whole outer weights with Nesterov SGD. The outer
//          optimizer's state is replicated (as in OpenDiLoCo), so a worker that leaves takes
//          nothing with it and any member can hand the outer state to a joiner; every rank steps
//          the same bits from the same sums, so all start the next round from the same weights.
// With --wire bf16 the reduce-scatter sends bf16 chunks (the ring's own bf16 wire, rounded to
// nearest even, summed in float32). With int8 each rank packs its pseudo-gradient's shards for the
// other ranks (pseudo-gradient-wire.ts) into one all-gather, which copies bits, and keeps what the
// packing lost for its next round (error feedback). With either, the all-gather of the summed
// pseudo-gradient carries each owner's shard packed; every rank, the owner too, decodes the same
// words, and the owner keeps what packing lost for the next round.
// The digest reported after every step is the outer weights', so the coordinator's check holds
// on every step and proves the workers start every round from the same bits.
// With --outer-overlap K (Douillard et al. 2025, "Streaming DiLoCo with overlapping
// communication"), the exchange starts at the round's end and the next round's first K inner steps
// run from the local weights meanwhile (the ring thread moves the bytes); after the K-th, the
// outer step applies the summed pseudo-gradient and the local weights become the new outer weights
// plus what those K steps changed. The outer weights stay bit-identical on every rank; what
// differs from a round-end outer step is where those K steps start: from the old outer weights plus
// the round's own progress.
import type { DilocoOuterOrder, EvalCounts, OuterReport, ResumeState, ShardSnapshot, StepReport } from '../comm/control.ts';
import { packedWords, packInPlace, unpack, type PseudoGradientWire } from '../comm/pseudo-gradient-wire.ts';
import { RingPeer } from '../comm/ring.ts';
import { type GradientRing, sharedFloat32Array } from '../comm/ring-thread.ts';
import type { WireTraffic } from '../comm/link.ts';
import { FatalError, RecoverableError } from '../common/errors.ts';
import { shardRange, type ElementRange } from '../common/shard.ts';
import type { BatchLoader } from '../data/loader.ts';
import type { ImageClassifier } from '../model/model.ts';
import { paramDigest } from '../train/digest.ts';
import { OuterOptimizer, pseudoGradient } from '../train/outer-optimizer.ts';
import type { SyncSettings } from '../train/recipe.ts';
import { ShardedTrainer, type StepSamples, type TrainerOptions } from './trainer.ts';

/** Checkpoint names of the state a DiLoCo rank keeps beside the outer weights. */
export const DILOCO_STATE = {
  /** Nesterov momentum of the outer optimizer (replicated; a snapshot holds this rank's shard). */
  outerMomentum: 'outer.momentum',
  /** What packing this rank's shard of the summed pseudo-gradient lost (bf16, int8; this rank's shard). */
  outerFeedback: 'outer.feedback',
  /** The local weights, when a checkpoint falls where they are not the outer weights (after an overlapped merge; whole). */
  localParams: 'local.params',
  /** Prefix of the inner optimizer's state tensors (whole: each rank has its own). */
  innerPrefix: 'inner.',
  /** What packing this rank's pseudo-gradient lost (bf16, int8; whole). */
  innerFeedback: 'inner.feedback',
} as const;

/** An outer step whose exchange runs while the next round's first inner steps do (--outer-overlap). */
interface OverlappedOuter {
  /** The round's end (steps completed). */
  step: number;
  reporters: number;
  /** Inner steps to run before the merge. */
  stepsLeft: number;
  /** The evaluation due at the round's end (test samples [start, end)), of the merged outer weights. */
  evaluate: ElementRange | null;
  snapshot: boolean;
  /** The summed pseudo-gradient lands in `pseudo`. */
  exchange: Promise<void>;
  trafficBefore: WireTraffic;
}

/** An overlapped outer step merged after an inner step: its report, and the evaluation and snapshot that follow it. */
export type MergedOuter = Pick<OverlappedOuter, 'step' | 'evaluate' | 'snapshot'> & { report: OuterReport };

export class DilocoTrainer {
  /** The outer weights: identical on every rank; the local weights return to them after every round. */
  private readonly outer: Float32Array;
  private readonly outerOptimizer: OuterOptimizer;
  /** The pseudo-gradient, reduced in place. */
  private readonly pseudo: Float32Array;
  /** Error feedback of the packed pseudo-gradient (whole; int8): null when not packed. */
  private readonly innerFeedback: Float32Array | null;
  /** Error feedback of this rank's packed shard of the summed pseudo-gradient (bf16, int8); null when not packed. */
  private outerFeedback: Float32Array | null = null;
  private shard: ElementRange = { start: 0, end: 0 };
  private ring!: GradientRing;
  private options!: TrainerOptions;
  private outerDigest: string;
  /** False while the local weights hold inner steps' progress (between the first inner step and the outer step's merge). */
  private localIsOuter: boolean;
  private overlapped: OverlappedOuter | null = null;
  /** The local weights at an overlapped round's end: what the inner steps since then changed is kept at the merge (null without --outer-overlap). */
  private readonly anchor: Float32Array | null;

  private constructor(
    private readonly model: ImageClassifier,
    ring: GradientRing,
    private readonly inner: ShardedTrainer,
    options: TrainerOptions,
    private readonly sync: SyncSettings,
    outerParams: Float32Array,
    resume: ResumeState | null,
  ) {
    const n = model.numParams;
    // What the ring reads and writes is in shared memory, for the ring thread.
    this.outer = sharedFloat32Array(n);
    this.outer.set(outerParams);
    this.localIsOuter = resume?.optimizerState[DILOCO_STATE.localParams] === undefined;
    this.outerOptimizer = new OuterOptimizer(sync, n);
    this.pseudo = sharedFloat32Array(n);
    this.innerFeedback = sync.wire === 'int8' ? new Float32Array(n) : null;
    this.anchor = sync.overlapSteps > 0 ? new Float32Array(n) : null;
    this.rebind(ring, options);
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
   * The rank's trainer: `resume` carries the outer weights, the outer state (its momentum whole,
   * this rank's shard of the feedback) and, when the checkpoint had a rank of this number, its
   * inner optimizer state (else it starts fresh). Its inner steps take globalBatch / `slots` images.
   */
  static async create(
    model: ImageClassifier,
    ring: GradientRing,
    train: BatchLoader,
    options: TrainerOptions,
    sync: SyncSettings,
    slots: number,
    generation: number,
    initialParams: Float32Array,
    resume: ResumeState | null,
  ): Promise<DilocoTrainer> {
    const { globalBatch } = options;
    if (options.ema) throw new FatalError('DILOCO_EMA', "DiLoCo keeps no weights' EMA: set the recipe's ema to null");
    if (globalBatch % slots !== 0)
      throw new FatalError(
        'DILOCO_BATCH',
        `DiLoCo splits the global batch of ${globalBatch} evenly over the workers: ${slots} workers do not divide it`,
      );
    // The inner steps need no ring: a ring of one opens no socket and its collectives return at once.
    const solo = await RingPeer.listen({ rank: 0, worldSize: 1, generation, token: 'local' });
    const innerState = resume ? innerResume(resume) : null;
    const inner = new ShardedTrainer(
      model,
      solo,
      train,
      { ...options, rank: 0, worldSize: 1, globalBatch: globalBatch / slots },
      resume ? resume.params : initialParams,
      innerState,
    );
    return new DilocoTrainer(model, ring, inner, options, sync, resume ? resume.params : initialParams, resume);
  }

  /**
   * Joins the ring of a new generation at a round's end, keeping the outer and inner state. The
   * shard layout changes with the ring, so the outer feedback (per shard) starts again at zero.
   */
  rebind(ring: GradientRing, options: TrainerOptions): void {
    this.ring = ring;
    this.options = options;
    this.shard = shardRange(this.model.numParams, options.worldSize, options.rank);
    this.outerFeedback = this.sync.wire === 'fp32' ? null : new Float32Array(this.shard.end - this.shard.start);
  }

  digest(): string {
    return this.outerDigest;
  }

  /** One inner step: the outer weights, and so the digest, stay as they are until the round's outer step (or its merge). */
  async step(step: number, samples: StepSamples, lr: number, upcoming: StepSamples | null = null): Promise<StepReport> {
    const report = await this.inner.step(step, samples, lr, upcoming);
    this.localIsOuter = false;
    if (this.overlapped) this.overlapped.stepsLeft -= 1;
    return { ...report, paramDigest: this.outerDigest, bytesSent: 0, bytesReceived: 0 };
  }

  /**
   * The outer step closing the round that ended after `step` steps. With `order.mergeAfter` 0 it
   * runs now and the next round starts from its result; otherwise its exchange starts now and
   * `mergeIfDue` finishes it after that many inner steps (null here).
   */
  async outerStep(step: number, order: DilocoOuterOrder): Promise<OuterReport | null> {
    if (this.overlapped)
      throw new RecoverableError(
        'ORDER_OUT_OF_SEQUENCE',
        `the outer step after step ${step} came before the merge of the one after step ${this.overlapped.step}`,
      );
    const started = performance.now();
    const trafficBefore = this.ring.traffic();
    if (order.mergeAfter > 0) {
      if (!this.anchor || order.broadcastFrom !== null || !order.contributes)
        throw new RecoverableError(
          'ORDER_OUT_OF_SEQUENCE',
          'an overlapped outer step needs --outer-overlap, and cannot take in joiners: the ring regroups at round ends',
        );
      this.anchor.set(this.inner.params);
      // exchange() computes the pseudo-gradient before its first await, so before the next inner step.
      const exchange = this.exchange(step, true);
      // A failure surfaces at the merge; until then it must not count as unhandled.
      exchange.catch(() => {});
      const { reporters, mergeAfter, evaluate, snapshot } = order;
      this.overlapped = { step, reporters, stepsLeft: mergeAfter, evaluate, snapshot, exchange, trafficBefore };
      return null;
    }
    if (order.broadcastFrom !== null) await this.broadcastOuterState(step, order.broadcastFrom);
    await this.exchange(step, order.contributes);
    this.applyOuterStep(order.reporters, null);
    return this.outerReport(performance.now() - started, trafficBefore);
  }

  /** After an inner step: the overlapped outer step's merge, when its inner steps have run (else null). */
  async mergeIfDue(): Promise<MergedOuter | null> {
    const pending = this.overlapped;
    if (!pending || pending.stepsLeft > 0) return null;
    const waitStarted = performance.now();
    await pending.exchange;
    this.overlapped = null;
    this.applyOuterStep(pending.reporters, this.anchor);
    const report = this.outerReport(performance.now() - waitStarted, pending.trafficBefore);
    return { step: pending.step, report, evaluate: pending.evaluate, snapshot: pending.snapshot };
  }

  /**
   * The ring's part of an outer step: this rank's pseudo-gradient (zeros for a joiner), computed
   * before the first await, then summed over the ranks into `pseudo`.
   */
  private async exchange(step: number, contributes: boolean): Promise<void> {
    const { worldSize } = this.options;
    const { pseudo, outer, innerFeedback } = this;
    if (contributes) pseudoGradient(outer, this.inner.params, innerFeedback, pseudo);
    else pseudo.fill(0);
    if (worldSize === 1) return;
    const { wire } = this.sync;
    if (wire === 'int8') await this.reducePacked(step);
    else await this.ring.reduceScatter(pseudo, step, { wire: wire === 'bf16' ? 'bf16' : 'fp32' });
    if (wire === 'fp32') await this.ring.allGather(pseudo, step);
    else await this.gatherPackedSums(step);
  }

  /**
   * Steps the outer weights with the summed pseudo-gradient. The local weights become the new
   * outer weights; after an overlap, plus what the inner steps since `anchor` (the local weights
   * at the round's end) changed.
   */
  private applyOuterStep(reporters: number, anchor: Float32Array | null): void {
    const { outer } = this;
    const local = this.inner.params;
    this.outerOptimizer.step(outer, this.pseudo, reporters);
    if (anchor) for (let i = 0; i < local.length; i++) local[i] = outer[i]! + (local[i]! - anchor[i]!);
    else local.set(outer);
    this.localIsOuter = anchor === null;
    this.model.setParams(local);
    this.outerDigest = paramDigest(outer);
  }

  private outerReport(commMs: number, trafficBefore: WireTraffic): OuterReport {
    const traffic = this.ring.traffic();
    return {
      paramDigest: this.outerDigest,
      commMs,
      bytesSent: traffic.sent - trafficBefore.sent,
      bytesReceived: traffic.received - trafficBefore.received,
    };
  }

  /**
   * Copies rank `source`'s outer weights and outer momentum to every rank: an all-reduce to which
   * only the source contributes (x + 0 is x; a -0 becomes +0, the same on every rank). A joiner
   * also sets its local weights to the outer weights, so its inner steps start from them.
   */
  private async broadcastOuterState(step: number, source: number): Promise<void> {
    const n = this.outer.length;
    const state = sharedFloat32Array(2 * n);
    const momentum = this.outerOptimizer.momentum;
    if (this.options.rank === source) {
      state.set(this.outer, 0);
      state.set(momentum, n);
    }
    await this.ring.allReduce(state, step);
    this.outer.set(state.subarray(0, n));
    momentum.set(state.subarray(n));
    this.outerDigest = paramDigest(this.outer);
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
   * The owner packs its shard of the summed pseudo-gradient (with its error feedback) into its
   * region; every rank, the owner too, decodes every region into the pseudo-gradient, so all
   * step the outer weights from the same bits.
   */
  private async gatherPackedSums(step: number): Promise<void> {
    const { worldSize, rank } = this.options;
    const { wire } = this.sync;
    const slot = this.slotWords(wire);
    const words = sharedWords(worldSize * slot);
    const own = this.pseudo.subarray(this.shard.start, this.shard.end);
    const feedback = this.outerFeedback!;
    for (let i = 0; i < own.length; i++) own[i] = own[i]! + feedback[i]!;
    feedback.set(own);
    packInPlace(wire, own, words.subarray(rank * slot, rank * slot + packedWords(wire, own.length)));
    for (let i = 0; i < own.length; i++) feedback[i] = feedback[i]! - own[i]!;
    await this.ring.allGather(new Float32Array(words.buffer, words.byteOffset, words.length), step);
    for (let q = 0; q < worldSize; q++) {
      const range = shardRange(this.pseudo.length, worldSize, q);
      const target = this.pseudo.subarray(range.start, range.end);
      unpack(wire, words.subarray(q * slot, q * slot + packedWords(wire, target.length)), target, false);
    }
  }

  /** The outer weights' loss and hits; mid-round (after an overlapped merge) the model holds them for the evaluation only. */
  async evaluate(data: BatchLoader, start: number, end: number): Promise<EvalCounts> {
    if (this.localIsOuter) return this.inner.evaluate(data, start, end);
    this.model.setParams(this.outer);
    try {
      return await this.inner.evaluate(data, start, end);
    } finally {
      this.model.setParams(this.inner.params);
    }
  }

  /** This rank's shard of the outer weights and outer state, and its whole inner state (its own). */
  snapshot(): ShardSnapshot {
    const { start, end } = this.shard;
    const inner = this.inner.snapshot();
    const optimizerState: Record<string, Float32Array> = {
      [DILOCO_STATE.outerMomentum]: this.outerOptimizer.momentum.slice(start, end),
    };
    for (const [name, tensor] of Object.entries(inner.optimizerState)) optimizerState[DILOCO_STATE.innerPrefix + name] = tensor;
    if (this.outerFeedback) optimizerState[DILOCO_STATE.outerFeedback] = this.outerFeedback.slice();
    if (this.innerFeedback) optimizerState[DILOCO_STATE.innerFeedback] = this.innerFeedback.slice();
    if (!this.localIsOuter) optimizerState[DILOCO_STATE.localParams] = this.inner.params.slice();
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
  // A checkpoint taken at an overlapped merge holds the rank's local weights beside the outer ones.
  const params = resume.optimizerState[DILOCO_STATE.localParams] ?? resume.params;
  return { params, optimizerState, ema: null, optimizerStep: resume.optimizerStep };
}

/** u32 words in shared memory, for the ring thread to all-gather in place. */
function sharedWords(length: number): Uint32Array {
  const floats = sharedFloat32Array(length);
  return new Uint32Array(floats.buffer, floats.byteOffset, floats.length);
}
