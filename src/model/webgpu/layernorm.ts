// LayerNorm over the last axis on 'webgpu' in three passes forward and one backward, instead of
// tfjs's ~10 and ~12 kernels over [tokens, features]. A workgroup of 64 threads owns a row: it
// reduces the row's sums in workgroup memory and (backward) writes the row's dx in the same pass.
// Statistics as tf.moments computes them: the mean, then the mean of squared deviations.

import * as tf from '@tensorflow/tfjs-core';
import type { ProgramBackend, WebGPUProgram } from './sgemm.ts';

const ROW_THREADS = 64;

/** WGSL: the row of this workgroup (dispatches over 65535 rows fold into 2-D). */
const ROW_PRELUDE = `
  var<workgroup> partial: array<vec2<f32>, ${ROW_THREADS}>;

  fn rowIndex() -> i32 {
    return i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
  }`;

/**
 * One workgroup per row; past 65535 rows (WebGPU's guaranteed per-dimension limit) a square grid,
 * since tfjs folds only flat dispatches.
 */
function rowDispatch(rows: number): [number, number, number] {
  if (rows <= 65535) return [rows, 1, 1];
  const side = Math.ceil(Math.sqrt(rows));
  return [side, side, 1];
}

/**
 * WGSL statements: `let NAME = ` the workgroup's sum of each thread's vec2 `value`, for every thread:
 * each thread adds the 64 partial sums itself, in the same order. (A tree reduction, whose last
 * steps only some threads write, read back stale sums on llvmpipe; 64 reads of workgroup memory
 * per row are negligible beside the row's own.)
 */
function workgroupSum(name: string, value: string): string {
  return `partial[localIndex] = ${value};
    workgroupBarrier();
    var ${name} = vec2<f32>(0.0);
    for (var i = 0; i < ${ROW_THREADS}; i++) { ${name} = ${name} + partial[i]; }
    workgroupBarrier();`;
}

function rowProgram(shaderKey: string, outputShape: number[], rows: number, variableNames: string[], body: string): WebGPUProgram {
  return {
    outputShape,
    shaderKey,
    // Non-flat so that tfjs calls main() without an index: rows come from rowIndex().
    dispatchLayout: { x: [0], y: [1] },
    dispatch: rowDispatch(rows),
    variableNames,
    uniforms: 'rows : i32, cols : i32, eps : f32,',
    workgroupSize: [ROW_THREADS, 1, 1],
    getUserCode: () => `${ROW_PRELUDE}
  fn main() {
    // No early return for padding workgroups: barriers must be reached by all (and tfjs's builtins
    // are private copies, which WGSL's uniformity analysis cannot see are uniform). They get no columns.
    let row = min(rowIndex(), uniforms.rows - 1);
    let cols = select(0, uniforms.cols, rowIndex() < uniforms.rows);
    let base = row * uniforms.cols;
    let lid = i32(localIndex);
    ${body}
  }`,
  };
}

function run(program: WebGPUProgram, inputs: tf.Tensor[], rows: number, cols: number, eps = 0): tf.Tensor {
  const backend = tf.backend() as unknown as ProgramBackend;
  const uniforms = [
    { type: 'int32' as const, data: [rows] },
    { type: 'int32' as const, data: [cols] },
    { type: 'float32' as const, data: [eps] },
  ];
  return tf.engine().makeTensorFromTensorInfo(backend.runWebGPUProgram(program, inputs, 'float32', uniforms));
}

/** y = xHat * weight + bias with xHat = (x - mean) * rstd per row; also xHat and rstd [M, 1] for the backward pass. */
export function layerNormForward(x: tf.Tensor2D, weight: tf.Tensor, bias: tf.Tensor, eps: number): { y: tf.Tensor2D; xHat: tf.Tensor2D; rstd: tf.Tensor2D } {
  const [rows, cols] = x.shape;
  const stats = run(
    rowProgram('vitdist_ln_stats', [rows, 2], rows, ['X'], `
    var sum = 0.0;
    for (var j = lid; j < cols; j = j + ${ROW_THREADS}) { sum = sum + X[base + j]; }
    ${workgroupSum('rowSum', 'vec2<f32>(sum, 0.0)')}
    let mean = rowSum.x / f32(uniforms.cols);
    var squares = 0.0;
    for (var j = lid; j < cols; j = j + ${ROW_THREADS}) { let d = X[base + j] - mean; squares = squares + d * d; }
    ${workgroupSum('rowSquares', 'vec2<f32>(squares, 0.0)')}
    let variance = rowSquares.x / f32(uniforms.cols);
    if (lid == 0 && cols > 0) {
      result[row * 2] = mean;
      result[row * 2 + 1] = inverseSqrt(variance + uniforms.eps);
    }`),
    [x], rows, cols, eps,
  );
  const normalized = (key: string, inputs: tf.Tensor[], value: string) =>
    run(rowProgram(key, [rows, cols], rows, ['X', 'STATS', 'W', 'B'].slice(0, inputs.length), `
    let mean = STATS[row * 2];
    let rstd = STATS[row * 2 + 1];
    for (var j = lid; j < cols; j = j + ${ROW_THREADS}) {
      let xHat = (X[base + j] - mean) * rstd;
      result[base + j] = ${value};
    }`), inputs, rows, cols) as tf.Tensor2D;
  const xHat = normalized('vitdist_ln_xhat', [x, stats], 'xHat');
  const y = normalized('vitdist_ln_affine', [x, stats, weight, bias], 'xHat * W[j] + B[j]');
  const rstd = tf.slice(stats, [0, 1], [rows, 1]) as tf.Tensor2D;
  stats.dispose();
  return { y, xHat, rstd };
}

/** dx = rstd * (g - mean(g) - xHat * mean(g * xHat)) with g = dy * weight, per row, in one pass. */
export function layerNormInputGrad(dy: tf.Tensor2D, xHat: tf.Tensor2D, rstd: tf.Tensor, weight: tf.Tensor): tf.Tensor2D {
  const [rows, cols] = dy.shape;
  return run(
    rowProgram('vitdist_ln_dx', [rows, cols], rows, ['DY', 'XHAT', 'RSTD', 'W'], `
    var sums = vec2<f32>(0.0);
    for (var j = lid; j < cols; j = j + ${ROW_THREADS}) {
      let g = DY[base + j] * W[j];
      sums = sums + vec2<f32>(g, g * XHAT[base + j]);
    }
    ${workgroupSum('rowSums', 'sums')}
    let means = rowSums / f32(uniforms.cols);
    let rstd = RSTD[row];
    for (var j = lid; j < cols; j = j + ${ROW_THREADS}) {
      let g = DY[base + j] * W[j];
      result[base + j] = rstd * (g - means.x - XHAT[base + j] * means.y);
    }`),
    [dy, xHat, rstd as tf.Tensor, weight], rows, cols,
  ) as tf.Tensor2D;
}
