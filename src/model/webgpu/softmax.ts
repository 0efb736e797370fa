// Attention's softmax on 'webgpu', scaled: softmax(scale * scores) forward and its backward
// scale * att * (dAtt - sum(dAtt * att)) per row, each one row kernel (rows.ts) over [B*H*T, T],
// instead of a scale pass plus tfjs's softmax, and five tfjs kernels backward. At DeiT-B batch 64
// each [B*H, T, T] tensor is 119 MB.

import type * as tf from '@tensorflow/tfjs-core';
import { rowProgram, runRows, workgroupMax, workgroupSum } from './rows.ts';

/** softmax(scale * scores) over the last axis. */
export function scaledSoftmax<T extends tf.Tensor>(scores: T, scale: number): T {
  const cols = scores.shape[scores.rank - 1]!;
  const rows = scores.size / cols;
  return runRows(
    rowProgram(
      'vitdist_softmax',
      scores.shape,
      rows,
      ['S'],
      `
    var localMax = -3.402823e38;
    for (var j = lid; j < cols; j = j + ROW_THREADS) { localMax = max(localMax, S[base + j] * uniforms.scalar); }
    ${workgroupMax('rowMax', 'vec2<f32>(localMax, 0.0)')}
    var localSum = 0.0;
    for (var j = lid; j < cols; j = j + ROW_THREADS) { localSum = localSum + exp(S[base + j] * uniforms.scalar - rowMax.x); }
    ${workgroupSum('rowSum', 'vec2<f32>(localSum, 0.0)')}
    for (var j = lid; j < cols; j = j + ROW_THREADS) { result[base + j] = exp(S[base + j] * uniforms.scalar - rowMax.x) / rowSum.x; }`,
    ),
    [scores],
    rows,
    cols,
    scale,
  ) as T;
}

/** d(scores) of scaledSoftmax from its output `att` and d(att). */
export function scaledSoftmaxGrad<T extends tf.Tensor>(att: T, dAtt: T, scale: number): T {
  const cols = att.shape[att.rank - 1]!;
  const rows = att.size / cols;
  return runRows(
    rowProgram(
      'vitdist_softmax_grad',
      att.shape,
      rows,
      ['ATT', 'DATT'],
      `
    var localDot = 0.0;
    for (var j = lid; j < cols; j = j + ROW_THREADS) { localDot = localDot + DATT[base + j] * ATT[base + j]; }
    ${workgroupSum('rowDot', 'vec2<f32>(localDot, 0.0)')}
    for (var j = lid; j < cols; j = j + ROW_THREADS) { result[base + j] = uniforms.scalar * ATT[base + j] * (DATT[base + j] - rowDot.x); }`,
    ),
    [att, dAtt],
    rows,
    cols,
    scale,
  ) as T;
}
