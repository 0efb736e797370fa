import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/model/backend.ts';
import type { TrainContext } from '../../src/model/model.ts';
import { VisionTransformer, countFlops, type VitConfig } from '../../src/model/vit.ts';
import {
  ENGINES,
  assertBackendsAgree,
  assertClose,
  checkGradients as checkModelGradients,
  lcg,
  lossAndGrad,
  randomBatch,
  scrambledParams,
} from './helpers.ts';

// Small enough for finite differences, big enough to have several patches, heads, blocks and classes.
const TINY: VitConfig = {
  imageSize: 8,
  patchSize: 4,
  inChannels: 2,
  numClasses: 3,
  embedDim: 8,
  depth: 2,
  numHeads: 2,
  mlpRatio: 2,
  distilled: false,
};
const TINY_DISTILLED: VitConfig = { ...TINY, distilled: true };
const FMNIST_LIKE: VitConfig = {
  imageSize: 28,
  patchSize: 7,
  inChannels: 1,
  numClasses: 10,
  embedDim: 64,
  depth: 4,
  numHeads: 4,
  mlpRatio: 2,
  distilled: false,
};

await selectBackend({ requested: 'cpu' });

/** Finite-difference check of every parameter tensor (test/model/helpers.ts). */
function checkGradients(config: VitConfig, seed: number, ctx?: TrainContext): void {
  const model = new VisionTransformer(config);
  checkModelGradients(model, scrambledParams(model, seed), seed, ctx);
}

/** Rates high enough that a 3-image batch of TINY sees dropped elements and dropped paths. */
const HEAVY = { dropout: 0.2, attnDropout: 0.2, dropPath: 0.5, labelSmoothing: 0.1 };

test('parameters have timm names, shapes and a contiguous flat layout', () => {
  const model = new VisionTransformer(TINY);
  const names = model.params.map((p) => p.name);
  const block = (i: number) =>
    [
      'norm1.weight',
      'norm1.bias',
      'attn.qkv.weight',
      'attn.qkv.bias',
      'attn.proj.weight',
      'attn.proj.bias',
      'norm2.weight',
      'norm2.bias',
      'mlp.fc1.weight',
      'mlp.fc1.bias',
      'mlp.fc2.weight',
      'mlp.fc2.bias',
    ].map((n) => `blocks.${i}.${n}`);
  assert.deepEqual(names, [
    'cls_token',
    'pos_embed',
    'patch_embed.proj.weight',
    'patch_embed.proj.bias',
    ...block(0),
    ...block(1),
    'norm.weight',
    'norm.bias',
    'head.weight',
    'head.bias',
  ]);

  const spec = Object.fromEntries(model.params.map((p) => [p.name, p]));
  // Internal layouts, and timm's after the documented permutation.
  assert.deepEqual(spec.cls_token!.shape, [1, 1, 8]);
  assert.deepEqual(spec.pos_embed!.shape, [1, 5, 8]);
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
    assert.equal(
      p.size,
      p.shape.reduce((a, b) => a * b, 1),
      p.name,
    );
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
    if (p.init === 'zeros')
      assert.ok(
        values.every((v) => v === 0),
        p.name,
      );
    if (p.init === 'ones')
      assert.ok(
        values.every((v) => v === 1),
        p.name,
      );
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
  checkGradients(TINY, 11);
});

test('gradients of a distilled model (both heads, alpha 0.3) match finite differences', () => {
  checkGradients(TINY_DISTILLED, 14, { step: 0, seed: 0, sampleIndices: Uint32Array.of(0, 1, 2), distillationAlpha: 0.3 });
});

test('gradients with dropout, attention dropout, drop path and label smoothing match finite differences', () => {
  // The masks are a function of the context, so every loss evaluation sees the same ones.
  const ctx: TrainContext = { step: 5, seed: 9, sampleIndices: Uint32Array.of(100, 7, 42), regularization: HEAVY, distillationAlpha: 0.3 };
  checkGradients(TINY_DISTILLED, 17, ctx);
  checkGradients(TINY, 18, ctx);
});

// The engines workers train on: the same checks as above on the plain-JS cpu backend.
for (const engine of ENGINES) {
  test(`${engine.name}: loss, hit count and gradients agree with the cpu backend, plain and distilled`, { skip: engine.skip }, async () => {
    for (const config of [TINY, TINY_DISTILLED]) {
      const model = new VisionTransformer(config);
      await assertBackendsAgree(model, scrambledParams(model, 21), 22, engine.name);
    }
    await selectBackend({ requested: 'cpu' });
  });

  test(`${engine.name}: analytic gradients match finite differences, also distilled with dropout, drop path and label smoothing`, {
    skip: engine.skip,
  }, async () => {
    await selectBackend({ requested: engine.name });
    try {
      checkGradients(TINY, 11);
      checkGradients(TINY_DISTILLED, 17, {
        step: 5,
        seed: 9,
        sampleIndices: Uint32Array.of(100, 7, 42),
        regularization: HEAVY,
        distillationAlpha: 0.3,
      });
    } finally {
      await selectBackend({ requested: 'cpu' });
    }
  });
}

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
  assert.deepEqual(
    acc,
    ga.map((g, i) => g + gb[i]!),
  );
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
  const ctx: TrainContext = { step: 0, seed: 0, sampleIndices: Uint32Array.of(0, 1, 2, 3), regularization: HEAVY };
  for (const backend of ['cpu', ...ENGINES.filter((e) => !e.skip).map((e) => e.name)] as const) {
    await selectBackend({ requested: backend });
    for (const config of [TINY, TINY_DISTILLED]) {
      const model = new VisionTransformer(config);
      const { images, labels } = randomBatch(config, 4, 51);
      const grad = new Float32Array(model.numParams);
      const before = tf.memory().numTensors;
      model.setParams(model.initParams(1));
      const withParams = tf.memory().numTensors;
      assert.equal(withParams - before, model.params.length);
      for (let i = 0; i < 3; i++) {
        model.lossAndGrad(images, labels, 4, grad);
        model.lossAndGrad(images, labels, 4, grad, ctx);
        model.evaluate(images, labels, 4);
        model.logits(images, 4);
        model.setParams(model.initParams(i));
        assert.equal(tf.memory().numTensors, withParams, backend);
      }
      model.disposeParams();
      assert.equal(tf.memory().numTensors, before, backend);
    }
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
  const grad = new Float32Array(model.numParams);
  assert.throws(
    () => model.lossAndGrad(images, labels, 2, grad, { step: 0, seed: 0, sampleIndices: Uint32Array.of(0), regularization: HEAVY }),
    /sampleIndices holds 1 values, expected 2/,
  );
  assert.throws(
    () => model.lossAndGrad(images, labels, 2, grad, { step: 0, seed: 0, sampleIndices: Uint32Array.of(0, 1), distillationAlpha: 2 }),
    /distillationAlpha must be in \[0, 1\]/,
  );
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

test('a distilled model has dist_token after pos_embed, a position for it and a second head', () => {
  const model = new VisionTransformer(TINY_DISTILLED);
  const names = model.params.map((p) => p.name);
  assert.deepEqual(names.slice(0, 4), ['cls_token', 'pos_embed', 'dist_token', 'patch_embed.proj.weight']);
  assert.deepEqual(names.slice(-4), ['head.weight', 'head.bias', 'head_dist.weight', 'head_dist.bias']);
  const spec = Object.fromEntries(model.params.map((p) => [p.name, p]));
  assert.deepEqual(spec.pos_embed!.shape, [1, 6, 8]);
  assert.deepEqual(spec.dist_token!.shape, [1, 1, 8]);
  assert.equal(spec.dist_token!.init, 'trunc_normal');
  assert.deepEqual(spec['head_dist.weight']!.timmShape, [3, 8]);
  const plain = new VisionTransformer(TINY);
  assert.equal(model.numParams - plain.numParams, 8 + 8 + 8 * 3 + 3);
  // 6 tokens; two heads.
  const perBlock = 2 * 6 * 8 * 24 + 2 * 2 * 6 * 6 * 8 + 2 * 6 * 8 * 8 + 2 * 2 * 6 * 8 * 16;
  assert.equal(countFlops(TINY_DISTILLED), 2 * 4 * 32 * 8 + 2 * perBlock + 2 * 2 * 8 * 3);
});

test('distilled inference averages the two heads; evaluate reports each head and the joint classifier', () => {
  const model = new VisionTransformer(TINY_DISTILLED);
  model.setParams(scrambledParams(model, 81));
  const n = 6;
  const { images, labels } = randomBatch(TINY_DISTILLED, n, 82);
  const [cls, dist] = tf.tidy(() => {
    const heads = model.forwardHead(model.forwardFeatures(tf.tensor4d(images, [n, 8, 8, 2])));
    return [heads.cls, heads.dist!];
  });
  const [c, d] = [cls.dataSync(), dist.dataSync()];
  tf.dispose([cls, dist]);
  assertClose(
    model.logits(images, n),
    Array.from(c, (v, i) => (v + d[i]!) / 2),
    1e-6,
  );
  const hits = (values: ArrayLike<number>) =>
    labels.filter((label, i) => {
      const row = Array.from({ length: 3 }, (_, k) => values[i * 3 + k]!);
      return row.indexOf(Math.max(...row)) === label;
    }).length;
  const result = model.evaluate(images, labels, n);
  assert.equal(result.correctClassHead, hits(c));
  assert.equal(result.correctDistHead, hits(d));
  assert.equal(result.correct, hits(model.logits(images, n)));
  assert.notDeepEqual(Array.from(c), Array.from(d), 'the heads differ, so the averaging is exercised');
  model.disposeParams();
});

test('regularization masks follow the sample index, not the micro-batch or the position in it', () => {
  const model = new VisionTransformer(TINY);
  model.setParams(scrambledParams(model, 91));
  const n = 4;
  const { images, labels } = randomBatch(TINY, n, 92);
  const perImage = images.length / n;
  const indices = Uint32Array.of(1000, 3, 77, 5);
  const ctx = (sampleIndices: Uint32Array): TrainContext => ({ step: 12, seed: 3, sampleIndices, regularization: HEAVY });
  const whole = lossAndGrad(model, images, labels, n, ctx(indices));

  // The same samples in two micro-batches, reordered: samples 3, 0 then 2, 1.
  const pick = (order: number[]) => {
    const imgs = new Float32Array(order.length * perImage);
    order.forEach((s, j) => {
      imgs.set(images.subarray(s * perImage, (s + 1) * perImage), j * perImage);
    });
    return { imgs, lbls: Int32Array.from(order, (s) => labels[s]!), idx: Uint32Array.from(order, (s) => indices[s]!) };
  };
  const grad = new Float32Array(model.numParams);
  let lossSum = 0;
  for (const order of [
    [3, 0],
    [2, 1],
  ]) {
    const { imgs, lbls, idx } = pick(order);
    lossSum += model.lossAndGrad(imgs, lbls, order.length, grad, ctx(idx)).lossSum;
  }
  assert.ok(Math.abs(lossSum - whole.lossSum) < 1e-5 * whole.lossSum, `${lossSum} vs ${whole.lossSum}`);
  assertClose(grad, whole.grad, 1e-5 * Math.max(...whole.grad.map(Math.abs)));

  // The masks do change with the sample index, the step and the seed, and they change the loss.
  const plain = lossAndGrad(model, images, labels, n).lossSum;
  const others = [
    lossAndGrad(model, images, labels, n, ctx(Uint32Array.of(5, 77, 3, 1000))).lossSum,
    lossAndGrad(model, images, labels, n, { ...ctx(indices), step: 13 }).lossSum,
    lossAndGrad(model, images, labels, n, { ...ctx(indices), seed: 4 }).lossSum,
  ];
  for (const other of [plain, ...others]) assert.ok(Math.abs(other - whole.lossSum) > 1e-4, `${other} vs ${whole.lossSum}`);
  model.disposeParams();
});

test('a context with every rate 0 computes the same bits as no context', () => {
  const zero = { dropout: 0, attnDropout: 0, dropPath: 0, labelSmoothing: 0 };
  for (const config of [TINY, TINY_DISTILLED]) {
    const model = new VisionTransformer(config);
    model.setParams(scrambledParams(model, 101));
    const { images, labels } = randomBatch(config, 3, 102);
    const plain = lossAndGrad(model, images, labels, 3);
    const ctx = { step: 1, seed: 2, sampleIndices: Uint32Array.of(4, 5, 6), regularization: zero };
    const withCtx = lossAndGrad(model, images, labels, 3, ctx);
    assert.equal(withCtx.lossSum, plain.lossSum);
    assert.deepEqual(withCtx.grad, plain.grad);
    model.disposeParams();
  }
});

test('stochastic depth rises linearly from 0: a one-block model never drops its path', () => {
  const config = { ...TINY, depth: 1 };
  const model = new VisionTransformer(config);
  model.setParams(scrambledParams(model, 111));
  const { images, labels } = randomBatch(config, 4, 112);
  const ctx = {
    step: 0,
    seed: 0,
    sampleIndices: Uint32Array.of(0, 1, 2, 3),
    regularization: { dropout: 0, dropPath: 0.9, labelSmoothing: 0 },
  };
  assert.deepEqual(lossAndGrad(model, images, labels, 4, ctx).grad, lossAndGrad(model, images, labels, 4).grad);
  // With two blocks the last one drops at the full rate 0.9.
  const deeper = new VisionTransformer(TINY);
  deeper.setParams(scrambledParams(deeper, 113));
  assert.notDeepEqual(lossAndGrad(deeper, images, labels, 4, ctx).grad, lossAndGrad(deeper, images, labels, 4).grad);
  model.disposeParams();
  deeper.disposeParams();
});

test('label smoothing: the loss is cross entropy against (1 - eps) onehot + eps / K', () => {
  const model = new VisionTransformer(TINY);
  model.setParams(scrambledParams(model, 121));
  const n = 3;
  const { images, labels } = randomBatch(TINY, n, 122);
  const eps = 0.1;
  const ctx = {
    step: 0,
    seed: 0,
    sampleIndices: Uint32Array.of(0, 1, 2),
    regularization: { dropout: 0, dropPath: 0, labelSmoothing: eps },
  };
  const logits = model.logits(images, n);
  let want = 0;
  for (let i = 0; i < n; i++) {
    const row = Array.from(logits.subarray(i * 3, i * 3 + 3));
    const max = Math.max(...row);
    const logZ = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
    row.forEach((v, k) => {
      want -= ((k === labels[i] ? 1 - eps : 0) + eps / 3) * (v - logZ);
    });
  }
  const got = lossAndGrad(model, images, labels, n, ctx).lossSum;
  assert.ok(Math.abs(got - want) < 1e-5 * want, `${got} vs ${want}`);
  model.disposeParams();
});

const GOLDEN_SEED0 = [0.0032693122047930956, 0.005082613788545132, 0.0007856404408812523, 0.02644318714737892];

// ---------------------------------------------------------------------------------------------
// Distillation from a teacher (DeiT): the distillation head's loss term against teacher logits.

/** Each head's logits of a distilled model, [n, numClasses] row-major. */
function headLogits(model: VisionTransformer, images: Float32Array, n: number): { cls: Float32Array; dist: Float32Array } {
  const { imageSize: S, inChannels: C } = model.config;
  const [cls, dist] = tf.tidy(() => {
    const heads = model.forwardHead(model.forwardFeatures(tf.tensor4d(images, [n, S, S, C])));
    return [heads.cls, heads.dist!];
  });
  try {
    return { cls: cls.dataSync() as Float32Array, dist: dist.dataSync() as Float32Array };
  } finally {
    tf.dispose([cls, dist]);
  }
}

/** log softmax of row i of [n, k] values divided by tau, in float64. */
function logSoftmaxRow(values: ArrayLike<number>, i: number, k: number, tau = 1): number[] {
  const row = Array.from({ length: k }, (_, j) => values[i * k + j]! / tau);
  const max = Math.max(...row);
  const logSum = max + Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0));
  return row.map((v) => v - logSum);
}

/** Sum over the n rows of -log softmax(logits)[target]. */
function crossEntropy(logits: ArrayLike<number>, targets: ArrayLike<number>, n: number, k: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum -= logSoftmaxRow(logits, i, k)[targets[i]!]!;
  return sum;
}

/** Sum over the n rows of tau^2 KL(softmax(teacher / tau) || softmax(student / tau)). */
function softDistillation(teacher: ArrayLike<number>, student: ArrayLike<number>, n: number, k: number, tau: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const [logT, logS] = [logSoftmaxRow(teacher, i, k, tau), logSoftmaxRow(student, i, k, tau)];
    sum += logT.reduce((a, lt, j) => a + Math.exp(lt) * (lt - logS[j]!), 0);
  }
  return tau * tau * sum;
}

function distillationContext(n: number, distillation: TrainContext['distillation'], alpha = 0.3): TrainContext {
  return { step: 0, seed: 0, sampleIndices: Uint32Array.from({ length: n }, (_, i) => i), distillationAlpha: alpha, distillation };
}

/** Teacher logits of n images: values spread enough that soft targets are far from one-hot and from uniform. */
function teacherLogits(n: number, k: number, seed: number): Float32Array {
  const rand = lcg(seed);
  return new Float32Array(n * k).map(() => 4 * rand() - 2);
}

test('gradients of soft and hard distillation from a teacher match finite differences', () => {
  const n = 3; // checkGradients' batch
  const teacher = teacherLogits(n, TINY_DISTILLED.numClasses, 90);
  checkGradients(TINY_DISTILLED, 91, distillationContext(n, { mode: 'soft', tau: 2, teacherLogits: teacher }));
  checkGradients(TINY_DISTILLED, 92, distillationContext(n, { mode: 'soft', tau: 0.5, teacherLogits: teacher }));
  checkGradients(TINY_DISTILLED, 93, distillationContext(n, { mode: 'hard', tau: 1, teacherLogits: teacher }));
});

test('hard distillation is cross entropy of the distillation head on the teacher argmax', () => {
  const model = new VisionTransformer(TINY_DISTILLED);
  model.setParams(scrambledParams(model, 94));
  const n = 6;
  const K = TINY_DISTILLED.numClasses;
  const { images, labels } = randomBatch(TINY_DISTILLED, n, 95);
  const teacher = teacherLogits(n, K, 96);
  const teacherLabels = Int32Array.from({ length: n }, (_, i) => {
    const row = Array.from(teacher.subarray(i * K, (i + 1) * K));
    return row.indexOf(Math.max(...row));
  });
  assert.notDeepEqual(Array.from(teacherLabels), Array.from(labels), 'the teacher disagrees with the labels somewhere');
  const hard = lossAndGrad(model, images, labels, n, distillationContext(n, { mode: 'hard', tau: 1, teacherLogits: teacher }));
  const { cls, dist } = headLogits(model, images, n);
  const distLoss = crossEntropy(dist, teacherLabels, n, K);
  assert.ok(Math.abs(hard.distillationLossSum! - distLoss) < 1e-5 * distLoss, `${hard.distillationLossSum} vs ${distLoss}`);
  // The base head learns the labels whatever the teacher says.
  const expected = 0.7 * crossEntropy(cls, labels, n, K) + 0.3 * distLoss;
  assert.ok(Math.abs(hard.lossSum - expected) < 1e-5 * expected, `${hard.lossSum} vs ${expected}`);
  // Only the argmax matters: a teacher that is sure of the same classes gives the same bits.
  const sharper = teacher.map((v) => 10 * v + 3);
  const sharp = lossAndGrad(model, images, labels, n, distillationContext(n, { mode: 'hard', tau: 5, teacherLogits: sharper }));
  assert.equal(sharp.lossSum, hard.lossSum);
  assert.deepEqual(sharp.grad, hard.grad);
  // A teacher whose argmax is the label is what training without a teacher does.
  const agreeing = new Float32Array(n * K).map((_, i) => (i % K === labels[Math.floor(i / K)] ? 1 : 0));
  const withTeacher = lossAndGrad(model, images, labels, n, distillationContext(n, { mode: 'hard', tau: 1, teacherLogits: agreeing }));
  const withoutTeacher = lossAndGrad(model, images, labels, n, distillationContext(n, undefined));
  assert.equal(withTeacher.lossSum, withoutTeacher.lossSum);
  assert.deepEqual(withTeacher.grad, withoutTeacher.grad);
  model.disposeParams();
});

test('soft distillation is tau^2 KL(teacher || distillation head) at temperature tau', () => {
  const model = new VisionTransformer(TINY_DISTILLED);
  model.setParams(scrambledParams(model, 97));
  const n = 5;
  const K = TINY_DISTILLED.numClasses;
  const { images, labels } = randomBatch(TINY_DISTILLED, n, 98);
  const teacher = teacherLogits(n, K, 99);
  const { cls, dist } = headLogits(model, images, n);
  const soft = (tau: number, logits = teacher) =>
    lossAndGrad(model, images, labels, n, distillationContext(n, { mode: 'soft', tau, teacherLogits: logits }, 0.5));
  const losses = [1, 3].map((tau) => {
    const result = soft(tau);
    const expected = softDistillation(teacher, dist, n, K, tau);
    assert.ok(
      Math.abs(result.distillationLossSum! - expected) < 1e-4 * expected,
      `tau ${tau}: ${result.distillationLossSum} vs ${expected}`,
    );
    const total = 0.5 * crossEntropy(cls, labels, n, K) + 0.5 * expected;
    assert.ok(Math.abs(result.lossSum - total) < 1e-5 * total, `tau ${tau}: lossSum ${result.lossSum} vs ${total}`);
    return result.distillationLossSum!;
  });
  assert.ok(Math.abs(losses[0]! - losses[1]!) > 1e-3 * losses[0]!, 'the temperature changes the loss');
  // A teacher that says exactly what the distillation head says leaves that head nothing to learn.
  const echo = soft(2, dist);
  assert.ok(Math.abs(echo.distillationLossSum!) < 1e-5, `KL of a distribution with itself: ${echo.distillationLossSum}`);
  const headDist = model.params.filter((p) => p.name.startsWith('head_dist.'));
  for (const p of headDist)
    assert.ok(
      echo.grad.subarray(p.offset, p.offset + p.size).every((g) => Math.abs(g) < 1e-6),
      `${p.name} has no gradient`,
    );
  model.disposeParams();
});

test('distillation misuse fails loudly', () => {
  const model = new VisionTransformer(TINY_DISTILLED);
  model.setParams(model.initParams(0));
  const n = 2;
  const { images, labels } = randomBatch(TINY_DISTILLED, n, 100);
  const grad = new Float32Array(model.numParams);
  const short = new Float32Array(n * TINY_DISTILLED.numClasses - 1);
  assert.throws(
    () => model.lossAndGrad(images, labels, n, grad, distillationContext(n, { mode: 'hard', tau: 1, teacherLogits: short })),
    /teacherLogits holds 5 values, 2 images of 3 classes need 6/,
  );
  const teacher = teacherLogits(n, TINY_DISTILLED.numClasses, 101);
  assert.throws(
    () => model.lossAndGrad(images, labels, n, grad, distillationContext(n, { mode: 'soft', tau: 0, teacherLogits: teacher })),
    /tau must be positive, got 0/,
  );
  model.disposeParams();
});

// ---------------------------------------------------------------------------------------------
// Soft targets (Mixup/CutMix, label smoothing folded in by the caller) through the whole model.

/** n rows over k classes, each mixing two classes with a little of every class, summing to 1. */
function softTargets(labels: Int32Array, n: number, k: number): Float32Array {
  const t = new Float32Array(n * k).fill(0.1 / k);
  for (let i = 0; i < n; i++) {
    t[i * k + labels[i]!]! += 0.6;
    t[i * k + ((labels[i]! + 1) % k)]! += 0.3;
  }
  return t;
}

test('gradients with soft targets match finite differences, with and without a distillation token', () => {
  const { labels } = randomBatch(TINY, 3, 12); // checkGradients' batch (seed + 1)
  const ctx = (): TrainContext => ({
    step: 2,
    seed: 4,
    sampleIndices: Uint32Array.of(9, 8, 7),
    regularization: HEAVY,
    distillationAlpha: 0.3,
    softTargets: softTargets(labels, 3, TINY.numClasses),
  });
  checkGradients(TINY, 11, ctx());
  checkGradients(TINY_DISTILLED, 11, ctx());
});

test('one-hot soft targets train exactly as the integer labels; correct counts the integer labels', () => {
  for (const config of [TINY, TINY_DISTILLED]) {
    const model = new VisionTransformer(config);
    model.setParams(scrambledParams(model, 131));
    const n = 4;
    const { images, labels } = randomBatch(config, n, 132);
    const oneHot = new Float32Array(n * config.numClasses);
    labels.forEach((label, i) => {
      oneHot[i * config.numClasses + label] = 1;
    });
    const ctx: TrainContext = { step: 0, seed: 0, sampleIndices: Uint32Array.of(0, 1, 2, 3), regularization: HEAVY };
    // labelSmoothing 0.1 in HEAVY applies to the labels only: compare with it off.
    const unsmoothed = { ...ctx, regularization: { ...HEAVY, labelSmoothing: 0 } };
    const fromLabels = lossAndGrad(model, images, labels, n, unsmoothed);
    const fromSoft = lossAndGrad(model, images, labels, n, { ...ctx, softTargets: oneHot });
    assert.equal(fromSoft.lossSum, fromLabels.lossSum);
    assert.deepEqual(fromSoft.grad, fromLabels.grad);
    assert.equal(fromSoft.correct, fromLabels.correct);
    // Targets of other classes change the loss, not the count of hits on the labels.
    const shifted = lossAndGrad(model, images, labels, n, {
      ...ctx,
      softTargets: softTargets(
        labels.map((l) => (l + 1) % config.numClasses),
        n,
        config.numClasses,
      ),
    });
    assert.notEqual(shifted.lossSum, fromLabels.lossSum);
    assert.equal(shifted.correct, fromLabels.correct);
    model.disposeParams();
  }
});
