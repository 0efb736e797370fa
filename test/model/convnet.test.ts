import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/model/backend.ts';
import { ConvNet, convNetParamSpecs, countConvNetFlops, type ConvNetConfig } from '../../src/model/convnet.ts';
import type { TrainContext } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { writeSafetensors } from '../../src/model/safetensors.ts';
import { exportTimmState } from '../../src/model/weights.ts';
import {
  ENGINES,
  assertBackendsAgree,
  assertClose,
  checkGradients as checkModelGradients,
  lossAndGrad,
  randomBatch,
  scrambledParams,
} from './helpers.ts';

// Two stages, one 3x3 convolution each: 8x8x2 -> stem 4x4x3 -> 3x3 conv -> downsample 2x2x4 -> 3x3 conv.
const TINY: ConvNetConfig = {
  family: 'convnet',
  imageSize: 8,
  inChannels: 2,
  numClasses: 3,
  widths: [3, 4],
  depths: [1, 1],
  distilled: false,
};
/** The units of TINY in order: [name, kind]. */
const TINY_UNITS = [
  ['stem', 'patch'],
  ['stages.0.blocks.0', 'same'],
  ['stages.1.downsample', 'patch'],
  ['stages.1.blocks.0', 'same'],
] as const;

await selectBackend({ requested: 'cpu' });

test('parameters have PyTorch names, [out, in, kh, kw] convolutions and a contiguous flat layout', () => {
  const model = new ConvNet(TINY);
  const unitParams = (name: string) => ['conv.weight', 'conv.bias', 'norm.weight', 'norm.bias'].map((p) => `${name}.${p}`);
  assert.deepEqual(
    model.params.map((p) => p.name),
    [...TINY_UNITS.flatMap(([name]) => unitParams(name)), 'head.fc.weight', 'head.fc.bias'],
  );
  const spec = Object.fromEntries(model.params.map((p) => [p.name, p]));
  assert.deepEqual(spec['stem.conv.weight']!.shape, [2, 2, 2, 3]);
  assert.deepEqual(spec['stem.conv.weight']!.timmShape, [3, 2, 2, 2]);
  assert.deepEqual(spec['stages.0.blocks.0.conv.weight']!.shape, [3, 3, 3, 3]);
  assert.deepEqual(spec['stages.1.downsample.conv.weight']!.timmShape, [4, 3, 2, 2]);
  assert.deepEqual(spec['stages.1.blocks.0.conv.weight']!.timmShape, [4, 4, 3, 3]);
  assert.deepEqual(spec['stages.1.blocks.0.conv.weight']!.timmPerm, [3, 2, 0, 1]);
  assert.deepEqual(spec['stages.1.blocks.0.norm.weight']!.shape, [4]);
  // The head: a convolution over the whole last map (2x2x4), [classes, width, 2, 2] in PyTorch.
  assert.deepEqual(spec['head.fc.weight']!.shape, [2, 2, 4, 3]);
  assert.deepEqual(spec['head.fc.weight']!.timmShape, [3, 4, 2, 2]);
  assert.equal(spec['head.fc.bias']!.timmPerm, null);
  let offset = 0;
  for (const p of model.params) {
    assert.equal(p.offset, offset, p.name);
    assert.equal(
      p.size,
      p.shape.reduce((a, b) => a * b, 1),
      p.name,
    );
    offset += p.size;
  }
  assert.equal(model.numParams, offset);
  assert.deepEqual(convNetParamSpecs(TINY), model.params);
});

test('countConvNetFlops counts every convolution and the head', () => {
  // stem 4x4 pixels of 2*2*2 -> 3; 3x3 3 -> 3 at 4x4; downsample 2x2 pixels of 2*2*3 -> 4; 3x3 4 -> 4 at 2x2; head 2*2*4 -> 3.
  assert.equal(countConvNetFlops(TINY), 2 * (16 * 8 * 3 + 16 * 27 * 3 + 4 * 12 * 4 + 4 * 36 * 4 + 16 * 3));
});

test('invalid configs are rejected with the field and value', () => {
  assert.throws(() => new ConvNet({ ...TINY, imageSize: 6 }), /imageSize 6 is not a multiple of 4 \(2 stages, each halving it\)/);
  assert.throws(() => new ConvNet({ ...TINY, depths: [1] }), /depths must hold a count >= 0 for each of the 2 stages, got \[1\]/);
  assert.throws(() => new ConvNet({ ...TINY, widths: [] }), /widths must be a non-empty list of positive integers, got \[\]/);
  assert.throws(() => new ConvNet({ ...TINY, widths: [3, 0] }), /widths must be a non-empty list/);
  assert.throws(() => new ConvNet({ ...TINY, numClasses: 0 }), /numClasses must be a positive integer, got 0/);
  assert.throws(() => new ConvNet({ ...TINY, distilled: true as false }), /distilled must be false/);
});

test('init: seeded and deterministic; truncated normal weights, zero biases, unit norm weights', () => {
  const model = new ConvNet({ ...TINY, widths: [16, 32], depths: [1, 2] });
  const flat = model.initParams(3);
  assert.deepEqual(new Uint32Array(flat.buffer), new Uint32Array(model.initParams(3).buffer));
  assert.notDeepEqual(new Uint32Array(flat.buffer), new Uint32Array(model.initParams(4).buffer));
  const weights: number[] = [];
  for (const p of model.params) {
    const values = flat.subarray(p.offset, p.offset + p.size);
    if (p.init === 'zeros')
      assert.ok(
        values.every((v) => v === 0),
        p.name,
      );
    else if (p.init === 'ones')
      assert.ok(
        values.every((v) => v === 1),
        p.name,
      );
    else weights.push(...values);
  }
  assert.deepEqual(
    model.params.filter((p) => p.init === 'trunc_normal').map((p) => p.name),
    model.params.filter((p) => p.name.endsWith('.weight') && !p.name.includes('norm')).map((p) => p.name),
  );
  const std = Math.sqrt(weights.reduce((s, v) => s + v * v, 0) / weights.length);
  assert.ok(weights.length > 20_000);
  assert.ok(Math.abs(std / (0.02 * 0.87962) - 1) < 0.03, `std ${std}`);
  assert.ok(Math.max(...weights.map(Math.abs)) <= 0.04);
});

test('the forward pass is conv (stride 2 patches, 3x3 same), channel LayerNorm, ReLU, then a conv over the whole map', () => {
  const model = new ConvNet(TINY);
  const flat = scrambledParams(model, 5);
  model.setParams(flat);
  const n = 3;
  const { images } = randomBatch(TINY, n, 6);
  const param = (name: string) => {
    const s = model.params.find((p) => p.name === name)!;
    return tf.tensor(flat.slice(s.offset, s.offset + s.size), s.shape);
  };
  const want = tf.tidy(() => {
    let x = tf.tensor4d(images, [n, 8, 8, 2]);
    for (const [name, kind] of TINY_UNITS) {
      const kernel = param(`${name}.conv.weight`) as tf.Tensor4D;
      const y = tf.add(kind === 'patch' ? tf.conv2d(x, kernel, 2, 'valid') : tf.conv2d(x, kernel, 1, 'same'), param(`${name}.conv.bias`));
      const { mean, variance } = tf.moments(y, -1, true);
      const normed = tf.add(
        tf.mul(tf.div(tf.sub(y, mean), tf.sqrt(tf.add(variance, 1e-6))), param(`${name}.norm.weight`)),
        param(`${name}.norm.bias`),
      );
      x = tf.relu(normed) as tf.Tensor4D;
    }
    return tf.add(tf.reshape(tf.conv2d(x, param('head.fc.weight') as tf.Tensor4D, 1, 'valid'), [n, 3]), param('head.fc.bias'));
  });
  assertClose(model.logits(images, n), want.dataSync(), 1e-5, 'logits');
  want.dispose();
  model.disposeParams();
});

/**
 * scrambledParams with every norm bias at +-4 (even channels +, odd -): a channel LayerNorm's output
 * is at most sqrt(C - 1) in size, so every ReLU input stays more than a unit away from the kink at 0,
 * which no finite-difference step can cross, and both of the ReLU's sides are exercised.
 */
function kinkFreeParams(model: ConvNet, seed: number): Float32Array {
  const flat = scrambledParams(model, seed);
  for (const p of model.params.filter((s) => s.name.endsWith('.norm.bias'))) {
    for (let c = 0; c < p.size; c++) flat[p.offset + c]! += c % 2 === 0 ? 4 : -4;
  }
  return flat;
}

/** Finite-difference check of every parameter tensor (test/model/helpers.ts). */
function checkGradients(config: ConvNetConfig, seed: number, ctx?: TrainContext): void {
  const model = new ConvNet(config);
  checkModelGradients(model, kinkFreeParams(model, seed), seed, ctx);
}

test('analytic gradients match central finite differences for every parameter tensor', () => {
  checkGradients(TINY, 11);
  // A stage without 3x3 convolutions, and three stages.
  checkGradients({ ...TINY, imageSize: 16, widths: [2, 3, 4], depths: [0, 1, 2] }, 12);
});

test('gradients with label smoothing, and with soft targets, match finite differences', () => {
  const sampleIndices = Uint32Array.of(0, 1, 2);
  checkGradients(TINY, 13, { step: 0, seed: 0, sampleIndices, regularization: { dropout: 0, dropPath: 0, labelSmoothing: 0.1 } });
  const softTargets = Float32Array.of(0.7, 0.2, 0.1, 0, 0.5, 0.5, 0.1, 0.1, 0.8);
  checkGradients(TINY, 14, { step: 0, seed: 0, sampleIndices, softTargets });
});

// The engines workers train on: the same checks as above on the plain-JS cpu backend.
for (const engine of ENGINES) {
  test(`${engine.name}: loss, hit count and gradients agree with the cpu backend`, { skip: engine.skip }, async () => {
    const model = new ConvNet(TINY);
    await assertBackendsAgree(model, scrambledParams(model, 21), 22, engine.name);
    await selectBackend({ requested: 'cpu' });
  });

  test(`${engine.name}: analytic gradients match finite differences`, { skip: engine.skip }, async () => {
    await selectBackend({ requested: engine.name });
    try {
      checkGradients(TINY, 11);
    } finally {
      await selectBackend({ requested: 'cpu' });
    }
  });
}

test('no batch statistics: micro-batches add up to the whole batch and an image gets the same logits alone', () => {
  const model = new ConvNet(TINY);
  model.setParams(scrambledParams(model, 31));
  const n = 5;
  const { images, labels } = randomBatch(TINY, n, 32);
  const perImage = images.length / n;
  const whole = lossAndGrad(model, images, labels, n);
  const parts = new Float32Array(model.numParams);
  let lossSum = 0;
  for (const [from, to] of [
    [0, 2],
    [2, 5],
  ] as const) {
    lossSum += model.lossAndGrad(images.subarray(from * perImage, to * perImage), labels.subarray(from, to), to - from, parts).lossSum;
  }
  assert.ok(Math.abs(lossSum - whole.lossSum) < 1e-5 * whole.lossSum, `${lossSum} vs ${whole.lossSum}`);
  assertClose(parts, whole.grad, 1e-5 * Math.max(...whole.grad.map(Math.abs)));
  const batch = model.logits(images, n);
  assertClose(model.logits(images.subarray(3 * perImage, 4 * perImage), 1), batch.subarray(3 * 3, 4 * 3), 1e-6, 'image 3');
  // evaluate's loss is the training loss without regularization; its correct count is the logits' argmax hits.
  const evaluated = model.evaluate(images, labels, n);
  assert.ok(Math.abs(evaluated.lossSum - whole.lossSum) < 1e-5 * whole.lossSum);
  assert.equal(evaluated.correct, whole.correct);
  assert.equal(evaluated.correctClassHead, undefined);
  model.disposeParams();
});

test('a short training run lowers the loss: 50 Adam steps memorize a small batch', () => {
  const config: ConvNetConfig = { ...TINY, imageSize: 12, widths: [8, 16], depths: [1, 1], numClasses: 4 };
  const model = new ConvNet(config);
  const params = model.initParams(41);
  const n = 16;
  const { images, labels } = randomBatch(config, n, 42);
  const grad = new Float32Array(model.numParams);
  const [m, v] = [new Float32Array(model.numParams), new Float32Array(model.numParams)];
  const losses: number[] = [];
  for (let step = 1; step <= 50; step++) {
    model.setParams(params);
    grad.fill(0);
    losses.push(model.lossAndGrad(images, labels, n, grad).lossSum / n);
    // Adam (lr 1e-2): scale-free steps suit LayerNorm-ed convolutions whose weights start at std 0.02.
    for (let i = 0; i < params.length; i++) {
      const g = grad[i]! / n;
      m[i] = 0.9 * m[i]! + 0.1 * g;
      v[i] = 0.999 * v[i]! + 0.001 * g * g;
      params[i]! -= (1e-2 * (m[i]! / (1 - 0.9 ** step))) / (Math.sqrt(v[i]! / (1 - 0.999 ** step)) + 1e-8);
    }
  }
  model.setParams(params);
  const final = model.evaluate(images, labels, n);
  // Measured: 1.39 -> 0.03 (random labels: the network memorizes them).
  assert.ok(final.lossSum / n < 0.1 * losses[0]!, `loss ${losses[0]} -> ${final.lossSum / n}`);
  assert.equal(final.correct, n);
  model.disposeParams();
});

test('dropout and stochastic depth have no site here: a context asking for them is refused', () => {
  const model = new ConvNet(TINY);
  model.setParams(model.initParams(0));
  const { images, labels } = randomBatch(TINY, 2, 51);
  const grad = new Float32Array(model.numParams);
  const ctx = (regularization: TrainContext['regularization']): TrainContext => ({
    step: 0,
    seed: 0,
    sampleIndices: Uint32Array.of(0, 1),
    regularization,
  });
  assert.throws(
    () => model.lossAndGrad(images, labels, 2, grad, ctx({ dropout: 0.1, dropPath: 0, labelSmoothing: 0 })),
    /ConvNet has no dropout or stochastic depth: regularization\.dropout is 0\.1, expected 0/,
  );
  assert.throws(
    () => model.lossAndGrad(images, labels, 2, grad, ctx({ dropout: 0, dropPath: 0.2, labelSmoothing: 0 })),
    /regularization\.dropPath is 0\.2/,
  );
  assert.throws(
    () => model.lossAndGrad(images, labels, 2, grad, ctx({ dropout: 0, attnDropout: 0.1, dropPath: 0, labelSmoothing: 0 })),
    /regularization\.attnDropout is 0\.1/,
  );
  model.lossAndGrad(images, labels, 2, grad, ctx({ dropout: 0, attnDropout: 0, dropPath: 0, labelSmoothing: 0.1 }));
  model.disposeParams();
});

test('no tensors leak across calls, errors included', async () => {
  for (const backend of ['cpu', ...ENGINES.filter((e) => !e.skip).map((e) => e.name)] as const) {
    await selectBackend({ requested: backend });
    const model = new ConvNet(TINY);
    const { images, labels } = randomBatch(TINY, 4, 61);
    const grad = new Float32Array(model.numParams);
    const before = tf.memory().numTensors;
    model.setParams(model.initParams(1));
    const withParams = tf.memory().numTensors;
    assert.equal(withParams - before, model.params.length);
    const refused: TrainContext = {
      step: 0,
      seed: 0,
      sampleIndices: Uint32Array.of(0, 1, 2, 3),
      regularization: { dropout: 0.5, dropPath: 0, labelSmoothing: 0 },
    };
    for (let i = 0; i < 2; i++) {
      model.lossAndGrad(images, labels, 4, grad);
      model.evaluate(images, labels, 4);
      model.logits(images, 4);
      assert.throws(() => model.lossAndGrad(images, labels, 4, grad, refused));
      assert.throws(
        () => model.lossAndGrad(images, labels, 4, grad, { ...refused, regularization: undefined, softTargets: new Float32Array(12) }),
        /sums to 0/,
      );
      assert.equal(tf.memory().numTensors, withParams, backend);
    }
    model.disposeParams();
    assert.equal(tf.memory().numTensors, before, backend);
  }
  await selectBackend({ requested: 'cpu' });
});

test('misuse fails loudly', () => {
  const model = new ConvNet(TINY);
  const { images, labels } = randomBatch(TINY, 2, 71);
  assert.throws(() => model.logits(images, 2), /ConvNet: call setParams/);
  assert.throws(() => model.setParams(new Float32Array(3)), /expected \d+ parameters, got 3/);
  model.setParams(model.initParams(0));
  assert.throws(() => model.evaluate(images, Int32Array.of(0, 3), 2), /label 3 at 1 is out of range/);
  assert.throws(() => model.logits(images, 3), /images holds 256 values, 3 images need 384/);
  assert.throws(() => model.lossAndGrad(images, labels, 2, new Float32Array(1)), /gradAccum has length 1/);
  model.disposeParams();
});

const PYTHON = '/usr/bin/python3';
const REFERENCE = fileURLToPath(new URL('../fixtures/reference_convnet.py', import.meta.url));
/** float32 forward passes of the same weights in TF.js and PyTorch agree to well within this. */
const LOGIT_TOLERANCE = 1e-4;

const torchMissing = ((): string | false => {
  const probe = spawnSync(PYTHON, ['-c', 'import torch, numpy'], { encoding: 'utf8' });
  return probe.status === 0
    ? false
    : `PyTorch is not importable by ${PYTHON} (apt-get install python3-torch): ${(probe.stderr || probe.error?.message || '').trim().split('\n').at(-1)}`;
})();

test('exported weights load strictly into the PyTorch reference module and give the same logits', {
  skip: torchMissing,
  timeout: 120_000,
}, () => {
  // Two input channels and an extra stage exercise the kernel's channel axes and every naming rule.
  const config = createModelConfig('convnet_fmnist_small', { imageSize: 16, inChannels: 2, widths: [8, 12, 16], depths: [1, 0, 2] });
  const model = new ConvNet(config);
  const params = scrambledParams(model, 81);
  model.setParams(params);
  const n = 4;
  const { images } = randomBatch(config, n, 82);
  const dir = mkdtempSync(join(tmpdir(), 'vit-dist-convnet-'));
  const [weights, imagesPath, logitsPath] = ['model.safetensors', 'images.f32', 'logits.f32'].map((f) => join(dir, f)) as [
    string,
    string,
    string,
  ];
  writeSafetensors(weights, exportTimmState(model.params, params));
  writeFileSync(imagesPath, new Uint8Array(images.buffer));
  const ref = spawnSync(PYTHON, [REFERENCE, weights, JSON.stringify(config), imagesPath, logitsPath], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(ref.status, 0, ref.stderr);
  const bytes = readFileSync(logitsPath);
  const reference = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const logits = model.logits(images, n);
  assert.equal(reference.length, n * config.numClasses);
  assertClose(logits, reference, LOGIT_TOLERANCE, 'logits');
  assert.ok(Math.max(...reference.map(Math.abs)) > 10 * LOGIT_TOLERANCE, 'the logits are not all near zero');
  model.disposeParams();
});
