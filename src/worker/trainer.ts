// One rank's share of a training step, in data-path order:
//   data -> model (forward/backward per micro-batch, gradients summed) -> ring reduce-scatter ->
//   mean and global-norm clip -> AdamW on this rank's shard -> ring all-gather -> weights.
// Every rank ends a step holding the same parameter bits, which `paramDigest` lets the
// coordinator check.
import type { EvalCounts, ResumeState, ShardSnapshot, StepReport } from '../comm/control.ts';
import type { RingPeer } from '../comm/ring.ts';
import { shardRange, type ElementRange } from '../comm/shard.ts';
import type { ImageDataset } from '../data/fashion-mnist.ts';
import type { VisionTransformer } from '../model/vit.ts';
import { adamwStep, createAdamWState, type AdamWConfig, type AdamWState } from '../train/adamw.ts';
import { clipFactor, sumOfSquares } from '../train/clip.ts';
import { paramDigest } from '../train/digest.ts';
import { decayMask } from '../train/weight-decay.ts';

export interface TrainerOptions {
  rank: number;
  worldSize: number;
  globalBatch: number;
  microBatch: number;
  clipNorm: number;
  optimizer: AdamWConfig;
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
  private readonly optimizerState: AdamWState;
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
    this.optimizerState = createAdamWState(shardLength);
    if (resume) {
      if (resume.m.length !== shardLength || resume.v.length !== shardLength) {
        throw new Error(`resume state for rank ${options.rank} has ${resume.m.length} moments, its shard has ${shardLength}`);
      }
      this.optimizerState.m.set(resume.m);
      this.optimizerState.v.set(resume.v);
      this.optimizerState.step = resume.optimizerStep;
    }
    this.shardDecayMask = decayMask(model.params, model.numParams).subarray(this.shard.start, this.shard.end);
    this.imageSize = train.height * train.width * train.channels;
    this.images = new Float32Array(options.microBatch * this.imageSize);
    this.labels = new Int32Array(options.microBatch);
    model.setParams(this.params);
  }

  digest(): string {
    return paramDigest(this.params);
  }

  /** Runs one optimizer step on this rank's slice of the global batch. */
  async step(step: number, indices: Uint32Array, lr: number): Promise<StepReport> {
    const { microBatch, globalBatch, clipNorm, optimizer } = this.options;
    const computeStart = performance.now();
    this.grad.fill(0);
    let lossSum = 0;
    let correct = 0;
    for (let from = 0; from < indices.length; from += microBatch) {
      const batch = indices.subarray(from, Math.min(from + microBatch, indices.length));
      this.train.gather(batch, this.images, this.labels);
      const result = this.model.lossAndGrad(this.images.subarray(0, batch.length * this.imageSize), this.labels.subarray(0, batch.length), batch.length, this.grad);
      lossSum += result.lossSum;
      correct += result.correct;
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
    adamwStep(optimizer, this.optimizerState, {
      params: this.params.subarray(this.shard.start, this.shard.end),
      grad,
      decayMask: this.shardDecayMask,
      gradScale: clipFactor(gradNorm, clipNorm),
      lr,
    });
    await this.ring.allGather(this.params, step);
    const commMs = performance.now() - commStart;

    this.model.setParams(this.params);
    return { lossSum, correct, count: indices.length, gradNorm, paramDigest: this.digest(), computeMs, commMs };
  }

  /** Loss and correct count over samples [start, end) of `data`, in micro-batches. */
  evaluate(data: ImageDataset, start: number, end: number): EvalCounts {
    const { microBatch } = this.options;
    const indices = new Uint32Array(end - start).map((_, i) => start + i);
    let lossSum = 0;
    let correct = 0;
    for (let from = 0; from < indices.length; from += microBatch) {
      const batch = indices.subarray(from, Math.min(from + microBatch, indices.length));
      data.gather(batch, this.images, this.labels);
      const result = this.model.evaluate(this.images.subarray(0, batch.length * this.imageSize), this.labels.subarray(0, batch.length), batch.length);
      lossSum += result.lossSum;
      correct += result.correct;
    }
    return { lossSum, correct, count: indices.length };
  }

  /** Copies of this rank's shard of the parameters and optimizer state, for a checkpoint. */
  snapshot(): ShardSnapshot {
    const { start, end } = this.shard;
    return { start, end, params: this.params.slice(start, end), m: this.optimizerState.m.slice(), v: this.optimizerState.v.slice(), optimizerStep: this.optimizerState.step };
  }
}
