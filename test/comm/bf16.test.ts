import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { addBf16BytesInto, addBf16Into, bf16ToFloat32, float32ToBf16, roundToBf16 } from '../../src/comm/bf16.ts';
import { simdAvailable } from '../../src/comm/simd-add.ts';

interface Fixture {
  float32_bits: number[];
  bf16_bits: number[];
  nan_float32_bits: number;
  sum: { acc_bits: number[]; addend_bf16_bits: number[]; result_bits: number[] };
}

// Generated once by test/fixtures/make_bf16_vectors.py with Debian's python3-torch.
const fixture = JSON.parse(readFileSync(new URL('../fixtures/bf16-torch.json', import.meta.url), 'utf8')) as Fixture;

const floatsOfBits = (bits: number[]) => new Float32Array(Uint32Array.from(bits).buffer);

test('roundToBf16 rounds as PyTorch does: ties to even, overflow to infinity, subnormals, signed zeros', () => {
  const src = floatsOfBits(fixture.float32_bits);
  const dst = new Uint16Array(src.length);
  roundToBf16(src, dst);
  assert.deepEqual(Array.from(dst), fixture.bf16_bits);
  for (let i = 0; i < src.length; i++) assert.equal(float32ToBf16(src[i]!), fixture.bf16_bits[i], `element ${i}`);
});

test('NaN stays NaN and widening is exact', () => {
  const nan = floatsOfBits([fixture.nan_float32_bits, 0x7f800001, 0xffc00001]);
  const dst = new Uint16Array(3);
  roundToBf16(nan, dst);
  for (const bits of dst) assert.ok(Number.isNaN(bf16ToFloat32(bits)), `0x${bits.toString(16)} is not NaN`);
  for (const bits of [0x3f80, 0xbf80, 0x0001, 0x7f7f, 0x8000]) assert.equal(float32ToBf16(bf16ToFloat32(bits)), bits);
});

test('addBf16Into and addBf16BytesInto accumulate in float32 as PyTorch does, from any byte alignment', () => {
  const { acc_bits, addend_bf16_bits, result_bits } = fixture.sum;
  const addend = Uint16Array.from(addend_bf16_bits);
  const expected = floatsOfBits(result_bits);
  const dst = floatsOfBits(acc_bits);
  addBf16Into(dst, addend);
  assert.deepEqual(dst, expected);
  for (const start of [0, 1, 2, 3]) {
    const bytes = new Uint8Array(start + addend.byteLength);
    bytes.set(new Uint8Array(addend.buffer), start);
    const into = floatsOfBits(acc_bits);
    addBf16BytesInto(into, bytes, start);
    assert.deepEqual(into, expected, `start ${start}`);
  }
});

test('roundToBf16 and addBf16Into refuse buffers that are too short', () => {
  assert.throws(() => roundToBf16(new Float32Array(4), new Uint16Array(3)), /holds 3 values/);
  assert.throws(() => addBf16Into(new Float32Array(4), new Uint16Array(3)), /holds 3 values/);
});

test('addBf16BytesInto (the SIMD kernel where available) gives addBf16Into’s bits over blocks and ragged tails', () => {
  for (const length of [1, 3, 63, 16 * 1024 + 5, 40_003]) {
    const addend = new Uint16Array(length);
    const acc = new Float32Array(length);
    for (let i = 0; i < length; i++) {
      addend[i] = float32ToBf16(Math.sin(i) * 2 ** ((i % 40) - 20));
      acc[i] = Math.cos(i) * 2 ** ((i % 30) - 15);
    }
    const expected = acc.slice();
    addBf16Into(expected, addend);
    for (const start of [0, 1]) {
      const bytes = new Uint8Array(start + addend.byteLength);
      bytes.set(new Uint8Array(addend.buffer), start);
      const into = acc.slice();
      addBf16BytesInto(into, bytes, start);
      assert.ok(
        Buffer.from(into.buffer).equals(Buffer.from(expected.buffer)),
        `length ${length}, start ${start}${simdAvailable ? ' (SIMD)' : ''}`,
      );
    }
  }
});

test('roundToBf16 (the SIMD kernel where available) gives the scalar rounding’s bits for any float32 bits, NaNs included', () => {
  const bits = new Uint32Array(40_003);
  let state = 12345;
  for (let i = 0; i < bits.length; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    bits[i] = state;
  }
  bits.set([0x7fc00000, 0x7f800001, 0xffffffff, 0x7f7fffff, 0x3f808000, 0x3f818000, 0x80000000, 0x00008000], 0);
  const src = new Float32Array(bits.buffer);
  const dst = new Uint16Array(src.length);
  roundToBf16(src, dst);
  for (let i = 0; i < src.length; i++) {
    const want = float32ToBf16(src[i]!);
    if (dst[i] !== want)
      assert.fail(`element ${i} (0x${bits[i]!.toString(16)}): 0x${dst[i]!.toString(16)}, expected 0x${want.toString(16)}`);
  }
});
