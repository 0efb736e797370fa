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
// The outputs are ordinary tf.Tensors (the backend's createOutputTensor), so tf.tidy and dispose work as
// for any op. The constants are raw TensorFlow handles that tfjs does not track (a leak check counting
// tf.memory().numTensors is not disturbed); they live as long as the engine, a few hundred bytes each.

import * as tf from '@tensorflow/tfjs-core';

/** What this file uses of tfjs-node's N-API binding (its dist/tfjs_binding.d.ts). */
interface TensorflowBinding {
  readonly TF_FLOAT: number;
  readonly TF_INT32: number;
  readonly TF_ATTR_TYPE: number;
  readonly TF_ATTR_BOOL: number;
  readonly TF_ATTR_STRING: number;
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
    const ids = inputs.map((x) => (typeof x === 'number' ? x : this.backend.getInputTensorIds([x])[0]!));
    const [metadata] = this.binding.executeOp(name, attrs, ids, 1);
    return this.backend.createOutputTensor(metadata) as R;
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

let active: { backend: tf.KernelBackend; ops: NativeOps } | null = null;

/** The native ops of the active backend when it is tfjs-node's, else null. */
function native(): NativeOps | null {
  if (tf.getBackend() !== 'tensorflow') return null;
  const backend = tf.backend();
  if (active?.backend !== backend) active = { backend, ops: new NativeOps(backend as unknown as TensorflowBackend) };
  return active.ops;
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
