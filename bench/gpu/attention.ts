// Attention's speed at DeiT-B's shapes (64 images x 12 heads, 197 tokens, head dim 64) for
// bench/gpu-check.sh: the fused kernels (src/model/webgpu/attention.ts) beside the unfused path
// (head split, Q K^T, our softmax row kernel, P V, head merge; four products backward), each from
// the qkv Linear's output to the merged heads (forward) and on to d(qkv) (forward + backward),
// timed by benchAttention (src/model/webgpu/bench-kernels.ts).
//
//   node --import tsx bench/gpu/attention.ts [--tiny] [--allow-software] [--batch N]
//
// --tiny: 2 images x 2 heads, 17 tokens, head dim 20 (for llvmpipe); --batch: images instead of 64. Prints a table, then one JSON
// line (the last) for scripts.
import { parseArgs } from 'node:util';
import type { AttentionDims } from '../../src/model/webgpu/attention.ts';
import { benchAttention } from '../../src/model/webgpu/bench-kernels.ts';
import { activateWebGPU } from '../../src/model/webgpu/device.ts';

const DEIT_B_BATCH_64: AttentionDims = { batch: 64, tokens: 197, heads: 12, headDim: 64 };
const TINY: AttentionDims = { batch: 2, tokens: 17, heads: 2, headDim: 20 };

const { values } = parseArgs({
  options: { tiny: { type: 'boolean', default: false }, 'allow-software': { type: 'boolean', default: false }, batch: { type: 'string' } },
});
const batch = values.batch === undefined ? undefined : Number(values.batch);
if (batch !== undefined && !(Number.isInteger(batch) && batch > 0))
  throw new Error(`--batch must be a positive integer, got ${values.batch}`);
const dims = { ...(values.tiny ? TINY : DEIT_B_BATCH_64), ...(batch ? { batch } : {}) };
const iterations = values.tiny ? 2 : 10;

const { reason } = await activateWebGPU({ gpu: 0, allowSoftware: values['allow-software'] });
console.log(`attention at ${dims.batch} images x ${dims.heads} heads, ${dims.tokens} tokens, head dim ${dims.headDim} on ${reason}`);
console.log(
  `${'path'.padEnd(8)} ${'forward ms'.padStart(11)} ${'TFLOP/s'.padStart(8)} ${'fwd+bwd ms'.padStart(11)} ${'TFLOP/s'.padStart(8)}`,
);
const results: Record<string, Awaited<ReturnType<typeof benchAttention>>> = {};
for (const path of ['unfused', 'fused'] as const) {
  const r = await benchAttention(dims, path === 'fused', iterations);
  results[path] = r;
  console.log(
    `${path.padEnd(8)} ${r.forwardMs.toFixed(3).padStart(11)} ${r.forwardTflops.toPrecision(3).padStart(8)} ${r.forwardBackwardMs.toFixed(3).padStart(11)} ${r.forwardBackwardTflops.toPrecision(3).padStart(8)}`,
  );
}
const speedup = results.unfused!.forwardBackwardMs / results.fused!.forwardBackwardMs;
console.log(`fused / unfused forward+backward speed: ${speedup.toFixed(2)}x`);
console.log(JSON.stringify({ adapter: reason, dims, iterations, attention: results, speedup }));
