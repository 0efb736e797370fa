// Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words") in TF.js.
//
// Read it like timm's vision_transformer.py: the same blocks, the same parameter names, the same
// forward_features / forward_head split. What differs is bookkeeping for data parallelism: every
// parameter lives in ONE flat Float32Array with a fixed layout (see ParamSpec), so a worker can
// all-reduce and optimize a single buffer, and the initialization is computed in plain JS from a
// seed so that every worker starts from bit-identical weights on any machine. Likewise every
// random mask of training (dropout, stochastic depth) is drawn in plain JS per SAMPLE, from the
// run's seed, the step and the sample's index in the data set, so a step computes the same loss
// whatever the number of workers and however the batch is cut into micro-batches.

import * as tf from '@tensorflow/tfjs-core';
import { Mulberry32, mixSeed } from '../data/random.ts';

export interface VitConfig {
  imageSize: number; // square input, H = W
  patchSize: number; // square, non-overlapping patches
  inChannels: number;
  numClasses: number;
  embedDim: number;
  depth: number; // number of transformer blocks
  numHeads: number;
  mlpRatio: number; // MLP hidden width = embedDim * mlpRatio
  distilled: boolean; // DeiT's distillation token after the class token, with its own head
}

/**
 * Where one parameter lives in the flat buffer and how it maps onto timm's state_dict.
 *
 * Internal layouts are chosen for TF.js speed: Linear weights are stored [in, out] so the forward
 * pass is a plain x @ W (timm/PyTorch keep [out, in]), and the patch-embedding conv kernel is stored
 * [p, p, C, D] (TF's HWIO conv layout) so that it is simply a [p*p*C, D] matrix applied to patches
 * flattened in (row, col, channel) order. An exporter gets timm's tensor with
 * `transpose(reshape(data, shape), timmPerm)`; every other parameter already has timm's layout.
 */
export interface ParamSpec {
  name: string; // timm state_dict key
  shape: number[]; // internal shape
  offset: number; // start in the flat buffer
  size: number; // product of shape
  init: 'trunc_normal' | 'zeros' | 'ones';
  timmShape: number[];
  timmPerm: number[] | null; // axes permutation internal -> timm; null when the layouts are identical
}

const LN_EPS = 1e-6; // timm's ViT uses LayerNorm(eps=1e-6), not PyTorch's default 1e-5
const INIT_STD = 0.02; // timm/DeiT: trunc_normal_(std=.02)

/** The parameter table in timm's state_dict order. Pure arithmetic: nothing is allocated. */
export function paramSpecs(config: VitConfig): ParamSpec[] {
  const { patchSize: p, inChannels: C, embedDim: D, depth, numClasses } = config;
  const T = numTokens(config);
  const hidden = mlpHidden(config);
  const specs: ParamSpec[] = [];
  let offset = 0;
  const add = (name: string, shape: number[], init: ParamSpec['init'], timmPerm: number[] | null = null) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const timmShape = timmPerm === null ? shape : timmPerm.map((axis) => shape[axis]!);
    specs.push({ name, shape, offset, size, init, timmShape, timmPerm });
    offset += size;
  };
  // nn.Linear(in, out).weight is [out, in] in timm; here [in, out].
  const linear = (name: string, fanIn: number, fanOut: number) => {
    add(`${name}.weight`, [fanIn, fanOut], 'trunc_normal', [1, 0]);
    add(`${name}.bias`, [fanOut], 'zeros');
  };
  const layerNorm = (name: string) => {
    add(`${name}.weight`, [D], 'ones');
    add(`${name}.bias`, [D], 'zeros');
  };

  add('cls_token', [1, 1, D], 'trunc_normal');
  add('pos_embed', [1, T, D], 'trunc_normal');
  // timm's VisionTransformerDistilled registers dist_token after the parent's parameters and
  // head_dist after all submodules: that is its state_dict order.
  if (config.distilled) add('dist_token', [1, 1, D], 'trunc_normal');
  // Conv2d(C, D, kernel=p, stride=p).weight is [D, C, p, p] in timm; here [p, p, C, D].
  add('patch_embed.proj.weight', [p, p, C, D], 'trunc_normal', [3, 2, 0, 1]);
  add('patch_embed.proj.bias', [D], 'zeros');
  for (let i = 0; i < depth; i++) {
    layerNorm(`blocks.${i}.norm1`);
    linear(`blocks.${i}.attn.qkv`, D, 3 * D); // output features ordered (q|k|v, head, headDim) as timm
    linear(`blocks.${i}.attn.proj`, D, D);
    layerNorm(`blocks.${i}.norm2`);
    linear(`blocks.${i}.mlp.fc1`, D, hidden);
    linear(`blocks.${i}.mlp.fc2`, hidden, D);
  }
  layerNorm('norm');
  linear('head', D, numClasses);
  if (config.distilled) linear('head_dist', D, numClasses);
  return specs;
}

function numPatches(config: VitConfig): number {
  return (config.imageSize / config.patchSize) ** 2;
}

/** The class token, and the distillation token in a distilled model: timm's num_prefix_tokens. */
function numPrefixTokens(config: VitConfig): number {
  return config.distilled ? 2 : 1;
}

/** Prefix tokens plus patches. */
function numTokens(config: VitConfig): number {
  return numPrefixTokens(config) + numPatches(config);
}

/** int(dim * mlp_ratio) as in timm. */
function mlpHidden(config: VitConfig): number {
  return Math.floor(config.embedDim * config.mlpRatio);
}

/**
 * Forward FLOPs for one image, counting a multiply-add as 2: every matrix product (patch
 * embedding, qkv, attention scores, attention-weighted values, projection, MLP, head).
 * Elementwise work (LayerNorm, softmax, GELU, residuals) is left out as is customary.
 */
export function countFlops(config: VitConfig): number {
  const { patchSize: p, inChannels: C, embedDim: D, depth, numClasses } = config;
  const N = numPatches(config);
  const T = numTokens(config);
  const hidden = mlpHidden(config);
  const patchEmbed = 2 * N * p * p * C * D;
  const attention = 2 * T * D * 3 * D + 2 * 2 * T * T * D + 2 * T * D * D;
  const mlp = 2 * 2 * T * D * hidden;
  const head = 2 * D * numClasses * (config.distilled ? 2 : 1);
  return patchEmbed + depth * (attention + mlp) + head;
}

function validateConfig(config: VitConfig): void {
  const c = config as unknown as Record<string, number>;
  for (const key of ['imageSize', 'patchSize', 'inChannels', 'numClasses', 'embedDim', 'depth', 'numHeads']) {
    if (!Number.isInteger(c[key]) || c[key]! <= 0) throw new Error(`VitConfig.${key} must be a positive integer, got ${c[key]}`);
  }
  if (typeof config.distilled !== 'boolean') throw new Error(`VitConfig.distilled must be a boolean, got ${config.distilled}`);
  if (!(mlpHidden(config) >= 1)) throw new Error(`VitConfig.mlpRatio must be positive, got ${config.mlpRatio}`);
  if (config.imageSize % config.patchSize !== 0) {
    throw new Error(`imageSize ${config.imageSize} is not a multiple of patchSize ${config.patchSize}`);
  }
  if (config.embedDim % config.numHeads !== 0) {
    throw new Error(`embedDim ${config.embedDim} is not a multiple of numHeads ${config.numHeads}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Seeded initialization, pure JS (tf.random* differs between backends and versions).

/** xoshiro128** seeded through splitmix32: small, fast, and good enough for weight init. */
class Rng {
  private readonly s = new Uint32Array(4);
  private spare: number | null = null; // Box-Muller yields normals in pairs

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new Error(`seed must be a safe integer, got ${seed}`);
    let x = (seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32) | 0, 0x9e3779b9);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.s[i] = z ^ (z >>> 16);
    }
  }

  private nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    return ((this.nextU32() >>> 5) * 67108864 + (this.nextU32() >>> 6)) / 9007199254740992;
  }

  normal(): number {
    if (this.spare !== null) {
      const z = this.spare;
      this.spare = null;
      return z;
    }
    const r = Math.sqrt(-2 * Math.log(1 - this.uniform())); // 1 - u is in (0, 1]: log is finite
    const theta = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /**
   * N(0, std^2) truncated to [-2 std, 2 std] by rejection. Note timm's trunc_normal_(std=.02) has
   * absolute bounds a=-2, b=2, i.e. practically no truncation; we cut at 2 std as DeiT intended, so
   * the realized standard deviation is 0.8796 * std.
   */
  truncNormal(std: number): number {
    for (;;) {
      const z = this.normal();
      if (z >= -2 && z <= 2) return z * std;
    }
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ---------------------------------------------------------------------------------------------
// Layers, each as a forward and a hand-written backward.
//
// Why no autodiff: tfjs-core registers gradients only through dist/register_all_gradients.js, an
// ES module with extension-less imports that Node cannot load (the @tensorflow/tfjs union package
// bundles them, but we depend on tfjs-core alone). Writing the backward pass also lets us pick the
// fast kernels: the wasm backend (XNNPACK) has no fast path for 2-D matMul with transpose flags —
// a naive loop ~10x slower than a plain product — so every weight/input gradient below transposes
// explicitly (a cheap copy) and then multiplies. Measured on [2176, 64] x [64, 192]:
// transposeA/B flag 27-32 ms, explicit transpose + matMul 2-4 ms.
//
// Activations of the residual stream are kept 2-D, [batch * tokens, embedDim], so every Linear is
// one 2-D product.

/** y = x @ w + b for x [M, in], w [in, out], b [out]. */
function linear(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D {
  return tf.fused.matMul({ a: x, b: w, bias: b }) as tf.Tensor2D;
}

interface LinearGrads {
  dx: tf.Tensor2D;
  dw: tf.Tensor2D;
  db: tf.Tensor1D;
}

function linearBackward(dy: tf.Tensor2D, x: tf.Tensor2D, w: tf.Tensor2D): LinearGrads {
  return { dx: tf.matMul(dy, tf.transpose(w)), dw: tf.matMul(tf.transpose(x), dy), db: tf.sum(dy, 0) };
}

/**
 * Batched product op(a) @ op(b) over a leading batch axis, like tf.matMul on 3-D tensors.
 *
 * wasm runs batched matMul (batch > 1) in a naive loop at ~1.4 GFLOP/s, whatever the transpose
 * flags, and attention is made of many tiny products ([T, hd] x [hd, T] per image and head). A
 * depthwise convolution computes the same sums in XNNPACK's vectorized kernel: with the batch as
 * channels, op(b) as a [J, K] image per channel and op(a) as a 1 x K filter with channel
 * multiplier I, out[j, c*I + i] = sum_k op(b)[c, k, j] op(a)[c, i, k]. Same sums up to float
 * rounding, 2-5x faster including the transposes (T=17, hd=16, 512 heads: 1.3 ms vs 2.9-3.9 ms;
 * T=197, hd=64 as in ViT/16 at 224 px: similar ratio). Other backends keep tf.matMul.
 */
function batchMatMul(a: tf.Tensor3D, b: tf.Tensor3D, transposeA = false, transposeB = false): tf.Tensor3D {
  if (tf.getBackend() !== 'wasm') return tf.matMul(a, b, transposeA, transposeB);
  const [C, I, K] = transposeA ? [a.shape[0], a.shape[2], a.shape[1]] : a.shape;
  const J = transposeB ? b.shape[1] : b.shape[2];
  const filter = tf.reshape(tf.transpose(a, transposeA ? [1, 0, 2] : [2, 0, 1]), [1, K, C, I]) as tf.Tensor4D;
  const image = tf.reshape(tf.transpose(b, transposeB ? [1, 2, 0] : [2, 1, 0]), [1, J, K, C]) as tf.Tensor4D;
  const out = tf.depthwiseConv2d(image, filter, 1, 'valid'); // [1, J, 1, C * I]
  return tf.transpose(tf.reshape(out, [J, C, I]), [1, 2, 0]);
}

/** LayerNorm over the last axis; also returns what the backward pass needs. */
function layerNorm(x: tf.Tensor2D, weight: tf.Tensor, bias: tf.Tensor) {
  const { mean, variance } = tf.moments(x, -1, true);
  const rstd = tf.rsqrt(tf.add(variance, LN_EPS)); // [M, 1]
  const xHat = tf.mul(tf.sub(x, mean), rstd) as tf.Tensor2D;
  return { y: tf.add(tf.mul(xHat, weight), bias) as tf.Tensor2D, xHat, rstd };
}

/** dx = rstd * (g - mean(g) - xHat * mean(g * xHat)) with g = dy * weight, per row. */
function layerNormBackward(dy: tf.Tensor2D, xHat: tf.Tensor2D, rstd: tf.Tensor, weight: tf.Tensor) {
  const g = tf.mul(dy, weight);
  const centered = tf.sub(g, tf.mean(g, -1, true));
  const dx = tf.mul(tf.sub(centered, tf.mul(xHat, tf.mean(tf.mul(g, xHat), -1, true))), rstd) as tf.Tensor2D;
  return { dx, dWeight: tf.sum(tf.mul(dy, xHat), 0) as tf.Tensor1D, dBias: tf.sum(dy, 0) as tf.Tensor1D };
}

/**
 * Exact GELU, x * Phi(x) with Phi(x) = 0.5 (1 + erf(x / sqrt 2)), as nn.GELU() in timm (tfjs-core
 * has erf, so no tanh approximation). Returns Phi(x) too: erf is slow on wasm, the backward reuses it.
 */
function gelu(x: tf.Tensor2D): { y: tf.Tensor2D; cdf: tf.Tensor2D } {
  const cdf: tf.Tensor2D = tf.mul(0.5, tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
  return { y: tf.mul(x, cdf), cdf };
}

/** d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density. */
function geluBackward(dy: tf.Tensor2D, x: tf.Tensor2D, cdf: tf.Tensor2D): tf.Tensor2D {
  const pdf = tf.mul(1 / Math.sqrt(2 * Math.PI), tf.exp(tf.mul(tf.square(x), -0.5)));
  return tf.mul(dy, tf.add(cdf, tf.mul(x, pdf)));
}

/** x * mask, or x itself without a mask: a rate of 0 computes exactly what the model did before regularization. */
function masked<T extends tf.Tensor>(x: T, mask: T | null | undefined): T {
  return mask ? tf.mul(x, mask) : x;
}

/** Sum over the batch of -sum_k target[k] log softmax(logits)[k]; one-hot or smoothed targets. */
function crossEntropySum(logits: tf.Tensor2D, target: tf.Tensor2D): tf.Scalar {
  return tf.neg(tf.sum(tf.mul(target, tf.logSoftmax(logits))));
}

// ---------------------------------------------------------------------------------------------
// Regularization masks, drawn in plain JS per sample.

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
  distillation?: TeacherGuidance; // a distilled model's teacher; without one the distillation head learns the labels
}

/** What a teacher tells a distilled student about a micro-batch (DeiT's soft or hard distillation). */
export interface TeacherGuidance {
  mode: 'soft' | 'hard';
  tau: number; // softmax temperature of soft distillation; hard distillation ignores it
  teacherLogits: Float32Array; // the teacher's logits for each of the n images, [n, numClasses] row-major
}

/**
 * Mask sites, part of each mask's seed: a stored run's masks depend on these numbers, so they
 * never change. Drop path has its own sites so that it does not depend on the dropout rate.
 */
const SITE = { attn: 0, proj: 1, act: 2, fc2: 3, dropPathAttn: 4, dropPathMlp: 5 } as const;

/** Masks of one block; null where the rate is 0, so the block computes exactly what it does without. */
interface BlockMasks {
  attn: tf.Tensor3D | null; // [B*H, T, T] on the attention probabilities
  proj: tf.Tensor2D | null; // [B*T, D] dropout on attn.proj's output times the branch's drop path
  act: tf.Tensor2D | null; // [B*T, hidden] dropout on gelu(fc1)
  fc2: tf.Tensor2D | null; // [B*T, D] dropout on fc2's output times the branch's drop path
}

/**
 * An inverted-dropout mask (0, or 1/keep) for n samples of `perSample` elements each, multiplied
 * by a per-sample drop-path factor (0, or 1/keep of the path). Sample b's part comes from
 * generators seeded by (seed, step, sampleIndices[b], block, site) only, so it does not depend
 * on which micro-batch, worker or batch position the sample lands in.
 */
function sampleMasks(ctx: TrainContext, n: number, perSample: number, block: number, drop: { rate: number; site: number }, path: { rate: number; site: number }): Float32Array {
  const out = new Float32Array(n * perSample);
  const dropScale = 1 / (1 - drop.rate);
  for (let b = 0; b < n; b++) {
    const draw = (site: number) => new Mulberry32(mixSeed(ctx.seed, ctx.step, ctx.sampleIndices[b]!, block, site));
    const factor = path.rate > 0 && draw(path.site).next() < path.rate ? 0 : 1 / (1 - path.rate);
    const row = out.subarray(b * perSample, (b + 1) * perSample);
    if (drop.rate > 0 && factor !== 0) {
      const rng = draw(drop.site);
      for (let i = 0; i < row.length; i++) row[i] = rng.next() < drop.rate ? 0 : factor * dropScale;
    } else {
      row.fill(factor);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/** Activations of one block kept for its backward pass. */
interface BlockActs {
  norm1: { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor };
  q: tf.Tensor3D; // [B*H, T, hd]
  k: tf.Tensor3D;
  v: tf.Tensor3D;
  att: tf.Tensor3D; // softmax(q k^T) [B*H, T, T]
  attDropped: tf.Tensor3D; // att after attention dropout (att itself without)
  merged: tf.Tensor2D; // attention output before proj, heads merged [B*T, D]
  norm2: { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor };
  fc1: tf.Tensor2D; // pre-activation [B*T, hidden]
  act: { y: tf.Tensor2D; cdf: tf.Tensor2D }; // gelu(fc1)
  hidden: tf.Tensor2D; // fc2's input: act.y after dropout (act.y itself without)
  masks: BlockMasks | null;
}

/** Everything the backward pass needs from a forward pass. */
interface ForwardActs {
  patches: tf.Tensor2D; // [B*N, p*p*C]
  blocks: BlockActs[];
  norm: { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor };
  pooled: tf.Tensor2D; // normed class token [B, D]
  pooledDist: tf.Tensor2D | null; // normed distillation token [B, D] of a distilled model
  heads: HeadLogits;
}

/** Each head's logits [B, numClasses]: the class head, and the distillation head of a distilled model. */
export interface HeadLogits {
  cls: tf.Tensor2D;
  dist: tf.Tensor2D | null;
}

export interface LossResult {
  lossSum: number; // sum (not mean) of per-sample losses
  correct: number; // count of samples whose argmax logit is the label (the joint classifier's, if distilled)
  correctClassHead?: number; // distilled models: the class head alone
  correctDistHead?: number; // distilled models: the distillation head alone
  distillationLossSum?: number; // distilled models, training: sum of the distillation head's loss term, before the alpha weighting
}

export class VisionTransformer {
  readonly config: VitConfig;
  readonly params: ParamSpec[];
  readonly numParams: number;
  private readonly numPatches: number;
  private readonly numTokens: number;
  private readonly headDim: number;
  private readonly index: Map<string, number>; // name -> position in params / tensors
  private tensors: tf.Tensor[] | null = null; // one per ParamSpec, internal shape

  constructor(config: VitConfig) {
    validateConfig(config);
    this.config = { ...config };
    this.params = paramSpecs(this.config);
    const last = this.params[this.params.length - 1]!;
    this.numParams = last.offset + last.size;
    this.numPatches = numPatches(config);
    this.numTokens = numTokens(config);
    this.headDim = config.embedDim / config.numHeads;
    this.index = new Map(this.params.map((p, i) => [p.name, i]));
  }

  /**
   * Fresh weights from a seed, deterministic and identical on every machine: truncated normal
   * (std 0.02, cut at 2 std) for every weight matrix, cls_token, dist_token and pos_embed (the DeiT recipe;
   * timm draws cls_token with std 1e-6), zero biases, LayerNorm weight 1 and bias 0.
   */
  initParams(seed: number): Float32Array {
    const flat = new Float32Array(this.numParams);
    const rng = new Rng(seed);
    for (const p of this.params) {
      const view = flat.subarray(p.offset, p.offset + p.size);
      if (p.init === 'ones') view.fill(1);
      else if (p.init === 'trunc_normal') for (let i = 0; i < view.length; i++) view[i] = rng.truncNormal(INIT_STD);
    }
    return flat;
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

  private p<T extends tf.Tensor = tf.Tensor1D>(name: string): T {
    if (this.tensors === null) throw new Error('VisionTransformer: call setParams before running the model');
    return this.tensors[this.index.get(name)!] as T;
  }

  private w(name: string): tf.Tensor2D {
    return this.p<tf.Tensor2D>(`${name}.weight`);
  }

  private b(name: string): tf.Tensor1D {
    return this.p(`${name}.bias`);
  }

  /** [B, H, W, C] images -> [B * numPatches, p*p*C] rows flattened in (row, col, channel) order. */
  private patchify(x: tf.Tensor4D): tf.Tensor2D {
    const { imageSize, patchSize: p, inChannels: C } = this.config;
    const B = x.shape[0];
    const g = imageSize / p; // patches per side
    // [B, g, p, g, p, C] viewed as [B*g, p, g, p*C]; swapping the middle axes gives
    // [B*g, g, p, p*C] = one row of p*p*C per patch. A 4-D transpose: 5-D/6-D ones are slow on wasm.
    const rows = tf.transpose(tf.reshape(x, [B * g, p, g, p * C]), [0, 2, 1, 3]);
    return tf.reshape(rows, [B * g * g, p * p * C]);
  }

  /** [B*T, H*hd] -> [B*H, T, hd]: one 4-D transpose (5-D ones are slow on wasm). */
  private splitHeads(x: tf.Tensor2D, B: number): tf.Tensor3D {
    const { numHeads: H } = this.config;
    const [T, hd] = [this.numTokens, this.headDim];
    return tf.reshape(tf.transpose(tf.reshape(x, [B, T, H, hd]), [0, 2, 1, 3]), [B * H, T, hd]);
  }

  /** Inverse of splitHeads. */
  private mergeHeads(x: tf.Tensor3D, B: number): tf.Tensor2D {
    const { numHeads: H, embedDim: D } = this.config;
    const [T, hd] = [this.numTokens, this.headDim];
    return tf.reshape(tf.transpose(tf.reshape(x, [B, H, T, hd]), [0, 2, 1, 3]), [B * T, D]);
  }

  /**
   * Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)). Returns the output and activations.
   * With masks, dropout and drop path multiply in where timm's Block applies them.
   */
  private block(x: tf.Tensor2D, i: number, B: number, masks: BlockMasks | null): [tf.Tensor2D, BlockActs] {
    const name = `blocks.${i}`;
    const norm1 = layerNorm(x, this.w(`${name}.norm1`), this.b(`${name}.norm1`));
    // qkv output features are ordered (q|k|v, head, headDim) as in timm. Splitting the small weight
    // into three products is cheaper than splitting the [B*T, 3D] output (a slow slice on wasm).
    const wqkv = tf.split<tf.Tensor2D>(this.w(`${name}.attn.qkv`), 3, 1);
    const bqkv = tf.split<tf.Tensor1D>(this.b(`${name}.attn.qkv`), 3);
    const [q, k, v] = [0, 1, 2].map((j) => this.splitHeads(linear(norm1.y, wqkv[j]!, bqkv[j]!), B)) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
    const att: tf.Tensor3D = tf.softmax(tf.mul(batchMatMul(q, k, false, true), this.headDim ** -0.5)); // [B*H, T, T]
    const attDropped = masked(att, masks?.attn);
    const merged = this.mergeHeads(batchMatMul(attDropped, v), B);
    const attnOut = masked(linear(merged, this.w(`${name}.attn.proj`), this.b(`${name}.attn.proj`)), masks?.proj);
    const x1: tf.Tensor2D = tf.add(x, attnOut);

    const norm2 = layerNorm(x1, this.w(`${name}.norm2`), this.b(`${name}.norm2`));
    const fc1 = linear(norm2.y, this.w(`${name}.mlp.fc1`), this.b(`${name}.mlp.fc1`));
    const act = gelu(fc1);
    const hidden = masked(act.y, masks?.act);
    const out: tf.Tensor2D = tf.add(x1, masked(linear(hidden, this.w(`${name}.mlp.fc2`), this.b(`${name}.mlp.fc2`)), masks?.fc2));
    return [out, { norm1, q, k, v, att, attDropped, merged, norm2, fc1, act, hidden, masks }];
  }

  /** Backward through one block: takes d(out), records parameter gradients, returns d(x). */
  private blockBackward(dOut: tf.Tensor2D, a: BlockActs, i: number, B: number, grads: Map<string, tf.Tensor>): tf.Tensor2D {
    const name = `blocks.${i}`;
    const record = (layer: string, g: { dw: tf.Tensor; db: tf.Tensor }) => {
      grads.set(`${name}.${layer}.weight`, g.dw);
      grads.set(`${name}.${layer}.bias`, g.db);
    };

    // MLP branch: out = x1 + fc2(gelu(fc1(norm2(x1)))), each mask applied where the forward applied it.
    const fc2 = linearBackward(masked(dOut, a.masks?.fc2), a.hidden, this.w(`${name}.mlp.fc2`));
    record('mlp.fc2', fc2);
    const fc1 = linearBackward(geluBackward(masked(fc2.dx, a.masks?.act), a.fc1, a.act.cdf), a.norm2.y, this.w(`${name}.mlp.fc1`));
    record('mlp.fc1', fc1);
    const norm2 = layerNormBackward(fc1.dx, a.norm2.xHat, a.norm2.rstd, this.w(`${name}.norm2`));
    record('norm2', { dw: norm2.dWeight, db: norm2.dBias });
    const dx1: tf.Tensor2D = tf.add(dOut, norm2.dx);

    // Attention branch: x1 = x + proj(attention(qkv(norm1(x)))).
    const proj = linearBackward(masked(dx1, a.masks?.proj), a.merged, this.w(`${name}.attn.proj`));
    record('attn.proj', proj);
    const dHeads = this.splitHeads(proj.dx, B); // d(attDropped @ v)
    const dAtt = masked(batchMatMul(dHeads, a.v, false, true), a.masks?.attn);
    const dv = batchMatMul(a.attDropped, dHeads, true, false);
    // Softmax backward, row-wise: dS = att * (dAtt - sum(dAtt * att)); then the hd^-0.5 scale.
    const dScores: tf.Tensor3D = tf.mul(tf.mul(a.att, tf.sub(dAtt, tf.sum(tf.mul(dAtt, a.att), -1, true))), this.headDim ** -0.5);
    const dq = batchMatMul(dScores, a.k);
    const dk = batchMatMul(dScores, a.q, true, false);
    const dqkv: tf.Tensor2D = tf.concat([this.mergeHeads(dq, B), this.mergeHeads(dk, B), this.mergeHeads(dv, B)], 1);
    const qkv = linearBackward(dqkv, a.norm1.y, this.w(`${name}.attn.qkv`));
    record('attn.qkv', qkv);
    const norm1 = layerNormBackward(qkv.dx, a.norm1.xHat, a.norm1.rstd, this.w(`${name}.norm1`));
    record('norm1', { dw: norm1.dWeight, db: norm1.dBias });
    return tf.add(dx1, norm1.dx);
  }

  /** This step's masks for n samples, one entry per block; null when every rate is 0. */
  private blockMasks(ctx: TrainContext, n: number): (BlockMasks | null)[] | null {
    const { depth, numHeads: H, embedDim: D } = this.config;
    const reg = ctx.regularization;
    if (!reg || (reg.dropout === 0 && !reg.attnDropout && reg.dropPath === 0)) return null;
    const T = this.numTokens;
    const hidden = mlpHidden(this.config);
    const dropout = (site: number) => ({ rate: reg.dropout, site });
    const none = { rate: 0, site: 0 };
    const masks: (BlockMasks | null)[] = [];
    for (let i = 0; i < depth; i++) {
      // timm: dpr = torch.linspace(0, drop_path_rate, depth), block i drops with rate dpr[i].
      const pathRate = depth > 1 ? (reg.dropPath * i) / (depth - 1) : 0;
      const mask = <R extends tf.Rank>(perSample: number, drop: { rate: number; site: number }, path: { rate: number; site: number }, shape: number[]) =>
        drop.rate > 0 || path.rate > 0 ? (tf.tensor<tf.Rank>(sampleMasks(ctx, n, perSample, i, drop, path), shape, 'float32') as tf.Tensor<R>) : null;
      masks.push({
        attn: mask<tf.Rank.R3>(H * T * T, { rate: reg.attnDropout ?? 0, site: SITE.attn }, none, [n * H, T, T]),
        proj: mask<tf.Rank.R2>(T * D, dropout(SITE.proj), { rate: pathRate, site: SITE.dropPathAttn }, [n * T, D]),
        act: mask<tf.Rank.R2>(T * hidden, dropout(SITE.act), none, [n * T, hidden]),
        fc2: mask<tf.Rank.R2>(T * D, dropout(SITE.fc2), { rate: pathRate, site: SITE.dropPathMlp }, [n * T, D]),
      });
    }
    return masks;
  }

  /** The whole forward pass, keeping the activations the backward pass needs. */
  private forwardActs(x: tf.Tensor4D, masks: (BlockMasks | null)[] | null = null): ForwardActs {
    const { embedDim: D, patchSize: p, inChannels: C, depth, distilled } = this.config;
    const B = x.shape[0];
    const [N, T] = [this.numPatches, this.numTokens];
    // Patch embedding: a stride-p conv is a matMul on flattened patches.
    const patches = this.patchify(x);
    const embedded = linear(patches, tf.reshape(this.w('patch_embed.proj'), [p * p * C, D]), this.b('patch_embed.proj'));
    // Tokens: class token, distillation token (distilled models), patches, as timm's _pos_embed.
    const prefix = [tf.tile(this.p<tf.Tensor3D>('cls_token'), [B, 1, 1])];
    if (distilled) prefix.push(tf.tile(this.p<tf.Tensor3D>('dist_token'), [B, 1, 1]));
    const tokens = tf.add(tf.concat([...prefix, tf.reshape(embedded, [B, N, D])], 1), this.p<tf.Tensor3D>('pos_embed'));
    let h = tf.reshape(tokens, [B * T, D]) as tf.Tensor2D;
    const blocks: BlockActs[] = [];
    for (let i = 0; i < depth; i++) {
      const [out, acts] = this.block(h, i, B, masks?.[i] ?? null);
      blocks.push(acts);
      h = out;
    }
    const norm = layerNorm(h, this.w('norm'), this.b('norm'));
    const features = tf.reshape(norm.y, [B, T, D]) as tf.Tensor3D;
    const pooled = this.poolToken(features, 0);
    const pooledDist = distilled ? this.poolToken(features, 1) : null;
    const heads = { cls: linear(pooled, this.w('head'), this.b('head')), dist: pooledDist && linear(pooledDist, this.w('head_dist'), this.b('head_dist')) };
    return { patches, blocks, norm, pooled, pooledDist, heads };
  }

  /** Token `index` of each image, [B, T, D] -> [B, D]: timm's global_pool='token' for the class token (0). */
  private poolToken(features: tf.Tensor3D, index: number): tf.Tensor2D {
    const [B, , D] = features.shape;
    return tf.reshape(tf.slice(features, [0, index, 0], [B, 1, D]), [B, D]);
  }

  /** [B, H, W, C] normalized images -> [B, T, D] final-normed tokens: class token, distillation token if any, patches. */
  forwardFeatures(x: tf.Tensor4D): tf.Tensor3D {
    const { embedDim: D } = this.config;
    return tf.reshape(this.forwardActs(x).norm.y, [x.shape[0], this.numTokens, D]);
  }

  /** Token pooling and the linear classifiers: [B, T, D] -> each head's [B, numClasses] logits. */
  forwardHead(features: tf.Tensor3D): HeadLogits {
    const cls = linear(this.poolToken(features, 0), this.w('head'), this.b('head'));
    if (!this.config.distilled) return { cls, dist: null };
    return { cls, dist: linear(this.poolToken(features, 1), this.w('head_dist'), this.b('head_dist')) };
  }

  /**
   * The logits of the classifier used at inference: the class head, or for a distilled model the
   * mean of both heads (DeiT's joint classifier, timm's VisionTransformerDistilled in eval mode).
   */
  private jointLogits(heads: HeadLogits): tf.Tensor2D {
    return heads.dist ? tf.mul(tf.add(heads.cls, heads.dist), 0.5) : heads.cls;
  }

  /** Gradient of the loss sum w.r.t. every parameter, concatenated in the flat layout. */
  private backward(acts: ForwardActs, dLogits: HeadLogits, B: number): tf.Tensor1D {
    const { embedDim: D, patchSize: p, inChannels: C, depth } = this.config;
    const [N, T] = [this.numPatches, this.numTokens];
    const grads = new Map<string, tf.Tensor>();

    const head = linearBackward(dLogits.cls, acts.pooled, this.w('head'));
    grads.set('head.weight', head.dw).set('head.bias', head.db);
    const dPrefix = [tf.reshape(head.dx, [B, 1, D])];
    if (dLogits.dist && acts.pooledDist) {
      const headDist = linearBackward(dLogits.dist, acts.pooledDist, this.w('head_dist'));
      grads.set('head_dist.weight', headDist.dw).set('head_dist.bias', headDist.db);
      dPrefix.push(tf.reshape(headDist.dx, [B, 1, D]));
    }
    // Only the prefix tokens reach the heads; the patch rows of d(features) are zero.
    const dFeatures = tf.concat([...dPrefix, tf.zeros([B, N, D])], 1);
    const norm = layerNormBackward(tf.reshape(dFeatures, [B * T, D]), acts.norm.xHat, acts.norm.rstd, this.w('norm'));
    grads.set('norm.weight', norm.dWeight).set('norm.bias', norm.dBias);

    let dh: tf.Tensor2D = norm.dx;
    for (let i = depth - 1; i >= 0; i--) dh = this.blockBackward(dh, acts.blocks[i]!, i, B, grads);

    const dTokens = tf.reshape(dh, [B, T, D]);
    grads.set('pos_embed', tf.sum(dTokens, 0, true));
    const [dCls, ...rest] = tf.split<tf.Tensor3D>(dTokens, dPrefix.length === 2 ? [1, 1, N] : [1, N], 1);
    grads.set('cls_token', tf.sum(dCls!, 0, true));
    if (rest.length === 2) grads.set('dist_token', tf.sum(rest[0]!, 0, true));
    const dEmbedded = rest[rest.length - 1]!;
    const projW = tf.reshape(this.w('patch_embed.proj'), [p * p * C, D]) as tf.Tensor2D;
    const patchEmbed = linearBackward(tf.reshape(dEmbedded, [B * N, D]), acts.patches, projW);
    grads.set('patch_embed.proj.weight', patchEmbed.dw).set('patch_embed.proj.bias', patchEmbed.db);

    return tf.concat(this.params.map((spec) => tf.reshape(grads.get(spec.name)!, [spec.size])));
  }

  /** The first n images of a flat NHWC buffer as a tensor. */
  private imagesTensor(images: Float32Array, n: number): tf.Tensor4D {
    const { imageSize: S, inChannels: C } = this.config;
    const size = n * S * S * C;
    if (!Number.isInteger(n) || n <= 0) throw new Error(`n must be a positive integer, got ${n}`);
    if (images.length < size) throw new Error(`images holds ${images.length} values, ${n} images need ${size}`);
    return tf.tensor4d(images.subarray(0, size), [n, S, S, C]);
  }

  private labelsOneHot(labels: Int32Array, n: number): tf.Tensor2D {
    if (labels.length < n) throw new Error(`labels holds ${labels.length} values, expected ${n}`);
    for (let i = 0; i < n; i++) {
      // tf.oneHot would silently turn an out-of-range label into an all-zero row (zero loss).
      if (!(labels[i]! >= 0 && labels[i]! < this.config.numClasses)) throw new Error(`label ${labels[i]} at ${i} is out of range`);
    }
    return tf.tidy(() => tf.oneHot(tf.tensor1d(labels.subarray(0, n), 'int32'), this.config.numClasses) as tf.Tensor2D);
  }

  /**
   * Forward and backward on n images. Returns the summed loss and the number of correct
   * predictions, and ADDS d(lossSum)/d(params) into gradAccum (same flat layout as the params),
   * so micro-batches accumulate; the caller divides by the global batch size.
   *
   * Without a context (or with all its rates 0) no mask is drawn and the loss is the plain cross
   * entropy: the same bits as a model without regularization. With one, dropout and drop path
   * masks come from (ctx.seed, ctx.step, ctx.sampleIndices[b]) and the class head's targets are
   * label-smoothed.
   *
   * A distilled model's loss is (1 - alpha) CE(class head, labels) + alpha D, DeiT's distillation,
   * with the distillation head's term D (also returned alone, as distillationLossSum):
   * - hard (ctx.distillation.mode): CE(distillation head, argmax of the teacher's logits);
   * - soft: tau^2 KL(softmax(teacher / tau) || softmax(distillation head / tau)), the tau^2 keeping
   *   the gradient's scale independent of tau (Hinton et al. 2015);
   * - no teacher in the context: CE(distillation head, labels), the labels unsmoothed as a
   *   teacher's argmax is; both heads then learn the labels and the distillation token is a second
   *   class token.
   */
  lossAndGrad(images: Float32Array, labels: Int32Array, n: number, gradAccum: Float32Array, ctx?: TrainContext): LossResult {
    if (gradAccum.length !== this.numParams) throw new Error(`gradAccum has length ${gradAccum.length}, expected ${this.numParams}`);
    const alpha = ctx?.distillationAlpha ?? 0.5;
    if (!(alpha >= 0 && alpha <= 1)) throw new Error(`distillationAlpha must be in [0, 1], got ${alpha}`);
    if (ctx && ctx.sampleIndices.length < n) throw new Error(`sampleIndices holds ${ctx.sampleIndices.length} values, expected ${n}`);
    const smoothing = ctx?.regularization?.labelSmoothing ?? 0;
    const x = this.imagesTensor(images, n);
    const y = this.labelsOneHot(labels, n);
    const [joint, loss, grad, distLoss] = tf.tidy(() => {
      const acts = this.forwardActs(x, ctx ? this.blockMasks(ctx, n) : null);
      // timm's LabelSmoothingCrossEntropy: targets (1 - eps) onehot + eps / K.
      const target: tf.Tensor2D = smoothing > 0 ? tf.add(tf.mul(y, 1 - smoothing), smoothing / this.config.numClasses) : y;
      // d(sum of cross-entropies)/d(logits) = softmax(logits) - target, per sample.
      const { cls, dist } = acts.heads;
      if (!dist) {
        const dLogits: HeadLogits = { cls: tf.sub(tf.softmax(cls), target), dist: null };
        return [cls, crossEntropySum(cls, target), this.backward(acts, dLogits, n)] as const;
      }
      const distTerm = this.distillationTerm(dist, y, n, ctx?.distillation);
      const dLogits: HeadLogits = { cls: tf.mul(tf.sub(tf.softmax(cls), target), 1 - alpha), dist: tf.mul(distTerm.dLogits, alpha) };
      const lossSum = tf.add(tf.mul(crossEntropySum(cls, target), 1 - alpha), tf.mul(distTerm.lossSum, alpha));
      return [this.jointLogits(acts.heads), lossSum, this.backward(acts, dLogits, n), distTerm.lossSum] as const;
    });
    try {
      const flat = grad.dataSync(); // one download for all gradients
      for (let i = 0; i < flat.length; i++) gradAccum[i]! += flat[i]!;
      const result: LossResult = { lossSum: loss.dataSync()[0]!, correct: countCorrect(joint, labels, n) };
      if (distLoss) result.distillationLossSum = distLoss.dataSync()[0]!;
      return result;
    } finally {
      tf.dispose([x, y, joint, loss, grad, distLoss ?? []]);
    }
  }

  /** The distillation head's loss term summed over the n images, and its gradient w.r.t. that head's logits. */
  private distillationTerm(dist: tf.Tensor2D, labels: tf.Tensor2D, n: number, guidance: TeacherGuidance | undefined): { lossSum: tf.Scalar; dLogits: tf.Tensor2D } {
    if (!guidance) return { lossSum: crossEntropySum(dist, labels), dLogits: tf.sub(tf.softmax(dist), labels) };
    const K = this.config.numClasses;
    if (guidance.teacherLogits.length < n * K) throw new Error(`teacherLogits holds ${guidance.teacherLogits.length} values, ${n} images of ${K} classes need ${n * K}`);
    const teacher = guidance.teacherLogits.subarray(0, n * K);
    if (guidance.mode === 'hard') {
      const target = this.labelsOneHot(argmaxRows(teacher, n, K), n);
      return { lossSum: crossEntropySum(dist, target), dLogits: tf.sub(tf.softmax(dist), target) };
    }
    const { tau } = guidance;
    if (!(tau > 0)) throw new Error(`distillation tau must be positive, got ${tau}`);
    const teacherScaled = tf.div(tf.tensor2d(teacher, [n, K]), tau);
    const studentScaled = tf.div(dist, tau);
    const pTeacher = tf.softmax(teacherScaled);
    // KL(p_t || p_s) = sum_k p_t (log p_t - log p_s), both logs from logSoftmax so a tiny p_t stays finite.
    const kl = tf.sum(tf.mul(pTeacher, tf.sub(tf.logSoftmax(teacherScaled), tf.logSoftmax(studentScaled))));
    // d(tau^2 KL)/d(logits) = tau^2 (1 / tau) (softmax(logits / tau) - p_t).
    return { lossSum: tf.mul(kl, tau * tau), dLogits: tf.mul(tf.sub(tf.softmax(studentScaled), pTeacher), tau) };
  }

  /** Forward only: summed cross entropy of the joint classifier and correct counts on n images. */
  evaluate(images: Float32Array, labels: Int32Array, n: number): LossResult {
    const x = this.imagesTensor(images, n);
    const y = this.labelsOneHot(labels, n);
    // The joint logits and the loss, then each head's logits for a distilled model.
    const [joint, loss, cls, dist] = tf.tidy(() => {
      const heads = this.forwardHead(this.forwardFeatures(x));
      const logits = this.jointLogits(heads);
      const out = [logits, crossEntropySum(logits, y)];
      return heads.dist ? [...out, heads.cls, heads.dist] : out;
    }) as [tf.Tensor2D, tf.Scalar, tf.Tensor2D?, tf.Tensor2D?];
    try {
      const result: LossResult = { lossSum: loss.dataSync()[0]!, correct: countCorrect(joint, labels, n) };
      if (cls && dist) {
        result.correctClassHead = countCorrect(cls, labels, n);
        result.correctDistHead = countCorrect(dist, labels, n);
      }
      return result;
    } finally {
      tf.dispose([x, y, joint, loss, cls ?? [], dist ?? []]);
    }
  }

  /** Logits of the joint classifier for n images, [n, numClasses] row-major. */
  logits(images: Float32Array, n: number): Float32Array {
    const x = this.imagesTensor(images, n);
    const out = tf.tidy(() => this.jointLogits(this.forwardHead(this.forwardFeatures(x))));
    try {
      return out.dataSync() as Float32Array;
    } finally {
      tf.dispose([x, out]);
    }
  }
}

/** The index of each row's largest value (the first on ties) of n rows of k row-major values. */
function argmaxRows(values: ArrayLike<number>, n: number, k: number): Int32Array {
  const best = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    for (let j = 1; j < k; j++) if (values[i * k + j]! > values[i * k + best[i]!]!) best[i] = j;
  }
  return best;
}

function countCorrect(logits: tf.Tensor2D, labels: Int32Array, n: number): number {
  const predicted = argmaxRows(logits.dataSync(), n, logits.shape[1]);
  let correct = 0;
  for (let i = 0; i < n; i++) if (predicted[i] === labels[i]) correct++;
  return correct;
}
