// The row-per-workgroup LayerNorm kernels against float64 on the host: rows narrower and wider
// than the 64-thread workgroup, a row count past 65535 (the dispatch folds into 2-D).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { layerNormForward, layerNormInputGrad } from '../../src/model/webgpu/layernorm.ts';
import { lcg } from '../model/helpers.ts';
import { skipWithoutWebGPU } from './helpers.ts';

const skip = await skipWithoutWebGPU();
const EPS = 1e-6;

function values(size: number, seed: number, scale: number, offset = 0): Float32Array {
  const rand = lcg(seed);
  return new Float32Array(size).map(() => offset + scale * (2 * rand() - 1));
}

function assertNear(got: ArrayLike<number>, want: number, tol: number, what: string): void {
  assert.ok(Math.abs((got as number[])[0]! - want) <= tol, `${what}: ${(got as number[])[0]} vs ${want}`);
}

for (const [rows, cols] of [
  [7, 5],
  [37, 200],
  [65536 + 3, 3],
] as const) {
  test(`LayerNorm forward and input gradient match float64 on [${rows}, ${cols}]`, { skip }, async () => {
    // Rows off zero, so the mean matters; a weight and bias far from 1 and 0.
    const [xs, dys, ws, bs] = [values(rows * cols, 1, 2, 0.5), values(rows * cols, 2, 1), values(cols, 3, 0.5, 1), values(cols, 4, 0.3)];
    const [x, dy, w, b] = [tf.tensor2d(xs, [rows, cols]), tf.tensor2d(dys, [rows, cols]), tf.tensor1d(ws), tf.tensor1d(bs)];
    const { y, xHat, rstd } = layerNormForward(x, w, b, EPS);
    const dx = layerNormInputGrad(dy, xHat, rstd, w);
    const [ys, xHats, rstds, dxs] = await Promise.all([y.data(), xHat.data(), rstd.data(), dx.data()]);
    assert.deepEqual(rstd.shape, [rows, 1]);
    const checkedRows = rows > 1000 ? [0, 1, 65535, rows - 1] : Array.from({ length: rows }, (_, r) => r);
    for (const r of checkedRows) {
      const row = Array.from(xs.subarray(r * cols, (r + 1) * cols));
      const mean = row.reduce((s, v) => s + v, 0) / cols;
      const variance = row.reduce((s, v) => s + (v - mean) ** 2, 0) / cols;
      const inv = 1 / Math.sqrt(variance + EPS);
      assertNear([rstds[r]!], inv, 1e-5 * inv, `rstd[${r}]`);
      const hat = row.map((v) => (v - mean) * inv);
      const g = hat.map((_, j) => dys[r * cols + j]! * ws[j]!);
      const meanG = g.reduce((s, v) => s + v, 0) / cols;
      const meanGHat = g.reduce((s, v, j) => s + v * hat[j]!, 0) / cols;
      for (let j = 0; j < cols; j++) {
        const i = r * cols + j;
        assertNear([xHats[i]!], hat[j]!, 1e-5, `xHat[${r}, ${j}]`);
        assertNear([ys[i]!], hat[j]! * ws[j]! + bs[j]!, 1e-5, `y[${r}, ${j}]`);
        assertNear([dxs[i]!], inv * (g[j]! - meanG - hat[j]! * meanGHat), 1e-4, `dx[${r}, ${j}]`);
      }
    }
    tf.dispose([x, dy, w, b, y, xHat, rstd, dx]);
  });
}
