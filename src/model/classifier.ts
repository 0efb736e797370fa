// What every model family shares behind ImageClassifier: the flat parameter vector and its
// tensors, the seeded init, and the training step around a family's own forward and backward
// passes (targets, loss, gradient download and accumulation, correct counts).

import * as tf from '@tensorflow/tfjs-core';
import { BucketSink } from './gradient-buckets.ts';
import type { DeviceGradientSum } from './gradient-sum.ts';
import { initFlatParams } from './init.ts';
import { checkLabels, countCorrectIn, crossEntropySum, jointLogits, oneHotLabels, trainingObjective, type HeadLogits } from './loss.ts';
import type { ImageClassifier, LossResult, ModelConfig, ParamSpec, TrainContext } from './model.ts';
import { reshape } from './tensorflow-ops.ts';

/** A training forward pass: the heads' logits, and the backward pass from d(loss)/d(logits) to the flat gradient. */
export interface TrainPass {
  heads: HeadLogits;
  /**
   * `grads`, when given, is where the pass records each parameter's gradient as soon as it has it
   * (a BucketSink hands finished buckets to the ring); the flat gradient is still returned.
   */
  backward(dLogits: HeadLogits, grads?: Map<string, tf.Tensor>): tf.Tensor1D;
}

/** A training pass's outputs that outlive its tidy. */
type TrainTensors = {
  grad: tf.Tensor1D;
  lossSum: tf.Tensor;
  logits: tf.Tensor2D;
  distillationLossSum?: tf.Tensor;
};

export abstract class FlatParamClassifier<C extends ModelConfig> implements ImageClassifier {
  readonly config: C;
  readonly params: ParamSpec[];
  readonly numParams: number;
  private readonly index: Map<string, number>; // name -> position in params / tensors
  private tensors: tf.Tensor[] | null = null; // one per ParamSpec, internal shape

  constructor(config: C, params: ParamSpec[]) {
    this.config = { ...config };
    this.params = params;
    const last = params[params.length - 1]!;
    this.numParams = last.offset + last.size;
    this.index = new Map(params.map((p, i) => [p.name, i]));
  }

  /** The forward pass of training on n images, keeping what its backward pass needs. Runs inside tf.tidy. */
  protected abstract trainPass(x: tf.Tensor4D, n: number, ctx: TrainContext | undefined): TrainPass;

  /** The heads' logits at inference (no regularization). Runs inside tf.tidy. */
  protected abstract inferenceHeads(x: tf.Tensor4D): HeadLogits;

  /**
   * Fresh weights from a seed, deterministic and identical on every machine: truncated normal
   * (std 0.02, cut at 2 std) for every weight and token, zero biases, norm weights 1 and biases 0.
   */
  initParams(seed: number): Float32Array {
    return initFlatParams(this.params, this.numParams, seed);
  }

  /** Uploads the flat buffer into one tensor per parameter, disposing the previous ones. */
  setParams(flat: Float32Array): void {
    if (flat.length !== this.numParams) throw new Error(`expected ${this.numParams} parameters, got ${flat.length}`);
    const next = this.params.map((p) => tf.tensor(flat.slice(p.offset, p.offset + p.size), p.shape, 'float32'));
    this.disposeParams();
    this.tensors = next;
  }

  /** Frees the parameter tensors; the model needs setParams again before use. */
  disposeParams(): void {
    if (this.tensors !== null) tf.dispose(this.tensors);
    this.tensors = null;
  }

  protected p<T extends tf.Tensor = tf.Tensor1D>(name: string): T {
    if (this.tensors === null) throw new Error(`${this.constructor.name}: call setParams before running the model`);
    return this.tensors[this.index.get(name)!] as T;
  }

  protected w(name: string): tf.Tensor2D {
    return this.p<tf.Tensor2D>(`${name}.weight`);
  }

  protected b(name: string): tf.Tensor1D {
    return this.p(`${name}.bias`);
  }

  /** Per-parameter gradients (by name, any shape of the parameter's size) as one flat vector in the params' order. */
  protected flatGradient(grads: Map<string, tf.Tensor>): tf.Tensor1D {
    // Every bucket already went to the ring: a flat copy would only cost time.
    if (grads instanceof BucketSink && grads.complete) return tf.zeros([0]);
    // A reshape is an op of its own on TensorFlow: skip the ones that would change nothing.
    const flat = (spec: ParamSpec, g: tf.Tensor) => (g.rank === 1 && g.size === spec.size ? g : reshape(g, [spec.size]));
    return tf.concat(this.params.map((spec) => flat(spec, grads.get(spec.name)!))) as tf.Tensor1D;
  }

  /** The first n images of a flat NHWC buffer as a tensor. */
  private imagesTensor(images: Float32Array, n: number): tf.Tensor4D {
    const { imageSize: S, inChannels: C } = this.config;
    const size = n * S * S * C;
    if (!Number.isInteger(n) || n <= 0) throw new Error(`n must be a positive integer, got ${n}`);
    if (images.length < size) throw new Error(`images holds ${images.length} values, ${n} images need ${size}`);
    return tf.tensor4d(images.subarray(0, size), [n, S, S, C]);
  }

  /** The training pass's tensors for n images, kept past the tidy: the flat gradient and what the result reads. */
  private trainTensors(
    images: Float32Array,
    labels: Int32Array,
    n: number,
    gradLength: number,
    ctx: TrainContext | undefined,
    sink: BucketSink | null = null,
  ): TrainTensors {
    if (gradLength !== this.numParams) throw new Error(`gradAccum has length ${gradLength}, expected ${this.numParams}`);
    if (ctx && ctx.sampleIndices.length < n) throw new Error(`sampleIndices holds ${ctx.sampleIndices.length} values, expected ${n}`);
    checkLabels(labels, n, this.config.numClasses);
    // Every intermediate inside one tidy: only the returned tensors outlive it, even on an error.
    return tf.tidy(() => {
      const pass = this.trainPass(this.imagesTensor(images, n), n, ctx);
      const objective = trainingObjective(pass.heads, labels, n, this.config.numClasses, ctx);
      const tensors: TrainTensors = {
        grad: pass.backward(objective.dLogits, sink ?? undefined),
        lossSum: objective.lossSum,
        logits: jointLogits(pass.heads),
      };
      if (objective.distillationLossSum) tensors.distillationLossSum = objective.distillationLossSum;
      return tensors;
    });
  }

  /**
   * Forward and backward on n images. Returns the summed loss and the number of correct
   * predictions, and ADDS d(lossSum)/d(params) into gradAccum (same flat layout as the params),
   * so micro-batches accumulate; the caller divides by the global batch size.
   *
   * The loss is loss.ts's trainingObjective: cross entropy against the labels (label-smoothed by
   * the context) or the context's soft targets, and for a distilled model DeiT's distillation.
   * Without a context the loss is the plain cross entropy on the labels.
   *
   * Synchronous reads: not on 'webgpu' (Node has no synchronous GPU read); the trainer uses
   * accumulateGradient, which works on every backend.
   */
  lossAndGrad(images: Float32Array, labels: Int32Array, n: number, gradAccum: Float32Array, ctx?: TrainContext): LossResult {
    const tensors = this.trainTensors(images, labels, n, gradAccum.length, ctx);
    try {
      const flat = tensors.grad.dataSync(); // one download for all gradients
      for (let i = 0; i < flat.length; i++) gradAccum[i]! += flat[i]!;
      return this.trainResult(tensors.lossSum.dataSync(), tensors.logits.dataSync(), tensors.distillationLossSum?.dataSync(), labels, n);
    } finally {
      tf.dispose(tensors);
    }
  }

  /**
   * lossAndGrad, but the gradient is added into `into`, a sum that stays on the backend's device
   * (on a GPU worker, in GPU memory) until its owner takes it, once per step. The work is recorded
   * before this returns; the promise waits only for the loss and logits reads, so the caller can
   * record the next micro-batch meanwhile.
   */
  async accumulateGradient(
    images: Float32Array,
    labels: Int32Array,
    n: number,
    into: DeviceGradientSum,
    ctx?: TrainContext,
  ): Promise<LossResult> {
    const { grad, ...read } = this.trainTensors(images, labels, n, into.length, ctx, into.sink);
    into.add(grad);
    // Everything above ran before the first await; the caller may refill `labels` while the reads wait.
    const ownLabels = labels.slice(0, n);
    try {
      const [lossSum, logits, distillation] = await Promise.all([
        read.lossSum.data(),
        read.logits.data(),
        read.distillationLossSum?.data(),
      ]);
      return this.trainResult(lossSum, logits, distillation, ownLabels, n);
    } finally {
      tf.dispose(read);
    }
  }

  private trainResult(
    lossSum: tf.TypedArray,
    logits: tf.TypedArray,
    distillationLossSum: tf.TypedArray | undefined,
    labels: Int32Array,
    n: number,
  ): LossResult {
    const result: LossResult = { lossSum: lossSum[0]!, correct: countCorrectIn(logits, this.config.numClasses, labels, n) };
    if (distillationLossSum) result.distillationLossSum = distillationLossSum[0]!;
    return result;
  }

  /** The inference pass's tensors for evaluate: the summed cross entropy and the heads' logits. */
  private evaluationTensors(
    images: Float32Array,
    labels: Int32Array,
    n: number,
  ): { lossSum: tf.Tensor; logits: tf.Tensor2D; cls?: tf.Tensor2D; dist?: tf.Tensor2D } {
    return tf.tidy(() => {
      const heads = this.inferenceHeads(this.imagesTensor(images, n));
      const logits = jointLogits(heads);
      const lossSum = crossEntropySum(logits, oneHotLabels(labels, n, this.config.numClasses));
      return heads.dist ? { lossSum, logits, cls: heads.cls, dist: heads.dist } : { lossSum, logits };
    });
  }

  /** Forward only: summed cross entropy of the inference classifier and correct counts on n images. */
  evaluate(images: Float32Array, labels: Int32Array, n: number): LossResult {
    const t = this.evaluationTensors(images, labels, n);
    try {
      return this.evaluationResult(t.lossSum.dataSync(), t.logits.dataSync(), t.cls?.dataSync(), t.dist?.dataSync(), labels, n);
    } finally {
      tf.dispose(t);
    }
  }

  /** evaluate, with asynchronous reads (every backend, 'webgpu' included). */
  async evaluateAsync(images: Float32Array, labels: Int32Array, n: number): Promise<LossResult> {
    const t = this.evaluationTensors(images, labels, n);
    try {
      const [lossSum, logits, cls, dist] = await Promise.all([t.lossSum.data(), t.logits.data(), t.cls?.data(), t.dist?.data()]);
      return this.evaluationResult(lossSum, logits, cls, dist, labels, n);
    } finally {
      tf.dispose(t);
    }
  }

  private evaluationResult(
    lossSum: tf.TypedArray,
    logits: tf.TypedArray,
    cls: tf.TypedArray | undefined,
    dist: tf.TypedArray | undefined,
    labels: Int32Array,
    n: number,
  ): LossResult {
    const classes = this.config.numClasses;
    const result: LossResult = { lossSum: lossSum[0]!, correct: countCorrectIn(logits, classes, labels, n) };
    if (cls && dist) {
      result.correctClassHead = countCorrectIn(cls, classes, labels, n);
      result.correctDistHead = countCorrectIn(dist, classes, labels, n);
    }
    return result;
  }

  private logitsTensor(images: Float32Array, n: number): tf.Tensor2D {
    return tf.tidy(() => jointLogits(this.inferenceHeads(this.imagesTensor(images, n))));
  }

  /** Logits of the inference classifier for n images, [n, numClasses] row-major. */
  logits(images: Float32Array, n: number): Float32Array {
    const logits = this.logitsTensor(images, n);
    try {
      return logits.dataSync() as Float32Array;
    } finally {
      logits.dispose();
    }
  }

  /** logits, with an asynchronous read (every backend, 'webgpu' included). */
  async logitsAsync(images: Float32Array, n: number): Promise<Float32Array> {
    const logits = this.logitsTensor(images, n);
    try {
      return (await logits.data()) as Float32Array;
    } finally {
      logits.dispose();
    }
  }
}
