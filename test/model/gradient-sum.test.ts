import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/model/backend.ts';
import { DeviceGradientSum } from '../../src/model/gradient-sum.ts';

test('a device gradient sum adds micro-batch gradients, hands them over once and starts empty again', async () => {
  await selectBackend({ requested: 'cpu' });
  const sum = new DeviceGradientSum(3);
  const into = new Float32Array(3).fill(7);
  await sum.take(into);
  assert.deepEqual([...into], [0, 0, 0], 'nothing added: zeros');
  sum.add(tf.tensor1d([1, 2, 3]));
  sum.add(tf.tensor1d([0.5, -2, 1]));
  await sum.take(into);
  assert.deepEqual([...into], [1.5, 0, 4]);
  await sum.take(into);
  assert.deepEqual([...into], [0, 0, 0], 'taken: empty again');
  const before = tf.memory().numTensors;
  assert.throws(() => sum.add(tf.tensor1d([1, 2])), /gradient has 2 values, the sum 3/);
  assert.equal(tf.memory().numTensors, before, 'a refused gradient is freed');
  await assert.rejects(sum.take(new Float32Array(2)), /gradient buffer has length 2, expected 3/);
  sum.add(tf.tensor1d([1, 1, 1]));
  sum.dispose();
  assert.equal(tf.memory().numTensors, before, 'dispose frees the sum');
});
