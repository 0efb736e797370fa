// Our tiled SGEMM for tfjs's 'webgpu' backend: C[b] = op(A[b]) op(B[b]) (+ bias, activation), with
// op a transpose or not, registered over tfjs's own BatchMatMul and _FusedMatMul.
//
// Why our own: tfjs-backend-webgpu 4.22's matMul reaches 4.5-10.8 TFLOP/s on an H200, while this
// plain design reached 26-30 there (../shared/notes/engines.md, section 2). The design: a workgroup
// of 16x16 threads computes a TILE x TILE block of C (TILE = 16 * PER_THREAD, 128 for big products),
// stepping K by 8 with both input tiles staged in workgroup memory, k-major; each thread keeps
// PER_THREAD x PER_THREAD outputs in registers, its rows ty + 16 i and columns tx + 16 j, so
// neighbouring threads read neighbouring words of workgroup memory and write neighbouring words of
// C. Every load and store is bounds-checked, so any shape works; small products take smaller tiles
// to keep enough workgroups busy.
//
// What tfjs asks that this kernel does not do (other activations, prelu weights, a bias that is not
// one value per output column, broadcasting of more than one batch axis, int32) goes to tfjs's own
// kernel, kept as the fallback.

import type * as tf from '@tensorflow/tfjs-core';

/** The part of tfjs-backend-webgpu's WebGPUBackend that our kernels use (its WebGPUProgram API). */
export interface ProgramBackend {
  runWebGPUProgram(
    program: WebGPUProgram,
    inputs: tf.TensorInfo[],
    outputDtype: tf.DataType,
    programDefinedUniform?: ProgramUniform[],
  ): tf.TensorInfo;
  disposeData(dataId: tf.DataId): boolean;
}

export type ProgramUniform = { type: 'int32' | 'float32' | 'uint32'; data: number[] };

/** tfjs-backend-webgpu's WebGPUProgram, as its makeShader reads it. */
export interface WebGPUProgram {
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[]; y?: number[]; z?: number[] };
  dispatch: [number, number, number];
  variableNames: string[];
  uniforms: string;
  workgroupSize: [number, number, number];
  getUserCode(): string;
}

/** Epilogues the kernel fuses: tfjs's _FusedMatMul activations that need no extra input. */
export type FusedActivation = 'linear' | 'relu' | null;

export interface SgemmShape {
  batch: number;
  /** 1 when A is shared by every batch entry (broadcast), else `batch`. */
  batchA: number;
  batchB: number;
  m: number;
  n: number;
  k: number;
  transposeA: boolean;
  transposeB: boolean;
}

const WORKGROUP_SIDE = 16;
const K_STEP = 8;
const THREADS = WORKGROUP_SIDE * WORKGROUP_SIDE;
/** Outputs per thread along each side, largest first: tiles of 128, 64, 32 and 16. */
const PER_THREAD_CHOICES = [8, 4, 2, 1] as const;
/**
 * Below this many workgroups a big GPU idles (an H200 has 132 SMs); shrink the tile until there are
 * at least this many. A software adapter (llvmpipe) runs few workgroups at a time and is fastest
 * with the largest tile (256^3: 40 ms at tile 128, 133 at 64), so it asks for 1.
 */
export const GPU_MIN_WORKGROUPS = 264;

/** The largest tile that still gives `minWorkgroups` workgroups (the smallest tile if none does). */
export function choosePerThread(shape: Pick<SgemmShape, 'batch' | 'm' | 'n'>, minWorkgroups = GPU_MIN_WORKGROUPS): number {
  for (const perThread of PER_THREAD_CHOICES) {
    const tile = WORKGROUP_SIDE * perThread;
    if (shape.batch * Math.ceil(shape.m / tile) * Math.ceil(shape.n / tile) >= minWorkgroups) return perThread;
  }
  return PER_THREAD_CHOICES[PER_THREAD_CHOICES.length - 1];
}

/** WGSL for one tile configuration; `i` and `j` loops are unrolled in the source so the accumulators stay in registers. */
function sgemmSource(perThread: number, shape: SgemmShape, hasBias: boolean, activation: FusedActivation): string {
  const tile = WORKGROUP_SIDE * perThread;
  const tileElements = tile * K_STEP;
  const loads = Math.ceil(tileElements / THREADS);
  // Which element of a tile a load index t stages: walk the stored matrix's contiguous axis fastest.
  const aLoad = shape.transposeA
    ? `let kk = t / ${tile}; let r = t % ${tile}; var v = 0.0; if (k0 + kk < uniforms.k && row0 + r < uniforms.m) { v = A[aBase + (k0 + kk) * uniforms.m + row0 + r]; }`
    : `let r = t / ${K_STEP}; let kk = t % ${K_STEP}; var v = 0.0; if (k0 + kk < uniforms.k && row0 + r < uniforms.m) { v = A[aBase + (row0 + r) * uniforms.k + k0 + kk]; }`;
  const bLoad = shape.transposeB
    ? `let c = t / ${K_STEP}; let kk = t % ${K_STEP}; var v = 0.0; if (k0 + kk < uniforms.k && col0 + c < uniforms.n) { v = B[bBase + (col0 + c) * uniforms.k + k0 + kk]; }`
    : `let kk = t / ${tile}; let c = t % ${tile}; var v = 0.0; if (k0 + kk < uniforms.k && col0 + c < uniforms.n) { v = B[bBase + (k0 + kk) * uniforms.n + col0 + c]; }`;
  const declarations: string[] = [];
  const acc = (i: number, j: number) => `acc${i}_${j}`;
  for (let i = 0; i < perThread; i++) for (let j = 0; j < perThread; j++) declarations.push(`var ${acc(i, j)} = 0.0;`);
  const inner: string[] = [];
  for (let i = 0; i < perThread; i++) inner.push(`let a${i} = tileA[kk][ty + ${WORKGROUP_SIDE * i}];`);
  for (let j = 0; j < perThread; j++) inner.push(`let b${j} = tileB[kk][tx + ${WORKGROUP_SIDE * j}];`);
  for (let i = 0; i < perThread; i++) for (let j = 0; j < perThread; j++) inner.push(`${acc(i, j)} = fma(a${i}, b${j}, ${acc(i, j)});`);
  const stores: string[] = [];
  for (let i = 0; i < perThread; i++) {
    for (let j = 0; j < perThread; j++) {
      stores.push(`{ let row = row0 + ty + ${WORKGROUP_SIDE * i}; let col = col0 + tx + ${WORKGROUP_SIDE * j};
      if (row < uniforms.m && col < uniforms.n) { result[cBase + row * uniforms.n + col] = ${epilogue(acc(i, j), hasBias, activation)}; } }`);
    }
  }
  return kernelSource({
    tile,
    element: 'f32',
    tileWidth: tile,
    declarations,
    loads,
    loadLimit: tileElements,
    loadIndex: 't',
    loadBody: `{ ${aLoad} tileA[kk][r] = v; }
          { ${bLoad} tileB[kk][c] = v; }`,
    inner,
    stores,
  });
}

/** An output's value in WGSL: the accumulator plus the column's bias, through the activation. */
function epilogue(value: string, hasBias: boolean, activation: FusedActivation): string {
  const biased = hasBias ? `${value} + Bias[col]` : value;
  return activation === 'relu' ? `max(${biased}, 0.0)` : biased;
}

/** The kernel around a layout's parts: stage K_STEP columns of A and rows of B, accumulate, store. */
function kernelSource(parts: {
  tile: number;
  element: string;
  tileWidth: number;
  declarations: string[];
  loads: number;
  loadLimit: number;
  loadIndex: string;
  loadBody: string;
  inner: string[];
  stores: string[];
}): string {
  // Rows padded by 4 floats: the loads that walk K fastest store 8 values of k for 4 rows per 32
  // threads; with rows 128 floats apart those hit 4 of the 32 banks (8-way conflicts), 132 apart all 32.
  const padded = parts.tileWidth + (parts.element === 'f32' ? 4 : 1);
  return `
  var<workgroup> tileA: array<array<${parts.element}, ${padded}>, ${K_STEP}>;
  var<workgroup> tileB: array<array<${parts.element}, ${padded}>, ${K_STEP}>;

  fn main() {
    let tx = i32(localId.x);
    let ty = i32(localId.y);
    let lid = i32(localIndex);
    let batch = i32(workgroupId.z);
    let row0 = i32(workgroupId.y) * ${parts.tile};
    let col0 = i32(workgroupId.x) * ${parts.tile};
    let aBase = select(batch, 0, uniforms.batchA == 1) * uniforms.m * uniforms.k;
    let bBase = select(batch, 0, uniforms.batchB == 1) * uniforms.k * uniforms.n;
    ${parts.declarations.join('\n    ')}
    for (var k0 = 0; k0 < uniforms.k; k0 = k0 + ${K_STEP}) {
      for (var l = 0; l < ${parts.loads}; l++) {
        let ${parts.loadIndex} = lid + l * ${THREADS};
        if (${parts.loadIndex} < ${parts.loadLimit}) {
          ${parts.loadBody}
        }
      }
      workgroupBarrier();
      for (var kk = 0; kk < ${K_STEP}; kk++) {
        ${parts.inner.join('\n        ')}
      }
      workgroupBarrier();
    }
    let cBase = batch * uniforms.m * uniforms.n;
    ${parts.stores.join('\n    ')}
  }`;
}

/**
 * The 'vec4' layout: a thread's rows are 64 g + 4 ty + c and its columns 64 h + 4 tx + d (g, h < PER_THREAD / 4,
 * c, d < 4), so each step of k reads its operands from workgroup memory as PER_THREAD / 2 vec4 loads instead of
 * 2 PER_THREAD scalar ones (on an H200 the strided layout issues one shared-memory load per four FMAs,
 * which caps it near half of peak). Tiles of 128 and 64 only (PER_THREAD 8 and 4).
 */
function sgemmVec4Source(perThread: number, shape: SgemmShape, hasBias: boolean, activation: FusedActivation): string {
  const tile = WORKGROUP_SIDE * perThread;
  const groups = perThread / 4;
  const tileVecs = tile / 4;
  const runs = (tile * K_STEP) / 4; // runs of 4 values along the stored matrix's contiguous axis
  const loads = Math.ceil(runs / THREADS);
  const contiguousK = (name: string, base: string, outer: string, outerLimit: string) =>
    `let o = u / ${K_STEP / 4}; let kq = (u % ${K_STEP / 4}) * 4;
          for (var q = 0; q < 4; q++) {
            var v = 0.0;
            if (${outer}0 + o < ${outerLimit} && k0 + kq + q < uniforms.k) { v = ${name}[${base} + (${outer}0 + o) * uniforms.k + k0 + kq + q]; }
            tile${name}[kq + q][o / 4][o % 4] = v;
          }`;
  const contiguousOuter = (name: string, base: string, outer: string, outerLimit: string) =>
    `let kk = u / ${tileVecs}; let o4 = u % ${tileVecs};
          var v = vec4<f32>(0.0);
          for (var q = 0; q < 4; q++) {
            if (k0 + kk < uniforms.k && ${outer}0 + o4 * 4 + q < ${outerLimit}) { v[q] = ${name}[${base} + (k0 + kk) * ${outerLimit} + ${outer}0 + o4 * 4 + q]; }
          }
          tile${name}[kk][o4] = v;`;
  const aLoad = shape.transposeA ? contiguousOuter('A', 'aBase', 'row', 'uniforms.m') : contiguousK('A', 'aBase', 'row', 'uniforms.m');
  const bLoad = shape.transposeB ? contiguousK('B', 'bBase', 'col', 'uniforms.n') : contiguousOuter('B', 'bBase', 'col', 'uniforms.n');
  const acc = (g: number, c: number, h: number) => `acc${g}_${c}_${h}`;
  const declarations: string[] = [];
  const inner: string[] = [];
  const stores: string[] = [];
  for (let g = 0; g < groups; g++) inner.push(`let a${g} = tileA[kk][ty + ${16 * g}];`);
  for (let h = 0; h < groups; h++) inner.push(`let b${h} = tileB[kk][tx + ${16 * h}];`);
  for (let g = 0; g < groups; g++) {
    for (let c = 0; c < 4; c++) {
      for (let h = 0; h < groups; h++) {
        declarations.push(`var ${acc(g, c, h)} = vec4<f32>(0.0);`);
        inner.push(`${acc(g, c, h)} = fma(vec4<f32>(a${g}[${c}]), b${h}, ${acc(g, c, h)});`);
        stores.push(`{ let row = row0 + ${64 * g} + ty * 4 + ${c};
      if (row < uniforms.m) {
        for (var d = 0; d < 4; d++) {
          let col = col0 + ${64 * h} + tx * 4 + d;
          if (col < uniforms.n) { result[cBase + row * uniforms.n + col] = ${epilogue(`${acc(g, c, h)}[d]`, hasBias, activation)}; }
        }
      } }`);
      }
    }
  }
  return kernelSource({
    tile,
    element: 'vec4<f32>',
    tileWidth: tileVecs,
    declarations,
    loads,
    loadLimit: runs,
    loadIndex: 'u',
    loadBody: `{ ${aLoad} }
          { ${bLoad} }`,
    inner,
    stores,
  });
}

/** How a thread's outputs are laid out: 'strided' (ty + 16 i, engines.md's measured design) or 'vec4' (above). */
export type SgemmLayout = 'strided' | 'vec4';
export const SGEMM_LAYOUTS: readonly SgemmLayout[] = ['strided', 'vec4'];

/** The tfjs program for one product; `bias` (when given) holds one value per output column. The vec4 layout needs PER_THREAD 4 or 8; smaller tiles are strided. */
export function sgemmProgram(
  shape: SgemmShape,
  hasBias: boolean,
  activation: FusedActivation,
  perThread: number,
  layout: SgemmLayout = 'strided',
): WebGPUProgram {
  const tile = WORKGROUP_SIDE * perThread;
  const vec4 = layout === 'vec4' && perThread % 4 === 0;
  return {
    outputShape: [shape.batch, shape.m, shape.n],
    shaderKey: `vitdist_sgemm_${vec4 ? 'vec4' : 'strided'}_${perThread}_${shape.transposeA}_${shape.transposeB}_${hasBias}_${activation}`,
    dispatchLayout: { x: [2], y: [1], z: [0] },
    dispatch: [Math.ceil(shape.n / tile), Math.ceil(shape.m / tile), shape.batch],
    variableNames: hasBias ? ['A', 'B', 'Bias'] : ['A', 'B'],
    uniforms: 'm : i32, n : i32, k : i32, batchA : i32, batchB : i32,',
    workgroupSize: [WORKGROUP_SIDE, WORKGROUP_SIDE, 1],
    getUserCode: () => (vec4 ? sgemmVec4Source : sgemmSource)(perThread, shape, hasBias, activation),
  };
}

export function sgemmUniforms(shape: SgemmShape): ProgramUniform[] {
  return [shape.m, shape.n, shape.k, shape.batchA, shape.batchB].map((v) => ({ type: 'int32', data: [v] }));
}
