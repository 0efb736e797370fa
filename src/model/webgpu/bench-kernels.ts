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
//   const a = await benchAttention({ batch: 64, tokens: 197, heads: 12, headDim: 64 }, fused, 10)
//   a = { forwardMs, forwardBackwardMs, forwardTflops, forwardBackwardTflops }, fused or unfused (unfusedAttention)

import * as tf from '@tensorflow/tfjs-core';
import { type AttentionDims, fusedAttention, fusedAttentionBackward } from './attention.ts';
import { chooseSplitK, sgemmWithTile } from './kernels.ts';
import { choosePerThread, GPU_MIN_WORKGROUPS, type SgemmLayout } from './sgemm.ts';
import { scaledSoftmax, scaledSoftmaxGrad } from './softmax.ts';

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

/**
 * Attention from the qkv Linear's output [B*T, 3D] the unfused way, as vit.ts runs it where the fused
 * kernels do not apply: the head split, Q K^T and P V products with our scaled softmax row kernels
 * between, the head merge; given d(out), backward the four products and the stacked d(q, k, v)
 * merged back into qkv's layout (without, no dqkv). What the fused kernels are timed and tested against.
 */
export function unfusedAttention(
  qkv: tf.Tensor2D,
  dOut: tf.Tensor2D | null,
  d: AttentionDims,
  scale: number,
): { out: tf.Tensor2D; dqkv?: tf.Tensor2D } {
  const { batch: B, tokens: T, heads: H, headDim: hd } = d;
  return tf.tidy(() => {
    const split = tf.transpose(tf.reshape(qkv, [B, T, 3, H, hd]), [2, 0, 3, 1, 4]);
    const [q, k, v] = tf.unstack(tf.reshape(split, [3, B * H, T, hd])) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
    const att = scaledSoftmax(tf.matMul(q, k, false, true), scale);
    const out = tf.reshape(tf.transpose(tf.reshape(tf.matMul(att, v), [B, H, T, hd]), [0, 2, 1, 3]), [B * T, H * hd]) as tf.Tensor2D;
    if (!dOut) return { out };
    const dHeads = tf.reshape(tf.transpose(tf.reshape(dOut, [B, T, H, hd]), [0, 2, 1, 3]), [B * H, T, hd]) as tf.Tensor3D;
    const dScores = scaledSoftmaxGrad(att, tf.matMul(dHeads, v, false, true), scale);
    const stacked = tf.stack([tf.matMul(dScores, k), tf.matMul(dScores, q, true, false), tf.matMul(att, dHeads, true, false)]);
    const dqkv = tf.reshape(tf.transpose(tf.reshape(stacked, [3, B, H, T, hd]), [1, 3, 0, 2, 4]), [B * T, 3 * H * hd]) as tf.Tensor2D;
    return { out, dqkv };
  });
}

export interface AttentionBench {
  /** Mean ms of the forward (qkv -> merged heads) and of forward + backward (-> d(qkv)). */
  forwardMs: number;
  forwardBackwardMs: number;
  /** The products' flops over those times: 4 B H T^2 d forward, 8 more backward (the fused backward's recomputation not counted). */
  forwardTflops: number;
  forwardBackwardTflops: number;
}

/**
 * Times attention at the given dims, fused (webgpu/attention.ts) or unfused, as benchMatMul times a
 * product: two warm-up runs, then `iterations` runs to the queue's completion.
 */
export async function benchAttention(dims: AttentionDims, fused: boolean, iterations: number): Promise<AttentionBench> {
  const { batch: B, tokens: T, heads: H, headDim: hd } = dims;
  const scale = hd ** -0.5;
  const qkv = tf.randomUniform([B * T, 3 * H * hd], -2, 2, 'float32', 3) as tf.Tensor2D;
  const dOut = tf.randomUniform([B * T, H * hd], -1, 1, 'float32', 4) as tf.Tensor2D;
  const run = (backward: boolean): tf.Tensor => {
    if (!fused) {
      const { out, dqkv } = unfusedAttention(qkv, backward ? dOut : null, dims, scale);
      if (!dqkv) return out;
      out.dispose();
      return dqkv;
    }
    const { out, lse } = fusedAttention(qkv, dims, scale);
    if (!backward) {
      lse.dispose();
      return out;
    }
    const dqkv = fusedAttentionBackward(qkv, out, lse, dOut, dims, scale);
    tf.dispose([out, lse]);
    return dqkv;
  };
  const time = async (backward: boolean) => {
    for (let i = 0; i < 2; i++) run(backward).dispose();
    await gpuIdle();
    const start = performance.now();
    for (let i = 0; i < iterations; i++) run(backward).dispose();
    await gpuIdle();
    return (performance.now() - start) / iterations;
  };
  try {
    const forwardMs = await time(false);
    const forwardBackwardMs = await time(true);
    const productFlops = 2 * B * H * T * T * hd;
    return {
      forwardMs,
      forwardBackwardMs,
      forwardTflops: (2 * productFlops) / (forwardMs * 1e9),
      forwardBackwardTflops: (6 * productFlops) / (forwardBackwardMs * 1e9),
    };
  } finally {
    tf.dispose([qkv, dOut]);
  }
}
