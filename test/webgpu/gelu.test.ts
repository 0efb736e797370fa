// The one-pass GELU kernels against float64 formulas on the host, on an odd size and on one past
// 65535 workgroups (DeiT-B's fc1 output at batch 64 has 38.5M values: the dispatch folds into 2-D).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { geluCdf, geluGrad } from '../../src/model/webgpu/gelu.ts';
import { erf, lcg } from '../model/helpers.ts';
import { skipWithoutWebGPU } from './helpers.ts';

const skip = await skipWithoutWebGPU();

for (const size of [1001, 128 * 65535 + 77]) {
  test(`GELU's CDF and gradient kernels match float64 formulas on ${size} values`, { skip }, async () => {
    const rand = lcg(size);
    const xs = new Float32Array(size).map(() => 5 * rand() - 2.5);
    const dys = new Float32Array(size).map(() => 2 * rand() - 1);
    const x = tf.tensor1d(xs);
    const dy = tf.tensor1d(dys);
    const cdf = geluCdf(x);
    const grad = geluGrad(dy, x, cdf);
    const [cdfs, grads] = [await cdf.data(), await grad.data()];
    // Every value of the small case; every 997th of the big one, and its last.
    const stride = size > 10000 ? 997 : 1;
    const checked = [...Array.from({ length: Math.ceil(size / stride) }, (_, j) => j * stride), size - 1];
    for (const i of checked) {
      const phi = 0.5 * (1 + erf(xs[i]! / Math.SQRT2));
      const pdf = Math.exp(-0.5 * xs[i]! ** 2) / Math.sqrt(2 * Math.PI);
      assert.ok(Math.abs(cdfs[i]! - phi) < 1e-6, `cdf[${i}] of ${xs[i]}: ${cdfs[i]} vs ${phi}`);
      assert.ok(
        Math.abs(grads[i]! - dys[i]! * (phi + xs[i]! * pdf)) < 1e-6,
        `grad[${i}]: ${grads[i]} vs ${dys[i]! * (phi + xs[i]! * pdf)}`,
      );
    }
    tf.dispose([x, dy, cdf, grad]);
  });
}
