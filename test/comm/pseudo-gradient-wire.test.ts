import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bf16ToFloat32, float32ToBf16 } from '../../src/comm/bf16.ts';
import { INT8_CHUNK, packedWords, packInPlace, unpack } from '../../src/comm/pseudo-gradient-wire.ts';
import { Mulberry32 } from '../../src/common/random.ts';

function randomVector(length: number, seed: number): Float32Array {
  const rng = new Mulberry32(seed);
  // Magnitudes that vary by chunk, as a network's layers do.
  return Float32Array.from({ length }, (_, i) => (rng.next() - 0.5) * 10 ** -(Math.floor(i / INT8_CHUNK) % 4));
}

test('fp32 packs the bits as they are', () => {
  const values = randomVector(1001, 1);
  const original = values.slice();
  const words = new Uint32Array(packedWords('fp32', values.length));
  packInPlace('fp32', values, words);
  assert.deepEqual(values, original);
  const out = new Float32Array(values.length);
  unpack('fp32', words, out, false);
  assert.deepEqual(out, original);
});

test('bf16 packs each element rounded to nearest even (bf16.ts), and decodes to what the packer kept', () => {
  const values = randomVector(1001, 2);
  const original = values.slice();
  const words = new Uint32Array(packedWords('bf16', values.length));
  assert.equal(words.length, 501);
  packInPlace('bf16', values, words);
  original.forEach((x, i) => {
    assert.equal(values[i], bf16ToFloat32(float32ToBf16(x)), `element ${i}`);
  });
  const out = new Float32Array(values.length);
  unpack('bf16', words, out, false);
  assert.deepEqual(out, values);
});

test('int8 keeps each element within half a step of its chunk scale and decodes to what the packer kept', () => {
  const length = 3 * INT8_CHUNK + 17;
  const values = randomVector(length, 3);
  const original = values.slice();
  const words = new Uint32Array(packedWords('int8', length));
  assert.equal(words.length, 4 + Math.ceil(length / 4));
  packInPlace('int8', values, words);
  for (let c = 0; c * INT8_CHUNK < length; c++) {
    const chunk = original.subarray(c * INT8_CHUNK, (c + 1) * INT8_CHUNK);
    const scale = Math.max(...chunk.map(Math.abs)) / 127;
    chunk.forEach((x, j) => {
      const i = c * INT8_CHUNK + j;
      assert.ok(Math.abs(values[i]! - x) <= scale / 2 + 1e-7 * Math.abs(x), `element ${i}: ${values[i]} for ${x}, scale ${scale}`);
    });
  }
  const out = new Float32Array(length);
  unpack('int8', words, out, false);
  assert.deepEqual(out, values);
});

test('unpack with add adds the decoded values in float32', () => {
  const values = randomVector(100, 4);
  const words = new Uint32Array(packedWords('int8', 100));
  packInPlace('int8', values, words);
  const base = randomVector(100, 5);
  const sum = base.slice();
  unpack('int8', words, sum, true);
  sum.forEach((s, i) => {
    assert.equal(s, Math.fround(base[i]! + values[i]!));
  });
});

test('with error feedback, int8 packing loses nothing over many rounds: the decoded sum tracks the true sum', () => {
  const length = 2 * INT8_CHUNK;
  const feedback = new Float32Array(length);
  const trueSum = new Float64Array(length);
  const decodedSum = new Float64Array(length);
  const words = new Uint32Array(packedWords('int8', length));
  for (let round = 0; round < 50; round++) {
    const values = randomVector(length, 100 + round);
    values.forEach((x, i) => {
      trueSum[i]! += x;
    });
    const sent = values.map((x, i) => x + feedback[i]!);
    const kept = sent.slice();
    packInPlace('int8', sent, words);
    kept.forEach((x, i) => {
      feedback[i] = x - sent[i]!;
    });
    sent.forEach((x, i) => {
      decodedSum[i]! += x;
    });
  }
  // What is still owed is the last round's feedback only: at most half a step, not 50 of them.
  trueSum.forEach((s, i) => {
    assert.ok(Math.abs(s - decodedSum[i]! - feedback[i]!) < 1e-5, `element ${i}`);
  });
  const worst = Math.max(...trueSum.map((s, i) => Math.abs(s - decodedSum[i]!)));
  assert.ok(worst < 0.05, `largest drift ${worst}`);
});

test('a vector of the wrong packed size is refused', () => {
  assert.throws(() => packInPlace('int8', new Float32Array(10), new Uint32Array(2)), /takes 4 words, got 2/);
  assert.throws(() => unpack('bf16', new Uint32Array(1), new Float32Array(10), false), /take 5 words, got 1/);
});
