import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createModelConfig, listModels } from '../../src/model/registry.ts';
import { modelFlops, modelParamSpecs } from '../../src/model/model.ts';
import type { VitConfig } from '../../src/model/vit.ts';

test('standard variants have timm parameter counts (computed from the spec, nothing allocated)', () => {
  const counts = Object.fromEntries(listModels().map((m) => [m.name, m.numParams]));
  // timm: sum(p.numel() for p in create_model(name).parameters()), num_classes=1000.
  assert.equal(counts.vit_tiny_patch16_224, 5_717_416);
  assert.equal(counts.vit_small_patch16_224, 22_050_664);
  assert.equal(counts.vit_base_patch16_224, 86_567_656);
  assert.equal(counts.vit_large_patch16_224, 304_326_632);
  assert.equal(counts.vit_base_patch32_224, 88_224_232);
  assert.equal(counts.vit_base_patch16_384, 86_859_496);
  assert.equal(counts.vit_large_patch16_384, 304_715_752);
  assert.equal(counts.deit_base_patch16_224, 86_567_656);
  assert.equal(counts.deit_tiny_distilled_patch16_224, 5_910_800);
  assert.equal(counts.deit_small_distilled_patch16_224, 22_436_432);
  assert.equal(counts.deit_base_distilled_patch16_224, 87_338_192);
  assert.ok(counts.vit_fmnist_tiny! > 0);
});

test('distilled variants are their base model plus a distillation token, its position and a second head', () => {
  const models = Object.fromEntries(listModels().map((m) => [m.name, m]));
  const pairs = [
    ['deit_fmnist_tiny_distilled', 'vit_fmnist_tiny'],
    ['deit_tiny_distilled_patch16_224', 'deit_tiny_patch16_224'],
    ['deit_small_distilled_patch16_224', 'deit_small_patch16_224'],
    ['deit_base_distilled_patch16_224', 'deit_base_patch16_224'],
    ['deit_base_distilled_patch16_384', 'deit_base_patch16_384'],
  ];
  for (const [distilled, base] of pairs) {
    const d = models[distilled!]!;
    const b = models[base!]!;
    assert.deepEqual(d.config, { ...b.config, distilled: true }, distilled);
    const { embedDim: D, numClasses: K } = b.config as VitConfig;
    assert.equal(d.numParams - b.numParams, 2 * D + D * K + K, distilled);
  }
  for (const m of listModels()) assert.equal(m.config.distilled, m.name.includes('distilled'), m.name);
});

test('patch size and resolution variants change only the patch embedding and the token count', () => {
  const cfg = (name: string) => createModelConfig(name);
  assert.deepEqual(cfg('vit_small_patch8_224'), { ...cfg('vit_small_patch16_224'), patchSize: 8 });
  assert.deepEqual(cfg('vit_large_patch32_224'), { ...cfg('vit_large_patch16_224'), patchSize: 32 });
  assert.deepEqual(cfg('vit_base_patch32_384'), { ...cfg('vit_base_patch16_224'), patchSize: 32, imageSize: 384 });
  assert.deepEqual(cfg('deit_base_patch16_384'), cfg('vit_base_patch16_384'));
});

test('listModels reports config, params and FLOPs for every variant', () => {
  const models = listModels();
  const names = models.map((m) => m.name);
  assert.equal(new Set(names).size, names.length);
  for (const size of ['tiny', 'small', 'base', 'large']) assert.ok(names.includes(`vit_${size}_patch16_224`), size);
  for (const m of models) {
    assert.equal(m.flopsPerImage, modelFlops(m.config));
    assert.equal(
      m.numParams,
      modelParamSpecs(m.config).reduce((n, p) => n + p.size, 0),
    );
  }
  const base = models.find((m) => m.name === 'vit_base_patch16_224')!;
  // ViT-B/16 is commonly quoted at 17.6 GMACs per 224x224 image.
  assert.ok(Math.abs(base.flopsPerImage / 2 / 17.56e9 - 1) < 0.01, `${base.flopsPerImage}`);
  assert.deepEqual(base.config, {
    imageSize: 224,
    patchSize: 16,
    inChannels: 3,
    numClasses: 1000,
    embedDim: 768,
    depth: 12,
    numHeads: 12,
    mlpRatio: 4,
    distilled: false,
  });
});

test('createModelConfig applies overrides without touching the registry', () => {
  const cfg = createModelConfig('vit_small_patch16_224', { numClasses: 10 });
  assert.equal(cfg.numClasses, 10);
  assert.equal(cfg.embedDim, 384);
  assert.equal(createModelConfig('vit_small_patch16_224').numClasses, 1000);
  cfg.depth = 1;
  assert.equal(createModelConfig('vit_small_patch16_224').depth, 12);
});

test('unknown model names list the known ones', () => {
  assert.throws(
    () => createModelConfig('vit_huge_patch14_224'),
    (err: Error) => {
      assert.match(err.message, /unknown model 'vit_huge_patch14_224'/);
      for (const m of listModels()) assert.ok(err.message.includes(m.name), m.name);
      return true;
    },
  );
  assert.throws(() => createModelConfig('toString'), /unknown model/);
});

test('vit_cifar_tiny takes 32x32 RGB images in 64 patches of 4x4', () => {
  const cfg = createModelConfig('vit_cifar_tiny');
  assert.deepEqual([cfg.imageSize, cfg.patchSize, cfg.inChannels, cfg.numClasses], [32, 4, 3, 10]);
});

test('vit_fmnist_tiny fits Fashion-MNIST', () => {
  const cfg = createModelConfig('vit_fmnist_tiny');
  assert.equal(cfg.imageSize, 28);
  assert.equal(cfg.inChannels, 1);
  assert.equal(cfg.numClasses, 10);
  assert.equal(cfg.imageSize % cfg.patchSize, 0);
  assert.equal(cfg.embedDim % cfg.numHeads, 0);
});

test('convnet_fmnist_small: a convnet for Fashion-MNIST, listed with its parameters and FLOPs', () => {
  const cfg = createModelConfig('convnet_fmnist_small');
  assert.deepEqual(cfg, {
    family: 'convnet',
    imageSize: 28,
    inChannels: 1,
    numClasses: 10,
    widths: [32, 64],
    depths: [1, 2],
    distilled: false,
  });
  const info = listModels().find((m) => m.name === 'convnet_fmnist_small')!;
  // Convolutions (weight, bias, norm weight and bias): stem 2x2 1->32, 3x3 32->32, 2x2 32->64, two 3x3 64->64; head 7x7x64->10.
  const conv = (k: number, i: number, o: number) => k * k * i * o + 3 * o;
  assert.equal(info.numParams, conv(2, 1, 32) + conv(3, 32, 32) + conv(2, 32, 64) + 2 * conv(3, 64, 64) + 7 * 7 * 64 * 10 + 10);
  assert.equal(info.flopsPerImage, 2 * (14 * 14 * (4 * 32 + 9 * 32 * 32) + 7 * 7 * (4 * 32 * 64 + 2 * 9 * 64 * 64) + 7 * 7 * 64 * 10));
});

test('overrides must be arguments of the named model', () => {
  assert.equal(createModelConfig('convnet_fmnist_small', { numClasses: 100 }).numClasses, 100);
  assert.throws(
    () => createModelConfig('convnet_fmnist_small', { patchSize: 4 } as never),
    /model 'convnet_fmnist_small' has no argument patchSize \(its arguments: imageSize, inChannels, numClasses, widths, depths, distilled\)/,
  );
  assert.throws(() => createModelConfig('convnet_fmnist_small', { family: 'vit' } as never), /has no argument family/);
  assert.throws(() => createModelConfig('vit_fmnist_tiny' as string, { widths: [8] }), /model 'vit_fmnist_tiny' has no argument widths/);
});
