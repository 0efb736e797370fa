// How many TensorFlow ops one forward+backward pass runs on the TensorFlow engine, by op name, and
// how many tensors it uploads: the figure that decides a small model's speed there (every op costs
// TensorFlow's eager dispatch, and most are memory-bound passes), and one that does not depend on
// the machine's load, unlike a timing. Counts every op that reaches tfjs-node's binding, whether
// through tfjs's kernels or src/model/tensorflow-ops.ts.
//
//   node --import tsx bench/model_ops.ts --model vit_fmnist_tiny --batch 128
//
// Prints one line per op name (most frequent first), then a JSON line for scripts.
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { DeviceGradientSum } from '../src/model/gradient-sum.ts';
import { selectBackend } from '../src/model/backend.ts';
import { createModel } from '../src/model/model.ts';
import { createModelConfig } from '../src/model/registry.ts';
import { syntheticBatch } from './synthetic-batch.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'vit_fmnist_tiny' },
    batch: { type: 'string', default: '128' },
  },
});
const batch = Number(values.batch);
if (!Number.isInteger(batch) || batch <= 0) throw new Error(`--batch must be a positive integer, got ${values.batch}`);

await selectBackend({ requested: 'tensorflow' });

/** The binding's two calls that this count watches (tfjs-node's dist/tfjs_binding.d.ts). */
interface Binding {
  executeOp(name: string, ...rest: unknown[]): unknown;
  createTensor(...args: unknown[]): unknown;
}
// The binding's functions are read-only properties: a derived object shadows them, and the backend
// holds that object from here on (tensorflow-ops.ts reads backend.binding when it first runs).
const backend = tf.backend() as unknown as { binding: Binding };
const binding = backend.binding;
const opCounts = new Map<string, number>();
let uploads = 0;
const counting = Object.create(binding) as Binding;
Object.defineProperty(counting, 'executeOp', {
  value: (name: string, ...rest: unknown[]) => {
    opCounts.set(name, (opCounts.get(name) ?? 0) + 1);
    return binding.executeOp(name, ...rest);
  },
});
Object.defineProperty(counting, 'createTensor', {
  value: (...args: unknown[]) => {
    uploads++;
    return binding.createTensor(...args);
  },
});
backend.binding = counting;

const config = createModelConfig(values.model!);
const model = createModel(config);
model.setParams(model.initParams(0));
const { images, labels } = syntheticBatch(config, batch);
const gradientSum = new DeviceGradientSum(model.numParams);
// The first pass uploads the constants that later passes reuse: count the second.
await model.accumulateGradient(images, labels, batch, gradientSum);
opCounts.clear();
uploads = 0;
await model.accumulateGradient(images, labels, batch, gradientSum);
gradientSum.dispose();

const byCount = [...opCounts].sort((a, b) => b[1] - a[1]);
const ops = byCount.reduce((sum, [, n]) => sum + n, 0);
console.log(`${values.model} batch ${batch}: ${ops} TensorFlow ops and ${uploads} tensor uploads per pass`);
for (const [name, n] of byCount) console.log(`${name.padEnd(24)} ${String(n).padStart(5)}`);
console.log(JSON.stringify({ model: values.model, batch, ops, uploads, byOp: Object.fromEntries(byCount) }));
