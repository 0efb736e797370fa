// The fused softmax cross-entropy row kernel against float64 on the host and against loss.ts's tfjs
// formulation (crossEntropySum, softmax - target) on the same backend: one-hot, label-smoothed and
// soft targets, rows narrower and wider than the 64-thread workgroup (10, 1000 classes), batch 1;
// one-hot targets both as float32 and as the int32 tensor loss.ts's oneHotLabels makes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { crossEntropySum } from '../../src/model/loss.ts';
import { fusedSoftmaxCrossEntropy } from '../../src/model/webgpu/loss.ts';
import { lcg } from '../model/helpers.ts';
import { skipWithoutWebGPU } from './helpers.ts';

const skip = await skipWithoutWebGPU();

type Targets = 'one-hot' | 'soft';

function targets(kind: Targets, n: number, k: number, rand: () => number): Float32Array {
  const t = new Float32Array(n * k);
  for (let i = 0; i < n; i++) {
    if (kind === 'one-hot') {
      t[i * k + Math.floor(rand() * k)] = 1;
      continue;
    }
    // Mixup-like: two classes mixed, as the trainer's soft targets are.
    const lambda = rand();
    t[i * k + Math.floor(rand() * k)]! += lambda;
    t[i * k + Math.floor(rand() * k)]! += 1 - lambda;
  }
  return t;
}

for (const [n, k, kind, smoothing, dtype] of [
  [5, 10, 'one-hot', 0, 'int32'],
  [3, 1000, 'one-hot', 0.1, 'int32'],
  [2, 10, 'one-hot', 0.1, 'float32'],
  [1, 1000, 'soft', 0, 'float32'],
  [4, 37, 'soft', 0, 'float32'],
] as const) {
  test(`fused cross entropy matches float64 and the tfjs ops: ${n} x ${k}, ${kind} ${dtype} targets, smoothing ${smoothing}`, {
    skip,
  }, async () => {
    const rand = lcg(n * k + 1);
    const zs = new Float32Array(n * k).map(() => 16 * rand() - 8);
    const ts = targets(kind, n, k, rand);
    const logits = tf.tensor2d(zs, [n, k]);
    const target = tf.tensor2d(dtype === 'int32' ? Int32Array.from(ts) : ts, [n, k], dtype);
    const fused = fusedSoftmaxCrossEntropy(logits, target, smoothing);
    const [loss, grad] = [(await fused.lossSum.data())[0]!, await fused.dLogits.data()];

    let wantLoss = 0;
    for (let i = 0; i < n; i++) {
      const row = Array.from(zs.subarray(i * k, (i + 1) * k));
      const max = Math.max(...row);
      const logSum = Math.log(row.reduce((acc, z) => acc + Math.exp(z - max), 0));
      for (let j = 0; j < k; j++) {
        const t = ts[i * k + j]! * (1 - smoothing) + smoothing / k;
        const logP = row[j]! - max - logSum;
        wantLoss -= t * logP;
        const want = Math.exp(logP) - t;
        assert.ok(Math.abs(grad[i * k + j]! - want) < 1e-6, `dLogits[${i}, ${j}]: ${grad[i * k + j]} vs ${want}`);
      }
    }
    assert.ok(Math.abs(loss - wantLoss) <= 1e-6 * Math.max(1, Math.abs(wantLoss)), `loss ${loss} vs ${wantLoss}`);

    const smoothed: tf.Tensor2D = smoothing > 0 ? tf.add(tf.mul(target, 1 - smoothing), smoothing / k) : target;
    const opsLoss = (await crossEntropySum(logits, smoothed).data())[0]!;
    const opsGrad = await tf.sub(tf.softmax(logits), smoothed).data();
    assert.ok(Math.abs(loss - opsLoss) <= 1e-5 * Math.max(1, Math.abs(opsLoss)), `loss ${loss} vs tfjs ops ${opsLoss}`);
    for (let i = 0; i < n * k; i++)
      assert.ok(Math.abs(grad[i]! - opsGrad[i]!) < 1e-6, `dLogits[${i}]: ${grad[i]} vs tfjs ops ${opsGrad[i]}`);
    tf.dispose([logits, target, fused.lossSum, fused.dLogits]);
  });
}

test('fused cross entropy names mismatched shapes', { skip }, () => {
  const logits = tf.zeros([2, 3]) as tf.Tensor2D;
  const target = tf.zeros([2, 4]) as tf.Tensor2D;
  assert.throws(() => fusedSoftmaxCrossEntropy(logits, target, 0), /targets \[2,4\] and logits \[2,3\] differ/);
  tf.dispose([logits, target]);
});
