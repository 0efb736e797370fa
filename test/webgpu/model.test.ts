// The webgpu engine computes what the wasm engine computes: logits and gradients of
// vit_fmnist_tiny and of a 2-block DeiT within 1e-4 relative, through the trainer's
// device-side gradient sum (accumulateGradient over two micro-batches into a DeviceGradientSum).
// On webgpu these run the fused attention and loss kernels; with attention dropout, the unfused
// attention (the fused kernels keep no probabilities to mask), with label smoothing in the fused loss.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { selectBackend } from '../../src/model/backend.ts';
import { DeviceGradientSum } from '../../src/model/gradient-sum.ts';
import { createModel } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import type { ModelConfig, Regularization } from '../../src/model/model.ts';
import { randomBatch, scrambledParams } from '../model/helpers.ts';
import { openWebGPU, skipWithoutWebGPU } from './helpers.ts';

const skip = await skipWithoutWebGPU();

interface Outputs {
  logits: Float32Array;
  grad: Float32Array;
  lossSum: number;
  correct: number;
}

async function outputs(config: ModelConfig, backend: 'wasm' | 'webgpu', n: number, regularization?: Regularization): Promise<Outputs> {
  if (backend === 'webgpu') await openWebGPU();
  await selectBackend({ requested: backend });
  const model = createModel(config);
  model.setParams(scrambledParams(model, 5));
  const { images, labels } = randomBatch(config, n, 11);
  const size = config.imageSize ** 2 * config.inChannels;
  const split = Math.ceil(n / 2);
  const sum = new DeviceGradientSum(model.numParams);
  // Each image's masks depend on its index alone, so both engines draw the same.
  const ctx = (start: number, count: number) =>
    regularization && { step: 3, seed: 7, regularization, sampleIndices: Uint32Array.from({ length: count }, (_, i) => start + i) };
  const first = await model.accumulateGradient(images.subarray(0, split * size), labels.subarray(0, split), split, sum, ctx(0, split));
  const second = await model.accumulateGradient(
    images.subarray(split * size),
    labels.subarray(split),
    n - split,
    sum,
    ctx(split, n - split),
  );
  const grad = new Float32Array(model.numParams);
  await sum.take(grad);
  const logits = await model.logitsAsync(images, n);
  model.disposeParams();
  return { logits, grad, lossSum: first.lossSum + second.lossSum, correct: first.correct + second.correct };
}

/** Elementwise within `rel` of the larger magnitude of the reference (float32 sums in a different order). */
function assertRelClose(got: Float32Array, want: Float32Array, rel: number, what: string): void {
  assert.equal(got.length, want.length);
  const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / scale);
  assert.ok(worst <= rel, `${what}: max |webgpu - wasm| / max |wasm| = ${worst.toExponential(2)} > ${rel}`);
}

const DROPOUT_AND_SMOOTHING: Regularization = { dropout: 0.1, attnDropout: 0.1, dropPath: 0, labelSmoothing: 0.1 };

for (const [name, config, n, regularization] of [
  ['vit_fmnist_tiny', createModelConfig('vit_fmnist_tiny'), 4, undefined],
  ['a 2-block distilled DeiT-Ti (224 px)', createModelConfig('deit_tiny_distilled_patch16_224', { depth: 2 }), 2, undefined],
  ['vit_fmnist_tiny with attention dropout and label smoothing', createModelConfig('vit_fmnist_tiny'), 4, DROPOUT_AND_SMOOTHING],
] as const) {
  test(`${name}: webgpu logits and gradients equal wasm's within 1e-4 relative`, { skip }, async () => {
    const wasm = await outputs(config, 'wasm', n, regularization);
    const webgpu = await outputs(config, 'webgpu', n, regularization);
    assertRelClose(webgpu.logits, wasm.logits, 1e-4, 'logits');
    assertRelClose(webgpu.grad, wasm.grad, 1e-4, 'gradient');
    assert.ok(Math.abs(webgpu.lossSum - wasm.lossSum) <= 1e-4 * Math.abs(wasm.lossSum), `loss ${webgpu.lossSum} vs ${wasm.lossSum}`);
    assert.equal(webgpu.correct, wasm.correct);
  });
}
