// One rank's share of a training step, in data-path order:
//   data -> model (forward/backward per micro-batch, gradients summed) -> ring reduce-scatter ->
//   mean and global-norm clip -> the optimizer (and the weights' EMA) on this rank's shard ->
//   ring all-gather -> weights.
// Every rank ends a step holding the same parameter bits, which `paramDigest` lets the
// coordinator check.
import type { EvalCounts, ResumeState, ShardSnapshot, StepReport } from '../comm/control.ts';
import type { RingPeer } from '../comm/ring.ts';
import { shardRange, type ElementRange } from '../comm/shard.ts';
import type { ImageDataset } from '../data/fashion-mnist.ts';
import type { Regularization, TrainContext, VisionTransformer } from '../model/vit.ts';
import type { Recipe } from '../train/recipe.ts';
import { clipFactor, sumOfSquares } from '../train/clip.ts';
import { paramDigest } from '../train/digest.ts';
import { ShardEma } from '../train/ema.ts';
import { createShardOptimizer, type OptimizerConfig, type ShardOptimizer } from '../train/optimizer.ts';
import { decayMask } from '../train/weight-decay.ts';

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
   * The recipe's seed, `regularization` and `distillation` (alpha, and the teacher: null when the
   * distillation head learns the labels), for the model's per-sample masks and loss. Absent, the
   * model trains without regularization (and a distilled one with alpha 0.5 on the labels).
   */
  training?: { seed: number; regularization: Regularization; distillationAlpha: number; teacher: Teacher | null };
}

/** A distilled model's teacher, run forward on each micro-batch, and how the student learns from it. */
export interface Teacher {
  model: VisionTransformer;
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
  private readonly images: Float32Array;
  private readonly labels: Int32Array;
  private readonly imageSize: number;

  constructor(
    private readonly model: VisionTransformer,
    private readonly ring: RingPeer,
    private readonly train: ImageDataset,
    private readonly options: TrainerOptions,
    initialParams: Float32Array,
    resume: ResumeState | null,
  ) {
    this.params = new Float32Array(model.numParams);
    this.params.set(resume ? resume.params : initialParams);
    this.grad = new Float32Array(model.numParams);
    this.shard = shardRange(model.numParams, options.worldSize, options.rank);
    const shardLength = this.shard.end - this.shard.start;
    this.optimizer = createShardOptimizer(options.optimizer, shardLength);
    if (resume) this.optimizer.restore(resume.optimizerState, resume.optimizerStep);
    this.ema = options.ema ? new ShardEma(options.ema.decay, this.emaStart(resume)) : null;
    this.shardDecayMask = decayMask(model.params, model.numParams).subarray(this.shard.start, this.shard.end);
    this.imageSize = train.height * train.width * train.channels;
    this.images = new Float32Array(options.microBatch * this.imageSize);
    this.labels = new Int32Array(options.microBatch);
    model.setParams(this.params);
  }

  /** Where the average starts: the checkpoint's, or (fresh run, or EMA switched on at resume) the weights. */
  private emaStart(resume: ResumeState | null): Float32Array {
    const { start, end } = this.shard;
    if (!resume?.ema) return this.params.subarray(start, end);
    if (resume.ema.length !== end - start) throw new Error(`resume state for rank ${this.options.rank} has an EMA of ${resume.ema.length} elements, its shard has ${end - start}`);
    return resume.ema;
  }

  digest(): string {
    return paramDigest(this.params);
  }

  /** Runs one optimizer step on this rank's slice of the global batch. */
  async step(step: number, indices: Uint32Array, lr: number): Promise<StepReport> {
    const { microBatch, globalBatch, clipNorm } = this.options;
    const computeStart = performance.now();
    this.grad.fill(0);
    let lossSum = 0;
    let correct = 0;
    let distillationLossSum = 0;
    for (let from = 0; from < indices.length; from += microBatch) {
      const batch = indices.subarray(from, Math.min(from + microBatch, indices.length));
      this.train.gather(batch, this.images, this.labels);
      const images = this.images.subarray(0, batch.length * this.imageSize);
      const result = this.model.lossAndGrad(images, this.labels.subarray(0, batch.length), batch.length, this.grad, this.trainContext(step, batch, images));
      lossSum += result.lossSum;
      correct += result.correct;
      distillationLossSum += result.distillationLossSum ?? 0;
      // Let heartbeats and aborts through between micro-batches: a backward pass blocks the loop.
      await yieldToEventLoop();
    }
    const computeMs = performance.now() - computeStart;

    const commStart = performance.now();
    await this.ring.reduceScatter(this.grad, step);
    // The model returned gradients of the loss SUM; the training loss is the mean over the global batch.
    const grad = this.grad.subarray(this.shard.start, this.shard.end);
    const inverseBatch = 1 / globalBatch;
    for (let i = 0; i < grad.length; i++) grad[i]! *= inverseBatch;
    const [sumSquares] = await this.ring.allReduceScalars(Float64Array.of(sumOfSquares(grad)), step);
    const gradNorm = Math.sqrt(sumSquares!);
    const shardParams = this.params.subarray(this.shard.start, this.shard.end);
    this.optimizer.step(shardParams, grad, this.shardDecayMask, clipFactor(gradNorm, clipNorm), lr);
    this.ema?.update(shardParams);
    await this.ring.allGather(this.params, step);
    const commMs = performance.now() - commStart;

    this.model.setParams(this.params);
    const report: StepReport = { lossSum, correct, count: indices.length, gradNorm, paramDigest: this.digest(), computeMs, commMs };
    if (this.model.config.distilled) report.distillationLossSum = distillationLossSum;
    return report;
  }

  /** What the model needs beyond images and labels to train on `batch`: masks' seeds, loss weights, the teacher's logits. */
  private trainContext(step: number, batch: Uint32Array, images: Float32Array): TrainContext | undefined {
    if (!this.options.training) return undefined;
    const { teacher, ...training } = this.options.training;
    // Masks follow (seed, step, data-set index): the same on any number of workers.
    const context: TrainContext = { ...training, step, sampleIndices: batch };
    // The teacher's output for an image does not depend on the batch it comes in, so neither does the loss.
    if (teacher) context.distillation = { mode: teacher.mode, tau: teacher.tau, teacherLogits: teacher.model.logits(images, batch.length) };
    return context;
  }

  /** Loss and correct count over samples [start, end) of `data`, in micro-batches. */
  async evaluate(data: ImageDataset, start: number, end: number): Promise<EvalCounts> {
    const { microBatch } = this.options;
    const indices = new Uint32Array(end - start).map((_, i) => start + i);
    let lossSum = 0;
    let correct = 0;
    let correctClassHead = 0;
    let correctDistHead = 0;
    for (let from = 0; from < indices.length; from += microBatch) {
      const batch = indices.subarray(from, Math.min(from + microBatch, indices.length));
      data.gather(batch, this.images, this.labels);
      const result = this.model.evaluate(this.images.subarray(0, batch.length * this.imageSize), this.labels.subarray(0, batch.length), batch.length);
      lossSum += result.lossSum;
      correct += result.correct;
      correctClassHead += result.correctClassHead ?? 0;
      correctDistHead += result.correctDistHead ?? 0;
      await yieldToEventLoop();
    }
    const counts: EvalCounts = { lossSum, correct, count: indices.length };
    if (this.model.config.distilled) Object.assign(counts, { correctClassHead, correctDistHead });
    return counts;
  }

  /** Copies of this rank's shard of the parameters, optimizer state and EMA, for a checkpoint. */
  snapshot(): ShardSnapshot {
    const { start, end } = this.shard;
    const optimizerState = Object.fromEntries(Object.entries(this.optimizer.state()).map(([name, tensor]) => [name, tensor.slice()]));
    return { start, end, params: this.params.slice(start, end), optimizerState, ema: this.ema?.values.slice() ?? null, optimizerStep: this.optimizer.steps };
  }
}
