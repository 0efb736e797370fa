import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createModelConfig, listModels } from '../../src/model/registry.ts';
import { countFlops, paramSpecs } from '../../src/model/vit.ts';

test('standard variants have timm parameter counts (computed from the spec, nothing allocated)', () => {
  const counts = Object.fromEntries(listModels().map((m) => [m.name, m.numParams]));
  // timm: sum(p.numel() for p in create_model(name).parameters()), num_classes=1000.
  assert.equal(counts['vit_tiny_patch16_224'], 5_717_416);
  assert.equal(counts['vit_small_patch16_224'], 22_050_664);
  assert.equal(counts['vit_base_patch16_224'], 86_567_656);
  assert.equal(counts['vit_large_patch16_224'], 304_326_632);
  assert.ok(counts['vit_fmnist_tiny']! > 0);
});

test('listModels reports config, params and FLOPs for every variant', () => {
  const models = listModels();
  assert.deepEqual(
    models.map((m) => m.name),
    ['vit_fmnist_tiny', 'vit_tiny_patch16_224', 'vit_small_patch16_224', 'vit_base_patch16_224', 'vit_large_patch16_224'],
  );
  for (const m of models) {
    assert.equal(m.flopsPerImage, countFlops(m.config));
    assert.equal(m.numParams, paramSpecs(m.config).reduce((n, p) => n + p.size, 0));
  }
  const base = models.find((m) => m.name === 'vit_base_patch16_224')!;
  // ViT-B/16 is commonly quoted at 17.6 GMACs per 224x224 image.
  assert.ok(Math.abs(base.flopsPerImage / 2 / 17.56e9 - 1) < 0.01, `${base.flopsPerImage}`);
  assert.deepEqual(base.config, {
    imageSize: 224, patchSize: 16, inChannels: 3, numClasses: 1000, embedDim: 768, depth: 12, numHeads: 12, mlpRatio: 4,
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
  assert.throws(() => createModelConfig('vit_huge_patch14_224'), (err: Error) => {
    assert.match(err.message, /unknown model 'vit_huge_patch14_224'/);
    for (const m of listModels()) assert.ok(err.message.includes(m.name), m.name);
    return true;
  });
  assert.throws(() => createModelConfig('toString'), /unknown model/);
});

test('vit_fmnist_tiny fits Fashion-MNIST', () => {
  const cfg = createModelConfig('vit_fmnist_tiny');
  assert.equal(cfg.imageSize, 28);
  assert.equal(cfg.inChannels, 1);
  assert.equal(cfg.numClasses, 10);
  assert.equal(cfg.imageSize % cfg.patchSize, 0);
  assert.equal(cfg.embedDim % cfg.numHeads, 0);
});
