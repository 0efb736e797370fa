// The overlapped step's hand-off (issue 13): the last micro-batch's buckets, handed over from
// inside the backward pass, hold the same bits as the plain device sum downloaded once.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/model/backend.ts';
import { planGradientBuckets } from '../../src/model/gradient-buckets.ts';
import { DeviceGradientSum } from '../../src/model/gradient-sum.ts';
import { createModel } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { ENGINES, randomBatch, scrambledParams } from './helpers.ts';

const TINY_VIT = createModelConfig('vit_fmnist_tiny', { embedDim: 16, depth: 2, numHeads: 2 });
const CONVNET = createModelConfig('convnet_fmnist_small');

test('buckets are whole parameters covering the flat layout from the head down', () => {
  const model = createModel(TINY_VIT);
  for (const size of [1, 100, 1000, model.numParams]) {
    const buckets = planGradientBuckets(model.params, size);
    assert.equal(buckets[0]!.end, model.numParams, 'the first bucket ends with the head');
    assert.equal(buckets[buckets.length - 1]!.start, 0, 'the last starts with the first parameter');
    for (const [i, bucket] of buckets.entries()) {
      if (i > 0) assert.equal(bucket.end, buckets[i - 1]!.start, 'contiguous');
      assert.equal(
        bucket.params.reduce((sum, p) => sum + p.size, 0),
        bucket.end - bucket.start,
      );
      assert.equal(bucket.params[0]!.offset, bucket.start);
    }
    if (size === 1) assert.equal(buckets.length, model.params.length, 'one parameter per bucket');
    if (size === model.numParams) assert.equal(buckets.length, 1);
  }
  assert.throws(() => planGradientBuckets(model.params, 0), /bucketElements must be a positive integer/);
});

for (const engine of ENGINES) {
  for (const config of [TINY_VIT, CONVNET]) {
    test(`${engine.name}, ${config.family}: handed-over buckets hold the plain sum's bits, for any bucket size`, {
      skip: engine.skip,
    }, async () => {
      await selectBackend({ requested: engine.name });
      const model = createModel(config);
      model.setParams(scrambledParams(model, 3));
      const n = 4;
      const batches = [randomBatch(config, n, 1), randomBatch(config, n, 2), randomBatch(config, n, 3)];
      const plainSum = new DeviceGradientSum(model.numParams);
      for (const { images, labels } of batches) await model.accumulateGradient(images, labels, n, plainSum);
      const plain = new Float32Array(model.numParams);
      await plainSum.take(plain);
      const before = tf.memory().numTensors;
      for (const bucketElements of [1, 500, model.numParams]) {
        const buckets = planGradientBuckets(model.params, bucketElements);
        const sum = new DeviceGradientSum(model.numParams);
        const host = new Float32Array(model.numParams).fill(Number.NaN);
        const order: number[] = [];
        for (const [m, { images, labels }] of batches.entries()) {
          if (m === batches.length - 1) {
            sum.handOffBuckets(buckets, host, { bucketReady: (i) => order.push(i), bucketFailed: (_i, err) => assert.fail(err) });
          }
          await model.accumulateGradient(images, labels, n, sum);
        }
        assert.equal(order.length, buckets.length, 'every bucket handed over once');
        assert.ok(
          Buffer.from(host.buffer).equals(Buffer.from(plain.buffer)),
          `bucketElements ${bucketElements}: same bits as the plain sum`,
        );
        if (config.family === 'vit' && bucketElements === 1) {
          // Handed over while the backward pass runs, in the order it finishes them: the head's first.
          assert.equal(order[0], 0);
        }
      }
      assert.equal(tf.memory().numTensors, before, 'the hand-off leaves no tensors behind');
      model.disposeParams();
    });
  }
}
