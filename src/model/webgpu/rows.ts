// Row kernels for tfjs's 'webgpu' backend: one workgroup per row of a [rows, cols] tensor, its
// threads striding over the row (WGSL's ROW_THREADS) and reducing it. LayerNorm, softmax and the
// loss are built on them.
//
// Two ways to reduce, chosen once per process (useSubgroupRows, from the adapter):
// - workgroup memory, every adapter: 64 threads per row (workgroupSum's comment says how);
// - subgroups, where the device has the `subgroups` feature and one fixed subgroup size (NVIDIA: 32):
//   the workgroup is exactly one subgroup, so a reduction is one subgroupAdd / subgroupMax, with no
//   workgroup memory and no barriers. NOT YET RUN ON HARDWARE: llvmpipe offers no `subgroups`, so
//   only the generated WGSL is checked here (test/webgpu/rows.test.ts); gpu-check's adapter part
//   says which way a GPU's row kernels reduce, and VIT_DIST_SUBGROUPS=0 (device.ts) forces the plain way.

import * as tf from '@tensorflow/tfjs-core';
import type { ProgramBackend, WebGPUProgram } from './sgemm.ts';

/** Threads per row when reducing in workgroup memory. */
const PLAIN_ROW_THREADS = 64;

/** A line device.ts turns into `enable subgroups;` at the top of the shader (tfjs emits the rest). */
export const ENABLE_SUBGROUPS_MARKER = '// vitdist: enable subgroups';

/** The subgroup size row kernels reduce with, or null: workgroup memory. */
let subgroupSize: number | null = null;

/**
 * Row kernels reduce by one subgroup of `size` threads per row, or (null) in workgroup memory. Only
 * for a device with the `subgroups` feature whose subgroups all have this size.
 */
export function useSubgroupRows(size: number | null): void {
  if (size !== null && !(Number.isInteger(size) && size >= 4 && size <= 128 && (size & (size - 1)) === 0))
    throw new Error(`subgroup rows: size ${size} is not a power of two in [4, 128]`);
  subgroupSize = size;
}

/** How row kernels reduce now, for logs. */
export function rowReduction(): string {
  return subgroupSize === null ? `workgroup memory, ${PLAIN_ROW_THREADS} threads per row` : `one subgroup of ${subgroupSize} per row`;
}

/** WGSL: the row of this workgroup (dispatches over 65535 rows fold into 2-D), and the threads per row. */
function rowPrelude(): string {
  const threads = subgroupSize ?? PLAIN_ROW_THREADS;
  return `
  ${subgroupSize === null ? '' : ENABLE_SUBGROUPS_MARKER}
  const ROW_THREADS = ${threads};
  ${subgroupSize === null ? `var<workgroup> partial: array<vec2<f32>, ${threads}>;` : ''}

  fn rowIndex() -> i32 {
    return i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
  }`;
}

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
 * WGSL statements: `NAME` = the workgroup's sum of each thread's vec2 `value`, for every thread.
 * In workgroup memory each thread adds the 64 partial sums itself, in the same order. (A tree
 * reduction, whose last steps only some threads write, read back stale sums on llvmpipe; 64 reads
 * of workgroup memory per row are negligible beside the row's own.) With subgroups, subgroupAdd.
 */
export function workgroupSum(name: string, value: string): string {
  return workgroupReduce(name, value, 'vec2<f32>(0.0)', 'subgroupAdd', (acc, v) => `${acc} + ${v}`);
}

/** As workgroupSum, for the maximum. */
export function workgroupMax(name: string, value: string): string {
  return workgroupReduce(name, value, 'vec2<f32>(-3.402823e38)', 'subgroupMax', (acc, v) => `max(${acc}, ${v})`);
}

function workgroupReduce(
  name: string,
  value: string,
  identity: string,
  subgroupOp: string,
  combine: (acc: string, v: string) => string,
): string {
  if (subgroupSize !== null) return `let ${name} = ${subgroupOp}(${value});`;
  return `partial[localIndex] = ${value};
    workgroupBarrier();
    var ${name} = ${identity};
    for (var i = 0; i < ROW_THREADS; i++) { ${name} = ${combine(name, 'partial[i]')}; }
    workgroupBarrier();`;
}

export function rowProgram(shaderKey: string, outputShape: number[], rows: number, variableNames: string[], body: string): WebGPUProgram {
  const prelude = rowPrelude();
  return {
    outputShape,
    // The reduction is part of the shader: a key per way.
    shaderKey: subgroupSize === null ? shaderKey : `${shaderKey}_subgroup${subgroupSize}`,
    // Non-flat so that tfjs calls main() without an index: rows come from rowIndex().
    dispatchLayout: { x: [0], y: [1] },
    dispatch: rowDispatch(rows),
    variableNames,
    uniforms: 'rows : i32, cols : i32, scalar : f32,',
    workgroupSize: [subgroupSize ?? PLAIN_ROW_THREADS, 1, 1],
    getUserCode: () => `${prelude}
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
