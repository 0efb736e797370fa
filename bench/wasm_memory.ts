// Peak wasm heap of one training pass (lossAndGrad) of a model on a micro-batch, as a worker on
// the wasm backend runs it: the high-water mark of the heap's allocations, in bytes. The heap of
// a wasm32 module cannot pass 4 GiB, so this is what decides the largest micro-batch on wasm;
// src/model/memory.ts's model of it was fitted to this script's figures.
//
//   node --import tsx bench/wasm_memory.ts --model vit_tiny_patch16_224 --batch 4 [--args '{"depth":2}']
//
// Run one measurement per process: the high-water mark covers the process's whole life. Prints one
// JSON line.
import { parseArgs } from 'node:util';
import { selectBackend } from '../src/model/backend.ts';
import { createModelConfig } from '../src/model/registry.ts';
import { createModel, type ModelArgs } from '../src/model/model.ts';
import { watchWasmHeap } from '../src/model/memory.ts';
import { syntheticBatch } from './synthetic-batch.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'vit_tiny_patch16_224' },
    batch: { type: 'string', default: '4' },
    args: { type: 'string', default: '{}' },
  },
});
const batch = Number(values.batch);
if (!Number.isInteger(batch) || batch <= 0) throw new Error(`--batch must be a positive integer, got ${values.batch}`);

await selectBackend({ requested: 'wasm' });
const highWater = watchWasmHeap();

const modelArgs = JSON.parse(values.args!) as ModelArgs;
const config = createModelConfig(values.model!, modelArgs);
const model = createModel(config);
model.setParams(model.initParams(0));
const { images, labels } = syntheticBatch(config, batch);
const start = performance.now();
model.lossAndGrad(images, labels, batch, new Float32Array(model.numParams));
const seconds = (performance.now() - start) / 1000;
console.log(JSON.stringify({ model: values.model, modelArgs, batch, numParams: model.numParams, peakHeapBytes: highWater(), seconds }));
