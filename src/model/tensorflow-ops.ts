// The hot path's ops, called straight through tfjs-node's binding on the TensorFlow engine and as the
// plain tfjs ops on every other backend (so those compute exactly what they did before).
//
// Why: a small model's step is hundreds of ops, and through tfjs each one costs more than TensorFlow's
// own dispatch (measured on vit_fmnist_tiny at micro-batch 128: 558 ops, ~37 us fixed cost each). tfjs's
// kernel for an op looks it up in the registry, records it in the engine, and on tfjs-node uploads a
// fresh tensor for every scalar operand, shape, permutation and reduction axis, and casts float32 to
// float32 before every mean (an op of its own). Here those constants are uploaded once per engine and
// reused, the op goes to TFE_Execute at once, and a few ops are replaced by TensorFlow kernels that
// tfjs does not expose: BiasAdd for a row-vector add and BiasAddGrad for a sum over rows (one pass
// instead of a broadcast; measured 2x faster than Sum over axis 0).
//
// Where scripts/build-tensorflow-engine.mjs could compile them, LayerNorm, GELU and the attention
// softmax forward and backward run as fused kernels of our own (src/model/native/fused_ops.cc, loaded
// once by loadFusedKernels): one op and one or two passes over memory each, instead of 4-11 ops.
//
// The outputs are ordinary tf.Tensors (the backend's createOutputTensor), so tf.tidy and dispose work as
// for any op. The constants are raw TensorFlow handles that tfjs does not track (a leak check counting
// tf.memory().numTensors is not disturbed); they live as long as the engine, a few hundred bytes each.

import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs-core';
import type { FusedKernelsBuild } from './tensorflow-env.ts';

/** What this file uses of tfjs-node's N-API binding (its dist/tfjs_binding.d.ts). */
interface TensorflowBinding {
  readonly TF_FLOAT: number;
  readonly TF_INT32: number;
  readonly TF_ATTR_TYPE: number;
  readonly TF_ATTR_BOOL: number;
  readonly TF_ATTR_STRING: number;
  readonly TF_ATTR_FLOAT: number;
  createTensor(shape: number[], dtype: number, values: Float32Array | Int32Array): number;
  executeOp(name: string, attrs: OpAttr[], inputIds: number[], numOutputs: number): unknown[];
}

interface OpAttr {
  name: string;
  type: number;
  value: number | boolean | string;
}

/** What this file uses of tfjs-node's NodeJSKernelBackend. */
interface TensorflowBackend {
  binding: TensorflowBinding;
  getInputTensorIds(tensors: tf.Tensor[]): number[];
  createOutputTensor(metadata: unknown): tf.Tensor;
}

class NativeOps {
  private readonly binding: TensorflowBinding;
  private readonly float: OpAttr[];
  private readonly keepDims: OpAttr[];
  private readonly nhwc: OpAttr[];
  private readonly withShape: OpAttr[];
  private readonly withPerm: OpAttr[];
  private readonly matMulAttrs = new Map<string, OpAttr[]>();
  private readonly constants = new Map<string, number>(); // key -> TensorFlow handle

  constructor(private readonly backend: TensorflowBackend) {
    const b = backend.binding;
    this.binding = b;
    const T = { name: 'T', type: b.TF_ATTR_TYPE, value: b.TF_FLOAT };
    const int32 = (name: string) => ({ name, type: b.TF_ATTR_TYPE, value: b.TF_INT32 });
    this.float = [T];
    this.keepDims = [{ name: 'keep_dims', type: b.TF_ATTR_BOOL, value: true }, T, int32('Tidx')];
    this.nhwc = [T, { name: 'data_format', type: b.TF_ATTR_STRING, value: 'NHWC' }];
    this.withShape = [T, int32('Tshape')];
    this.withPerm = [T, int32('Tperm')];
  }

  /** One op with one output; operands are tensors or handles of constants. */
  run<R extends tf.Tensor>(name: string, attrs: OpAttr[], inputs: (tf.Tensor | number)[]): R {
    return this.runMany(name, attrs, inputs, 1)[0] as R;
  }

  /** One op with `outputs` outputs. */
  runMany(name: string, attrs: OpAttr[], inputs: (tf.Tensor | number)[], outputs: number): tf.Tensor[] {
    const ids = inputs.map((x) => (typeof x === 'number' ? x : this.backend.getInputTensorIds([x])[0]!));
    return this.binding.executeOp(name, attrs, ids, outputs).map((metadata) => this.backend.createOutputTensor(metadata));
  }

  /** A float attribute, e.g. an epsilon or a scale. */
  floatAttr(name: string, value: number): OpAttr[] {
    return [{ name, type: this.binding.TF_ATTR_FLOAT, value }];
  }

  /** A float32 scalar, uploaded once. */
  scalar(value: number): number {
    return this.constant(`f${value}`, () => this.binding.createTensor([], this.binding.TF_FLOAT, Float32Array.of(value)));
  }

  /** An int32 vector (shape, permutation, axes), uploaded once. */
  ints(values: readonly number[]): number {
    return this.constant(`i${values.join(',')}`, () =>
      this.binding.createTensor([values.length], this.binding.TF_INT32, Int32Array.from(values)),
    );
  }

  private constant(key: string, upload: () => number): number {
    let handle = this.constants.get(key);
    if (handle === undefined) {
      handle = upload();
      this.constants.set(key, handle);
    }
    return handle;
  }

  operand(x: tf.Tensor | number): tf.Tensor | number {
    return typeof x === 'number' ? this.scalar(x) : x;
  }

  elementwise<R extends tf.Tensor>(name: string, ...inputs: (tf.Tensor | number)[]): R {
    return this.run<R>(
      name,
      this.float,
      inputs.map((x) => this.operand(x)),
    );
  }

  reduce<R extends tf.Tensor>(name: 'Mean' | 'Sum', x: tf.Tensor, axis: number): R {
    return this.run<R>(name, this.keepDims, [x, this.ints([axis < 0 ? x.rank + axis : axis])]);
  }

  biasAdd<R extends tf.Tensor>(x: R, bias: tf.Tensor): R {
    return this.run<R>('BiasAdd', this.nhwc, [x, bias]);
  }

  biasAddGrad(dy: tf.Tensor2D): tf.Tensor1D {
    return this.run<tf.Tensor1D>('BiasAddGrad', this.nhwc, [dy]);
  }

  matMul<R extends tf.Tensor>(a: R, b: R, transposeA: boolean, transposeB: boolean): R {
    // BatchMatMulV2 for 2-D products too, as tfjs-node runs them: MatMul measured no faster here.
    const key = `${transposeA}${transposeB}`;
    let attrs = this.matMulAttrs.get(key);
    if (attrs === undefined) {
      const flag = (name: string, value: boolean) => ({ name, type: this.binding.TF_ATTR_BOOL, value });
      attrs = [...this.float, flag('adj_x', transposeA), flag('adj_y', transposeB)];
      this.matMulAttrs.set(key, attrs);
    }
    return this.run<R>('BatchMatMulV2', attrs, [a, b]);
  }

  reshape<R extends tf.Tensor>(x: tf.Tensor, shape: readonly number[]): R {
    return this.run<R>('Reshape', this.withShape, [x, this.ints(shape)]);
  }

  transpose<R extends tf.Tensor>(x: R, perm: readonly number[]): R {
    return this.run<R>('Transpose', this.withPerm, [x, this.ints(perm)]);
  }
}

/**
 * The kernels of src/model/native/fused_ops.cc, each one TensorFlow op. Same arithmetic as the op
 * compositions they replace (layers.ts, vit.ts), up to float rounding and two approximations of
 * float accuracy: erf (absolute error ~1e-7) and exp (relative error ~2e-7).
 */
export class FusedKernels {
  constructor(private readonly ops: NativeOps) {}

  /** LayerNorm over the last axis: y = xHat weight + bias, xHat = (x - mean) rstd, rstd [rows, 1]. */
  layerNorm(x: tf.Tensor2D, weight: tf.Tensor, bias: tf.Tensor, eps: number) {
    const [y, xHat, rstd] = this.ops.runMany('VitLayerNorm', this.ops.floatAttr('eps', eps), [x, weight, bias], 3);
    return { y: y as tf.Tensor2D, xHat: xHat as tf.Tensor2D, rstd: rstd! };
  }

  /** LayerNorm's gradients: dx, and the affine's dWeight = Σ dy xHat and dBias = Σ dy over rows. */
  layerNormBackward(dy: tf.Tensor2D, xHat: tf.Tensor2D, rstd: tf.Tensor, weight: tf.Tensor) {
    const [dx, dWeight, dBias] = this.ops.runMany('VitLayerNormGrad', [], [dy, xHat, rstd, weight], 3);
    return { dx: dx as tf.Tensor2D, dWeight: dWeight!, dBias: dBias! };
  }

  /** Exact GELU x Phi(x), and Phi(x) for the backward pass. */
  gelu(x: tf.Tensor2D): { y: tf.Tensor2D; cdf: tf.Tensor2D } {
    const [y, cdf] = this.ops.runMany('VitGelu', [], [x], 2);
    return { y: y as tf.Tensor2D, cdf: cdf as tf.Tensor2D };
  }

  /** dy (Phi(x) + x phi(x)). */
  geluBackward(dy: tf.Tensor2D, x: tf.Tensor2D, cdf: tf.Tensor2D): tf.Tensor2D {
    return this.ops.run('VitGeluGrad', [], [dy, x, cdf]);
  }

  /** softmax(scale scores) over the last axis; scale > 0. */
  scaledSoftmax<R extends tf.Tensor>(scores: R, scale: number): R {
    return this.ops.run('VitScaledSoftmax', this.ops.floatAttr('scale', scale), [scores]);
  }

  /** The scores' gradient from softmax(scale scores)'s: scale att (dAtt - Σ_row dAtt att). */
  scaledSoftmaxBackward<R extends tf.Tensor>(att: R, dAtt: R, scale: number): R {
    return this.ops.run('VitScaledSoftmaxGrad', this.ops.floatAttr('scale', scale), [att, dAtt]);
  }
}

/** The kernels' source, as the build script hashes it. */
export const FUSED_KERNELS_SOURCE = new URL('./native/fused_ops.cc', import.meta.url);

let fusedKernelsLoaded = false;

/**
 * Registers the fused kernels with TensorFlow (the first call; the registration is process-wide)
 * and returns null, or returns why they cannot be used: not built, built from another version of
 * the source (a rebuild is needed), or failing to load. Without them the ops above run as before.
 */
export function loadFusedKernels(build: FusedKernelsBuild | undefined): string | null {
  if (!build) return 'they were not built (node scripts/build-tensorflow-engine.mjs builds them)';
  if (!build.ok || !build.file) return `their build failed (${build.failure})`;
  if (!existsSync(build.file)) return `${build.file} is missing; rebuild with node scripts/build-tensorflow-engine.mjs`;
  if (!existsSync(FUSED_KERNELS_SOURCE)) return `their source ${FUSED_KERNELS_SOURCE.pathname} is missing, so the build cannot be checked`;
  const sha = createHash('sha256').update(readFileSync(FUSED_KERNELS_SOURCE)).digest('hex');
  if (sha !== build.sourceSha256)
    return 'src/model/native/fused_ops.cc changed since they were built; rebuild with node scripts/build-tensorflow-engine.mjs';
  if (fusedKernelsLoaded) return null;
  try {
    const module = createRequire(import.meta.url)(build.file) as { failure: string };
    if (module.failure !== '') return `TensorFlow refused them: ${module.failure}`;
  } catch (err) {
    return `${build.file} failed to load: ${(err as Error).message}`;
  }
  fusedKernelsLoaded = true;
  active = null; // the next op sees them
  return null;
}

let active: { backend: tf.KernelBackend; ops: NativeOps; fused: FusedKernels | null } | null = null;

/** The native ops of the active backend when it is tfjs-node's, else null. */
function native(): NativeOps | null {
  return activeNative()?.ops ?? null;
}

function activeNative() {
  if (tf.getBackend() !== 'tensorflow') return null;
  const backend = tf.backend();
  if (active?.backend !== backend) {
    const ops = new NativeOps(backend as unknown as TensorflowBackend);
    active = { backend, ops, fused: fusedKernelsLoaded ? new FusedKernels(ops) : null };
  }
  return active;
}

/** The fused kernels on the TensorFlow engine once loadFusedKernels has registered them, else null. */
export function fusedKernels(): FusedKernels | null {
  return activeNative()?.fused ?? null;
}

export function mul<R extends tf.Tensor>(a: R, b: tf.Tensor | number): R {
  return native()?.elementwise<R>('Mul', a, b) ?? tf.mul(a, b);
}

export function add<R extends tf.Tensor>(a: R, b: tf.Tensor | number): R {
  return native()?.elementwise<R>('AddV2', a, b) ?? tf.add(a, b);
}

export function sub<R extends tf.Tensor>(a: R, b: tf.Tensor | number): R {
  return native()?.elementwise<R>('Sub', a, b) ?? tf.sub(a, b);
}

export function square<R extends tf.Tensor>(x: R): R {
  return native()?.elementwise<R>('Square', x) ?? tf.square(x);
}

export function rsqrt<R extends tf.Tensor>(x: R): R {
  return native()?.elementwise<R>('Rsqrt', x) ?? tf.rsqrt(x);
}

/** The standard normal CDF, 0.5 (1 + erf(x / sqrt 2)); on TensorFlow 0.5 erfc(-x / sqrt 2), one pass fewer. */
export function normalCdf<R extends tf.Tensor>(x: R): R {
  const ops = native();
  if (ops === null) return tf.mul(tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1), 0.5);
  return ops.elementwise<R>('Mul', ops.elementwise('Erfc', ops.elementwise('Mul', x, -Math.SQRT1_2)), 0.5);
}

export function exp<R extends tf.Tensor>(x: R): R {
  return native()?.elementwise<R>('Exp', x) ?? tf.exp(x);
}

/** Softmax over the last axis. */
export function softmax<R extends tf.Tensor>(x: R): R {
  return native()?.elementwise<R>('Softmax', x) ?? tf.softmax(x);
}

/** Mean over the last axis, kept as an axis of 1. */
export function meanLastAxis<R extends tf.Tensor>(x: R): R {
  return native()?.reduce<R>('Mean', x, -1) ?? tf.mean(x, -1, true);
}

/** Sum over the last axis, kept as an axis of 1. */
export function sumLastAxis<R extends tf.Tensor>(x: R): R {
  return native()?.reduce<R>('Sum', x, -1) ?? tf.sum(x, -1, true);
}

/** x + bias with bias [features] added to every row of x [rows, features]. */
export function addBias<R extends tf.Tensor>(x: R, bias: tf.Tensor): R {
  return native()?.biasAdd(x, bias) ?? tf.add(x, bias);
}

/** Sum over the rows of dy [rows, features]: a bias's gradient. */
export function sumRows(dy: tf.Tensor2D): tf.Tensor1D {
  return native()?.biasAddGrad(dy) ?? tf.sum(dy, 0);
}

/** op(a) @ op(b), 2-D or batched over a leading axis (transpose flags as tf.matMul's). */
export function matMul<R extends tf.Tensor2D | tf.Tensor3D>(a: R, b: R, transposeA = false, transposeB = false): R {
  return native()?.matMul(a, b, transposeA, transposeB) ?? (tf.matMul(a, b, transposeA, transposeB) as R);
}

export function reshape<R extends tf.Tensor>(x: tf.Tensor, shape: number[]): R {
  return native()?.reshape<R>(x, shape) ?? (tf.reshape(x, shape) as R);
}

export function transpose<R extends tf.Tensor>(x: R, perm: number[]): R {
  return native()?.transpose(x, perm) ?? tf.transpose(x, perm);
}
