// One training pass (forward and backward) of a model at a micro-batch on an engine, as
// recipe-models.test.ts checks it: in the test's own process, or run as a script in a child process
// of its own (`node --import tsx test/model/one-pass.ts '<json Pass>'`, printing the PassResult as
// JSON), so that a native engine's memory, which TensorFlow keeps once allocated, is given back
// between passes.
import { selectBackend } from '../../src/model/backend.ts';
import { createModel, type Regularization } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { randomBatch } from './helpers.ts';

export interface Pass {
  engine: 'wasm' | 'tensorflow';
  model: string;
  modelArgs?: Record<string, unknown> | undefined;
  microBatch: number;
  regularization?: Regularization | undefined;
}

export interface PassResult {
  lossSum: number;
  allFinite: boolean;
  anyNonZero: boolean;
}

export async function onePass({ engine, model: name, modelArgs, microBatch: n, regularization }: Pass): Promise<PassResult> {
  await selectBackend({ requested: engine });
  const config = createModelConfig(name, modelArgs);
  const model = createModel(config);
  model.setParams(model.initParams(0));
  const { images, labels } = randomBatch(config, n, 1);
  const ctx = { step: 0, seed: 0, sampleIndices: Uint32Array.from({ length: n }, (_, i) => i), regularization };
  const grad = new Float32Array(model.numParams);
  const { lossSum } = model.lossAndGrad(images, labels, n, grad, ctx);
  model.disposeParams();
  return { lossSum, allFinite: grad.every(Number.isFinite), anyNonZero: grad.some((g) => g !== 0) };
}

if (process.argv[1] === import.meta.filename) {
  console.log(JSON.stringify(await onePass(JSON.parse(process.argv[2]!) as Pass)));
}
