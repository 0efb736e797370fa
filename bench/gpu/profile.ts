// Per-kernel GPU times of one forward+backward pass (a worker's accumulateGradient) for
// bench/gpu-check.sh, from timestamp queries (src/model/webgpu/profile.ts). Where the adapter does
// not offer `timestamp-query` (llvmpipe), it says so and exits 0: the check goes on without.
//
//   node --import tsx bench/gpu/profile.ts [--model deit_base_patch16_224] [--batch 64] [--top 25] [--allow-software]
//
// Prints the kernels by total time, then one JSON line (the last) for scripts.
import { parseArgs } from 'node:util';
import { DeviceGradientSum } from '../../src/model/gradient-sum.ts';
import { createModel } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { activateWebGPU } from '../../src/model/webgpu/device.ts';
import { profileKernels, summarizeKernelTimes, timestampQueryAvailable } from '../../src/model/webgpu/profile.ts';
import { syntheticBatch } from '../synthetic-batch.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'deit_base_patch16_224' },
    batch: { type: 'string', default: '64' },
    top: { type: 'string', default: '25' },
    'allow-software': { type: 'boolean', default: false },
  },
});
const batch = Number(values.batch);
const top = Number(values.top);
if (!(Number.isInteger(batch) && batch > 0)) throw new Error(`--batch must be a positive integer, got ${values.batch}`);
if (!(Number.isInteger(top) && top > 0)) throw new Error(`--top must be a positive integer, got ${values.top}`);

const { reason } = await activateWebGPU({ gpu: 0, allowSoftware: values['allow-software'] });
if (!timestampQueryAvailable()) {
  const message = `no per-kernel GPU times: the device on ${reason} does not offer the timestamp-query feature`;
  console.log(message);
  console.log(JSON.stringify({ adapter: reason, timestampQuery: false, message }));
  process.exit(0);
}
const config = createModelConfig(values.model!);
const model = createModel(config);
model.setParams(model.initParams(0));
const { images, labels } = syntheticBatch(config, batch);
const sum = new DeviceGradientSum(model.numParams);
await model.accumulateGradient(images, labels, batch, sum); // compiles every pipeline first

let pass: Promise<unknown> | undefined;
const times = await profileKernels(() => {
  pass = model.accumulateGradient(images, labels, batch, sum);
});
await pass;
const kernels = summarizeKernelTimes(times!);
const totalMs = kernels.reduce((acc, k) => acc + k.ms, 0);
console.log(
  `${values.model} forward+backward at batch ${batch} on ${reason}: ${times!.length} kernels, ${totalMs.toFixed(2)} ms of GPU time`,
);
console.log(`${'kernel'.padEnd(48)} ${'calls'.padStart(6)} ${'ms'.padStart(9)} ${'share'.padStart(6)}`);
for (const k of kernels.slice(0, top)) {
  console.log(
    `${k.name.slice(0, 48).padEnd(48)} ${String(k.calls).padStart(6)} ${k.ms.toFixed(3).padStart(9)} ${`${(100 * k.share).toFixed(1)}%`.padStart(6)}`,
  );
}
console.log(JSON.stringify({ adapter: reason, timestampQuery: true, model: values.model, batch, totalMs, kernels: kernels.slice(0, top) }));
model.disposeParams();
