// Puts our WGSL kernels in place of tfjs's for the 'webgpu' backend: every tf.matMul and
// tf.fused.matMul the model runs then lands in sgemm.ts. tfjs's own kernel stays reachable as the
// fallback for what ours does not cover (sgemm.ts's header lists it).

import * as tf from '@tensorflow/tfjs-core';
import { choosePerThread, sgemmProgram, sgemmUniforms, type FusedActivation, type ProgramBackend, type SgemmLayout, type SgemmShape } from './sgemm.ts';

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
export function sgemmShapeOf(a: readonly number[], b: readonly number[], transposeA: boolean, transposeB: boolean): (SgemmShape & { outShape: number[] }) | null {
  if (a.length < 2 || b.length < 2) return null;
  const m = transposeA ? a[a.length - 1]! : a[a.length - 2]!;
  const k = transposeA ? a[a.length - 2]! : a[a.length - 1]!;
  const kB = transposeB ? b[b.length - 1]! : b[b.length - 2]!;
  const n = transposeB ? b[b.length - 2]! : b[b.length - 1]!;
  if (k !== kB) throw new Error(`matMul: inner sizes differ (${k} and ${kB}) for shapes [${a}] and [${b}] with transposeA=${transposeA}, transposeB=${transposeB}`);
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

/** Our product, or null when the arguments need tfjs's kernel; `forced` picks a tile and layout (tests, benchmarks). */
function sgemm(backend: ProgramBackend, args: MatMulArgs, forced?: { perThread: number; layout: SgemmLayout }): tf.TensorInfo | null {
  const { a, b, bias, activation } = args;
  if (a.dtype !== 'float32' || b.dtype !== 'float32') return null;
  if (activation !== null && activation !== 'linear' && activation !== 'relu') return null;
  const shape = sgemmShapeOf(a.shape, b.shape, args.transposeA, args.transposeB);
  if (shape === null) return null;
  if (bias && (bias.dtype !== 'float32' || tf.util.sizeFromShape(bias.shape) !== shape.n || bias.shape[bias.shape.length - 1] !== shape.n)) return null;
  const program = sgemmProgram(shape, bias !== undefined, activation, forced?.perThread ?? choosePerThread(shape, config.minWorkgroups), forced?.layout ?? config.layout);
  program.outputShape = shape.outShape;
  return backend.runWebGPUProgram(program, bias ? [a, b, bias] : [a, b], 'float32', sgemmUniforms(shape));
}

/** Runs our kernel with a given tile (PER_THREAD 8, 4, 2 or 1) and layout on the active 'webgpu' backend: for tests that cover every tile. */
export function sgemmWithTile(a: tf.Tensor, b: tf.Tensor, opts: { transposeA: boolean; transposeB: boolean; bias?: tf.Tensor; activation?: FusedActivation; perThread: number; layout: SgemmLayout }): tf.Tensor {
  const out = sgemm(tf.backend() as unknown as ProgramBackend, { a, b, transposeA: opts.transposeA, transposeB: opts.transposeB, bias: opts.bias, activation: opts.activation ?? null }, opts);
  if (out === null) throw new Error(`sgemmWithTile: our kernel does not cover [${a.shape}] x [${b.shape}]`);
  return tf.engine().makeTensorFromTensorInfo(out);
}

/** How the registered kernels choose: the tile (sgemm.ts's choosePerThread: GPU_MIN_WORKGROUPS on a GPU, 1 on a software adapter) and the layout. */
export interface KernelConfig {
  minWorkgroups: number;
  layout: SgemmLayout;
}

let registered = false;
let config: KernelConfig = { minWorkgroups: 1, layout: 'strided' };

/**
 * Registers our BatchMatMul and _FusedMatMul for 'webgpu' (once per process), keeping tfjs's as
 * the fallback. Call after tfjs-backend-webgpu has been imported.
 */
export function registerWebGPUKernels(opts: KernelConfig): void {
  config = { ...opts };
  if (registered) return;
  const tfjsBatchMatMul = tf.getKernel(tf.BatchMatMul, BACKEND);
  const tfjsFusedMatMul = tf.getKernel(tf._FusedMatMul, BACKEND);
  if (!tfjsBatchMatMul || !tfjsFusedMatMul) throw new Error('tfjs-backend-webgpu did not register BatchMatMul and _FusedMatMul: import it first');
  tf.unregisterKernel(tf.BatchMatMul, BACKEND);
  tf.unregisterKernel(tf._FusedMatMul, BACKEND);
  tf.registerKernel({
    kernelName: tf.BatchMatMul,
    backendName: BACKEND,
    kernelFunc: (call) => {
      const { a, b } = call.inputs as Record<'a' | 'b', tf.TensorInfo>;
      const { transposeA, transposeB } = call.attrs as unknown as tf.BatchMatMulAttrs;
      return sgemm(call.backend as unknown as ProgramBackend, { a, b, transposeA, transposeB, activation: null }) ?? tfjsBatchMatMul.kernelFunc(call);
    },
  });
  tf.registerKernel({
    kernelName: tf._FusedMatMul,
    backendName: BACKEND,
    kernelFunc: (call) => {
      const { a, b, bias, preluActivationWeights } = call.inputs as Record<'a' | 'b', tf.TensorInfo> & Partial<Record<'bias' | 'preluActivationWeights', tf.TensorInfo>>;
      const { transposeA, transposeB, activation } = call.attrs as unknown as tf._FusedMatMulAttrs;
      const ours = preluActivationWeights ? null : sgemm(call.backend as unknown as ProgramBackend, { a, b, bias, transposeA, transposeB, activation: activation ?? null });
      return ours ?? tfjsFusedMatMul.kernelFunc(call);
    },
  });
  registered = true;
}
