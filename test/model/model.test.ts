// One interface over the model families: createModel picks the family from the config, and the
// parameter table and FLOP count dispatch the same way.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { selectBackend } from '../../src/model/backend.ts';
import { ConvNet, convNetParamSpecs, countConvNetFlops } from '../../src/model/convnet.ts';
import { initialParams } from '../../src/model/init.ts';
import { createModel, modelFlops, modelParamSpecs, type ImageClassifier, type ModelConfig } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { VisionTransformer, countFlops, paramSpecs } from '../../src/model/vit.ts';

await selectBackend({ requested: 'cpu' });

const VIT = createModelConfig('deit_fmnist_tiny_distilled', { embedDim: 16, depth: 1, numHeads: 2 });
const CONVNET = createModelConfig('convnet_fmnist_small', { widths: [8, 16], depths: [1, 1] });

test('createModel builds the family the config names; a ViT config without a family is a ViT', () => {
  assert.equal(VIT.family, undefined);
  assert.ok(createModel(VIT) instanceof VisionTransformer);
  assert.ok(createModel({ ...VIT, family: 'vit' }) instanceof VisionTransformer);
  assert.ok(createModel(CONVNET) instanceof ConvNet);
});

test('modelParamSpecs and modelFlops are the family functions', () => {
  assert.deepEqual(modelParamSpecs(VIT), paramSpecs(VIT));
  assert.deepEqual(modelParamSpecs(CONVNET), convNetParamSpecs(CONVNET));
  assert.equal(modelFlops(VIT), countFlops(VIT));
  assert.equal(modelFlops(CONVNET), countConvNetFlops(CONVNET));
});

test('both families train, evaluate and predict through ImageClassifier', () => {
  for (const config of [VIT, CONVNET] as ModelConfig[]) {
    const model: ImageClassifier = createModel(config);
    assert.equal(
      model.numParams,
      modelParamSpecs(config).reduce((n, p) => n + p.size, 0),
    );
    assert.deepEqual(model.config, config);
    model.setParams(model.initParams(0));
    const n = 3;
    const images = Float32Array.from({ length: n * 28 * 28 }, (_, i) => Math.sin(i * 0.1));
    const labels = Int32Array.of(1, 7, 3);
    const grad = new Float32Array(model.numParams);
    const trained = model.lossAndGrad(images, labels, n, grad);
    assert.ok(trained.lossSum > 0 && grad.some((g) => g !== 0));
    const evaluated = model.evaluate(images, labels, n);
    // At the init every class is about equally likely: the loss is near log K per image.
    assert.ok(Math.abs(evaluated.lossSum / n - Math.log(10)) < 0.25, `${evaluated.lossSum / n}`);
    assert.equal(evaluated.correctDistHead !== undefined, config.distilled);
    assert.equal(model.logits(images, n).length, n * 10);
    model.disposeParams();
  }
});

test("initialParams: the seeded init, with every classifier head's bias at initHeadBias when the recipe sets one", () => {
  for (const config of [VIT, CONVNET]) {
    const model = createModel(config);
    const plain = model.initParams(3);
    assert.deepEqual(initialParams(model, { seed: 3 }), plain);
    const biased = initialParams(model, { seed: 3, initHeadBias: -6.9 });
    const heads = model.params.filter((p) => biased.subarray(p.offset, p.offset + p.size).some((v, i) => v !== plain[p.offset + i]));
    assert.deepEqual(
      heads.map((p) => p.name),
      config === VIT ? ['head.bias', 'head_dist.bias'] : ['head.fc.bias'],
    );
    for (const p of heads)
      assert.ok(
        biased.subarray(p.offset, p.offset + p.size).every((v) => v === Math.fround(-6.9)),
        p.name,
      );
  }
});
