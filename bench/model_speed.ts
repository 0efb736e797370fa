// Forward-plus-backward speed of one model replica, as a worker runs it: the model's accumulateGradient
// on a micro-batch, on the backend asked for (TensorFlow's threads: TF_NUM_INTRAOP_THREADS; wasm runs
// one; --backend webgpu), the gradient summed where the backend keeps tensors; its download
// (DeviceGradientSum.take, once per step in a worker) is timed apart as copyMs.
// bench/model-vs-torch.sh runs it beside bench/torch_model_speed.py, which times PyTorch on the same
// shapes with the same rule (bench/gpu-check.sh beside timm on a GPU).
//
//   node --import tsx bench/model_speed.ts --model vit_fmnist_tiny --batch 128 [--seconds 25] [--backend wasm]
//
// Prints a human-readable line, then one JSON line (the last) for scripts, with the process's peak
// resident memory.
import { parseArgs } from 'node:util';
import { selectBackend, type BackendChoice } from '../src/model/backend.ts';
import { checkMicroBatchFits } from '../src/model/memory.ts';
import { createModelConfig } from '../src/model/registry.ts';
import { createModel } from '../src/model/model.ts';
import { DeviceGradientSum } from '../src/model/gradient-sum.ts';
import { syntheticBatch } from './synthetic-batch.ts';

/** Untimed passes first: the first calls compile kernels and grow the wasm heap. */
const WARMUP_ITERATIONS = 2;
/** The median needs a few samples even when one pass takes longer than the time budget. */
const MIN_TIMED_ITERATIONS = 3;
const SEED = 0;

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'vit_fmnist_tiny' },
    batch: { type: 'string', default: '128' },
    seconds: { type: 'string', default: '25' },
    backend: { type: 'string', default: 'wasm' },
  },
});
const batch = Number(values.batch);
const seconds = Number(values.seconds);
if (!Number.isInteger(batch) || batch <= 0) throw new Error(`--batch must be a positive integer, got ${values.batch}`);
if (!(seconds > 0)) throw new Error(`--seconds must be positive, got ${values.seconds}`);

const { name: backend, reason } = await selectBackend({ requested: values.backend as BackendChoice });
const config = createModelConfig(values.model!);
try {
  checkMicroBatchFits({ model: values.model!, config, microBatch: batch, backend });
} catch (err) {
  // A plain message: a throw here would print through the wasm module's exception handler, which
  // quotes its whole minified source line.
  console.error(`model_speed: ${(err as Error).message}`);
  process.exit(1);
}
const model = createModel(config);
model.setParams(model.initParams(SEED));

const { images, labels } = syntheticBatch(config, batch);
const grad = new Float32Array(model.numParams);

// The pass ends when its loss has been read, which waits for the backward pass recorded before it.
const gradientSum = new DeviceGradientSum(model.numParams);
const step = async (): Promise<void> => {
  await model.accumulateGradient(images, labels, batch, gradientSum);
};
for (let i = 0; i < WARMUP_ITERATIONS; i++) await step();
const times: number[] = [];
const start = performance.now();
while (times.length < MIN_TIMED_ITERATIONS || performance.now() - start < seconds * 1000) {
  const t0 = performance.now();
  await step();
  times.push(performance.now() - t0);
}
const copyStart = performance.now();
await gradientSum.take(grad);
const copyMs = performance.now() - copyStart;
times.sort((a, b) => a - b);
const msPerStep = times[Math.floor(times.length / 2)]!;
const imagesPerSec = (batch * 1000) / msPerStep;
const peakRssMB = process.resourceUsage().maxRSS / 1024; // maxRSS is in KiB
console.log(
  `vit-dist ${values.model} batch ${batch}: ${imagesPerSec.toFixed(1)} images/s (median of ${times.length} passes, ${msPerStep.toFixed(1)} ms each; gradient download ${copyMs.toFixed(1)} ms; peak RSS ${peakRssMB.toFixed(0)} MiB; ${reason})`,
);
console.log(
  JSON.stringify({
    model: values.model,
    batch,
    iterations: times.length,
    msPerStep,
    imagesPerSec,
    copyMs,
    peakRssMB,
    backend: reason,
    config,
  }),
);
