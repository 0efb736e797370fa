// What the trainer, the worker and a distillation teacher need of a model, whatever its family:
// the ImageClassifier interface, the types it speaks in, the config union and the factory.
//
// Every family keeps ALL its parameters in one flat Float32Array with a fixed layout (ParamSpec),
// so a worker all-reduces and optimizes a single buffer, and writes its backward pass by hand
// (tfjs-core registers no gradients in Node: see layers.ts).

import type { LossName } from '../train/recipe.ts';
import type { DeviceGradientSum } from './gradient-sum.ts';
import { ConvNet, countConvNetFlops, convNetParamSpecs, type ConvNetConfig } from './convnet.ts';
import { VisionTransformer, countFlops, paramSpecs, type VitConfig } from './vit.ts';

/** The architecture of any model: discriminated by `family`, which a ViT config may leave out. */
export type ModelConfig = VitConfig | ConvNetConfig;

/** Changes to a named model's architecture (a recipe's modelArgs, an export's model_args). */
export type ModelArgs = Partial<VitConfig> | Partial<ConvNetConfig>;

/**
 * Where one parameter lives in the flat buffer and how it maps onto the PyTorch state_dict of the
 * reference implementation (timm's for the ViT family, a plain torch.nn module for the convnet).
 *
 * Internal layouts are chosen for TF.js speed: Linear weights are stored [in, out] so the forward
 * pass is a plain x @ W (PyTorch keeps [out, in]), and convolution kernels [kh, kw, in, out] (TF's
 * HWIO layout, PyTorch's is [out, in, kh, kw]). An exporter gets the PyTorch tensor with
 * `transpose(reshape(data, shape), timmPerm)`; every other parameter already has PyTorch's layout.
 */
export interface ParamSpec {
  name: string; // state_dict key
  shape: number[]; // internal shape
  offset: number; // start in the flat buffer
  size: number; // product of shape
  init: 'trunc_normal' | 'zeros' | 'ones';
  timmShape: number[];
  timmPerm: number[] | null; // axes permutation internal -> PyTorch; null when the layouts are identical
}

/** The recipe's rates (src/train/recipe.ts `regularization`). */
export interface Regularization {
  dropout: number; // after attn.proj, after the MLP's GELU and after fc2 (timm's proj_drop, drop1, drop2)
  attnDropout?: number; // on the attention probabilities (timm's attn_drop)
  dropPath: number; // stochastic depth of the last block; rises linearly from 0 at the first
  labelSmoothing: number;
}

/** What a training step tells the model beyond its images and labels. */
export interface TrainContext {
  step: number;
  seed: number; // the run's seed
  sampleIndices: Uint32Array; // each image's index in the data set: its masks depend on it alone
  regularization?: Regularization; // none when absent
  distillationAlpha?: number; // a distilled model's weight of the distillation head's loss; 0.5 when absent
  loss?: LossName; // the class head's loss; softmax cross entropy when absent
  distillation?: TeacherGuidance; // a distilled model's teacher; without one the distillation head learns the labels
  /**
   * Mixup/CutMix targets, [n, numClasses] row-major, each row a distribution (sums to 1), the
   * label smoothing ALREADY folded in by the caller (as timm's Mixup does): when present the class
   * head learns these instead of the one-hot labels, and regularization.labelSmoothing is not
   * applied on top. A distilled model's distillation head learns them too when there is no
   * teacher; with one it learns from the teacher as without mixing. `correct` still counts hits of
   * the integer labels (the caller passes each mixed image's dominant label).
   */
  softTargets?: Float32Array;
}

/** What a teacher tells a distilled student about a micro-batch (DeiT's soft or hard distillation). */
export interface TeacherGuidance {
  mode: 'soft' | 'hard';
  tau: number; // softmax temperature of soft distillation; hard distillation ignores it
  teacherLogits: Float32Array; // the teacher's logits for each of the n images, [n, numClasses] row-major
}

export interface LossResult {
  lossSum: number; // sum (not mean) of per-sample losses
  correct: number; // count of samples whose argmax logit is the label (the joint classifier's, if distilled)
  correctClassHead?: number; // distilled models: the class head alone
  correctDistHead?: number; // distilled models: the distillation head alone
  distillationLossSum?: number; // distilled models, training: sum of the distillation head's loss term, before the alpha weighting
}

/** An image classifier with one flat parameter vector and a hand-written backward pass. */
export interface ImageClassifier {
  readonly config: ModelConfig;
  /** The parameter table in state_dict order; the flat layout of params, gradients and optimizer state. */
  readonly params: ParamSpec[];
  readonly numParams: number;
  /** Fresh weights from a seed, bit-identical on every machine. */
  initParams(seed: number): Float32Array;
  /** Uploads the flat buffer, replacing the previous weights; needed before any pass. */
  setParams(flat: Float32Array): void;
  /** Frees the weights' tensors; setParams again before the next pass. */
  disposeParams(): void;
  /**
   * Forward and backward on n NHWC images: returns the summed loss and correct count, and ADDS
   * d(lossSum)/d(params) into gradAccum (the flat layout), so micro-batches accumulate.
   */
  lossAndGrad(images: Float32Array, labels: Int32Array, n: number, gradAccum: Float32Array, ctx?: TrainContext): LossResult;
  /** lossAndGrad with the gradient added into a sum on the backend's device (GPU memory on a GPU worker); the promise waits only for the loss reads. */
  accumulateGradient(images: Float32Array, labels: Int32Array, n: number, into: DeviceGradientSum, ctx?: TrainContext): Promise<LossResult>;
  /** Forward only: summed cross entropy and correct counts of the inference classifier. */
  evaluate(images: Float32Array, labels: Int32Array, n: number): LossResult;
  /** evaluate with asynchronous reads: the form for 'webgpu', where Node cannot read the GPU synchronously. */
  evaluateAsync(images: Float32Array, labels: Int32Array, n: number): Promise<LossResult>;
  /** The inference classifier's logits for n images, [n, numClasses] row-major. */
  logits(images: Float32Array, n: number): Float32Array;
  /** logits with an asynchronous read. */
  logitsAsync(images: Float32Array, n: number): Promise<Float32Array>;
}

export function createModel(config: ModelConfig): ImageClassifier {
  return config.family === 'convnet' ? new ConvNet(config) : new VisionTransformer(config);
}

/** The parameter table of `config` without building the model: pure arithmetic. */
export function modelParamSpecs(config: ModelConfig): ParamSpec[] {
  return config.family === 'convnet' ? convNetParamSpecs(config) : paramSpecs(config);
}

/** Forward FLOPs per image (a multiply-add counts 2; matrix products and convolutions only). */
export function modelFlops(config: ModelConfig): number {
  return config.family === 'convnet' ? countConvNetFlops(config) : countFlops(config);
}
