// GELU's two elementwise passes as single WGSL kernels on 'webgpu'. tfjs composes the forward's
// Phi(x) = 0.5 (1 + erf(x / sqrt 2)) from 4 kernels and the backward's dy (Phi(x) + x phi(x)) from 7,
// each a pass over [tokens, hidden] (154 MB at DeiT-B batch 64); here each is one pass.
// erf is tfjs-backend-webgpu's own approximation (Abramowitz and Stegun 7.1.26, |error| < 1.5e-7),
// so the results match tfjs's composed ops to float rounding.

import * as tf from '@tensorflow/tfjs-core';
import type { ProgramBackend, WebGPUProgram } from './sgemm.ts';

const WORKGROUP = 128;
const { ERF_P, ERF_A1, ERF_A2, ERF_A3, ERF_A4, ERF_A5 } = tf.backend_util;

const ERF_WGSL = `
  fn erfApprox(a : f32) -> f32 {
    let t = 1.0 / (1.0 + ${ERF_P} * abs(a));
    return sign(a) * (1.0 - (((((${ERF_A5} * t + ${ERF_A4}) * t) + ${ERF_A3}) * t + ${ERF_A2}) * t + ${ERF_A1}) * t * exp(-a * a));
  }`;

/** A one-pass elementwise program over `size` values of its inputs (same shape as the output). */
function elementwise(shaderKey: string, shape: number[], variableNames: string[], body: string): WebGPUProgram & { size: boolean } {
  const size = tf.util.sizeFromShape(shape);
  return {
    outputShape: shape,
    shaderKey,
    dispatchLayout: { x: shape.map((_, i) => i) },
    dispatch: [Math.ceil(size / WORKGROUP), 1, 1],
    variableNames,
    uniforms: '',
    size: true,
    workgroupSize: [WORKGROUP, 1, 1],
    getUserCode: () => `${ERF_WGSL}
  fn main(index : i32) {
    if (index < uniforms.size) {
      ${body}
    }
  }`,
  };
}

function run(program: WebGPUProgram, inputs: tf.Tensor[]): tf.Tensor {
  const backend = tf.backend() as unknown as ProgramBackend;
  return tf.engine().makeTensorFromTensorInfo(backend.runWebGPUProgram(program, inputs, 'float32'));
}

/** Phi(x), the standard normal CDF, in one pass. */
export function geluCdf<T extends tf.Tensor>(x: T): T {
  return run(elementwise('vitdist_gelu_cdf', x.shape, ['X'], 'result[index] = 0.5 * (1.0 + erfApprox(X[index] * 0.7071067811865476));'), [
    x,
  ]) as T;
}

/** dy (Phi(x) + x phi(x)) in one pass, phi the standard normal density. */
export function geluGrad<T extends tf.Tensor>(dy: T, x: T, cdf: T): T {
  const body = 'let v = X[index]; result[index] = DY[index] * (CDF[index] + v * 0.3989422804014327 * exp(-0.5 * v * v));';
  return run(elementwise('vitdist_gelu_grad', x.shape, ['DY', 'X', 'CDF'], body), [dy, x, cdf]) as T;
}
