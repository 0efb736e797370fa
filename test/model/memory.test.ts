import assert from 'node:assert/strict';
import { test } from 'node:test';
import { selectBackend } from '../../src/model/backend.ts';
import { checkMicroBatchFits, largestWasmMicroBatch, WASM_HEAP_MAX_BYTES, wasmPassBytes, watchWasmHeap } from '../../src/model/memory.ts';
import { createModel } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { randomBatch } from './helpers.ts';

test("the memory model bounds a ViT pass's measured wasm heap, without overstating it by more than its margin and 25%", async () => {
  // Run first in this process, so the high-water mark is this pass's. Two blocks keep it short.
  await selectBackend({ requested: 'wasm' });
  const highWater = watchWasmHeap();
  const config = createModelConfig('vit_tiny_patch16_224', { depth: 2 });
  const n = 8;
  const model = createModel(config);
  model.setParams(model.initParams(0));
  const { images, labels } = randomBatch(config, n, 1);
  model.lossAndGrad(images, labels, n, new Float32Array(model.numParams));
  model.disposeParams();
  const modelled = wasmPassBytes(config, n);
  assert.ok(highWater() <= modelled, `measured ${highWater()} bytes, modelled ${modelled}`);
  assert.ok(highWater() >= modelled / 1.1 / 1.25, `measured ${highWater()} bytes, modelled ${modelled}: the model is too pessimistic`);
});

test('the largest micro-batch is the last one whose pass fits the wasm heap', () => {
  for (const name of ['deit_tiny_patch16_224', 'deit_base_patch16_224', 'deit_base_patch16_384', 'convnet_fmnist_small']) {
    const config = createModelConfig(name);
    const largest = largestWasmMicroBatch(config);
    assert.ok(largest >= 1, name);
    assert.ok(wasmPassBytes(config, largest) <= WASM_HEAP_MAX_BYTES, name);
    assert.ok(wasmPassBytes(config, largest + 1) > WASM_HEAP_MAX_BYTES, name);
  }
});

test('regularization masks add to the kept activations', () => {
  const config = createModelConfig('deit_tiny_patch16_224');
  const none = { dropout: 0, attnDropout: 0, dropPath: 0, labelSmoothing: 0 };
  assert.ok(wasmPassBytes(config, 8, { ...none, dropPath: 0.1 }) > wasmPassBytes(config, 8, none));
  assert.ok(wasmPassBytes(config, 8, { ...none, attnDropout: 0.1 }) > wasmPassBytes(config, 8, { ...none, dropPath: 0.1 }));
});

test('a micro-batch that cannot fit the wasm heap is refused, naming the model, the micro-batch and the largest that fits', () => {
  const config = createModelConfig('deit_base_patch16_224');
  const largest = largestWasmMicroBatch(config);
  const plan = { model: 'deit_base_patch16_224', config, microBatch: largest + 1, backend: 'wasm' };
  assert.throws(() => checkMicroBatchFits(plan), {
    message: new RegExp(
      `^model deit_base_patch16_224 at micro-batch ${largest + 1} needs about [\\d.]+ GiB of wasm heap per training pass, more than the 4\\.0 GiB a wasm32 module can address: use micro-batch ${largest} or less \\(the recipe's microBatch, or --micro-batch of run, launch and sweep`,
    ),
  });
  checkMicroBatchFits({ ...plan, microBatch: largest });
  // Native TensorFlow and the plain-JS backend have no such ceiling.
  checkMicroBatchFits({ ...plan, backend: 'tensorflow' });
  checkMicroBatchFits({ ...plan, backend: 'cpu' });
});
