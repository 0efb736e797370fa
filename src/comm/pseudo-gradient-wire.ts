// How DiLoCo's pseudo-gradients and the outer step's weight updates are packed for the ring's
// all-gather (bf16 pseudo-gradients take the ring's own bf16 reduce-scatter instead):
//   fp32: as they are.
//   bf16: bfloat16 (bf16.ts: rounded to nearest even), two per 32-bit word; OpenDiLoCo's
//         half-precision all-reduce, at bfloat16's range.
//   int8: per chunk of INT8_CHUNK elements one float32 scale (the chunk's largest magnitude / 127)
//         and one signed byte per element, round(x / scale); INTELLECT-1's 8-bit pseudo-gradients.
// A packed vector is a whole number of 32-bit words, so it travels in the ring's all-gather,
// which copies every rank's words bit for bit. Decoding is plain float32 arithmetic, so every rank
// that decodes the same words gets the same bits. The caller keeps what packing lost (error
// feedback) and adds it to the next vector it packs.

import { roundToBf16 } from './bf16.ts';

export const PSEUDO_GRADIENT_WIRES = ['fp32', 'bf16', 'int8'] as const;
export type PseudoGradientWire = (typeof PSEUDO_GRADIENT_WIRES)[number];

/** Elements that share one int8 scale: small enough to follow the magnitudes of a layer, large enough that scales cost 0.4%. */
export const INT8_CHUNK = 1024;

/** 32-bit words a packed vector of `length` elements takes. */
export function packedWords(wire: PseudoGradientWire, length: number): number {
  if (wire === 'fp32') return length;
  if (wire === 'bf16') return Math.ceil(length / 2);
  return Math.ceil(length / INT8_CHUNK) + Math.ceil(length / 4);
}

/**
 * Packs `values` into `words` (packedWords long) and writes into `values` what the receiver will
 * decode, so the caller can keep the difference (values before minus after) as its error feedback.
 */
export function packInPlace(wire: PseudoGradientWire, values: Float32Array, words: Uint32Array): void {
  const length = values.length;
  if (words.length !== packedWords(wire, length))
    throw new RangeError(`packing ${length} elements as ${wire} takes ${packedWords(wire, length)} words, got ${words.length}`);
  if (wire === 'fp32') {
    words.set(new Uint32Array(values.buffer, values.byteOffset, length));
    return;
  }
  if (wire === 'bf16') {
    // Little-endian: element i is the i-th 16-bit half of the words.
    const halves = new Uint16Array(words.buffer, words.byteOffset, words.length * 2);
    halves.fill(0);
    roundToBf16(values, halves);
    const bits = new Uint32Array(values.buffer, values.byteOffset, length);
    for (let i = 0; i < length; i++) bits[i] = halves[i]! << 16;
    return;
  }
  const chunks = Math.ceil(length / INT8_CHUNK);
  const scales = new Float32Array(words.buffer, words.byteOffset, chunks);
  const bytes = new Int8Array(words.buffer, words.byteOffset + chunks * 4, (words.length - chunks) * 4);
  bytes.fill(0);
  for (let c = 0; c < chunks; c++) {
    const start = c * INT8_CHUNK;
    const end = Math.min(length, start + INT8_CHUNK);
    let largest = 0;
    for (let i = start; i < end; i++) largest = Math.max(largest, Math.abs(values[i]!));
    const scale = Math.fround(largest / 127);
    scales[c] = scale;
    for (let i = start; i < end; i++) {
      const q = scale > 0 ? Math.max(-127, Math.min(127, Math.round(values[i]! / scale))) : 0;
      bytes[i] = q;
      values[i] = bytes[i]! * scale; // the stored byte: no -0 that the receiver cannot see
    }
  }
}

/** Decodes `length` elements packed by packInPlace from `words` into `out`; with `add`, adds them to `out` instead. */
export function unpack(wire: PseudoGradientWire, words: Uint32Array, out: Float32Array, add: boolean): void {
  const length = out.length;
  if (words.length !== packedWords(wire, length))
    throw new RangeError(`${length} elements packed as ${wire} take ${packedWords(wire, length)} words, got ${words.length}`);
  const word = new Uint32Array(1);
  const float = new Float32Array(word.buffer);
  const put = (i: number, value: number): void => {
    out[i] = add ? out[i]! + Math.fround(value) : value;
  };
  if (wire === 'fp32') {
    const floats = new Float32Array(words.buffer, words.byteOffset, length);
    for (let i = 0; i < length; i++) put(i, floats[i]!);
    return;
  }
  if (wire === 'bf16') {
    const halves = new Uint16Array(words.buffer, words.byteOffset, length);
    for (let i = 0; i < length; i++) {
      word[0] = halves[i]! << 16;
      put(i, float[0]!);
    }
    return;
  }
  const chunks = Math.ceil(length / INT8_CHUNK);
  const scales = new Float32Array(words.buffer, words.byteOffset, chunks);
  const bytes = new Int8Array(words.buffer, words.byteOffset + chunks * 4, length);
  for (let i = 0; i < length; i++) put(i, bytes[i]! * scales[Math.floor(i / INT8_CHUNK)]!);
}
