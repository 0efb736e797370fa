// The scaled softmax row kernels against float64 on the host: rows narrower and wider than the
// 64-thread workgroup (197 = ViT/16's tokens), and more rows than one dispatch dimension holds.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { scaledSoftmax, scaledSoftmaxGrad } from '../../src/model/webgpu/softmax.ts';
import { lcg } from '../model/helpers.ts';
import { skipWithoutWebGPU } from './helpers.ts';

const skip = await skipWithoutWebGPU();
const SCALE = 0.125;

for (const shape of [
  [2, 7, 7],
  [3, 5, 197],
  [1, 65536 + 5, 3],
]) {
  test(`scaled softmax and its gradient match float64 on [${shape}]`, { skip }, async () => {
    const rand = lcg(shape[1]!);
    const size = shape.reduce((a, b) => a * b);
    const cols = shape[2]!;
    const scores = new Float32Array(size).map(() => 40 * rand() - 20); // large logits: the max shift matters
    const dAtts = new Float32Array(size).map(() => 2 * rand() - 1);
    const s = tf.tensor(scores, shape);
    const dAtt = tf.tensor(dAtts, shape);
    const att = scaledSoftmax(s, SCALE);
    const dS = scaledSoftmaxGrad(att, dAtt, SCALE);
    const [atts, dSs] = [await att.data(), await dS.data()];
    const rows = size / cols;
    const checkedRows = rows > 1000 ? [0, 65535, rows - 1] : Array.from({ length: rows }, (_, r) => r);
    for (const r of checkedRows) {
      const logits = Array.from(scores.subarray(r * cols, (r + 1) * cols), (v) => v * SCALE);
      const max = Math.max(...logits);
      const exps = logits.map((v) => Math.exp(v - max));
      const total = exps.reduce((a, b) => a + b, 0);
      const p = exps.map((v) => v / total);
      const dot = p.reduce((acc, v, j) => acc + v * dAtts[r * cols + j]!, 0);
      for (let j = 0; j < cols; j++) {
        const i = r * cols + j;
        assert.ok(Math.abs(atts[i]! - p[j]!) < 1e-6, `att[${r}, ${j}]: ${atts[i]} vs ${p[j]}`);
        const want = SCALE * p[j]! * (dAtts[i]! - dot);
        assert.ok(Math.abs(dSs[i]! - want) < 1e-6, `dScores[${r}, ${j}]: ${dSs[i]} vs ${want}`);
      }
    }
    tf.dispose([s, dAtt, att, dS]);
  });
}
