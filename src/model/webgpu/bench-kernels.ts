// Times our kernels on the active 'webgpu' backend, for bench/gpu-check.sh (the GPU harness).
//
// API (stable for the harness):
//   await activateWebGPU({ gpu: 0, allowSoftware: false })            // from ./device.ts, once
//   const r = await benchMatMul(m, n, k, transposeA, transposeB, { batch: 1, iterations: 20, layout: 'strided' })
//   r = { ms, tflops, maxRelError, tile, layout, splitK }
// layout: 'strided' (the default, engines.md's measured design) or 'vec4' (sgemm.ts); time both on a GPU:
// the model uses 'strided' unless VIT_DIST_SGEMM_LAYOUT=vec4 is set (device.ts).
// `ms` is the mean wall time of one product over `iterations` runs after two warm-up runs, measured
// from the first submit to the queue's completion (GPU work, no host copies); tflops counts
// 2*batch*m*n*k flops. maxRelError compares 64 sampled outputs with a float64 product on the host,
// relative to the largest |output| sampled, so a wrong kernel shows up in the figures.

import * as tf from '@tensorflow/tfjs-core';
import { chooseSplitK, sgemmWithTile } from './kernels.ts';
import { choosePerThread, GPU_MIN_WORKGROUPS, type SgemmLayout } from './sgemm.ts';

export interface MatMulBench {
  ms: number;
  tflops: number;
  maxRelError: number;
  /** The output tile the kernel chooses for this shape on a GPU (128, 64, 32 or 16). */
  tile: number;
  layout: SgemmLayout;
  /** K cut into this many chunks summed after (kernels.ts's chooseSplitK: x^T dy with few output tiles); 1 when not split. */
  splitK: number;
}

/** The part of tfjs's WebGPUBackend that flushes its recorded commands. */
interface QueueBackend {
  endComputePassEncoder(): void;
  submitQueue(): void;
  commandEncoder: GPUCommandEncoder | null;
  device: GPUDevice;
}

/** Submits what tfjs has recorded and waits until the GPU has run it. */
export async function gpuIdle(): Promise<void> {
  const backend = tf.backend() as unknown as QueueBackend;
  backend.endComputePassEncoder();
  if (backend.commandEncoder) backend.submitQueue();
  await backend.device.queue.onSubmittedWorkDone();
}

export async function benchMatMul(
  m: number,
  n: number,
  k: number,
  transposeA: boolean,
  transposeB: boolean,
  opts: { batch?: number; iterations?: number; layout?: SgemmLayout } = {},
): Promise<MatMulBench> {
  if (tf.getBackend() !== 'webgpu')
    throw new Error(`benchMatMul needs the 'webgpu' backend active (activateWebGPU), not '${tf.getBackend()}'`);
  const batch = opts.batch ?? 1;
  const iterations = opts.iterations ?? 20;
  const layout = opts.layout ?? 'strided';
  const splitK = chooseSplitK({ batch, batchA: batch, batchB: batch, m, n, k, transposeA, transposeB }, GPU_MIN_WORKGROUPS);
  const perThread = splitK > 1 ? 8 : choosePerThread({ batch, m, n }, GPU_MIN_WORKGROUPS);
  const a = tf.randomUniform(transposeA ? [batch, k, m] : [batch, m, k], -1, 1, 'float32', 1) as tf.Tensor3D;
  const b = tf.randomUniform(transposeB ? [batch, n, k] : [batch, k, n], -1, 1, 'float32', 2) as tf.Tensor3D;
  const product = () => sgemmWithTile(a, b, { transposeA, transposeB, perThread, layout, splitK });
  try {
    for (let i = 0; i < 2; i++) product().dispose();
    await gpuIdle();
    const start = performance.now();
    for (let i = 0; i < iterations; i++) product().dispose();
    await gpuIdle();
    const ms = (performance.now() - start) / iterations;
    const c = product();
    const maxRelError = sampledError(await a.data(), await b.data(), await c.data(), { batch, m, n, k, transposeA, transposeB });
    c.dispose();
    return { ms, tflops: (2 * batch * m * n * k) / (ms * 1e9), maxRelError, tile: 16 * perThread, layout, splitK };
  } finally {
    a.dispose();
    b.dispose();
  }
}

function sampledError(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  c: ArrayLike<number>,
  s: { batch: number; m: number; n: number; k: number; transposeA: boolean; transposeB: boolean },
): number {
  const { batch, m, n, k } = s;
  let seed = 12345;
  const next = (limit: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % limit;
  };
  let maxAbs = 0;
  let maxErr = 0;
  for (let sample = 0; sample < 64; sample++) {
    const [p, i, j] = [next(batch), next(m), next(n)];
    let sum = 0;
    for (let q = 0; q < k; q++) {
      const av = a[p * m * k + (s.transposeA ? q * m + i : i * k + q)]!;
      const bv = b[p * k * n + (s.transposeB ? j * k + q : q * n + j)]!;
      sum += av * bv;
    }
    maxAbs = Math.max(maxAbs, Math.abs(sum));
    maxErr = Math.max(maxErr, Math.abs(sum - c[p * m * n + i * n + j]!));
  }
  return maxErr / Math.max(maxAbs, Number.MIN_VALUE);
}
