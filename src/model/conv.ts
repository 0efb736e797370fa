// Convolutions with hand-written gradients, built only from kernels the wasm backend runs fast.
//
// tfjs-backend-wasm has Conv2D (XNNPACK) and Conv2DBackpropInput (a plain loop), and no
// Conv2DBackpropFilter. Measured here for a 3x3 convolution 32 -> 32 channels on 128 images of
// 14x14, wasm, one thread: the forward conv2d takes 30 ms; the input gradient 189 ms as
// conv2dTranspose, 221 ms as im2col's adjoint (matMul, then nine shifted pads summed), 41 ms as a
// conv2d with the flipped kernel; the weight gradient 127 ms through im2col (nine shifted slices
// concatenated, then a matMul), 36 ms as a conv2d with batch and channels swapped. So all three
// passes of a stride-1 convolution are forward Conv2Ds (convSame). A non-overlapping convolution
// (kernel = stride: ViT's patch embedding, the convnet's stem and downsampling) is a reshape and
// one matMul each way (patchify).

import * as tf from '@tensorflow/tfjs-core';

/**
 * [B, H, W, C] images -> [B * (H/p) * (W/p), p*p*C]: one row per non-overlapping p x p patch, rows
 * in (image, patch row, patch column) order, each flattened in (row, col, channel) order; so a
 * kernel stored [p, p, C, D] is a [p*p*C, D] matrix applied to the rows. Square images.
 */
export function patchify(x: tf.Tensor4D, p: number): tf.Tensor2D {
  const [B, S, , C] = x.shape;
  const g = S / p; // patches per side
  // [B, g, p, g, p, C] viewed as [B*g, p, g, p*C]; swapping the middle axes gives
  // [B*g, g, p, p*C] = one row of p*p*C per patch. A 4-D transpose: 5-D/6-D ones are slow on wasm.
  const rows = tf.transpose(tf.reshape(x, [B * g, p, g, p * C]), [0, 2, 1, 3]);
  return tf.reshape(rows, [B * g * g, p * p * C]);
}

/** The inverse of patchify: patch rows back to [B, S, S, C] images. */
export function unpatchify(rows: tf.Tensor2D, B: number, S: number, p: number): tf.Tensor4D {
  const g = S / p;
  const C = rows.shape[1] / (p * p);
  return tf.reshape(tf.transpose(tf.reshape(rows, [B * g, g, p, p * C]), [0, 2, 1, 3]), [B, S, S, C]);
}

/** y = conv(x, w) + b, stride 1, zero padding keeping the size: x [B, H, W, Cin], w [k, k, Cin, Cout] with k odd. */
export function convSame(x: tf.Tensor4D, w: tf.Tensor4D, b: tf.Tensor1D): tf.Tensor4D {
  return tf.fused.conv2d({ x, filter: w, strides: 1, pad: 'same', bias: b });
}

export interface ConvGrads {
  dx: tf.Tensor4D;
  dw: tf.Tensor4D;
  db: tf.Tensor1D;
}

/** Gradients of convSame from dy [B, H, W, Cout], the forward's input x and kernel w. */
export function convSameBackward(dy: tf.Tensor4D, x: tf.Tensor4D, w: tf.Tensor4D): ConvGrads {
  const k = w.shape[0];
  const r = (k - 1) / 2; // padding on each side
  // dx[b, y, x, ci] = sum_{i,j,co} dy[b, y + r - i, x + r - j, co] w[i, j, ci, co]: the same
  // convolution of dy with the kernel turned by 180 degrees and its channel axes swapped.
  const dx = tf.conv2d(dy, tf.transpose(tf.reverse(w, [0, 1]), [0, 1, 3, 2]), 1, 'same');
  // dw[i, j, ci, co] = sum_{b,y,x} xPadded[b, y + i, x + j, ci] dy[b, y, x, co]: a 'valid'
  // convolution of the images [Cin, H + 2r, W + 2r, B] (channels as the batch, the batch as
  // channels) with the filter dy as [H, W, B, Cout], giving [Cin, k, k, Cout].
  const xT = tf.pad(tf.transpose(x, [3, 1, 2, 0]), [
    [0, 0],
    [r, r],
    [r, r],
    [0, 0],
  ]) as tf.Tensor4D;
  const dwT = tf.conv2d(xT, tf.transpose(dy, [1, 2, 0, 3]), 1, 'valid');
  return { dx, dw: tf.transpose(dwT, [1, 2, 0, 3]), db: tf.sum(dy, [0, 1, 2]) };
}
