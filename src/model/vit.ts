// Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words") in TF.js.
//
// Read it like timm's vision_transformer.py: the same blocks, the same parameter names, the same
// forward_features / forward_head split. What differs is bookkeeping for data parallelism (shared
// with the other families through classifier.ts): every parameter lives in ONE flat Float32Array
// with a fixed layout (see ParamSpec), so a worker can all-reduce and optimize a single buffer,
// and the initialization is computed in plain JS from a seed so that every worker starts from
// bit-identical weights on any machine. Likewise every random mask of training (dropout,
// stochastic depth) is drawn in plain JS per SAMPLE, from the run's seed, the step and the
// sample's index in the data set, so a step computes the same loss whatever the number of workers
// and however the batch is cut into micro-batches.

import * as tf from '@tensorflow/tfjs-core';
import { Mulberry32, mixSeed } from '../common/random.ts';
import { FlatParamClassifier, type TrainPass } from './classifier.ts';
import { patchify } from './conv.ts';
import { fusedAttention, fusedAttentionBackward, fusedAttentionSupports } from './webgpu/attention.ts';
import { scaledSoftmax, scaledSoftmaxGrad } from './webgpu/softmax.ts';
import {
  gelu,
  geluBackward,
  layerNorm,
  layerNormAffine,
  layerNormBackward,
  linear,
  linearBackward,
  transposeFlagsAreFree,
} from './layers.ts';
import type { HeadLogits } from './loss.ts';
import type { ParamSpec, TrainContext } from './model.ts';
import { ParamTable } from './param-table.ts';
import { add, fusedKernels, matMul, mul, reshape, softmax, sub, sumLastAxis, transpose } from './tensorflow-ops.ts';
import { tensorsIn, tidyKeeping } from './scope.ts';

export interface VitConfig {
  family?: 'vit'; // ModelConfig's discriminator; absent in configs written before the convnet existed
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

/** The parameter table in timm's state_dict order. Pure arithmetic: nothing is allocated. */
export function paramSpecs(config: VitConfig): ParamSpec[] {
  const { patchSize: p, inChannels: C, embedDim: D, depth, numClasses } = config;
  const T = numTokens(config);
  const hidden = mlpHidden(config);
  const table = new ParamTable();
  const add = table.add.bind(table);
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
  return table.specs;
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
// ViT-specific layers; the shared ones (Linear, LayerNorm, GELU) are in layers.ts.

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
  if (tf.getBackend() !== 'wasm') return matMul(a, b, transposeA, transposeB);
  const [C, I, K] = transposeA ? [a.shape[0], a.shape[2], a.shape[1]] : a.shape;
  const J = transposeB ? b.shape[1] : b.shape[2];
  const filter = tf.reshape(tf.transpose(a, transposeA ? [1, 0, 2] : [2, 0, 1]), [1, K, C, I]) as tf.Tensor4D;
  const image = tf.reshape(tf.transpose(b, transposeB ? [1, 2, 0] : [2, 1, 0]), [1, J, K, C]) as tf.Tensor4D;
  const out = tf.depthwiseConv2d(image, filter, 1, 'valid'); // [1, J, 1, C * I]
  return tf.transpose(tf.reshape(out, [J, C, I]), [1, 2, 0]);
}

/** softmax(scale * scores) over the last axis: one row kernel on webgpu (webgpu/softmax.ts) and with the fused TensorFlow kernels, tfjs ops elsewhere. */
function attentionSoftmax(scores: tf.Tensor3D, scale: number): tf.Tensor3D {
  if (tf.getBackend() === 'webgpu') return scaledSoftmax(scores, scale);
  return fusedKernels()?.scaledSoftmax(scores, scale) ?? softmax(mul(scores, scale));
}

/** Softmax backward, row-wise: dS = att * (dAtt - sum(dAtt * att)), times the scale. */
function attentionSoftmaxBackward(att: tf.Tensor3D, dAtt: tf.Tensor3D, scale: number): tf.Tensor3D {
  if (tf.getBackend() === 'webgpu') return scaledSoftmaxGrad(att, dAtt, scale);
  const fused = fusedKernels()?.scaledSoftmaxBackward(att, dAtt, scale);
  if (fused) return fused;
  return mul(mul(att, sub(dAtt, sumLastAxis(mul(dAtt, att)))), scale);
}

/** x * mask, or x itself without a mask: a rate of 0 computes exactly what the model did before regularization. */
function masked<T extends tf.Tensor>(x: T, mask: T | null | undefined): T {
  return mask ? mul(x, mask) : x;
}

// ---------------------------------------------------------------------------------------------
// Regularization masks, drawn in plain JS per sample.

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
function sampleMasks(
  ctx: TrainContext,
  n: number,
  perSample: number,
  block: number,
  drop: { rate: number; site: number },
  path: { rate: number; site: number },
): Float32Array {
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

/**
 * Whether a block keeps its LayerNorms' outputs for the backward pass. On TensorFlow it does: memory
 * is the host's, and two [B*T, D] tensors per block (4.8 MB for ViT-Ti/16 at batch 16) cost less than
 * the four full passes that recompute them in a step that is mostly memory-bound elementwise work.
 * Elsewhere memory is the tighter bound (the wasm heap's 4 GiB), and the backward pass recomputes them.
 */
function keepsNormOutputs(): boolean {
  return tf.getBackend() === 'tensorflow';
}

/**
 * A LayerNorm's activations for the backward pass: its normalized input and reciprocal standard
 * deviation, and its output where keepsNormOutputs (null otherwise).
 */
interface NormActs {
  xHat: tf.Tensor2D;
  rstd: tf.Tensor;
  y: tf.Tensor2D | null;
}

/**
 * Activations of one block kept for its backward pass. GELU's output (fc1 * cdf), and off TensorFlow
 * the LayerNorms' outputs (xHat * weight + bias), are not kept, to save memory: the backward pass
 * recomputes them with the forward's own ops, so bit for bit (on webgpu, whose forward LayerNorm is
 * one fused kernel, to float32 rounding).
 */
interface BlockActs {
  norm1: NormActs;
  attention: AttentionActs;
  merged: tf.Tensor2D; // attention output before proj, heads merged [B*T, D]
  norm2: NormActs;
  fc1: tf.Tensor2D; // pre-activation [B*T, hidden]
  cdf: tf.Tensor2D; // Phi(fc1): gelu(fc1) = fc1 * cdf
  masks: BlockMasks | null;
}

/**
 * What attention's backward needs: the unfused path's per-head q, k, v and probabilities, or the
 * fused kernels' (webgpu/attention.ts) qkv output and per-row log-sum-exp, O(T) per head instead
 * of the O(T^2) probabilities.
 */
type AttentionActs =
  | {
      fused: false;
      q: tf.Tensor3D; // [B*H, T, hd]
      k: tf.Tensor3D;
      v: tf.Tensor3D;
      att: tf.Tensor3D; // softmax(q k^T) [B*H, T, T]
      attDropped: tf.Tensor3D; // att after attention dropout (att itself without)
    }
  | { fused: true; qkv: tf.Tensor2D; lse: tf.Tensor1D }; // qkv's output [B*T, 3D]; lse [B*H*T]

/** Everything the backward pass needs from a forward pass. */
interface ForwardActs {
  patches: tf.Tensor2D; // [B*N, p*p*C]
  blocks: BlockActs[];
  norm: { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor };
  pooled: tf.Tensor2D; // normed class token [B, D]
  pooledDist: tf.Tensor2D | null; // normed distillation token [B, D] of a distilled model
  heads: HeadLogits;
}

/**
 * The ViT/DeiT family. Its init (classifier.ts) draws cls_token, dist_token and pos_embed from the
 * truncated normal of std 0.02 like every weight matrix, as the DeiT recipe does (timm draws
 * cls_token with std 1e-6).
 */
export class VisionTransformer extends FlatParamClassifier<VitConfig> {
  private readonly numPatches: number;
  private readonly numTokens: number;
  private readonly headDim: number;

  constructor(config: VitConfig) {
    validateConfig(config);
    super(config, paramSpecs(config));
    this.numPatches = numPatches(config);
    this.numTokens = numTokens(config);
    this.headDim = config.embedDim / config.numHeads;
  }

  /** [B*T, H*hd] -> [B*H, T, hd]: one 4-D transpose (5-D ones are slow on wasm). */
  private splitHeads(x: tf.Tensor2D, B: number): tf.Tensor3D {
    const { numHeads: H } = this.config;
    const [T, hd] = [this.numTokens, this.headDim];
    return reshape(transpose(reshape(x, [B, T, H, hd]), [0, 2, 1, 3]), [B * H, T, hd]);
  }

  /**
   * norm1's output -> q, k, v, each [B*H, T, hd]. Where transposes are cheap (see
   * transposeFlagsAreFree) one qkv product, one 5-D transpose and one unstack: 6 ops instead of 17,
   * and on TensorFlow the op count is what a small model's step costs (tens of microseconds each). On
   * wasm, 5-D transposes and slices of the [B*T, 3D] output are slow: there the small weight is split
   * into three products instead.
   */
  private qkv(x: tf.Tensor2D, name: string, B: number): [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D] {
    const { numHeads: H } = this.config;
    const [T, hd] = [this.numTokens, this.headDim];
    const w = this.w(`${name}.attn.qkv`);
    const b = this.b(`${name}.attn.qkv`);
    if (transposeFlagsAreFree()) {
      // Output features are ordered (q|k|v, head, headDim) as in timm.
      const qkv = transpose(reshape(linear(x, w, b), [B, T, 3, H, hd]), [2, 0, 3, 1, 4]);
      return tf.unstack(reshape(qkv, [3, B * H, T, hd])) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
    }
    const wqkv = tf.split<tf.Tensor2D>(w, 3, 1);
    const bqkv = tf.split<tf.Tensor1D>(b, 3);
    return [0, 1, 2].map((j) => this.splitHeads(linear(x, wqkv[j]!, bqkv[j]!), B)) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
  }

  /** The inverse of qkv's head split: dq, dk, dv [B*H, T, hd] -> d(qkv output) [B*T, 3D]. */
  private mergeQkv(dq: tf.Tensor3D, dk: tf.Tensor3D, dv: tf.Tensor3D, B: number): tf.Tensor2D {
    const { numHeads: H, embedDim: D } = this.config;
    const [T, hd] = [this.numTokens, this.headDim];
    if (!transposeFlagsAreFree()) return tf.concat([this.mergeHeads(dq, B), this.mergeHeads(dk, B), this.mergeHeads(dv, B)], 1);
    const stacked = reshape(tf.stack([dq, dk, dv]), [3, B, H, T, hd]);
    return reshape(transpose(stacked, [1, 3, 0, 2, 4]), [B * T, 3 * D]);
  }

  /** Inverse of splitHeads. */
  private mergeHeads(x: tf.Tensor3D, B: number): tf.Tensor2D {
    const { numHeads: H, embedDim: D } = this.config;
    const [T, hd] = [this.numTokens, this.headDim];
    return reshape(transpose(reshape(x, [B, H, T, hd]), [0, 2, 1, 3]), [B * T, D]);
  }

  /**
   * Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)). Returns the output and activations.
   * With masks, dropout and drop path multiply in where timm's Block applies them.
   */
  private block(x: tf.Tensor2D, i: number, B: number, masks: BlockMasks | null): [tf.Tensor2D, BlockActs] {
    const name = `blocks.${i}`;
    const norm1 = layerNorm(x, this.w(`${name}.norm1`), this.b(`${name}.norm1`));
    const { merged, attention } = this.attention(norm1.y, name, B, masks?.attn ?? null);
    const attnOut = masked(linear(merged, this.w(`${name}.attn.proj`), this.b(`${name}.attn.proj`)), masks?.proj);
    const x1 = add(x, attnOut);

    const norm2 = layerNorm(x1, this.w(`${name}.norm2`), this.b(`${name}.norm2`));
    const fc1 = linear(norm2.y, this.w(`${name}.mlp.fc1`), this.b(`${name}.mlp.fc1`));
    const act = gelu(fc1);
    const hidden = masked(act.y, masks?.act);
    const out = add(x1, masked(linear(hidden, this.w(`${name}.mlp.fc2`), this.b(`${name}.mlp.fc2`)), masks?.fc2));
    const normActs = (norm: { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor }) => ({
      xHat: norm.xHat,
      rstd: norm.rstd,
      y: keepsNormOutputs() ? norm.y : null,
    });
    const kept = { norm1: normActs(norm1), norm2: normActs(norm2), cdf: act.cdf };
    return [out, { ...kept, attention, merged, fc1, masks }];
  }

  /**
   * Whether attention runs the fused kernels: on webgpu, for dims they take (attention.ts), without attention
   * dropout (whose mask multiplies the probabilities the fused kernels never store).
   */
  private fusesAttention(attnMask: tf.Tensor3D | null, B: number): boolean {
    return tf.getBackend() === 'webgpu' && attnMask === null && fusedAttentionSupports(this.attentionDims(B));
  }

  /** Multi-head attention from norm1's output: the merged heads [B*T, D] before proj, and what its backward needs. */
  private attention(
    x: tf.Tensor2D,
    name: string,
    B: number,
    attnMask: tf.Tensor3D | null,
  ): { merged: tf.Tensor2D; attention: AttentionActs } {
    const scale = this.headDim ** -0.5;
    if (this.fusesAttention(attnMask, B)) {
      const qkv = linear(x, this.w(`${name}.attn.qkv`), this.b(`${name}.attn.qkv`));
      const { out, lse } = fusedAttention(qkv, this.attentionDims(B), scale);
      return { merged: out, attention: { fused: true, qkv, lse } };
    }
    const [q, k, v] = this.qkv(x, name, B);
    const att = attentionSoftmax(batchMatMul(q, k, false, true), scale); // [B*H, T, T]
    const attDropped = masked(att, attnMask);
    const merged = this.mergeHeads(batchMatMul(attDropped, v), B);
    return { merged, attention: { fused: false, q, k, v, att, attDropped } };
  }

  /** d(qkv output) [B*T, 3D] from d(merged heads) [B*T, D]. */
  private attentionBackward(dMerged: tf.Tensor2D, a: BlockActs, B: number): tf.Tensor2D {
    const scale = this.headDim ** -0.5;
    const acts = a.attention;
    if (acts.fused) return fusedAttentionBackward(acts.qkv, a.merged, acts.lse, dMerged, this.attentionDims(B), scale);
    const dHeads = this.splitHeads(dMerged, B); // d(attDropped @ v)
    const dAtt = masked(batchMatMul(dHeads, acts.v, false, true), a.masks?.attn);
    const dv = batchMatMul(acts.attDropped, dHeads, true, false);
    const dScores = attentionSoftmaxBackward(acts.att, dAtt, scale);
    const dq = batchMatMul(dScores, acts.k);
    const dk = batchMatMul(dScores, acts.q, true, false);
    return this.mergeQkv(dq, dk, dv, B);
  }

  private attentionDims(B: number) {
    return { batch: B, tokens: this.numTokens, heads: this.config.numHeads, headDim: this.headDim };
  }

  /** A LayerNorm's output, kept or recomputed from its normalized input (layerNormAffine; on webgpu within rounding of the fused kernel). */
  private normOutput(name: string, norm: NormActs): tf.Tensor2D {
    return norm.y ?? layerNormAffine(norm.xHat, this.w(name), this.b(name));
  }

  /** Backward through one block: takes d(out), records parameter gradients, returns d(x). */
  private blockBackward(dOut: tf.Tensor2D, a: BlockActs, i: number, B: number, grads: Map<string, tf.Tensor>): tf.Tensor2D {
    const name = `blocks.${i}`;
    const record = (layer: string, g: { dw: tf.Tensor; db: tf.Tensor }) => {
      grads.set(`${name}.${layer}.weight`, g.dw);
      grads.set(`${name}.${layer}.bias`, g.db);
    };

    // MLP branch: out = x1 + fc2(gelu(fc1(norm2(x1)))), each mask applied where the forward applied it.
    // Its own scope: its temporaries are freed before the attention branch's (lower peak memory).
    const { dx1 } = tidyKeeping(() => {
      const hidden = masked(mul(a.fc1, a.cdf), a.masks?.act); // as gelu() and the forward's dropout
      const fc2 = linearBackward(masked(dOut, a.masks?.fc2), hidden, this.w(`${name}.mlp.fc2`));
      record('mlp.fc2', fc2);
      const fc1 = linearBackward(
        geluBackward(masked(fc2.dx, a.masks?.act), a.fc1, a.cdf),
        this.normOutput(`${name}.norm2`, a.norm2),
        this.w(`${name}.mlp.fc1`),
      );
      record('mlp.fc1', fc1);
      const norm2 = layerNormBackward(fc1.dx, a.norm2.xHat, a.norm2.rstd, this.w(`${name}.norm2`));
      record('norm2', { dw: norm2.dWeight, db: norm2.dBias });
      return { dx1: add(dOut, norm2.dx), grads };
    });

    // Attention branch: x1 = x + proj(attention(qkv(norm1(x)))).
    const proj = linearBackward(masked(dx1, a.masks?.proj), a.merged, this.w(`${name}.attn.proj`));
    record('attn.proj', proj);
    const qkv = linearBackward(
      this.attentionBackward(proj.dx, a, B),
      this.normOutput(`${name}.norm1`, a.norm1),
      this.w(`${name}.attn.qkv`),
    );
    record('attn.qkv', qkv);
    const norm1 = layerNormBackward(qkv.dx, a.norm1.xHat, a.norm1.rstd, this.w(`${name}.norm1`));
    record('norm1', { dw: norm1.dWeight, db: norm1.dBias });
    return add(dx1, norm1.dx);
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
      const mask = <R extends tf.Rank>(
        perSample: number,
        drop: { rate: number; site: number },
        path: { rate: number; site: number },
        shape: number[],
      ) =>
        drop.rate > 0 || path.rate > 0
          ? (tf.tensor<tf.Rank>(sampleMasks(ctx, n, perSample, i, drop, path), shape, 'float32') as tf.Tensor<R>)
          : null;
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
    const patches = patchify(x, p);
    const embedded = linear(patches, tf.reshape(this.w('patch_embed.proj'), [p * p * C, D]), this.b('patch_embed.proj'));
    // Tokens: class token, distillation token (distilled models), patches, as timm's _pos_embed.
    const prefix = [tf.tile(this.p<tf.Tensor3D>('cls_token'), [B, 1, 1])];
    if (distilled) prefix.push(tf.tile(this.p<tf.Tensor3D>('dist_token'), [B, 1, 1]));
    const tokens = tf.add(tf.concat([...prefix, tf.reshape(embedded, [B, N, D])], 1), this.p<tf.Tensor3D>('pos_embed'));
    let h = tf.reshape(tokens, [B * T, D]) as tf.Tensor2D;
    const blocks: BlockActs[] = [];
    // Each block in its own tidy, keeping only its output and what its backward pass needs, and its
    // input freed once used: the training step's single outer tidy would otherwise hold every
    // temporary of every block until the step ends (4.9 GB for ViT-Ti/16 at batch 16 on TensorFlow).
    for (let i = 0; i < depth; i++) {
      const [out, acts] = tidyKeeping(() => this.block(h, i, B, masks?.[i] ?? null));
      blocks.push(acts);
      h.dispose(); // the block's input: its backward needs norm1's xHat, not x
      h = out;
    }
    const norm = layerNorm(h, this.w('norm'), this.b('norm'));
    const features = tf.reshape(norm.y, [B, T, D]) as tf.Tensor3D;
    const pooled = this.poolToken(features, 0);
    const pooledDist = distilled ? this.poolToken(features, 1) : null;
    const heads = {
      cls: linear(pooled, this.w('head'), this.b('head')),
      dist: pooledDist && linear(pooledDist, this.w('head_dist'), this.b('head_dist')),
    };
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

  /** Gradient of the loss sum w.r.t. every parameter, concatenated in the flat layout. */
  private backward(acts: ForwardActs, dLogits: HeadLogits, B: number, grads = new Map<string, tf.Tensor>()): tf.Tensor1D {
    const { embedDim: D, patchSize: p, inChannels: C, depth } = this.config;
    const [N, T] = [this.numPatches, this.numTokens];

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
    for (let i = depth - 1; i >= 0; i--) {
      const block = acts.blocks[i]!;
      // One scope per block, and its activations freed once used: the peak is the kept activations
      // plus one block's temporaries.
      const { dx } = tidyKeeping(() => ({ dx: this.blockBackward(dh, block, i, B, grads), grads }));
      tf.dispose([dh, ...tensorsIn(block)]);
      dh = dx;
    }

    const dTokens = tf.reshape(dh, [B, T, D]);
    grads.set('pos_embed', tf.sum(dTokens, 0, true));
    const [dCls, ...rest] = tf.split<tf.Tensor3D>(dTokens, dPrefix.length === 2 ? [1, 1, N] : [1, N], 1);
    grads.set('cls_token', tf.sum(dCls!, 0, true));
    if (rest.length === 2) grads.set('dist_token', tf.sum(rest[0]!, 0, true));
    const dEmbedded = rest[rest.length - 1]!;
    const projW = tf.reshape(this.w('patch_embed.proj'), [p * p * C, D]) as tf.Tensor2D;
    const patchEmbed = linearBackward(tf.reshape(dEmbedded, [B * N, D]), acts.patches, projW);
    grads.set('patch_embed.proj.weight', patchEmbed.dw).set('patch_embed.proj.bias', patchEmbed.db);

    return this.flatGradient(grads);
  }

  protected trainPass(x: tf.Tensor4D, n: number, ctx: TrainContext | undefined): TrainPass {
    const acts = this.forwardActs(x, ctx ? this.blockMasks(ctx, n) : null);
    return { heads: acts.heads, backward: (dLogits, grads) => this.backward(acts, dLogits, n, grads) };
  }

  protected inferenceHeads(x: tf.Tensor4D): HeadLogits {
    return this.forwardHead(this.forwardFeatures(x));
  }
}
