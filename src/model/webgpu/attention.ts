// Fused multi-head attention on 'webgpu': softmax(scale Q K^T) V forward and its three gradients,
// without the [B*H, T, T] score and probability matrices the unfused path keeps (119 MB each at
// DeiT-B batch 64, written and read by ~6 passes per block). Flash-attention style:
// - forward: a workgroup owns QUERY_TILE query rows of one (image, head), one thread per row holding
//   its q and output in registers; key/value tiles are staged in workgroup memory and the softmax runs
//   online (a running max and sum, the output rescaled when the max grows). Each row's log-sum-exp
//   is kept for the backward, O(T) per head instead of O(T^2);
// - backward: delta_i = dO_i . O_i per row (one small pass), then one pass by key tile (a thread per
//   key row accumulates dK and dV over every query) and one by query tile (dQ), each recomputing the
//   probabilities p_ij = exp(s_ij - lse_i) tile by tile.
// Q, K and V are read in place from the qkv Linear's output [B*T, 3D] (columns ordered q|k|v, head,
// head dim, as timm), the output is written merged [B*T, D], and the gradient is d(qkv output)
// [B*T, 3D]: the head split and merge transposes of the unfused path vanish too.
//
// Head dims up to MAX_HEAD_DIM: q, the output (or dQ) and, backward, k, v, dK, dV live in each
// thread's registers, sized at compile time. Attention dropout needs the probabilities and stays
// on the unfused path (vit.ts).

import * as tf from '@tensorflow/tfjs-core';
import type { ProgramBackend, WebGPUProgram } from './sgemm.ts';

/** Threads per workgroup (one query or key row each), and rows per tile of the dimension they own. */
const ROWS_PER_WORKGROUP = 64;
/** Largest head dim the kernels take: the staged tiles must fit 32 KiB of workgroup memory. */
export const MAX_HEAD_DIM = 128;

/** Rows of K/V (forward, dQ) or of Q/dO (dK/dV) staged per step: 2 tiles of STAGED x headDim floats. */
function stagedRows(headDim: number): number {
  return headDim <= 64 ? 32 : 16;
}

export interface AttentionDims {
  /** Images in the micro-batch. */
  batch: number;
  tokens: number;
  heads: number;
  headDim: number;
}

/** One workgroup row per (image, head): WebGPU's guaranteed limit per dispatch dimension. */
const MAX_PAIRS = 65535;

/** Whether the fused kernels take these dims: a head dim in [1, MAX_HEAD_DIM], at most 65535 (image, head) pairs. */
export function fusedAttentionSupports(d: AttentionDims): boolean {
  return Number.isInteger(d.headDim) && d.headDim >= 1 && d.headDim <= MAX_HEAD_DIM && d.batch * d.heads <= MAX_PAIRS;
}

function checkDims(qkv: tf.Tensor2D, d: AttentionDims): void {
  const D = d.heads * d.headDim;
  if (!fusedAttentionSupports(d))
    throw new Error(
      `fused attention: head dim ${d.headDim} must be in [1, ${MAX_HEAD_DIM}] and ${d.batch} images x ${d.heads} heads at most ${MAX_PAIRS}`,
    );
  if (qkv.shape[0] !== d.batch * d.tokens || qkv.shape[1] !== 3 * D)
    throw new Error(
      `fused attention: qkv is [${qkv.shape}], expected [${d.batch * d.tokens}, ${3 * D}] for ${d.batch} images of ${d.tokens} tokens, ${d.heads} heads of ${d.headDim}`,
    );
}

const UNIFORMS = 'tokens : i32, heads : i32, images : i32, scale : f32,';

function uniforms(d: AttentionDims, scale: number) {
  return [
    { type: 'int32' as const, data: [d.tokens] },
    { type: 'int32' as const, data: [d.heads] },
    { type: 'int32' as const, data: [d.batch] },
    { type: 'float32' as const, data: [scale] },
  ];
}

/** WGSL common to the three tiled kernels: this workgroup's (image, head) and its row. */
function prelude(headDim: number): string {
  return `
    let lid = i32(localIndex);
    let T = uniforms.tokens;
    let D = uniforms.heads * ${headDim};
    let pair = i32(workgroupId.y);
    let b = pair / uniforms.heads;
    let h = pair - b * uniforms.heads;
    let own = i32(workgroupId.x) * ${ROWS_PER_WORKGROUP} + lid;
    let ownRow = min(own, T - 1);
    // Offsets into the [B*T, 3D] qkv layout: row r of this head's q at headBase(r), k at + D, v at + 2D.
    let head0 = b * T * 3 * D + h * ${headDim};`;
}

/**
 * Stages rows [t0, t0 + count) of this head into two workgroup tiles, `first` and `second` (each
 * row-major [STAGED, headDim]) from the expressions giving row r, column c's source.
 */
function stage(headDim: number, first: [string, string], second: [string, string]): string {
  return `
      workgroupBarrier();
      for (var idx = lid; idx < count * ${headDim}; idx = idx + ${ROWS_PER_WORKGROUP}) {
        let r = t0 + idx / ${headDim};
        let c = idx % ${headDim};
        ${first[0]}[idx] = ${first[1]};
        ${second[0]}[idx] = ${second[1]};
      }`;
}

/** The query-row kernels' workgroup tiles of this head's keys and values. */
function keyValueTiles(headDim: number): string {
  const floats = stagedRows(headDim) * headDim;
  return `var<workgroup> kTile : array<f32, ${floats}>;
  var<workgroup> vTile : array<f32, ${floats}>;`;
}

/** Stages this head's keys and values of rows [t0, t0 + count) into keyValueTiles. */
function stageKeyValues(headDim: number): string {
  return stage(headDim, ['kTile', 'QKV[head0 + r * 3 * D + D + c]'], ['vTile', 'QKV[head0 + r * 3 * D + 2 * D + c]']);
}

function program(shaderKey: string, outputShape: number[], dims: AttentionDims, variableNames: string[], code: string): WebGPUProgram {
  return {
    outputShape,
    shaderKey: `${shaderKey}_${dims.headDim}`,
    // Non-flat: tfjs calls main() without an index; rows come from workgroupId.
    dispatchLayout: { x: [0], y: [1] },
    dispatch: [Math.ceil(dims.tokens / ROWS_PER_WORKGROUP), dims.batch * dims.heads, 1],
    variableNames,
    uniforms: UNIFORMS,
    workgroupSize: [ROWS_PER_WORKGROUP, 1, 1],
    getUserCode: () => code,
  };
}

function forwardProgram(d: AttentionDims): WebGPUProgram {
  const hd = d.headDim;
  const staged = stagedRows(hd);
  const code = `
  ${keyValueTiles(hd)}
  fn main() {
    ${prelude(hd)}
    var q : array<f32, ${hd}>;
    var o : array<f32, ${hd}>;
    for (var c = 0; c < ${hd}; c++) {
      q[c] = QKV[head0 + ownRow * 3 * D + c] * uniforms.scale;
      o[c] = 0.0;
    }
    var runningMax = -3.402823e38;
    var runningSum = 0.0;
    for (var t0 = 0; t0 < T; t0 = t0 + ${staged}) {
      let count = min(${staged}, T - t0);
      ${stageKeyValues(hd)}
      workgroupBarrier();
      var s : array<f32, ${staged}>;
      var tileMax = runningMax;
      for (var j = 0; j < count; j++) {
        var acc = 0.0;
        for (var c = 0; c < ${hd}; c++) { acc = fma(q[c], kTile[j * ${hd} + c], acc); }
        s[j] = acc;
        tileMax = max(tileMax, acc);
      }
      let rescale = exp(runningMax - tileMax);
      runningSum = runningSum * rescale;
      for (var c = 0; c < ${hd}; c++) { o[c] = o[c] * rescale; }
      for (var j = 0; j < count; j++) {
        let p = exp(s[j] - tileMax);
        runningSum = runningSum + p;
        for (var c = 0; c < ${hd}; c++) { o[c] = fma(p, vTile[j * ${hd} + c], o[c]); }
      }
      runningMax = tileMax;
    }
    if (own < T) {
      let outBase = (b * T + own) * D + h * ${hd};
      for (var c = 0; c < ${hd}; c++) { result[outBase + c] = o[c] / runningSum; }
      result[uniforms.images * T * D + pair * T + own] = runningMax + log(runningSum);
    }
  }`;
  const total = d.batch * d.tokens * d.heads * hd + d.batch * d.heads * d.tokens;
  return program('vitdist_attention_fwd', [total], d, ['QKV'], code);
}

/** delta_i = dO_i . O_i for every (image, head, query): [B*H*T]. */
function deltaProgram(d: AttentionDims): WebGPUProgram {
  const hd = d.headDim;
  const rows = d.batch * d.heads * d.tokens;
  const code = `
  fn main(index : i32) {
    if (index < uniforms.size) {
      let T = uniforms.tokens;
      let pair = index / T;
      let i = index - pair * T;
      let b = pair / uniforms.heads;
      let h = pair - b * uniforms.heads;
      let base = (b * T + i) * uniforms.heads * ${hd} + h * ${hd};
      var acc = 0.0;
      for (var c = 0; c < ${hd}; c++) { acc = fma(DO[base + c], O[base + c], acc); }
      result[index] = acc;
    }
  }`;
  return {
    outputShape: [rows],
    shaderKey: `vitdist_attention_delta_${hd}`,
    dispatchLayout: { x: [0] },
    dispatch: [Math.ceil(rows / ROWS_PER_WORKGROUP), 1, 1],
    variableNames: ['DO', 'O'],
    uniforms: UNIFORMS,
    workgroupSize: [ROWS_PER_WORKGROUP, 1, 1],
    size: true,
    getUserCode: () => code,
  } as WebGPUProgram;
}

/** dK and dV by key tile: a thread per key row, looping over every query; writes columns [D, 3D) of d(qkv). */
function keyValueGradProgram(d: AttentionDims): WebGPUProgram {
  const hd = d.headDim;
  const staged = stagedRows(hd);
  const code = `
  var<workgroup> qTile : array<f32, ${staged * hd}>;
  var<workgroup> gTile : array<f32, ${staged * hd}>;
  var<workgroup> lseTile : array<f32, ${staged}>;
  var<workgroup> deltaTile : array<f32, ${staged}>;
  fn main() {
    ${prelude(hd)}
    var k : array<f32, ${hd}>;
    var v : array<f32, ${hd}>;
    var dk : array<f32, ${hd}>;
    var dv : array<f32, ${hd}>;
    for (var c = 0; c < ${hd}; c++) {
      k[c] = QKV[head0 + ownRow * 3 * D + D + c] * uniforms.scale;
      v[c] = QKV[head0 + ownRow * 3 * D + 2 * D + c];
      dk[c] = 0.0;
      dv[c] = 0.0;
    }
    for (var t0 = 0; t0 < T; t0 = t0 + ${staged}) {
      let count = min(${staged}, T - t0);
      ${stage(hd, ['qTile', 'QKV[head0 + r * 3 * D + c]'], ['gTile', `DO[(b * T + r) * D + h * ${hd} + c]`])}
      if (lid < count) {
        lseTile[lid] = LSE[pair * T + t0 + lid];
        deltaTile[lid] = DELTA[pair * T + t0 + lid];
      }
      workgroupBarrier();
      for (var r = 0; r < count; r++) {
        var s = 0.0;
        for (var c = 0; c < ${hd}; c++) { s = fma(qTile[r * ${hd} + c], k[c], s); }
        let p = exp(s - lseTile[r]);
        var dp = 0.0;
        for (var c = 0; c < ${hd}; c++) {
          let g = gTile[r * ${hd} + c];
          dv[c] = fma(p, g, dv[c]);
          dp = fma(g, v[c], dp);
        }
        let ds = p * (dp - deltaTile[r]);
        for (var c = 0; c < ${hd}; c++) { dk[c] = fma(ds, qTile[r * ${hd} + c], dk[c]); }
      }
    }
    if (own < T) {
      let outBase = (b * T + own) * 3 * D + h * ${hd};
      for (var c = 0; c < ${hd}; c++) {
        result[outBase + D + c] = dk[c] * uniforms.scale;
        result[outBase + 2 * D + c] = dv[c];
      }
    }
  }`;
  return program('vitdist_attention_dkdv', [d.batch * d.tokens, 3 * d.heads * hd], d, ['QKV', 'DO', 'LSE', 'DELTA'], code);
}

/** dQ by query tile: a thread per query row, looping over every key; writes columns [0, D) of d(qkv). */
function queryGradProgram(d: AttentionDims): WebGPUProgram {
  const hd = d.headDim;
  const staged = stagedRows(hd);
  const code = `
  ${keyValueTiles(hd)}
  fn main() {
    ${prelude(hd)}
    var q : array<f32, ${hd}>;
    var g : array<f32, ${hd}>;
    var dq : array<f32, ${hd}>;
    for (var c = 0; c < ${hd}; c++) {
      q[c] = QKV[head0 + ownRow * 3 * D + c] * uniforms.scale;
      g[c] = DO[(b * T + ownRow) * D + h * ${hd} + c];
      dq[c] = 0.0;
    }
    let lse = LSE[pair * T + ownRow];
    let delta = DELTA[pair * T + ownRow];
    for (var t0 = 0; t0 < T; t0 = t0 + ${staged}) {
      let count = min(${staged}, T - t0);
      ${stageKeyValues(hd)}
      workgroupBarrier();
      for (var j = 0; j < count; j++) {
        var s = 0.0;
        var dp = 0.0;
        for (var c = 0; c < ${hd}; c++) {
          s = fma(q[c], kTile[j * ${hd} + c], s);
          dp = fma(g[c], vTile[j * ${hd} + c], dp);
        }
        let ds = exp(s - lse) * (dp - delta);
        for (var c = 0; c < ${hd}; c++) { dq[c] = fma(ds, kTile[j * ${hd} + c], dq[c]); }
      }
    }
    if (own < T) {
      let outBase = (b * T + own) * 3 * D + h * ${hd};
      for (var c = 0; c < ${hd}; c++) { result[outBase + c] = dq[c] * uniforms.scale; }
    }
  }`;
  return program('vitdist_attention_dq', [d.batch * d.tokens, 3 * d.heads * hd], d, ['QKV', 'DO', 'LSE', 'DELTA'], code);
}

/** The part of WebGPUBackend that writes a program's result into an existing tensor. */
interface OutputBackend extends ProgramBackend {
  runWebGPUProgram(
    program: WebGPUProgram,
    inputs: tf.TensorInfo[],
    outputDtype: tf.DataType,
    programDefinedUniform?: ReturnType<typeof uniforms>,
    output?: tf.TensorInfo,
  ): tf.TensorInfo;
}

function webgpuBackend(): OutputBackend {
  if (tf.getBackend() !== 'webgpu') throw new Error(`fused attention needs the 'webgpu' backend, not '${tf.getBackend()}'`);
  return tf.backend() as unknown as OutputBackend;
}

export interface FusedAttentionOutput {
  /** softmax(scale q k^T) v per head, heads merged: [B*T, D], what the attention projection takes. */
  out: tf.Tensor2D;
  /** Each query row's log-sum-exp of its scaled scores, [B*H*T], for the backward. */
  lse: tf.Tensor1D;
}

/** Attention over the qkv Linear's output [B*T, 3D] (q|k|v, head, head dim). */
export function fusedAttention(qkv: tf.Tensor2D, dims: AttentionDims, scale: number): FusedAttentionOutput {
  checkDims(qkv, dims);
  const backend = webgpuBackend();
  const packed = tf
    .engine()
    .makeTensorFromTensorInfo(backend.runWebGPUProgram(forwardProgram(dims), [qkv], 'float32', uniforms(dims, scale))) as tf.Tensor1D;
  const outSize = dims.batch * dims.tokens * dims.heads * dims.headDim;
  const out = tf.reshape(tf.slice(packed, [0], [outSize]), [dims.batch * dims.tokens, dims.heads * dims.headDim]) as tf.Tensor2D;
  const lse = tf.slice(packed, [outSize], [dims.batch * dims.heads * dims.tokens]);
  packed.dispose();
  return { out, lse };
}

/**
 * d(qkv output) [B*T, 3D] from d(out) [B*T, D], given the forward's qkv, out and lse: dQ | dK | dV
 * in qkv's own column order.
 */
export function fusedAttentionBackward(
  qkv: tf.Tensor2D,
  out: tf.Tensor2D,
  lse: tf.Tensor1D,
  dOut: tf.Tensor2D,
  dims: AttentionDims,
  scale: number,
): tf.Tensor2D {
  checkDims(qkv, dims);
  const backend = webgpuBackend();
  const u = uniforms(dims, scale);
  const delta = backend.runWebGPUProgram(deltaProgram(dims), [dOut, out], 'float32', u);
  const inputs = [qkv, dOut, lse, delta];
  const grad = backend.runWebGPUProgram(keyValueGradProgram(dims), inputs, 'float32', u);
  backend.runWebGPUProgram(queryGradProgram(dims), inputs, 'float32', u, grad);
  backend.disposeData(delta.dataId);
  return tf.engine().makeTensorFromTensorInfo(grad) as tf.Tensor2D;
}
