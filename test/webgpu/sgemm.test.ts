// Our WGSL SGEMM against a float64 product on the host: shapes that are no multiple of any tile,
// every transpose form, every tile size of both layouts, batch 1, a broadcast operand, and the
// fused bias and relu.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { chooseSplitK, sgemmShapeOf, sgemmWithTile } from '../../src/model/webgpu/kernels.ts';
import { GPU_MIN_WORKGROUPS, SGEMM_LAYOUTS, type SgemmLayout, type SgemmShape } from '../../src/model/webgpu/sgemm.ts';
import { lcg } from '../model/helpers.ts';
import { skipWithoutWebGPU } from './helpers.ts';

const skip = await skipWithoutWebGPU();

function randomValues(size: number, seed: number): Float32Array {
  const rand = lcg(seed);
  return new Float32Array(size).map(() => 2 * rand() - 1);
}

type Case = Omit<SgemmShape, 'batch'>;

/** op(A) op(B) per batch entry in float64, plus bias and relu when given. */
function reference(a: Float32Array, b: Float32Array, c: Case, bias?: Float32Array, relu = false): Float64Array {
  const batch = Math.max(c.batchA, c.batchB);
  const { m, n, k } = c;
  const out = new Float64Array(batch * m * n);
  for (let p = 0; p < batch; p++) {
    const aBase = (c.batchA === 1 ? 0 : p) * m * k;
    const bBase = (c.batchB === 1 ? 0 : p) * k * n;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let sum = bias ? bias[j]! : 0;
        for (let q = 0; q < k; q++)
          sum += a[aBase + (c.transposeA ? q * m + i : i * k + q)]! * b[bBase + (c.transposeB ? j * k + q : q * n + j)]!;
        out[p * m * n + i * n + j] = relu ? Math.max(sum, 0) : sum;
      }
    }
  }
  return out;
}

function assertNear(got: ArrayLike<number>, want: Float64Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  const scale = Math.max(1, ...want.map(Math.abs));
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-5 * scale, `${what}[${i}]: ${got[i]} vs ${want[i]}`);
}

function operands(c: Case, seed: number) {
  const aShape = [c.batchA, c.transposeA ? c.k : c.m, c.transposeA ? c.m : c.k];
  const bShape = [c.batchB, c.transposeB ? c.n : c.k, c.transposeB ? c.k : c.n];
  const aValues = randomValues(
    aShape.reduce((x, y) => x * y),
    seed,
  );
  const bValues = randomValues(
    bShape.reduce((x, y) => x * y),
    seed + 1,
  );
  return { aValues, bValues, a: tf.tensor(aValues, aShape), b: tf.tensor(bValues, bShape) };
}

/** Every tile of both layouts (vec4 has tiles of 128 and 64 only). */
const TILES: Array<[number, SgemmLayout]> = [
  [8, 'strided'],
  [4, 'strided'],
  [2, 'strided'],
  [1, 'strided'],
  [8, 'vec4'],
  [4, 'vec4'],
];

const SHAPES: Array<[number, number, number]> = [
  [1, 1, 1],
  [37, 29, 19], // smaller than every tile, K not a multiple of the K step
  [133, 70, 9], // more than one 128-row tile, odd everywhere
];

test('every tile and transpose form matches a float64 product, odd shapes and batch 1 included', { skip }, async () => {
  for (const [m, n, k] of SHAPES) {
    for (const transposeA of [false, true]) {
      for (const transposeB of [false, true]) {
        const c: Case = { batchA: 1, batchB: 1, m, n, k, transposeA, transposeB };
        const { aValues, bValues, a, b } = operands(c, m + n + k);
        const want = reference(aValues, bValues, c);
        for (const [perThread, layout] of TILES) {
          const out = sgemmWithTile(a, b, { transposeA, transposeB, perThread, layout });
          assertNear(await out.data(), want, `${m}x${n}x${k} tA=${transposeA} tB=${transposeB} tile=${16 * perThread} ${layout}`);
          out.dispose();
        }
        tf.dispose([a, b]);
      }
    }
  }
});

test('batched products, one operand broadcast across the batch', { skip }, async () => {
  for (const [batchA, batchB] of [
    [3, 3],
    [1, 3],
    [3, 1],
  ] as const) {
    for (const [transposeA, transposeB] of [
      [false, true],
      [true, false],
    ] as const) {
      const c: Case = { batchA, batchB, m: 21, n: 18, k: 13, transposeA, transposeB };
      const { aValues, bValues, a, b } = operands(c, batchA * 7 + batchB);
      for (const layout of SGEMM_LAYOUTS) {
        const out = sgemmWithTile(a, b, { transposeA, transposeB, perThread: 4, layout });
        assert.deepEqual(out.shape, [3, 21, 18]);
        assertNear(await out.data(), reference(aValues, bValues, c), `batch ${batchA}/${batchB} ${layout}`);
        out.dispose();
      }
      tf.dispose([a, b]);
    }
  }
});

test('split K: x^T dy cut along K into chunks summed after equals the whole product', { skip }, async () => {
  const c: Case = { batchA: 1, batchB: 1, m: 37, n: 29, k: 96, transposeA: true, transposeB: false };
  const { aValues, bValues, a, b } = operands(c, 17);
  const want = reference(aValues, bValues, c);
  const [a2, b2] = [tf.reshape(a, [96, 37]), tf.reshape(b, [96, 29])];
  for (const layout of SGEMM_LAYOUTS) {
    for (const splitK of [3, 4]) {
      const out = sgemmWithTile(a2, b2, { transposeA: true, transposeB: false, perThread: 8, layout, splitK });
      assert.deepEqual(out.shape, [37, 29]);
      assertNear(await out.data(), want, `split ${splitK} ${layout}`);
      out.dispose();
    }
  }
  tf.dispose([a, b, a2, b2]);
});

test('split K is chosen for DeiT-B weight gradients on a GPU, and only there', () => {
  const shape = (m: number, n: number, k: number, transposeA: boolean) => ({
    batch: 1,
    batchA: 1,
    batchB: 1,
    m,
    n,
    k,
    transposeA,
    transposeB: false,
  });
  assert.equal(chooseSplitK(shape(768, 3072, 12544, true), GPU_MIN_WORKGROUPS), 2); // fc1: 144 tiles of 128
  assert.equal(chooseSplitK(shape(768, 2304, 12544, true), GPU_MIN_WORKGROUPS), 4); // qkv: 108 tiles; 12544 has no factor 3
  assert.equal(chooseSplitK(shape(768, 3072, 12544, false), GPU_MIN_WORKGROUPS), 1); // x dy: not a contiguous split
  assert.equal(chooseSplitK(shape(12544, 3072, 768, true), GPU_MIN_WORKGROUPS), 1); // enough tiles already
  assert.equal(chooseSplitK(shape(768, 3072, 12544, true), 1), 1); // a software adapter
});

test('tf.matMul and tf.fused.matMul (bias, relu) give the product through our registered kernels', { skip }, async () => {
  const c: Case = { batchA: 1, batchB: 1, m: 45, n: 27, k: 31, transposeA: false, transposeB: false };
  const { aValues, bValues, a, b } = operands(c, 3);
  const biasValues = randomValues(c.n, 9);
  const bias = tf.tensor1d(biasValues);
  const a2 = tf.reshape(a, [c.m, c.k]) as tf.Tensor2D;
  const b2 = tf.reshape(b, [c.k, c.n]) as tf.Tensor2D;
  assertNear(await tf.matMul(a2, b2).data(), reference(aValues, bValues, c), 'matMul');
  assertNear(await tf.fused.matMul({ a: a2, b: b2, bias }).data(), reference(aValues, bValues, c, biasValues), 'fused bias');
  assertNear(
    await tf.fused.matMul({ a: a2, b: b2, bias, activation: 'relu' }).data(),
    reference(aValues, bValues, c, biasValues, true),
    'fused bias relu',
  );
  // Per-axis broadcasting and int32 are tfjs's kernel (the fallback).
  assert.equal(sgemmShapeOf([2, 1, 4, 3], [1, 3, 3, 5], false, false), null);
  const x = tf.ones([4, 3], 'int32') as tf.Tensor2D;
  const y = tf.ones([3, 5], 'int32') as tf.Tensor2D;
  assert.deepEqual(await tf.matMul(x, y).data(), new Int32Array(20).fill(3));
  tf.dispose([a, b, bias, a2, b2, x, y]);
});
