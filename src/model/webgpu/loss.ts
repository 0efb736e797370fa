// Softmax cross entropy with soft (or label-smoothed) targets as one row kernel on 'webgpu': per
// row of logits z [n, K] and targets t, with t' = (1 - eps) t + eps / K (timm's label smoothing,
// loss.ts; t' = t when eps is 0), the row's loss -sum_k t'_k log softmax(z)_k and its gradient
// softmax(z) - t' in one pass over the row, instead of tfjs's ~12 kernels (logSoftmax, softmax,
// the smoothing and the products each a pass over [n, K]).

import * as tf from '@tensorflow/tfjs-core';
import { rowProgram, runRows, workgroupMax, workgroupSum } from './rows.ts';

/** The rows' summed loss and d(that sum)/d(logits). */
export function fusedSoftmaxCrossEntropy(
  logits: tf.Tensor2D,
  target: tf.Tensor2D,
  smoothing: number,
): { lossSum: tf.Scalar; dLogits: tf.Tensor2D } {
  const [rows, cols] = logits.shape;
  if (!tf.util.arraysEqual(target.shape, logits.shape))
    throw new Error(`cross entropy: targets [${target.shape}] and logits [${logits.shape}] differ in shape`);
  if (!(smoothing >= 0 && smoothing < 1)) throw new Error(`cross entropy: label smoothing ${smoothing} is not in [0, 1)`);
  // Output [rows, K + 1]: the gradient, then the row's loss in the last column.
  const packed = runRows(
    rowProgram(
      'vitdist_softmax_xent',
      [rows, cols + 1],
      rows,
      ['Z', 'TARGET'],
      `
    let eps = uniforms.scalar;
    let spread = eps / f32(uniforms.cols);
    var localMax = -3.402823e38;
    for (var j = lid; j < cols; j = j + ROW_THREADS) { localMax = max(localMax, Z[base + j]); }
    ${workgroupMax('rowMax', 'vec2<f32>(localMax, 0.0)')}
    var localSum = 0.0;
    for (var j = lid; j < cols; j = j + ROW_THREADS) { localSum = localSum + exp(Z[base + j] - rowMax.x); }
    ${workgroupSum('rowSum', 'vec2<f32>(localSum, 0.0)')}
    let logSum = log(rowSum.x);
    let outBase = row * (uniforms.cols + 1);
    var localLoss = 0.0;
    for (var j = lid; j < cols; j = j + ROW_THREADS) {
      let shifted = Z[base + j] - rowMax.x;
      let label = f32(TARGET[base + j]); // int32 one-hot labels as they come (oneHotLabels), or float32
      let t = select(label, label * (1.0 - eps) + spread, eps > 0.0);
      localLoss = localLoss - t * (shifted - logSum);
      result[outBase + j] = exp(shifted) / rowSum.x - t;
    }
    ${workgroupSum('rowLoss', 'vec2<f32>(localLoss, 0.0)')}
    if (lid == 0 && cols > 0) { result[outBase + uniforms.cols] = rowLoss.x; }`,
    ),
    [logits, target],
    rows,
    cols,
    smoothing,
  );
  const dLogits = tf.slice(packed, [0, 0], [rows, cols]) as tf.Tensor2D;
  const lossSum = tf.sum(tf.slice(packed, [0, cols], [rows, 1])) as tf.Scalar;
  packed.dispose();
  return { lossSum, dLogits };
}
