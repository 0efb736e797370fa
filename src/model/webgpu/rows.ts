// Row kernels for tfjs's 'webgpu' backend: one workgroup of ROW_THREADS threads per row of a
// [rows, cols] tensor, reducing in workgroup memory. LayerNorm and softmax are built on them.

import * as tf from '@tensorflow/tfjs-core';
import type { ProgramBackend, WebGPUProgram } from './sgemm.ts';

/** Threads per row. */
export const ROW_THREADS = 64;

/** WGSL: the row of this workgroup (dispatches over 65535 rows fold into 2-D). */
const ROW_PRELUDE = `
  var<workgroup> partial: array<vec2<f32>, ${ROW_THREADS}>;

  fn rowIndex() -> i32 {
    return i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
  }`;

/**
 * One workgroup per row; past 65535 rows (WebGPU's guaranteed per-dimension limit) a square grid,
 * since tfjs folds only flat dispatches.
 */
function rowDispatch(rows: number): [number, number, number] {
  if (rows <= 65535) return [rows, 1, 1];
  const side = Math.ceil(Math.sqrt(rows));
  return [side, side, 1];
}

/**
 * WGSL statements: `let NAME = ` the workgroup's sum of each thread's vec2 `value`, for every thread:
 * each thread adds the 64 partial sums itself, in the same order. (A tree reduction, whose last
 * steps only some threads write, read back stale sums on llvmpipe; 64 reads of workgroup memory
 * per row are negligible beside the row's own.)
 */
export function workgroupSum(name: string, value: string): string {
  return workgroupReduce(name, value, 'vec2<f32>(0.0)', (acc, v) => `${acc} + ${v}`);
}

/** As workgroupSum, for the maximum. */
export function workgroupMax(name: string, value: string): string {
  return workgroupReduce(name, value, 'vec2<f32>(-3.402823e38)', (acc, v) => `max(${acc}, ${v})`);
}

function workgroupReduce(name: string, value: string, identity: string, combine: (acc: string, v: string) => string): string {
  return `partial[localIndex] = ${value};
    workgroupBarrier();
    var ${name} = ${identity};
    for (var i = 0; i < ${ROW_THREADS}; i++) { ${name} = ${combine(name, 'partial[i]')}; }
    workgroupBarrier();`;
}

export function rowProgram(shaderKey: string, outputShape: number[], rows: number, variableNames: string[], body: string): WebGPUProgram {
  return {
    outputShape,
    shaderKey,
    // Non-flat so that tfjs calls main() without an index: rows come from rowIndex().
    dispatchLayout: { x: [0], y: [1] },
    dispatch: rowDispatch(rows),
    variableNames,
    uniforms: 'rows : i32, cols : i32, scalar : f32,',
    workgroupSize: [ROW_THREADS, 1, 1],
    getUserCode: () => `${ROW_PRELUDE}
  fn main() {
    // No early return for padding workgroups: barriers must be reached by all (and tfjs's builtins
    // are private copies, which WGSL's uniformity analysis cannot see are uniform). They get no columns.
    let row = min(rowIndex(), uniforms.rows - 1);
    let cols = select(0, uniforms.cols, rowIndex() < uniforms.rows);
    let base = row * uniforms.cols;
    let lid = i32(localIndex);
    ${body}
  }`,
  };
}

/** Runs a row program; `scalar` is the kernel's one float uniform (LayerNorm's eps, softmax's scale). */
export function runRows(program: WebGPUProgram, inputs: tf.Tensor[], rows: number, cols: number, scalar = 0): tf.Tensor {
  const backend = tf.backend() as unknown as ProgramBackend;
  const uniforms = [
    { type: 'int32' as const, data: [rows] },
    { type: 'int32' as const, data: [cols] },
    { type: 'float32' as const, data: [scalar] },
  ];
  return tf.engine().makeTensorFromTensorInfo(backend.runWebGPUProgram(program, inputs, 'float32', uniforms));
}
