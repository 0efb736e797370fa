// Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words") in TF.js.
//
// Read it like timm's vision_transformer.py: the same blocks, the same parameter names, the same
// forward_features / forward_head split. What differs is bookkeeping for data parallelism: every
// parameter lives in ONE flat Float32Array with a fixed layout (see ParamSpec), so a worker can
// all-reduce and optimize a single buffer, and the initialization is computed in plain JS from a
// seed so that every worker starts from bit-identical weights on any machine.

import * as tf from '@tensorflow/tfjs-core';

export interface VitConfig {
  imageSize: number; // square input, H = W
  patchSize: number; // square, non-overlapping patches
  inChannels: number;
  numClasses: number;
  embedDim: number;
  depth: number; // number of transformer blocks
  numHeads: number;
  mlpRatio: number; // MLP hidden width = embedDim * mlpRatio
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
  return specs;
}

function numPatches(config: VitConfig): number {
  return (config.imageSize / config.patchSize) ** 2;
}

/** Patches plus the class token. */
function numTokens(config: VitConfig): number {
  return numPatches(config) + 1;
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
  const head = 2 * D * numClasses;
  return patchEmbed + depth * (attention + mlp) + head;
}

function validateConfig(config: VitConfig): void {
  const c = config as unknown as Record<string, number>;
  for (const key of ['imageSize', 'patchSize', 'inChannels', 'numClasses', 'embedDim', 'depth', 'numHeads']) {
    if (!Number.isInteger(c[key]) || c[key]! <= 0) throw new Error(`VitConfig.${key} must be a positive integer, got ${c[key]}`);
  }
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

/** Sum over the batch of -log softmax(logits)[label]; labels given one-hot. */
function crossEntropySum(logits: tf.Tensor2D, oneHot: tf.Tensor2D): tf.Scalar {
  return tf.neg(tf.sum(tf.mul(oneHot, tf.logSoftmax(logits))));
}

// ---------------------------------------------------------------------------------------------

/** Activations of one block kept for its backward pass. */
interface BlockActs {
  norm1: { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor };
  q: tf.Tensor3D; // [B*H, T, hd]
  k: tf.Tensor3D;
  v: tf.Tensor3D;
  att: tf.Tensor3D; // softmax(q k^T) [B*H, T, T]
  merged: tf.Tensor2D; // attention output before proj, heads merged [B*T, D]
  norm2: { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor };
  fc1: tf.Tensor2D; // pre-activation [B*T, hidden]
  act: { y: tf.Tensor2D; cdf: tf.Tensor2D }; // gelu(fc1)
}

/** Everything the backward pass needs from a forward pass. */
interface ForwardActs {
  patches: tf.Tensor2D; // [B*N, p*p*C]
  blocks: BlockActs[];
  norm: { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor };
  pooled: tf.Tensor2D; // normed class token [B, D]
  logits: tf.Tensor2D;
}

export interface LossResult {
  lossSum: number; // sum (not mean) of per-sample cross-entropy
  correct: number; // count of samples whose argmax logit is the label
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
   * (std 0.02, cut at 2 std) for every weight matrix, cls_token and pos_embed (the DeiT recipe;
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

  /** Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)). Returns the output and activations. */
  private block(x: tf.Tensor2D, i: number, B: number): [tf.Tensor2D, BlockActs] {
    const name = `blocks.${i}`;
    const norm1 = layerNorm(x, this.w(`${name}.norm1`), this.b(`${name}.norm1`));
    // qkv output features are ordered (q|k|v, head, headDim) as in timm. Splitting the small weight
    // into three products is cheaper than splitting the [B*T, 3D] output (a slow slice on wasm).
    const wqkv = tf.split<tf.Tensor2D>(this.w(`${name}.attn.qkv`), 3, 1);
    const bqkv = tf.split<tf.Tensor1D>(this.b(`${name}.attn.qkv`), 3);
    const [q, k, v] = [0, 1, 2].map((j) => this.splitHeads(linear(norm1.y, wqkv[j]!, bqkv[j]!), B)) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
    const att: tf.Tensor3D = tf.softmax(tf.mul(batchMatMul(q, k, false, true), this.headDim ** -0.5)); // [B*H, T, T]
    const merged = this.mergeHeads(batchMatMul(att, v), B);
    const x1: tf.Tensor2D = tf.add(x, linear(merged, this.w(`${name}.attn.proj`), this.b(`${name}.attn.proj`)));

    const norm2 = layerNorm(x1, this.w(`${name}.norm2`), this.b(`${name}.norm2`));
    const fc1 = linear(norm2.y, this.w(`${name}.mlp.fc1`), this.b(`${name}.mlp.fc1`));
    const act = gelu(fc1);
    const out: tf.Tensor2D = tf.add(x1, linear(act.y, this.w(`${name}.mlp.fc2`), this.b(`${name}.mlp.fc2`)));
    return [out, { norm1, q, k, v, att, merged, norm2, fc1, act }];
  }

  /** Backward through one block: takes d(out), records parameter gradients, returns d(x). */
  private blockBackward(dOut: tf.Tensor2D, a: BlockActs, i: number, B: number, grads: Map<string, tf.Tensor>): tf.Tensor2D {
    const name = `blocks.${i}`;
    const record = (layer: string, g: { dw: tf.Tensor; db: tf.Tensor }) => {
      grads.set(`${name}.${layer}.weight`, g.dw);
      grads.set(`${name}.${layer}.bias`, g.db);
    };

    // MLP branch: out = x1 + fc2(gelu(fc1(norm2(x1)))).
    const fc2 = linearBackward(dOut, a.act.y, this.w(`${name}.mlp.fc2`));
    record('mlp.fc2', fc2);
    const fc1 = linearBackward(geluBackward(fc2.dx, a.fc1, a.act.cdf), a.norm2.y, this.w(`${name}.mlp.fc1`));
    record('mlp.fc1', fc1);
    const norm2 = layerNormBackward(fc1.dx, a.norm2.xHat, a.norm2.rstd, this.w(`${name}.norm2`));
    record('norm2', { dw: norm2.dWeight, db: norm2.dBias });
    const dx1: tf.Tensor2D = tf.add(dOut, norm2.dx);

    // Attention branch: x1 = x + proj(attention(qkv(norm1(x)))).
    const proj = linearBackward(dx1, a.merged, this.w(`${name}.attn.proj`));
    record('attn.proj', proj);
    const dHeads = this.splitHeads(proj.dx, B); // d(att @ v)
    const dAtt = batchMatMul(dHeads, a.v, false, true);
    const dv = batchMatMul(a.att, dHeads, true, false);
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

  /** The whole forward pass, keeping the activations the backward pass needs. */
  private forwardActs(x: tf.Tensor4D): ForwardActs {
    const { embedDim: D, patchSize: p, inChannels: C, depth } = this.config;
    const B = x.shape[0];
    const [N, T] = [this.numPatches, this.numTokens];
    // Patch embedding: a stride-p conv is a matMul on flattened patches.
    const patches = this.patchify(x);
    const embedded = linear(patches, tf.reshape(this.w('patch_embed.proj'), [p * p * C, D]), this.b('patch_embed.proj'));
    const cls = tf.tile(this.p<tf.Tensor3D>('cls_token'), [B, 1, 1]);
    const tokens = tf.add(tf.concat([cls, tf.reshape(embedded, [B, N, D])], 1), this.p<tf.Tensor3D>('pos_embed'));
    let h = tf.reshape(tokens, [B * T, D]) as tf.Tensor2D;
    const blocks: BlockActs[] = [];
    for (let i = 0; i < depth; i++) {
      const [out, acts] = this.block(h, i, B);
      blocks.push(acts);
      h = out;
    }
    const norm = layerNorm(h, this.w('norm'), this.b('norm'));
    const pooled = this.poolClassToken(tf.reshape(norm.y, [B, T, D]));
    return { patches, blocks, norm, pooled, logits: linear(pooled, this.w('head'), this.b('head')) };
  }

  /** timm's global_pool='token': the class token of each image, [B, T, D] -> [B, D]. */
  private poolClassToken(features: tf.Tensor3D): tf.Tensor2D {
    const [B, , D] = features.shape;
    return tf.reshape(tf.slice(features, [0, 0, 0], [B, 1, D]), [B, D]);
  }

  /** [B, H, W, C] normalized images -> [B, 1 + numPatches, D] final-normed tokens, class token first. */
  forwardFeatures(x: tf.Tensor4D): tf.Tensor3D {
    const { embedDim: D } = this.config;
    return tf.reshape(this.forwardActs(x).norm.y, [x.shape[0], this.numTokens, D]);
  }

  /** Class-token pooling and the linear classifier: [B, T, D] -> [B, numClasses] logits. */
  forwardHead(features: tf.Tensor3D): tf.Tensor2D {
    return linear(this.poolClassToken(features), this.w('head'), this.b('head'));
  }

  /** Gradient of the loss sum w.r.t. every parameter, concatenated in the flat layout. */
  private backward(acts: ForwardActs, dLogits: tf.Tensor2D, B: number): tf.Tensor1D {
    const { embedDim: D, patchSize: p, inChannels: C, depth } = this.config;
    const [N, T] = [this.numPatches, this.numTokens];
    const grads = new Map<string, tf.Tensor>();

    const head = linearBackward(dLogits, acts.pooled, this.w('head'));
    grads.set('head.weight', head.dw).set('head.bias', head.db);
    // Only the class token reaches the head; the other rows of d(features) are zero.
    const dFeatures: tf.Tensor3D = tf.concat([tf.reshape(head.dx, [B, 1, D]), tf.zeros([B, N, D])], 1);
    const norm = layerNormBackward(tf.reshape(dFeatures, [B * T, D]), acts.norm.xHat, acts.norm.rstd, this.w('norm'));
    grads.set('norm.weight', norm.dWeight).set('norm.bias', norm.dBias);

    let dh: tf.Tensor2D = norm.dx;
    for (let i = depth - 1; i >= 0; i--) dh = this.blockBackward(dh, acts.blocks[i]!, i, B, grads);

    const dTokens = tf.reshape(dh, [B, T, D]);
    grads.set('pos_embed', tf.sum(dTokens, 0, true));
    const [dCls, dEmbedded] = tf.split(dTokens, [1, N], 1);
    grads.set('cls_token', tf.sum(dCls!, 0, true));
    const projW = tf.reshape(this.w('patch_embed.proj'), [p * p * C, D]) as tf.Tensor2D;
    const patchEmbed = linearBackward(tf.reshape(dEmbedded!, [B * N, D]), acts.patches, projW);
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
   */
  lossAndGrad(images: Float32Array, labels: Int32Array, n: number, gradAccum: Float32Array): LossResult {
    if (gradAccum.length !== this.numParams) throw new Error(`gradAccum has length ${gradAccum.length}, expected ${this.numParams}`);
    const x = this.imagesTensor(images, n);
    const y = this.labelsOneHot(labels, n);
    const [logits, loss, grad] = tf.tidy(() => {
      const acts = this.forwardActs(x);
      // d(sum of cross-entropies)/d(logits) = softmax(logits) - onehot(label), per sample.
      const dLogits: tf.Tensor2D = tf.sub(tf.softmax(acts.logits), y);
      return [acts.logits, crossEntropySum(acts.logits, y), this.backward(acts, dLogits, n)] as const;
    });
    try {
      const flat = grad.dataSync(); // one download for all gradients
      for (let i = 0; i < flat.length; i++) gradAccum[i]! += flat[i]!;
      return { lossSum: loss.dataSync()[0]!, correct: countCorrect(logits, labels, n) };
    } finally {
      tf.dispose([x, y, logits, loss, grad]);
    }
  }

  /** Forward only: summed loss and correct count on n images. */
  evaluate(images: Float32Array, labels: Int32Array, n: number): LossResult {
    const x = this.imagesTensor(images, n);
    const y = this.labelsOneHot(labels, n);
    const [logits, loss] = tf.tidy(() => {
      const out = this.forwardHead(this.forwardFeatures(x));
      return [out, crossEntropySum(out, y)] as const;
    });
    try {
      return { lossSum: loss.dataSync()[0]!, correct: countCorrect(logits, labels, n) };
    } finally {
      tf.dispose([x, y, logits, loss]);
    }
  }

  /** Logits for n images, [n, numClasses] row-major. */
  logits(images: Float32Array, n: number): Float32Array {
    const x = this.imagesTensor(images, n);
    const out = tf.tidy(() => this.forwardHead(this.forwardFeatures(x)));
    try {
      return out.dataSync() as Float32Array;
    } finally {
      tf.dispose([x, out]);
    }
  }
}

function countCorrect(logits: tf.Tensor2D, labels: Int32Array, n: number): number {
  const values = logits.dataSync();
  const k = logits.shape[1];
  let correct = 0;
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (values[i * k + j]! > values[i * k + best]!) best = j;
    if (best === labels[i]) correct++;
  }
  return correct;
}
