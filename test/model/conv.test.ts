// The convolutions' forward and hand-written backward against plain loops, on both backends (the
// wasm one runs them through XNNPACK's Conv2D with unusual shapes: filters as large as the image).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/model/backend.ts';
import { convSame, convSameBackward, patchify, unpatchify } from '../../src/model/conv.ts';

/** Deterministic values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 1000 + i * 0.7) * 0.999);
}

/** y[b, y, x, co] = bias[co] + sum x[b, y + i - r, x + j - r, ci] w[i, j, ci, co], zero outside: in float64. */
function naiveConv(x: Float32Array, w: Float32Array, bias: Float32Array, [B, H, W, Ci]: number[], k: number, Co: number): Float64Array {
  const r = (k - 1) / 2;
  const y = new Float64Array(B * H * W * Co);
  for (let b = 0; b < B; b++)
    for (let py = 0; py < H; py++)
      for (let px = 0; px < W; px++)
        for (let co = 0; co < Co; co++) {
          let sum = bias[co]!;
          for (let i = 0; i < k; i++)
            for (let j = 0; j < k; j++) {
              const [sy, sx] = [py + i - r, px + j - r];
              if (sy < 0 || sy >= H || sx < 0 || sx >= W) continue;
              for (let ci = 0; ci < Ci; ci++) sum += x[((b * H + sy) * W + sx) * Ci + ci]! * w[((i * k + j) * Ci + ci) * Co + co]!;
            }
          y[((b * H + py) * W + px) * Co + co] = sum;
        }
  return y;
}

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(got.length, want.length, what);
  for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= tol, `${what}[${i}]: ${got[i]} vs ${want[i]}`);
}

for (const backend of ['cpu', 'wasm'] as const) {
  test(`${backend}: convSame and its backward equal plain sums (3x3 and 5x5, non-square channel counts)`, async () => {
    await selectBackend({ requested: backend });
    for (const [B, H, W, Ci, Co, k] of [
      [2, 5, 5, 3, 4, 3],
      [3, 6, 6, 2, 5, 5],
    ] as const) {
      const shape = [B, H, W, Ci];
      const [x, w, bias, dy] = [values(B * H * W * Ci, 1), values(k * k * Ci * Co, 2), values(Co, 3), values(B * H * W * Co, 4)];
      const { y, dx, dw, db } = tf.tidy(() => {
        const [xt, wt] = [tf.tensor4d(x, [B, H, W, Ci]), tf.tensor4d(w, [k, k, Ci, Co])];
        return { y: convSame(xt, wt, tf.tensor1d(bias)), ...convSameBackward(tf.tensor4d(dy, [B, H, W, Co]), xt, wt) };
      });
      const g = { dx, dw, db };
      assertClose(y.dataSync(), naiveConv(x, w, bias, shape, k, Co), 1e-5, 'y');
      // The loss sum(y * dy) is linear in x and in w: its exact gradients by perturbing one entry by 1.
      const loss = (xs: Float32Array, ws: Float32Array) =>
        naiveConv(xs, ws, new Float32Array(Co), shape, k, Co).reduce((s, v, i) => s + v * dy[i]!, 0);
      const base = loss(x, w);
      const unit = (a: Float32Array, i: number) => Float32Array.from(a, (v, j) => (j === i ? v + 1 : v));
      assertClose(
        g.dx.dataSync(),
        Array.from(x, (_, i) => loss(unit(x, i), w) - base),
        1e-4,
        'dx',
      );
      assertClose(
        g.dw.dataSync(),
        Array.from(w, (_, i) => loss(x, unit(w, i)) - base),
        1e-4,
        'dw',
      );
      assert.deepEqual(g.dw.shape, [k, k, Ci, Co]);
      assertClose(
        g.db.dataSync(),
        Array.from({ length: Co }, (_, co) => dy.filter((_, i) => i % Co === co).reduce((s, v) => s + v, 0)),
        1e-5,
        'db',
      );
      tf.dispose([y, dx, dw, db]);
    }
  });
}

test('patchify takes non-overlapping p x p patches in (row, col, channel) order; unpatchify inverts it', async () => {
  await selectBackend({ requested: 'cpu' });
  const [B, S, C, p] = [2, 4, 3, 2];
  const x = Float32Array.from({ length: B * S * S * C }, (_, i) => i);
  const [rows, back] = tf.tidy(() => {
    const r = patchify(tf.tensor4d(x, [B, S, S, C]), p);
    return [r, unpatchify(r, B, S, p)];
  });
  assert.deepEqual(rows.shape, [B * 4, p * p * C]);
  const data = rows.dataSync();
  // Row (b, gy, gx), column (i, j, c) holds pixel (b, gy*p + i, gx*p + j, c).
  for (let b = 0; b < B; b++)
    for (let gy = 0; gy < 2; gy++)
      for (let gx = 0; gx < 2; gx++)
        for (let i = 0; i < p; i++)
          for (let j = 0; j < p; j++)
            for (let c = 0; c < C; c++) {
              const row = (b * 2 + gy) * 2 + gx;
              assert.equal(data[row * p * p * C + (i * p + j) * C + c], x[((b * S + gy * p + i) * S + gx * p + j) * C + c]);
            }
  assert.deepEqual(back.shape, [B, S, S, C]);
  assert.deepEqual(back.dataSync(), x);
  tf.dispose([rows, back]);
});
