// One rank's share of a training step, in data-path order:
//   data (loader, batch mixing) -> model (forward/backward per micro-batch, gradients summed) -> ring reduce-scatter ->
//   mean and global-norm clip -> the optimizer (and the weights' EMA) on this rank's shard ->
//   ring all-gather -> weights.
// With overlap (the default), the last micro-batch's backward pass hands the gradient sum to the
// ring bucket by bucket as it finishes them (bucket-reduce.ts); the earlier micro-batches only
// accumulate. The sums are the same bits either way.
// Every rank ends a step holding the same parameter bits, which `paramDigest` lets the
// coordinator check.
import type { EvalCounts, ResumeState, ShardSnapshot, StepReport } from '../comm/control.ts';
import { type GradientRing, sharedFloat32Array } from '../comm/ring-thread.ts';
import type { WireFormat } from '../common/wire.ts';
import { shardRange, type ElementRange } from '../common/shard.ts';
import type { BatchLoader } from '../data/loader.ts';
import { mixBatch, mixRng, type MixConfig } from '../data/mixup.ts';
import { type GradientBucket, planGradientBuckets } from '../model/gradient-buckets.ts';
import { DeviceGradientSum } from '../model/gradient-sum.ts';
import type { ImageClassifier, LossResult, Regularization, TrainContext } from '../model/model.ts';
import { type LossName, type Recipe, recipeComm } from '../train/recipe.ts';
import { clipFactor, sumOfSquares } from '../train/clip.ts';
import { paramDigest } from '../train/digest.ts';
import { ShardEma } from '../train/ema.ts';
import { createShardOptimizer, type OptimizerConfig, type ShardOptimizer } from '../train/optimizer.ts';
import { decayMask } from '../train/weight-decay.ts';
import { BucketedReduceScatter } from './bucket-reduce.ts';

export interface TrainerOptions {
  rank: number;
  worldSize: number;
  globalBatch: number;
  microBatch: number;
  clipNorm: number;
  optimizer: OptimizerConfig;
  /** The weights' moving average, or null for none. */
  ema: { decay: number } | null;
  /**
   * How gradients travel: reduce-scatter chunks in float32 or bf16, and the bucket size in
   * elements for overlapping the ring with the last micro-batch's backward pass (null: no overlap,
   * the ring starts once the whole gradient is summed).
   */
  comm: { wire: WireFormat; bucketElements: number | null };
  /**
   * The recipe's seed, `regularization`, `distillation` (alpha, and the teacher: null when the
   * distillation head learns the labels) and loss, for the model's per-sample masks and loss.
   */
  training: {
    seed: number;
    regularization: Regularization;
    distillationAlpha: number;
    loss: LossName;
    teacher: Teacher | null;
    /** Batch-level mixing of each micro-batch (label smoothing folded into its soft targets), or null. */
    mixup: MixConfig | null;
  };
}

/** The recipe's `comm` as the trainer takes it: bucket MiB to float32 elements (0 MiB: no overlap). */
export function commOptionsOf(recipe: Recipe): TrainerOptions['comm'] {
  const { wire, bucketMb } = recipeComm(recipe);
  return { wire, bucketElements: bucketMb > 0 ? Math.max(1, Math.round((bucketMb * 2 ** 20) / 4)) : null };
}

/** Rank's part of a global batch: data-set indices, their repeat numbers, where the part starts in the global batch, and the epoch. */
export interface StepSamples {
  indices: Uint32Array;
  repeats: Uint8Array | null;
  offset: number;
  epoch: number;
}

/** One micro-batch, made by the loader while the model computes the one before it. */
interface MicroBatch {
  images: Float32Array;
  labels: Int32Array;
  skipped: string[];
}

/** A distilled model's teacher, run forward on each micro-batch, and how the student learns from it. */
export interface Teacher {
  model: ImageClassifier;
  mode: Exclude<Recipe['distillation']['mode'], 'none'>;
  tau: number;
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export class ShardedTrainer {
  /** The full parameter vector, identical on every rank between steps. */
  readonly params: Float32Array;
  /** Gradient sums of this rank's samples; after reduce-scatter, this rank's shard holds the global sum. */
  private readonly grad: Float32Array;
  /** This rank's slice of the flat parameter vector: the part whose optimizer state it owns. */
  readonly shard: ElementRange;
  private readonly optimizer: ShardOptimizer;
  /** The moving average of this rank's shard of the weights, when the recipe keeps one. */
  private readonly ema: ShardEma | null;
  private readonly shardDecayMask: Uint8Array;
  /** Two micro-batch buffers: the loader fills one while the model reads the other. */
  private readonly buffers: [MicroBatch, MicroBatch];
  /**
   * The next step's first micro-batch, loaded while this step computes when its order is already
   * here (DiLoCo's inner steps; a lockstep order comes after the step before). Two buffers taken
   * in turn, made on the first prefetch: one for the step computing, one for the step after.
   */
  private prefetchBuffers: [MicroBatch, MicroBatch] | null = null;
  private prefetches = 0;
  private prefetched: { indices: Uint32Array; batch: Promise<MicroBatch> } | null = null;
  private readonly imageSize: number;
  /** This step's time blocked on the loader (computeMicroBatches adds to it). */
  private dataWaitMs = 0;
  /** The overlapped step's gradient buckets, head first; null without overlap. */
  private readonly buckets: GradientBucket[] | null;
  /** When this step's last backward pass returned (computeMicroBatches sets it). */
  private lastGradientAt = 0;

  constructor(
    private readonly model: ImageClassifier,
    private readonly ring: GradientRing,
    private readonly train: BatchLoader,
    private readonly options: TrainerOptions,
    initialParams: Float32Array,
    resume: ResumeState | null,
  ) {
    // In shared memory: the ring thread reads and writes them in place.
    this.params = sharedFloat32Array(model.numParams);
    this.params.set(resume ? resume.params : initialParams);
    this.grad = sharedFloat32Array(model.numParams);
    this.shard = shardRange(model.numParams, options.worldSize, options.rank);
    const shardLength = this.shard.end - this.shard.start;
    this.optimizer = createShardOptimizer(options.optimizer, shardLength);
    if (resume) this.optimizer.restore(resume.optimizerState, resume.optimizerStep);
    this.ema = options.ema ? new ShardEma(options.ema.decay, this.emaStart(resume)) : null;
    this.shardDecayMask = decayMask(model.params, model.numParams).subarray(this.shard.start, this.shard.end);
    this.imageSize = train.sampleSize;
    this.buffers = [this.microBatchBuffer(), this.microBatchBuffer()];
    const { bucketElements } = options.comm;
    this.buckets = bucketElements === null ? null : planGradientBuckets(model.params, bucketElements);
    model.setParams(this.params);
  }

  private microBatchBuffer(): MicroBatch {
    const { microBatch } = this.options;
    return { images: new Float32Array(microBatch * this.imageSize), labels: new Int32Array(microBatch), skipped: [] };
  }

  /** Where the average starts: the checkpoint's, or (fresh run, or EMA switched on at resume) the weights. */
  private emaStart(resume: ResumeState | null): Float32Array {
    const { start, end } = this.shard;
    if (!resume?.ema) return this.params.subarray(start, end);
    if (resume.ema.length !== end - start)
      throw new Error(
        `resume state for rank ${this.options.rank} has an EMA of ${resume.ema.length} elements, its shard has ${end - start}`,
      );
    return resume.ema;
  }

  digest(): string {
    return paramDigest(this.params);
  }

  /**
   * Runs one optimizer step on this rank's slice of the global batch. `upcoming`: the next step's
   * samples when its order is already here; its first micro-batch loads while this step computes.
   */
  async step(step: number, samples: StepSamples, lr: number, upcoming: StepSamples | null = null): Promise<StepReport> {
    const { globalBatch, clipNorm } = this.options;
    const { indices } = samples;
    const computeStart = performance.now();
    const trafficBefore = this.ring.traffic();
    this.dataWaitMs = 0;
    let lossSum = 0;
    let correct = 0;
    let distillationLossSum = 0;
    const skipped: string[] = [];
    // Each micro-batch's loss and correct count, read from the device while the next one computes:
    // awaiting them in the loop would leave a GPU idle while the host records the next micro-batch.
    const results: Promise<LossResult>[] = [];
    const gradient = new DeviceGradientSum(this.model.numParams);
    const { wire } = this.options.comm;
    // A rank without samples this step has no backward pass to hand buckets over: it takes the plain path.
    const bucketed = this.buckets && indices.length > 0 ? new BucketedReduceScatter(this.ring, this.grad, step, this.buckets, wire) : null;
    try {
      await this.computeMicroBatches(step, samples, upcoming, gradient, results, skipped, bucketed);
      for (const result of await Promise.all(results)) {
        lossSum += result.lossSum;
        correct += result.correct;
        distillationLossSum += result.distillationLossSum ?? 0;
      }
    } catch (err) {
      gradient.dispose();
      bucketed?.abandon(err as Error);
      throw err;
    }
    let downloadMs = 0;
    let computeMs: number;
    // exposedCommMs: the time the step waits on the ring after its last gradient was computed.
    let ringStart: number;
    if (bucketed) {
      // The buckets came to the host inside the last backward pass, and are in the ring already.
      computeMs = this.lastGradientAt - computeStart;
      ringStart = this.lastGradientAt;
      await bucketed.done;
    } else {
      // The gradient summed on the model's device comes to the host once per step, for the ring.
      const downloadStart = performance.now();
      await gradient.take(this.grad);
      downloadMs = performance.now() - downloadStart;
      computeMs = downloadStart - computeStart;
      ringStart = performance.now();
      await this.ring.reduceScatter(this.grad, step, { wire });
    }
    const commStart = ringStart;
    let exposedCommMs = performance.now() - ringStart;
    // The model returned gradients of the loss SUM; the training loss is the mean over the global batch.
    const grad = this.grad.subarray(this.shard.start, this.shard.end);
    const inverseBatch = 1 / globalBatch;
    for (let i = 0; i < grad.length; i++) grad[i]! *= inverseBatch;
    const squares = sumOfSquares(grad);
    ringStart = performance.now();
    const [sumSquares] = await this.ring.allReduceScalars(Float64Array.of(squares), step);
    exposedCommMs += performance.now() - ringStart;
    const gradNorm = Math.sqrt(sumSquares!);
    const shardParams = this.params.subarray(this.shard.start, this.shard.end);
    this.optimizer.step(shardParams, grad, this.shardDecayMask, clipFactor(gradNorm, clipNorm), lr);
    this.ema?.update(shardParams);
    ringStart = performance.now();
    await this.ring.allGather(this.params, step);
    const commMs = performance.now() - commStart;
    exposedCommMs += performance.now() - ringStart;

    const uploadStart = performance.now();
    this.model.setParams(this.params);
    const copyMs = downloadMs + (performance.now() - uploadStart);
    const traffic = this.ring.traffic();
    const report: StepReport = {
      lossSum,
      correct,
      count: indices.length,
      gradNorm,
      paramDigest: this.digest(),
      computeMs,
      copyMs,
      commMs,
      exposedCommMs,
      dataWaitMs: this.dataWaitMs,
      bytesSent: traffic.sent - trafficBefore.sent,
      bytesReceived: traffic.received - trafficBefore.received,
      skipped,
    };
    if (this.model.config.distilled) report.distillationLossSum = distillationLossSum;
    return report;
  }

  /**
   * Forward and backward of every micro-batch of this rank's slice, their gradients added into
   * `gradient`; each one's loss read is pushed to `results` unawaited (see step).
   */
  private async computeMicroBatches(
    step: number,
    samples: StepSamples,
    upcoming: StepSamples | null,
    gradient: DeviceGradientSum,
    results: Promise<LossResult>[],
    skipped: string[],
    bucketed: BucketedReduceScatter | null,
  ): Promise<void> {
    const { microBatch } = this.options;
    const { indices } = samples;
    const count = Math.ceil(indices.length / microBatch);
    const waitStart = performance.now();
    let next = (await this.takePrefetched(samples)) ?? this.loadMicroBatch(samples, 0);
    this.dataWaitMs += performance.now() - waitStart;
    for (let m = 0; m < count; m++) {
      const waitStart = performance.now();
      const loaded = await next;
      this.dataWaitMs += performance.now() - waitStart;
      // Start on the next micro-batch now: loader threads make it while the model computes this one
      // (after the last, the next step's first, when its order is here).
      if (m + 1 < count) next = this.loadMicroBatch(samples, m + 1);
      else if (upcoming) this.prefetch(upcoming);
      const from = m * microBatch;
      const n = Math.min(microBatch, indices.length - from);
      const images = loaded.images.subarray(0, n * this.imageSize);
      const labels = loaded.labels.subarray(0, n);
      const context = await this.trainContext(step, samples.offset + from, indices.subarray(from, from + n), images, labels);
      // The last micro-batch hands its buckets (with the earlier ones' sum) to the ring as its backward pass finishes them.
      if (bucketed && m === count - 1) gradient.handOffBuckets(this.buckets!, this.grad, bucketed);
      const result = this.model.accumulateGradient(images, labels, n, gradient, context);
      this.lastGradientAt = performance.now();
      result.catch(() => {}); // rejections surface at step's Promise.all, not as unhandled ones
      results.push(result);
      skipped.push(...loaded.skipped);
      // Let heartbeats and aborts through between micro-batches: a backward pass blocks the loop.
      await yieldToEventLoop();
    }
  }

  /** Starts loading the first micro-batch of `samples` (the next step's) into the prefetch buffer no step is reading. */
  private prefetch(samples: StepSamples): void {
    this.prefetchBuffers ??= [this.microBatchBuffer(), this.microBatchBuffer()];
    const buffer = this.prefetchBuffers[this.prefetches++ % 2]!;
    const batch = this.loadInto(buffer, samples, 0);
    batch.catch(() => {}); // a failure surfaces in the step that takes it
    this.prefetched = { indices: samples.indices, batch };
  }

  /**
   * The prefetched first micro-batch when it is `samples`' (null otherwise). One prefetched for
   * another step (the order was abandoned) is waited out, so that no load still writes a buffer.
   */
  private async takePrefetched(samples: StepSamples): Promise<Promise<MicroBatch> | null> {
    const prefetched = this.prefetched;
    this.prefetched = null;
    if (!prefetched) return null;
    if (prefetched.indices === samples.indices) return prefetched.batch;
    await prefetched.batch.catch(() => {});
    return null;
  }

  /** Micro-batch `m` of `samples` into the buffer the model is not reading. */
  private loadMicroBatch(samples: StepSamples, m: number): Promise<MicroBatch> {
    return this.loadInto(this.buffers[m % 2]!, samples, m);
  }

  /** Micro-batch `m` of `samples` into `buffer`. */
  private async loadInto(buffer: MicroBatch, samples: StepSamples, m: number): Promise<MicroBatch> {
    const { microBatch } = this.options;
    const from = m * microBatch;
    const to = Math.min(from + microBatch, samples.indices.length);
    const request = {
      indices: samples.indices.subarray(from, to),
      repeats: samples.repeats?.subarray(from, to) ?? null,
      epoch: samples.epoch,
    };
    buffer.skipped = (await this.train.load(request, buffer.images, buffer.labels)).skipped;
    return buffer;
  }

  /**
   * What the model needs beyond images and labels to train on `batch` (which starts at `position`
   * in the global batch): masks' seeds, loss weights, the mixed images' soft targets (mixing
   * `images` in place), the teacher's logits.
   */
  private async trainContext(
    step: number,
    position: number,
    batch: Uint32Array,
    images: Float32Array,
    labels: Int32Array,
  ): Promise<TrainContext> {
    const { teacher, mixup, ...training } = this.options.training;
    const n = batch.length;
    // Masks follow (seed, step, data-set index): the same on any number of workers.
    const context: TrainContext = { ...training, step, sampleIndices: batch };
    if (mixup) {
      // Micro-batches are numbered within the global batch, so 1, 2 or 4 workers mix alike. big_vision
      // (fold_in=None, AugReg's setting) draws one ratio per step: every micro-batch shares draw 0.
      const microBatchIndex = mixup.kind === 'big_vision' ? 0 : Math.floor(position / this.options.microBatch);
      const rng = mixRng(training.seed, step, microBatchIndex);
      context.softTargets = mixBatch(images, labels, n, this.train.shape, this.model.config.numClasses, mixup, rng).targets;
    }
    // The teacher sees the images the student sees, mixed or not, as DeiT's DistillationLoss runs it
    // on the mixed inputs. Its output for an image does not depend on the batch, so neither does the loss.
    if (teacher) context.distillation = { mode: teacher.mode, tau: teacher.tau, teacherLogits: await teacher.model.logitsAsync(images, n) };
    return context;
  }

  /** Loss and correct count over samples [start, end) of `data`, in micro-batches. */
  async evaluate(data: BatchLoader, start: number, end: number): Promise<EvalCounts> {
    const { microBatch } = this.options;
    const { images, labels } = this.buffers[0];
    let lossSum = 0;
    let correct = 0;
    let correctClassHead = 0;
    let correctDistHead = 0;
    for (let from = start; from < end; from += microBatch) {
      const n = Math.min(microBatch, end - from);
      await data.load({ indices: Uint32Array.from({ length: n }, (_, i) => from + i), repeats: null, epoch: 0 }, images, labels);
      const result = await this.model.evaluateAsync(images.subarray(0, n * this.imageSize), labels.subarray(0, n), n);
      lossSum += result.lossSum;
      correct += result.correct;
      correctClassHead += result.correctClassHead ?? 0;
      correctDistHead += result.correctDistHead ?? 0;
      await yieldToEventLoop();
    }
    const counts: EvalCounts = { lossSum, correct, count: end - start };
    if (this.model.config.distilled) Object.assign(counts, { correctClassHead, correctDistHead });
    return counts;
  }

  /** Copies of this rank's shard of the parameters, optimizer state and EMA, for a checkpoint. */
  snapshot(): ShardSnapshot {
    const { start, end } = this.shard;
    const optimizerState = Object.fromEntries(Object.entries(this.optimizer.state()).map(([name, tensor]) => [name, tensor.slice()]));
    return {
      start,
      end,
      params: this.params.slice(start, end),
      optimizerState,
      ema: this.ema?.values.slice() ?? null,
      optimizerStep: this.optimizer.steps,
    };
  }
}
