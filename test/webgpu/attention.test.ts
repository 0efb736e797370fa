// The fused attention kernels against float64 on the host and against the unfused webgpu path
// (tfjs products and our softmax row kernels): the output and d(q), d(k), d(v), for token counts
// that are not multiples of the 64-row workgroup or of the staged tiles (197 = DeiT's, 50, 65, 17),
// batch 1, and head dims of both staging sizes (8, 16, 33, 64; 80, 128).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { type AttentionDims, fusedAttention, fusedAttentionBackward, fusedAttentionSupports } from '../../src/model/webgpu/attention.ts';
import { unfusedAttention } from '../../src/model/webgpu/bench-kernels.ts';
import { lcg } from '../model/helpers.ts';
import { skipWithoutWebGPU } from './helpers.ts';

const skip = await skipWithoutWebGPU();

/** Output [B*T, D] and d(qkv) [B*T, 3D] in float64, head by head. */
function reference(qkv: Float32Array, dOut: Float32Array, d: AttentionDims, scale: number) {
  const { batch: B, tokens: T, heads: H, headDim: hd } = d;
  const D = H * hd;
  const out = new Float64Array(B * T * D);
  const dqkv = new Float64Array(B * T * 3 * D);
  const at = (b: number, t: number, part: number, h: number, c: number) => (b * T + t) * 3 * D + part * D + h * hd + c;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const p = Array.from({ length: T }, () => new Float64Array(T));
      for (let i = 0; i < T; i++) {
        for (let j = 0; j < T; j++) {
          let s = 0;
          for (let c = 0; c < hd; c++) s += qkv[at(b, i, 0, h, c)]! * qkv[at(b, j, 1, h, c)]!;
          p[i]![j] = scale * s;
        }
        const max = Math.max(...p[i]!);
        let sum = 0;
        for (let j = 0; j < T; j++) sum += p[i]![j] = Math.exp(p[i]![j]! - max);
        for (let j = 0; j < T; j++) p[i]![j]! /= sum;
      }
      for (let i = 0; i < T; i++) {
        const g = (c: number) => dOut[(b * T + i) * D + h * hd + c]!;
        const dp = new Float64Array(T);
        for (let j = 0; j < T; j++) {
          for (let c = 0; c < hd; c++) {
            out[(b * T + i) * D + h * hd + c] += p[i]![j]! * qkv[at(b, j, 2, h, c)]!;
            dqkv[at(b, j, 2, h, c)] += p[i]![j]! * g(c);
            dp[j] += g(c) * qkv[at(b, j, 2, h, c)]!;
          }
        }
        const dot = dp.reduce((acc, v, j) => acc + v * p[i]![j]!, 0);
        for (let j = 0; j < T; j++) {
          const ds = scale * p[i]![j]! * (dp[j]! - dot);
          for (let c = 0; c < hd; c++) {
            dqkv[at(b, i, 0, h, c)] += ds * qkv[at(b, j, 1, h, c)]!;
            dqkv[at(b, j, 1, h, c)] += ds * qkv[at(b, i, 0, h, c)]!;
          }
        }
      }
    }
  }
  return { out, dqkv };
}

/** max |got - want| / max |want|, with the place of the worst. */
function relError(got: ArrayLike<number>, want: ArrayLike<number>): { error: number; at: number } {
  let scale = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  let worst = { error: 0, at: -1 };
  for (let i = 0; i < want.length; i++) {
    const error = Math.abs(got[i]! - want[i]!) / scale;
    if (!(error <= worst.error)) worst = { error, at: i };
  }
  return worst;
}

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tolerance: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  const { error, at } = relError(got, want);
  assert.ok(error <= tolerance, `${what}: relative error ${error.toExponential(2)} at ${at} (${got[at]} vs ${want[at]})`);
}

/** The q, k or v part [B*T, D] of a [B*T, 3D] array. */
function part(x: ArrayLike<number>, index: number, rows: number, D: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < D; c++) out.push(x[r * 3 * D + index * D + c]!);
  return out;
}

const SHAPES: (AttentionDims & { compareUnfused?: boolean })[] = [
  { batch: 1, tokens: 197, heads: 1, headDim: 64, compareUnfused: true },
  { batch: 2, tokens: 50, heads: 3, headDim: 16, compareUnfused: true },
  { batch: 2, tokens: 65, heads: 2, headDim: 33 },
  { batch: 1, tokens: 17, heads: 4, headDim: 8 },
  { batch: 2, tokens: 33, heads: 1, headDim: 80 },
  { batch: 1, tokens: 70, heads: 1, headDim: 128 },
];

for (const d of SHAPES) {
  const { batch: B, tokens: T, heads: H, headDim: hd } = d;
  test(`fused attention and its dq, dk, dv match float64 on ${B} x ${T} tokens x ${H} heads x ${hd}`, { skip }, async () => {
    const rand = lcg(T * 31 + hd);
    const D = H * hd;
    const scale = hd ** -0.5;
    // Spread enough that the online softmax's rescaling matters (scaled scores of a few units).
    const qkvs = new Float32Array(B * T * 3 * D).map(() => 4 * rand() - 2);
    const dOuts = new Float32Array(B * T * D).map(() => 2 * rand() - 1);
    const qkv = tf.tensor2d(qkvs, [B * T, 3 * D]);
    const dOut = tf.tensor2d(dOuts, [B * T, D]);
    const { out, lse } = fusedAttention(qkv, d, scale);
    const dqkv = fusedAttentionBackward(qkv, out, lse, dOut, d, scale);
    const want = reference(qkvs, dOuts, d, scale);
    const [outs, dqkvs] = [await out.data(), await dqkv.data()];
    assertClose(outs, want.out, 1e-5, 'output');
    for (const [i, name] of ['dq', 'dk', 'dv'].entries()) assertClose(part(dqkvs, i, B * T, D), part(want.dqkv, i, B * T, D), 1e-5, name);
    if (d.compareUnfused) {
      const plain = unfusedAttention(qkv, dOut, d, scale);
      assertClose(outs, await plain.out.data(), 1e-5, 'output vs unfused');
      assertClose(dqkvs, await plain.dqkv!.data(), 1e-5, 'd(qkv) vs unfused');
      tf.dispose([plain.out, plain.dqkv!]);
    }
    tf.dispose([qkv, dOut, out, lse, dqkv]);
  });
}

test('fused attention names a qkv shape that does not fit its dims', { skip }, () => {
  const qkv = tf.zeros([10, 30]) as tf.Tensor2D;
  assert.throws(() => fusedAttention(qkv, { batch: 2, tokens: 5, heads: 2, headDim: 4 }, 0.5), /qkv is \[10,30\], expected \[10, 24\]/);
  assert.throws(() => fusedAttention(qkv, { batch: 2, tokens: 5, heads: 1, headDim: 130 }, 0.5), /head dim 130 must be in \[1, 128\]/);
  qkv.dispose();
  // Past 65535 (image, head) pairs the model takes the unfused path (vit.ts asks first).
  assert.equal(fusedAttentionSupports({ batch: 5462, tokens: 197, heads: 12, headDim: 64 }), false);
  assert.equal(fusedAttentionSupports({ batch: 5461, tokens: 197, heads: 12, headDim: 64 }), true);
});
