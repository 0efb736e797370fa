import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/model/backend.ts';
import { VisionTransformer, countFlops, type VitConfig } from '../../src/model/vit.ts';

// Small enough for finite differences, big enough to have several patches, heads, blocks and classes.
const TINY: VitConfig = { imageSize: 8, patchSize: 4, inChannels: 2, numClasses: 3, embedDim: 8, depth: 2, numHeads: 2, mlpRatio: 2 };
const FMNIST_LIKE: VitConfig = { imageSize: 28, patchSize: 7, inChannels: 1, numClasses: 10, embedDim: 64, depth: 4, numHeads: 4, mlpRatio: 2 };

await selectBackend({ requested: 'cpu' });

/** Deterministic pseudo-random numbers for test inputs (not the model's init PRNG). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function randomBatch(config: VitConfig, n: number, seed: number) {
  const rand = lcg(seed);
  const images = new Float32Array(n * config.imageSize ** 2 * config.inChannels).map(() => 2 * rand() - 1);
  const labels = new Int32Array(n).map(() => Math.floor(rand() * config.numClasses));
  return { images, labels };
}

/** Parameters far from the init so every term of the gradient matters (LayerNorm affine, biases). */
function scrambledParams(model: VisionTransformer, seed: number): Float32Array {
  const rand = lcg(seed);
  const flat = new Float32Array(model.numParams);
  for (const p of model.params) {
    for (let i = p.offset; i < p.offset + p.size; i++) {
      const r = 2 * rand() - 1;
      flat[i] = p.init === 'ones' ? 1 + 0.3 * r : p.init === 'zeros' ? 0.2 * r : 0.5 * r;
    }
  }
  return flat;
}

function lossAndGrad(model: VisionTransformer, images: Float32Array, labels: Int32Array, n: number) {
  const grad = new Float32Array(model.numParams);
  const result = model.lossAndGrad(images, labels, n, grad);
  return { ...result, grad };
}

test('parameters have timm names, shapes and a contiguous flat layout', () => {
  const model = new VisionTransformer(TINY);
  const names = model.params.map((p) => p.name);
  const block = (i: number) =>
    ['norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.proj.weight', 'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight', 'mlp.fc2.bias'].map((n) => `blocks.${i}.${n}`);
  assert.deepEqual(names, ['cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias', ...block(0), ...block(1), 'norm.weight', 'norm.bias', 'head.weight', 'head.bias']);

  const spec = Object.fromEntries(model.params.map((p) => [p.name, p]));
  // Internal layouts, and timm's after the documented permutation.
  assert.deepEqual(spec['cls_token']!.shape, [1, 1, 8]);
  assert.deepEqual(spec['pos_embed']!.shape, [1, 5, 8]);
  assert.deepEqual(spec['patch_embed.proj.weight']!.shape, [4, 4, 2, 8]);
  assert.deepEqual(spec['patch_embed.proj.weight']!.timmShape, [8, 2, 4, 4]);
  assert.deepEqual(spec['blocks.0.attn.qkv.weight']!.shape, [8, 24]);
  assert.deepEqual(spec['blocks.0.attn.qkv.weight']!.timmShape, [24, 8]);
  assert.deepEqual(spec['blocks.0.attn.qkv.weight']!.timmPerm, [1, 0]);
  assert.deepEqual(spec['blocks.1.mlp.fc1.weight']!.timmShape, [16, 8]);
  assert.deepEqual(spec['head.weight']!.timmShape, [3, 8]);
  assert.equal(spec['head.bias']!.timmPerm, null);

  let offset = 0;
  for (const p of model.params) {
    assert.equal(p.offset, offset, p.name);
    assert.equal(p.size, p.shape.reduce((a, b) => a * b, 1), p.name);
    offset += p.size;
  }
  assert.equal(model.numParams, offset);
});

test('countFlops counts every matrix product of the forward pass', () => {
  // 4 patches of 4*4*2 inputs; T = 5 tokens; D = 8; hidden 16; 2 blocks; 3 classes.
  const perBlock = 2 * 5 * 8 * 24 + 2 * 2 * 5 * 5 * 8 + 2 * 5 * 8 * 8 + 2 * 2 * 5 * 8 * 16;
  assert.equal(countFlops(TINY), 2 * 4 * 32 * 8 + 2 * perBlock + 2 * 8 * 3);
});

test('invalid configs are rejected', () => {
  assert.throws(() => new VisionTransformer({ ...TINY, patchSize: 3 }), /not a multiple of patchSize/);
  assert.throws(() => new VisionTransformer({ ...TINY, numHeads: 3 }), /not a multiple of numHeads/);
  assert.throws(() => new VisionTransformer({ ...TINY, depth: 0 }), /depth must be a positive integer/);
});

test('initParams is deterministic, seed-dependent and machine-independent', () => {
  const model = new VisionTransformer(TINY);
  const a = model.initParams(42);
  const b = model.initParams(42);
  assert.deepEqual(new Uint32Array(a.buffer), new Uint32Array(b.buffer));
  assert.notDeepEqual(new Uint32Array(model.initParams(43).buffer), new Uint32Array(a.buffer));
  // Golden values: pure-JS PRNG and Box-Muller, so any change here breaks cross-machine identity.
  assert.deepEqual(Array.from(model.initParams(0).subarray(0, 4)), GOLDEN_SEED0);
});

test('init statistics: truncated normal std 0.02 at +-2 std, zero biases, unit LayerNorm weights', () => {
  const model = new VisionTransformer(FMNIST_LIKE);
  const flat = model.initParams(7);
  let n = 0;
  let sum = 0;
  let sumSq = 0;
  let maxAbs = 0;
  for (const p of model.params) {
    const values = flat.subarray(p.offset, p.offset + p.size);
    if (p.init === 'zeros') assert.ok(values.every((v) => v === 0), p.name);
    if (p.init === 'ones') assert.ok(values.every((v) => v === 1), p.name);
    if (p.init !== 'trunc_normal') continue;
    for (const v of values) {
      n++;
      sum += v;
      sumSq += v * v;
      maxAbs = Math.max(maxAbs, Math.abs(v));
    }
  }
  const mean = sum / n;
  const std = Math.sqrt(sumSq / n - mean * mean);
  assert.ok(n > 100_000);
  assert.ok(Math.abs(mean) < 2e-4, `mean ${mean}`);
  // N(0, 0.02^2) cut at +-2 std has standard deviation 0.02 * 0.87962.
  assert.ok(Math.abs(std / (0.02 * 0.87962) - 1) < 0.01, `std ${std}`);
  assert.ok(maxAbs <= 0.04 && maxAbs > 0.039, `max |w| ${maxAbs}`);
});

test('patch embedding is the stride-p convolution whose kernel timm stores as [D, C, p, p]', () => {
  // With zero attention/MLP output weights every block is the identity, so the features are
  // norm(tokens) and can be compared with tf.conv2d on the HWIO kernel.
  const model = new VisionTransformer(TINY);
  const flat = scrambledParams(model, 3);
  for (const p of model.params) {
    if (/attn\.proj|mlp\.fc2/.test(p.name)) flat.fill(0, p.offset, p.offset + p.size);
    if (p.name.startsWith('norm.')) flat.fill(p.name === 'norm.weight' ? 1 : 0, p.offset, p.offset + p.size);
  }
  model.setParams(flat);
  const { images } = randomBatch(TINY, 2, 5);
  const spec = (name: string) => model.params.find((p) => p.name === name)!;
  const param = (name: string) => tf.tensor(flat.slice(spec(name).offset, spec(name).offset + spec(name).size), spec(name).shape);
  const [got, want] = tf.tidy(() => {
    const x = tf.tensor4d(images, [2, 8, 8, 2]);
    const conv = tf.add(tf.conv2d(x, param('patch_embed.proj.weight') as tf.Tensor4D, 4, 'valid'), param('patch_embed.proj.bias'));
    const tokens = tf.add(tf.concat([tf.tile(param('cls_token'), [2, 1, 1]), tf.reshape(conv, [2, 4, 8])], 1), param('pos_embed'));
    const { mean, variance } = tf.moments(tokens, -1, true);
    return [model.forwardFeatures(x), tf.div(tf.sub(tokens, mean), tf.sqrt(tf.add(variance, 1e-6)))];
  });
  assertClose(got.dataSync(), want.dataSync(), 1e-5);
  tf.dispose([got, want]);
  model.disposeParams();
});

test('analytic gradients match central finite differences for every parameter tensor', () => {
  const model = new VisionTransformer(TINY);
  const params = scrambledParams(model, 11);
  const { images, labels } = randomBatch(TINY, 3, 12);
  model.setParams(params);
  const { grad } = lossAndGrad(model, images, labels, 3);

  const rand = lcg(13);
  const h = 1e-2;
  const loss = (flat: Float32Array) => {
    model.setParams(flat);
    return model.evaluate(images, labels, 3).lossSum;
  };
  let worst = 0;
  for (const p of model.params) {
    for (let s = 0; s < 3; s++) {
      const i = p.offset + Math.floor(rand() * p.size);
      // Richardson extrapolation of two central differences cancels the h^2 error term, so the
      // comparison is limited by float32 rounding in the loss, not by the step size.
      const central = (step: number) => {
        const plus = params.slice();
        const minus = params.slice();
        plus[i]! += step;
        minus[i]! -= step;
        return (loss(plus) - loss(minus)) / (plus[i]! - minus[i]!);
      };
      const numeric = (4 * central(h / 2) - central(h)) / 3;
      const error = Math.abs(grad[i]! - numeric) / Math.max(1, Math.abs(numeric));
      worst = Math.max(worst, error);
      assert.ok(error < 1e-3, `${p.name}[${i - p.offset}]: analytic ${grad[i]} numeric ${numeric}`);
    }
  }
  assert.ok(worst < 1e-3);
  model.disposeParams();
});

test('cpu and wasm backends agree on loss and gradients', async () => {
  const model = new VisionTransformer(TINY);
  const params = scrambledParams(model, 21);
  const { images, labels } = randomBatch(TINY, 4, 22);
  const run = async (backend: 'cpu' | 'wasm') => {
    await selectBackend({ requested: backend });
    model.setParams(params);
    const out = lossAndGrad(model, images, labels, 4);
    model.disposeParams();
    return out;
  };
  const wasm = await run('wasm');
  const cpu = await run('cpu');
  assert.ok(Math.abs(wasm.lossSum - cpu.lossSum) < 1e-4 * Math.abs(cpu.lossSum));
  assert.equal(wasm.correct, cpu.correct);
  const scale = Math.max(...cpu.grad.map(Math.abs));
  assertClose(wasm.grad, cpu.grad, 1e-4 * scale);
});

test('gradients accumulate: two calls add up to the two separate gradients', () => {
  const model = new VisionTransformer(TINY);
  model.setParams(scrambledParams(model, 31));
  const a = randomBatch(TINY, 3, 32);
  const b = randomBatch(TINY, 2, 33);
  const ga = lossAndGrad(model, a.images, a.labels, 3).grad;
  const gb = lossAndGrad(model, b.images, b.labels, 2).grad;
  const acc = new Float32Array(model.numParams);
  model.lossAndGrad(a.images, a.labels, 3, acc);
  model.lossAndGrad(b.images, b.labels, 2, acc);
  assert.deepEqual(acc, ga.map((g, i) => g + gb[i]!));
  model.disposeParams();
});

test('lossSum is the sum of per-sample losses and correct counts argmax hits', () => {
  const model = new VisionTransformer(TINY);
  model.setParams(scrambledParams(model, 41));
  const n = 5;
  const { images, labels } = randomBatch(TINY, n, 42);
  const perImage = images.length / n;
  let sum = 0;
  let correct = 0;
  for (let i = 0; i < n; i++) {
    const one = model.evaluate(images.subarray(i * perImage, (i + 1) * perImage), labels.subarray(i, i + 1), 1);
    sum += one.lossSum;
    correct += one.correct;
  }
  const batch = model.evaluate(images, labels, n);
  const train = lossAndGrad(model, images, labels, n);
  assert.ok(Math.abs(batch.lossSum - sum) < 1e-5 * sum, `${batch.lossSum} vs ${sum}`);
  assert.ok(Math.abs(train.lossSum - batch.lossSum) < 1e-5 * sum);
  assert.equal(batch.correct, correct);
  assert.equal(train.correct, correct);

  // The same numbers from the raw logits.
  const logits = model.logits(images, n);
  assert.equal(logits.length, n * TINY.numClasses);
  let ce = 0;
  let hits = 0;
  for (let i = 0; i < n; i++) {
    const row = Array.from(logits.subarray(i * 3, i * 3 + 3));
    const max = Math.max(...row);
    ce += max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) - row[labels[i]!]!;
    if (row.indexOf(max) === labels[i]) hits++;
  }
  assert.ok(Math.abs(ce - sum) < 1e-5 * sum);
  assert.equal(hits, correct);
  model.disposeParams();
});

test('no tensors leak across calls', async () => {
  for (const backend of ['cpu', 'wasm'] as const) {
    await selectBackend({ requested: backend });
    const model = new VisionTransformer(TINY);
    const { images, labels } = randomBatch(TINY, 4, 51);
    const grad = new Float32Array(model.numParams);
    const before = tf.memory().numTensors;
    model.setParams(model.initParams(1));
    const withParams = tf.memory().numTensors;
    assert.equal(withParams - before, model.params.length);
    for (let i = 0; i < 3; i++) {
      model.lossAndGrad(images, labels, 4, grad);
      model.evaluate(images, labels, 4);
      model.logits(images, 4);
      model.setParams(model.initParams(i));
      assert.equal(tf.memory().numTensors, withParams, backend);
    }
    model.disposeParams();
    assert.equal(tf.memory().numTensors, before, backend);
  }
  await selectBackend({ requested: 'cpu' });
});

test('misuse fails loudly', () => {
  const model = new VisionTransformer(TINY);
  const { images, labels } = randomBatch(TINY, 2, 61);
  assert.throws(() => model.evaluate(images, labels, 2), /call setParams/);
  assert.throws(() => model.setParams(new Float32Array(3)), /expected \d+ parameters/);
  model.setParams(model.initParams(0));
  assert.throws(() => model.evaluate(images, Int32Array.from([0, 3]), 2), /label 3 at 1 is out of range/);
  assert.throws(() => model.evaluate(images, labels, 3), /images holds/);
  assert.throws(() => model.lossAndGrad(images, labels, 2, new Float32Array(1)), /gradAccum has length/);
  model.disposeParams();
});

test('a tiny model overfits a tiny batch with plain SGD', () => {
  const model = new VisionTransformer(TINY);
  const params = model.initParams(71);
  const n = 8;
  const { images, labels } = randomBatch(TINY, n, 72);
  const grad = new Float32Array(model.numParams);
  const losses: number[] = [];
  for (let step = 0; step < 40; step++) {
    model.setParams(params);
    grad.fill(0);
    losses.push(model.lossAndGrad(images, labels, n, grad).lossSum / n);
    for (let i = 0; i < params.length; i++) params[i]! -= 0.5 * (grad[i]! / n);
  }
  model.setParams(params);
  const final = model.evaluate(images, labels, n);
  assert.ok(final.lossSum / n < 0.25 * losses[0]!, `loss ${losses[0]} -> ${final.lossSum / n}`);
  assert.equal(final.correct, n);
  model.disposeParams();
});

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  assert.equal(got.length, want.length);
  for (let i = 0; i < got.length; i++) {
    assert.ok(Math.abs(got[i]! - want[i]!) <= tol, `index ${i}: ${got[i]} vs ${want[i]} (tol ${tol})`);
  }
}

const GOLDEN_SEED0 = [0.0032693122047930956, 0.005082613788545132, 0.0007856404408812523, 0.02644318714737892];
