// LayerNorm over the last axis on 'webgpu' in three passes forward and one backward, instead of
// tfjs's ~10 and ~12 kernels over [tokens, features]. A workgroup owns a row (rows.ts): it
// reduces the row's sums in workgroup memory and (backward) writes the row's dx in the same pass.
// Statistics as tf.moments computes them: the mean, then the mean of squared deviations.

import * as tf from '@tensorflow/tfjs-core';
import { rowProgram, runRows, workgroupSum } from './rows.ts';

/** y = xHat * weight + bias with xHat = (x - mean) * rstd per row; also xHat and rstd [M, 1] for the backward pass. */
export function layerNormForward(
  x: tf.Tensor2D,
  weight: tf.Tensor,
  bias: tf.Tensor,
  eps: number,
): { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor2D } {
  const [rows, cols] = x.shape;
  const stats = runRows(
    rowProgram(
      'vitdist_ln_stats',
      [rows, 2],
      rows,
      ['X'],
      `
    var sum = 0.0;
    for (var j = lid; j < cols; j = j + ROW_THREADS) { sum = sum + X[base + j]; }
    ${workgroupSum('rowSum', 'vec2<f32>(sum, 0.0)')}
    let mean = rowSum.x / f32(uniforms.cols);
    var squares = 0.0;
    for (var j = lid; j < cols; j = j + ROW_THREADS) { let d = X[base + j] - mean; squares = squares + d * d; }
    ${workgroupSum('rowSquares', 'vec2<f32>(squares, 0.0)')}
    let variance = rowSquares.x / f32(uniforms.cols);
    if (lid == 0 && cols > 0) {
      result[row * 2] = mean;
      result[row * 2 + 1] = inverseSqrt(variance + uniforms.scalar);
    }`,
    ),
    [x],
    rows,
    cols,
    eps,
  );
  const normalized = (key: string, inputs: tf.Tensor[], value: string) =>
    runRows(
      rowProgram(
        key,
        [rows, cols],
        rows,
        ['X', 'STATS', 'W', 'B'].slice(0, inputs.length),
        `
    let mean = STATS[row * 2];
    let rstd = STATS[row * 2 + 1];
    for (var j = lid; j < cols; j = j + ROW_THREADS) {
      let xHat = (X[base + j] - mean) * rstd;
      result[base + j] = ${value};
    }`,
      ),
      inputs,
      rows,
      cols,
    ) as tf.Tensor2D;
  const xHat = normalized('vitdist_ln_xhat', [x, stats], 'xHat');
  const y = normalized('vitdist_ln_affine', [x, stats, weight, bias], 'xHat * W[j] + B[j]');
  const rstd = tf.slice(stats, [0, 1], [rows, 1]) as tf.Tensor2D;
  stats.dispose();
  return { y, xHat, rstd };
}

/** dx = rstd * (g - mean(g) - xHat * mean(g * xHat)) with g = dy * weight, per row, in one pass. */
export function layerNormInputGrad(dy: tf.Tensor2D, xHat: tf.Tensor2D, rstd: tf.Tensor, weight: tf.Tensor): tf.Tensor2D {
  const [rows, cols] = dy.shape;
  return runRows(
    rowProgram(
      'vitdist_ln_dx',
      [rows, cols],
      rows,
      ['DY', 'XHAT', 'RSTD', 'W'],
      `
    var sums = vec2<f32>(0.0);
    for (var j = lid; j < cols; j = j + ROW_THREADS) {
      let g = DY[base + j] * W[j];
      sums = sums + vec2<f32>(g, g * XHAT[base + j]);
    }
    ${workgroupSum('rowSums', 'sums')}
    let means = rowSums / f32(uniforms.cols);
    let rstd = RSTD[row];
    for (var j = lid; j < cols; j = j + ROW_THREADS) {
      let g = DY[base + j] * W[j];
      result[base + j] = rstd * (g - means.x - XHAT[base + j] * means.y);
    }`,
    ),
    [dy, xHat, rstd as tf.Tensor, weight],
    rows,
    cols,
  ) as tf.Tensor2D;
}
