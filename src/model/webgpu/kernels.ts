// Puts our WGSL kernels in place of tfjs's for the 'webgpu' backend: every tf.matMul and
// tf.fused.matMul the model runs then lands in sgemm.ts. tfjs's own kernel stays reachable as the
// fallback for what ours does not cover (sgemm.ts's header lists it).

import * as tf from '@tensorflow/tfjs-core';
import {
  choosePerThread,
  sgemmProgram,
  sgemmUniforms,
  type FusedActivation,
  type ProgramBackend,
  type SgemmLayout,
  type SgemmShape,
} from './sgemm.ts';
import { useSubgroupRows } from './rows.ts';

const BACKEND = 'webgpu';

interface MatMulArgs {
  a: tf.TensorInfo;
  b: tf.TensorInfo;
  transposeA: boolean;
  transposeB: boolean;
  bias?: tf.TensorInfo;
  activation: FusedActivation | string;
}

/** The product's shape in sgemm.ts's terms, or null when ours does not cover it. */
export function sgemmShapeOf(
  a: readonly number[],
  b: readonly number[],
  transposeA: boolean,
  transposeB: boolean,
): (SgemmShape & { outShape: number[] }) | null {
  if (a.length < 2 || b.length < 2) return null;
  const m = transposeA ? a[a.length - 1]! : a[a.length - 2]!;
  const k = transposeA ? a[a.length - 2]! : a[a.length - 1]!;
  const kB = transposeB ? b[b.length - 1]! : b[b.length - 2]!;
  const n = transposeB ? b[b.length - 2]! : b[b.length - 1]!;
  if (k !== kB)
    throw new Error(
      `matMul: inner sizes differ (${k} and ${kB}) for shapes [${a}] and [${b}] with transposeA=${transposeA}, transposeB=${transposeB}`,
    );
  const outerA = a.slice(0, -2);
  const outerB = b.slice(0, -2);
  const batchA = tf.util.sizeFromShape(outerA);
  const batchB = tf.util.sizeFromShape(outerB);
  const outer = tf.broadcast_util.assertAndGetBroadcastShape(outerA, outerB);
  const batch = tf.util.sizeFromShape(outer);
  // One side broadcast whole, or both the same: anything else (per-axis broadcasting) is tfjs's.
  if (!((batchA === batch || batchA === 1) && (batchB === batch || batchB === 1))) return null;
  return { batch, batchA, batchB, m, n, k, transposeA, transposeB, outShape: [...outer, m, n] };
}

/** A tile, layout and split of K chosen by the caller instead of by shape (tests, benchmarks). */
interface ForcedChoice {
  perThread: number;
  layout: SgemmLayout;
  splitK?: number;
}

/**
 * Split-K for x^T dy (the weight gradients: a small [in, out] output, K = every token of the
 * micro-batch). At tile 128 such a product has too few workgroups (DeiT-B fc1 at batch 64: 6 x 24 = 144
 * on an H200's 132 SMs) and a smaller tile halves the reuse of each load. A^T stored [K, M] and B
 * stored [K, N], cut along K into S contiguous chunks, already are a batch of S products
 * [S, K/S, M]^T x [S, K/S, N]: run those at tile 128 and sum the S partial outputs. Returns S (1: no split).
 */
export function chooseSplitK(shape: SgemmShape, minWorkgroups: number): number {
  if (shape.batch !== 1 || !shape.transposeA || shape.transposeB) return 1;
  const workgroups = Math.ceil(shape.m / 128) * Math.ceil(shape.n / 128);
  if (workgroups >= minWorkgroups) return 1;
  for (let split = 2; split <= 16; split++) {
    if (shape.k % split === 0 && shape.k / split >= 256 && workgroups * split >= minWorkgroups) return split;
  }
  return 1;
}

/** The S partial products of a split K, summed: [M, N] (or the product's own output shape). */
function splitKProduct(
  backend: ProgramBackend,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  shape: SgemmShape & { outShape: number[] },
  split: number,
  perThread: number,
  layout: SgemmLayout,
): tf.TensorInfo {
  const parts: SgemmShape = { ...shape, batch: split, batchA: split, batchB: split, k: shape.k / split };
  const partial = backend.runWebGPUProgram(sgemmProgram(parts, false, null, perThread, layout), [a, b], 'float32', sgemmUniforms(parts));
  const backendArg = backend as unknown as tf.KernelBackend;
  const sum = tf
    .getKernel(tf.Sum, BACKEND)!
    .kernelFunc({ inputs: { x: partial }, backend: backendArg, attrs: { axis: 0, keepDims: false } }) as tf.TensorInfo;
  backend.disposeData(partial.dataId);
  if (tf.util.arraysEqual(sum.shape, shape.outShape)) return sum;
  const reshaped = tf
    .getKernel(tf.Reshape, BACKEND)!
    .kernelFunc({ inputs: { x: sum }, backend: backendArg, attrs: { shape: shape.outShape } }) as tf.TensorInfo;
  backend.disposeData(sum.dataId);
  return reshaped;
}

/** Our product, or null when the arguments need tfjs's kernel. */
function sgemm(backend: ProgramBackend, args: MatMulArgs, forced?: ForcedChoice): tf.TensorInfo | null {
  const { a, b, bias, activation } = args;
  if (a.dtype !== 'float32' || b.dtype !== 'float32') return null;
  if (activation !== null && activation !== 'linear' && activation !== 'relu') return null;
  const shape = sgemmShapeOf(a.shape, b.shape, args.transposeA, args.transposeB);
  if (shape === null) return null;
  if (bias && (bias.dtype !== 'float32' || tf.util.sizeFromShape(bias.shape) !== shape.n || bias.shape[bias.shape.length - 1] !== shape.n))
    return null;
  const layout = forced?.layout ?? config.layout;
  const split = bias || activation === 'relu' ? 1 : (forced?.splitK ?? chooseSplitK(shape, config.minWorkgroups));
  if (split > 1) return splitKProduct(backend, a, b, shape, split, forced?.perThread ?? 8, layout);
  const program = sgemmProgram(
    shape,
    bias !== undefined,
    activation,
    forced?.perThread ?? choosePerThread(shape, config.minWorkgroups),
    layout,
  );
  program.outputShape = shape.outShape;
  return backend.runWebGPUProgram(program, bias ? [a, b, bias] : [a, b], 'float32', sgemmUniforms(shape));
}

/** Runs our kernel with a given tile (PER_THREAD 8, 4, 2 or 1), layout and split of K on the active 'webgpu' backend: for tests that cover every choice. */
export function sgemmWithTile(
  a: tf.Tensor,
  b: tf.Tensor,
  opts: { transposeA: boolean; transposeB: boolean; bias?: tf.Tensor; activation?: FusedActivation } & ForcedChoice,
): tf.Tensor {
  const out = sgemm(
    tf.backend() as unknown as ProgramBackend,
    { a, b, transposeA: opts.transposeA, transposeB: opts.transposeB, bias: opts.bias, activation: opts.activation ?? null },
    opts,
  );
  if (out === null) throw new Error(`sgemmWithTile: our kernel does not cover [${a.shape}] x [${b.shape}]`);
  return tf.engine().makeTensorFromTensorInfo(out);
}

/** How the registered kernels choose: the tile (sgemm.ts's choosePerThread: GPU_MIN_WORKGROUPS on a GPU, 1 on a software adapter), the layout, and how row kernels reduce. */
export interface KernelConfig {
  minWorkgroups: number;
  layout: SgemmLayout;
  /** The subgroup size the row kernels reduce with (rows.ts), or null: workgroup memory. */
  subgroupRows: number | null;
}

let registered = false;
let config: KernelConfig = { minWorkgroups: 1, layout: 'strided', subgroupRows: null };

/**
 * Registers our BatchMatMul and _FusedMatMul for 'webgpu' (once per process), keeping tfjs's as
 * the fallback. Call after tfjs-backend-webgpu has been imported.
 */
export function registerWebGPUKernels(opts: KernelConfig): void {
  config = { ...opts };
  useSubgroupRows(opts.subgroupRows);
  if (registered) return;
  const tfjsBatchMatMul = tf.getKernel(tf.BatchMatMul, BACKEND);
  const tfjsFusedMatMul = tf.getKernel(tf._FusedMatMul, BACKEND);
  if (!tfjsBatchMatMul || !tfjsFusedMatMul)
    throw new Error('tfjs-backend-webgpu did not register BatchMatMul and _FusedMatMul: import it first');
  tf.unregisterKernel(tf.BatchMatMul, BACKEND);
  tf.unregisterKernel(tf._FusedMatMul, BACKEND);
  tf.registerKernel({
    kernelName: tf.BatchMatMul,
    backendName: BACKEND,
    kernelFunc: (call) => {
      const { a, b } = call.inputs as Record<'a' | 'b', tf.TensorInfo>;
      const { transposeA, transposeB } = call.attrs as unknown as tf.BatchMatMulAttrs;
      return (
        sgemm(call.backend as unknown as ProgramBackend, { a, b, transposeA, transposeB, activation: null }) ??
        tfjsBatchMatMul.kernelFunc(call)
      );
    },
  });
  tf.registerKernel({
    kernelName: tf._FusedMatMul,
    backendName: BACKEND,
    kernelFunc: (call) => {
      const { a, b, bias, preluActivationWeights } = call.inputs as Record<'a' | 'b', tf.TensorInfo> &
        Partial<Record<'bias' | 'preluActivationWeights', tf.TensorInfo>>;
      const { transposeA, transposeB, activation } = call.attrs as unknown as tf._FusedMatMulAttrs;
      const ours = preluActivationWeights
        ? null
        : sgemm(call.backend as unknown as ProgramBackend, { a, b, bias, transposeA, transposeB, activation: activation ?? null });
      return ours ?? tfjsFusedMatMul.kernelFunc(call);
    },
  });
  registered = true;
}
