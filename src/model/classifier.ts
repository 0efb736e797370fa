// What every model family shares behind ImageClassifier: the flat parameter vector and its
// tensors, the seeded init, and the training step around a family's own forward and backward
// passes (targets, loss, gradient download and accumulation, correct counts).

import * as tf from '@tensorflow/tfjs-core';
import { initFlatParams } from './init.ts';
import { checkLabels, countCorrect, crossEntropySum, jointLogits, oneHotLabels, trainingObjective, type HeadLogits } from './loss.ts';
import type { ImageClassifier, LossResult, ModelConfig, ParamSpec, TrainContext } from './model.ts';

/** A training forward pass: the heads' logits, and the backward pass from d(loss)/d(logits) to the flat gradient. */
export interface TrainPass {
  heads: HeadLogits;
  backward(dLogits: HeadLogits): tf.Tensor1D;
}

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
    // A reshape is an op of its own on TensorFlow: skip the ones that would change nothing.
    const flat = (spec: ParamSpec, g: tf.Tensor) => (g.rank === 1 && g.size === spec.size ? g : tf.reshape(g, [spec.size]));
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

  /**
   * Forward and backward on n images. Returns the summed loss and the number of correct
   * predictions, and ADDS d(lossSum)/d(params) into gradAccum (same flat layout as the params),
   * so micro-batches accumulate; the caller divides by the global batch size.
   *
   * The loss is loss.ts's trainingObjective: cross entropy against the labels (label-smoothed by
   * the context) or the context's soft targets, and for a distilled model DeiT's distillation.
   * Without a context the loss is the plain cross entropy on the labels.
   */
  lossAndGrad(images: Float32Array, labels: Int32Array, n: number, gradAccum: Float32Array, ctx?: TrainContext): LossResult {
    if (gradAccum.length !== this.numParams) throw new Error(`gradAccum has length ${gradAccum.length}, expected ${this.numParams}`);
    if (ctx && ctx.sampleIndices.length < n) throw new Error(`sampleIndices holds ${ctx.sampleIndices.length} values, expected ${n}`);
    checkLabels(labels, n, this.config.numClasses);
    let result!: LossResult;
    // Every tensor, the downloads included, inside one tidy: nothing outlives the call, even on an error.
    tf.tidy(() => {
      const pass = this.trainPass(this.imagesTensor(images, n), n, ctx);
      const objective = trainingObjective(pass.heads, labels, n, this.config.numClasses, ctx);
      const flat = pass.backward(objective.dLogits).dataSync(); // one download for all gradients
      for (let i = 0; i < flat.length; i++) gradAccum[i]! += flat[i]!;
      result = { lossSum: objective.lossSum.dataSync()[0]!, correct: countCorrect(jointLogits(pass.heads), labels, n) };
      if (objective.distillationLossSum) result.distillationLossSum = objective.distillationLossSum.dataSync()[0]!;
    });
    return result;
  }

  /** Forward only: summed cross entropy of the inference classifier and correct counts on n images. */
  evaluate(images: Float32Array, labels: Int32Array, n: number): LossResult {
    let result!: LossResult;
    tf.tidy(() => {
      const x = this.imagesTensor(images, n);
      const y = oneHotLabels(labels, n, this.config.numClasses);
      const heads = this.inferenceHeads(x);
      const logits = jointLogits(heads);
      result = { lossSum: crossEntropySum(logits, y).dataSync()[0]!, correct: countCorrect(logits, labels, n) };
      if (heads.dist) {
        result.correctClassHead = countCorrect(heads.cls, labels, n);
        result.correctDistHead = countCorrect(heads.dist, labels, n);
      }
    });
    return result;
  }

  /** Logits of the inference classifier for n images, [n, numClasses] row-major. */
  logits(images: Float32Array, n: number): Float32Array {
    let out!: Float32Array;
    tf.tidy(() => {
      out = jointLogits(this.inferenceHeads(this.imagesTensor(images, n))).dataSync() as Float32Array;
    });
    return out;
  }
}
