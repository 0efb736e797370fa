// Kernel profiling: tfjs's timing list read and summed per kernel (no adapter needed); our programs
// named by shader key in tfjs's timer (its times are 0 without timestamp-query, so this part runs
// on llvmpipe too); and profileKernels on the adapter at hand: with timestamp-query, positive times;
// without (llvmpipe), null, the recorded work still done.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { fusedAttention } from '../../src/model/webgpu/attention.ts';
import {
  parseProfileInfo,
  profileKernels,
  summarizeKernelTimes,
  timedKernels,
  timestampQueryAvailable,
} from '../../src/model/webgpu/profile.ts';
import { skipWithoutWebGPU } from './helpers.ts';

test('tfjs timing lists are read and summed per kernel, largest first', () => {
  const times = parseProfileInfo('vitdist_ln_stats: 0.5, BinaryOpProgram: 0.25, vitdist_ln_stats: 1.5');
  assert.deepEqual(times, [
    { name: 'vitdist_ln_stats', ms: 0.5 },
    { name: 'BinaryOpProgram', ms: 0.25 },
    { name: 'vitdist_ln_stats', ms: 1.5 },
  ]);
  assert.deepEqual(summarizeKernelTimes(times), [
    { name: 'vitdist_ln_stats', calls: 2, ms: 2, share: 2 / 2.25 },
    { name: 'BinaryOpProgram', calls: 1, ms: 0.25, share: 0.25 / 2.25 },
  ]);
  assert.deepEqual(parseProfileInfo(''), []);
  assert.throws(() => parseProfileInfo('no time here'), /cannot read 'no time here'/);
});

test('profileKernels names our kernels where timestamp-query exists, else returns null after running the work', {
  skip: await skipWithoutWebGPU(),
}, async () => {
  const dims = { batch: 1, tokens: 5, heads: 1, headDim: 4 };
  const qkv = tf.ones([5, 12]) as tf.Tensor2D;
  let out: tf.Tensor2D | undefined;
  let lse: tf.Tensor1D | undefined;
  const times = await profileKernels(() => {
    ({ out, lse } = fusedAttention(qkv, dims, 0.5));
  });
  if (timestampQueryAvailable()) {
    assert.ok(
      times?.some((t) => t.name === 'vitdist_attention_fwd_4'),
      `names: ${times?.map((t) => t.name).join(', ')}`,
    );
  } else {
    assert.equal(times, null);
  }
  // Equal keys: every probability 1/5, the output the values' mean (1); lse = 0.5 * 4 + log 5.
  assert.deepEqual(
    Array.from(await out!.data()),
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1].map((v) => Math.fround(v)),
  );
  for (const v of await lse!.data()) assert.ok(Math.abs(v - (2 + Math.log(5))) < 1e-5, `lse ${v}`);
  tf.dispose([qkv, out!, lse!]);
});

test('our programs and tfjs ones are named in order through the tfjs timer', { skip: await skipWithoutWebGPU() }, async () => {
  const qkv = tf.ones([5, 12]) as tf.Tensor2D;
  let outputs: tf.Tensor[] = [];
  const times = await timedKernels(() => {
    const { out, lse } = fusedAttention(qkv, { batch: 1, tokens: 5, heads: 1, headDim: 4 }, 0.5);
    outputs = [out, lse, tf.add(out, 1)];
  });
  const names = times.map((t) => t.name);
  // The forward program, its two slices (out, lse), then the add.
  assert.equal(names[0], 'vitdist_attention_fwd_4', names.join(', '));
  assert.equal(names.length, 4, names.join(', '));
  assert.ok(!names.includes('Object'), names.join(', '));
  if (timestampQueryAvailable()) assert.ok(times.every((t) => t.ms > 0));
  tf.dispose([qkv, ...outputs]);
});
