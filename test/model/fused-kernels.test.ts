// The TensorFlow engine's fused kernels (src/model/native/fused_ops.cc) against float64 formulas on
// the host: LayerNorm, GELU and the attention softmax, forward and backward, on row lengths that
// leave a tail after the kernels' 8-lane sums, and on inputs where their exp and erf are clamped.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/model/backend.ts';
import { fusedKernels, loadFusedKernels } from '../../src/model/tensorflow-ops.ts';
import { erf, lcg, tensorflowUnavailable } from './helpers.ts';

const skip =
  tensorflowUnavailable ||
  (await selectBackend({ requested: 'tensorflow' }).then((chosen) =>
    fusedKernels() === null ? `the fused kernels did not load: ${chosen.reason}` : false,
  ));

function randoms(n: number, seed: number, scale: number): Float32Array {
  const rand = lcg(seed);
  return new Float32Array(n).map(() => scale * (2 * rand() - 1));
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i]!;
    assert.ok(Math.abs(actual[i]! - e) <= tolerance * Math.max(1, Math.abs(e)), `${what}[${i}]: ${actual[i]} vs ${e}`);
  }
}

for (const n of [17, 64, 197]) {
  test(`VitLayerNorm and VitLayerNormGrad match float64 LayerNorm over rows of ${n}`, { skip }, () => {
    const rows = 5;
    const eps = 1e-6;
    const xs = randoms(rows * n, n, 3).map((v, i) => v + (i % n === 0 ? 40 : 0)); // an offset mean, an outlier
    const ws = randoms(n, n + 1, 1).map((v) => 1 + v);
    const bs = randoms(n, n + 2, 0.5);
    const dys = randoms(rows * n, n + 3, 1);
    const [y, xHat, rstd] = [new Float64Array(rows * n), new Float64Array(rows * n), new Float64Array(rows)];
    const expectedDx = new Float64Array(rows * n);
    const expectedDw = new Float64Array(n);
    const expectedDb = new Float64Array(n);
    for (let r = 0; r < rows; r++) {
      const row = Array.from(xs.subarray(r * n, (r + 1) * n));
      const mean = row.reduce((s, v) => s + v, 0) / n;
      const variance = row.reduce((s, v) => s + (v - mean) ** 2, 0) / n;
      rstd[r] = 1 / Math.sqrt(variance + eps);
      let meanG = 0;
      let meanGH = 0;
      for (let j = 0; j < n; j++) {
        xHat[r * n + j] = (row[j]! - mean) * rstd[r]!;
        y[r * n + j] = xHat[r * n + j]! * ws[j]! + bs[j]!;
        const g = dys[r * n + j]! * ws[j]!;
        meanG += g / n;
        meanGH += (g * xHat[r * n + j]!) / n;
        expectedDw[j]! += dys[r * n + j]! * xHat[r * n + j]!;
        expectedDb[j]! += dys[r * n + j]!;
      }
      for (let j = 0; j < n; j++) {
        const g = dys[r * n + j]! * ws[j]!;
        expectedDx[r * n + j] = rstd[r]! * (g - meanG - xHat[r * n + j]! * meanGH);
      }
    }
    const kernels = fusedKernels()!;
    tf.tidy(() => {
      const out = kernels.layerNorm(tf.tensor2d(xs, [rows, n]), tf.tensor1d(ws), tf.tensor1d(bs), eps);
      assert.deepEqual(out.rstd.shape, [rows, 1]);
      assertClose(out.y.dataSync(), y, 1e-5, 'y');
      assertClose(out.xHat.dataSync(), xHat, 1e-5, 'xHat');
      assertClose(out.rstd.dataSync(), rstd, 1e-5, 'rstd');
      const grads = kernels.layerNormBackward(tf.tensor2d(dys, [rows, n]), out.xHat, out.rstd, tf.tensor1d(ws));
      assertClose(grads.dx.dataSync(), expectedDx, 1e-5, 'dx');
      assertClose(grads.dWeight.dataSync(), expectedDw, 1e-5, 'dWeight');
      assertClose(grads.dBias.dataSync(), expectedDb, 1e-5, 'dBias');
    });
  });
}

test('VitGelu and VitGeluGrad match float64 GELU, including where erf and exp are clamped', { skip }, () => {
  const xs = Float32Array.from([...randoms(1001, 7, 6), 0, -0, 4.5, -4.5, 12, -12, 30, -30]);
  const dys = randoms(xs.length, 8, 1);
  const kernels = fusedKernels()!;
  tf.tidy(() => {
    const x = tf.tensor2d(xs, [1, xs.length]);
    const { y, cdf } = kernels.gelu(x);
    const dx = kernels.geluBackward(tf.tensor2d(dys, [1, xs.length]), x, cdf);
    const [ys, cdfs, dxs] = [y.dataSync(), cdf.dataSync(), dx.dataSync()];
    for (let i = 0; i < xs.length; i++) {
      const phi = 0.5 * (1 + erf(xs[i]! / Math.SQRT2));
      const pdf = Math.exp(-0.5 * xs[i]! ** 2) / Math.sqrt(2 * Math.PI);
      assert.ok(Math.abs(cdfs[i]! - phi) < 3e-7, `cdf(${xs[i]}): ${cdfs[i]} vs ${phi}`);
      assert.ok(Math.abs(ys[i]! - xs[i]! * phi) < 1e-6 * Math.max(1, Math.abs(xs[i]!)), `gelu(${xs[i]}): ${ys[i]} vs ${xs[i]! * phi}`);
      const expected = dys[i]! * (phi + xs[i]! * pdf);
      assert.ok(Math.abs(dxs[i]! - expected) < 1e-6, `gelu'(${xs[i]}) dy: ${dxs[i]} vs ${expected}`);
    }
  });
});

for (const n of [17, 197]) {
  test(`VitScaledSoftmax and VitScaledSoftmaxGrad match float64 softmax over rows of ${n}`, { skip }, () => {
    const rows = 6;
    const scale = 0.125;
    // Row 0 spans 2000 (most of it underflows), row 1 is constant, the rest moderate.
    const scores = randoms(rows * n, n, 40).map((v, i) => (i < n ? v * 50 : i < 2 * n ? 3 : v));
    const dAtts = randoms(rows * n, n + 1, 1);
    const expected = new Float64Array(rows * n);
    const expectedGrad = new Float64Array(rows * n);
    for (let r = 0; r < rows; r++) {
      const row = Array.from(scores.subarray(r * n, (r + 1) * n), (v) => v * scale);
      const max = Math.max(...row);
      const exps = row.map((v) => Math.exp(v - max));
      const sum = exps.reduce((s, v) => s + v, 0);
      let dot = 0;
      for (let j = 0; j < n; j++) {
        expected[r * n + j] = exps[j]! / sum;
        dot += dAtts[r * n + j]! * expected[r * n + j]!;
      }
      for (let j = 0; j < n; j++) expectedGrad[r * n + j] = scale * expected[r * n + j]! * (dAtts[r * n + j]! - dot);
    }
    const kernels = fusedKernels()!;
    tf.tidy(() => {
      const att = kernels.scaledSoftmax(tf.tensor3d(scores, [2, rows / 2, n]), scale);
      assertClose(att.dataSync(), expected, 1e-6, 'softmax');
      // The backward pass from the float64 probabilities, so only its own rounding is measured.
      const grad = kernels.scaledSoftmaxBackward(
        tf.tensor3d(Float32Array.from(expected), [2, rows / 2, n]),
        tf.tensor3d(dAtts, [2, rows / 2, n]),
        scale,
      );
      assertClose(grad.dataSync(), expectedGrad, 1e-6, 'softmax gradient');
    });
  });
}

test('a build record that is missing, failed, lost its module or is of another source is refused, saying why', () => {
  assert.match(loadFusedKernels(undefined) ?? '', /not built/);
  assert.match(loadFusedKernels({ ok: false, failure: 'no compiler' }) ?? '', /build failed \(no compiler\)/);
  assert.match(loadFusedKernels({ ok: true, file: '/nonexistent/fused.node', sourceSha256: '0' }) ?? '', /missing/);
  assert.match(loadFusedKernels({ ok: true, file: import.meta.filename, sourceSha256: 'stale' }) ?? '', /fused_ops\.cc changed/);
});
