// The adapter the 'webgpu' engine binds, as bench/gpu-check.sh reports it: Dawn's listing of GPU
// adapters, the one chosen, its features and the limits that bound our kernels.
//
//   node --import tsx bench/gpu/adapter.ts [--allow-software]
//
// Without --allow-software only a real GPU counts (as `worker --backend auto --gpu 0` decides);
// with it, llvmpipe serves on CPU machines (as `--backend webgpu` does). Prints readable lines,
// then one JSON line (the last) for scripts.
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { activateWebGPU, listGpuAdapters } from '../../src/model/webgpu/device.ts';

const LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupsPerDimension',
] as const;

const { values } = parseArgs({ options: { 'allow-software': { type: 'boolean', default: false } } });

const listed = await listGpuAdapters();
console.log(`Dawn's GPU adapters: ${listed.length === 0 ? 'none' : listed.map((a) => `${a.name} (${a.backend})`).join(', ')}`);
const activation = await activateWebGPU({ gpu: 0, allowSoftware: values['allow-software'] });
const { device } = tf.backend() as unknown as { device: GPUDevice };
const features = [...device.features].sort();
const limits = Object.fromEntries(LIMITS.map((name) => [name, device.limits[name]]));
console.log(`bound: ${activation.reason}${activation.software ? ' [software]' : ''}`);
console.log(`device features: ${features.join(', ') || 'none'}`);
console.log(`device limits: ${LIMITS.map((name) => `${name} ${limits[name]}`).join(', ')}`);
console.log(`row kernels (LayerNorm, softmax, loss) reduce in ${activation.rowReduction}`);
console.log(
  JSON.stringify({
    listed,
    adapter: activation.adapterName,
    software: activation.software,
    features,
    limits,
    rowReduction: activation.rowReduction,
  }),
);
