// Layers shared by the model families, each as a forward and a hand-written backward.
//
// Why no autodiff: tfjs-core registers gradients only through dist/register_all_gradients.js, an
// ES module with extension-less imports that Node cannot load (the @tensorflow/tfjs union package
// bundles them, but we depend on tfjs-core alone). Writing the backward pass also lets us pick the
// fast kernels: the wasm backend (XNNPACK) has no fast path for 2-D matMul with transpose flags —
// a naive loop ~10x slower than a plain product — so there every weight/input gradient below
// transposes explicitly (a cheap copy) and then multiplies. Measured on [2176, 64] x [64, 192]:
// transposeA/B flag 27-32 ms, explicit transpose + matMul 2-4 ms. TensorFlow's kernels take the
// flags for free, and there every op costs tens of microseconds of dispatch (each reshape and
// transpose uploads its shape as a tensor), so on the other backends the same products are one op
// each: see transposeFlagsAreFree.
//
// Activations are kept 2-D, [rows, features] (tokens of a ViT, pixels of a convnet's NHWC map),
// so every Linear is one 2-D product and every LayerNorm normalizes the last axis.

import * as tf from '@tensorflow/tfjs-core';
import { add, addBias, exp, fusedKernels, matMul, meanLastAxis, mul, normalCdf, rsqrt, square, sub, sumRows } from './tensorflow-ops.ts';
import { geluCdf, geluGrad } from './webgpu/gelu.ts';
import { layerNormForward, layerNormInputGrad } from './webgpu/layernorm.ts';

/** timm's ViT uses LayerNorm(eps=1e-6), not PyTorch's default 1e-5; so does ConvNeXt's channel LayerNorm. */
export const LN_EPS = 1e-6;

/**
 * Whether the active backend multiplies with a transposed operand (matMul's transpose flags) as fast
 * as without. Only wasm's XNNPACK lacks that path; every other backend (TensorFlow's kernels, the
 * plain-JS cpu one) gets the products in one op each, without a transpose copy.
 */
export function transposeFlagsAreFree(): boolean {
  return tf.getBackend() !== 'wasm';
}

/** y = x @ w + b for x [M, in], w [in, out], b [out]. */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D {
  // tfjs-node has no fused kernel (its _FusedMatMul is a matMul and an add after three reshapes to 3-D),
  // and the binding cannot pass TensorFlow's own _FusedMatMul its list of fused ops: MatMul and BiasAdd.
  if (tf.getBackend() === 'tensorflow') return addBias(matMul(x, w), b);
  return tf.fused.matMul({ a: x, b: w, bias: b }) as tf.Tensor2D;
}

export interface LinearGrads {
  dx: tf.Tensor2D;
  dw: tf.Tensor2D;
  db: tf.Tensor1D;
}

/**
 * op(a) @ op(b): one op where the flags are free (on 'webgpu', src/model/webgpu/sgemm.ts reads a
 * transposed operand in place instead of copying it: x^T of fc1's input at DeiT-B batch 64 is
 * 154 MB); wasm gets explicit transposes (see the header).
 */
function matMulT(a: tf.Tensor2D, b: tf.Tensor2D, transposeA: boolean, transposeB: boolean): tf.Tensor2D {
  if (transposeFlagsAreFree()) return matMul(a, b, transposeA, transposeB);
  return tf.matMul(transposeA ? tf.transpose(a) : a, transposeB ? tf.transpose(b) : b);
}

export function linearBackward(dy: tf.Tensor2D, x: tf.Tensor2D, w: tf.Tensor2D): LinearGrads {
  return { dx: matMulT(dy, w, false, true), dw: matMulT(x, dy, true, false), db: sumRows(dy) };
}

/** LayerNorm over the last axis; also returns what the backward pass needs. */
export function layerNorm(x: tf.Tensor2D, weight: tf.Tensor, bias: tf.Tensor) {
  if (tf.getBackend() === 'webgpu') return layerNormForward(x, weight, bias, LN_EPS); // 3 passes instead of ~10
  const fused = fusedKernels()?.layerNorm(x, weight, bias, LN_EPS); // one op instead of 9
  if (fused) return fused;
  // tf.moments' arithmetic (mean of squared deviations), with the centered x computed once, not twice.
  const centered = sub(x, meanLastAxis(x));
  const rstd = rsqrt(add(meanLastAxis(square(centered)), LN_EPS)); // [M, 1]
  const xHat = mul(centered, rstd);
  return { y: layerNormAffine(xHat, weight, bias), xHat, rstd };
}

/**
 * LayerNorm's output from its normalized input, xHat * weight + bias: what layerNorm returns off
 * webgpu, bit for bit, so a backward pass may recompute it instead of keeping it.
 */
export function layerNormAffine(xHat: tf.Tensor2D, weight: tf.Tensor, bias: tf.Tensor): tf.Tensor2D {
  return addBias(mul(xHat, weight), bias);
}

/** dx = rstd * (g - mean(g) - xHat * mean(g * xHat)) with g = dy * weight, per row, from tfjs ops. */
function layerNormInputGradOps(dy: tf.Tensor2D, xHat: tf.Tensor2D, rstd: tf.Tensor, weight: tf.Tensor): tf.Tensor2D {
  const g = mul(dy, weight);
  const centered = sub(g, meanLastAxis(g));
  return mul(sub(centered, mul(xHat, meanLastAxis(mul(g, xHat)))), rstd);
}

/** LayerNorm's gradients: dx (above; one pass on webgpu), and the affine's. */
export function layerNormBackward(dy: tf.Tensor2D, xHat: tf.Tensor2D, rstd: tf.Tensor, weight: tf.Tensor) {
  const fused = fusedKernels()?.layerNormBackward(dy, xHat, rstd, weight); // one op instead of 11
  if (fused) return fused;
  const dx = tf.getBackend() === 'webgpu' ? layerNormInputGrad(dy, xHat, rstd, weight) : layerNormInputGradOps(dy, xHat, rstd, weight);
  return { dx, dWeight: sumRows(mul(dy, xHat)), dBias: sumRows(dy) };
}

/**
 * Exact GELU, x * Phi(x) with Phi(x) = 0.5 (1 + erf(x / sqrt 2)), as nn.GELU() in timm (tfjs-core
 * has erf, so no tanh approximation). Returns Phi(x) too: erf is slow on wasm, the backward reuses it.
 */
export function gelu(x: tf.Tensor2D): { y: tf.Tensor2D; cdf: tf.Tensor2D } {
  const fused = fusedKernels()?.gelu(x);
  if (fused) return fused;
  const cdf: tf.Tensor2D = tf.getBackend() === 'webgpu' ? geluCdf(x) : normalCdf(x);
  return { y: mul(x, cdf), cdf };
}

/** d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density. */
export function geluBackward(dy: tf.Tensor2D, x: tf.Tensor2D, cdf: tf.Tensor2D): tf.Tensor2D {
  if (tf.getBackend() === 'webgpu') return geluGrad(dy, x, cdf); // one pass instead of seven
  const fused = fusedKernels()?.geluBackward(dy, x, cdf);
  if (fused) return fused;
  const pdf = mul(exp(mul(square(x), -0.5)), 1 / Math.sqrt(2 * Math.PI));
  return mul(dy, add(cdf, mul(x, pdf)));
}

/** Backward of y = tf.relu(x): dy where y is positive, 0 elsewhere (the subgradient 0 at 0, as PyTorch's). */
export function reluBackward(dy: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
  return tf.mul(dy, tf.step(y));
}
