/**
 * bfloat16 for the wire: float32 rounded to its top 16 bits (round to nearest, ties to even, as
 * PyTorch's `.to(torch.bfloat16)`), and bf16 values added into float32 sums. A bf16 is the high
 * half of the float32 with the same bits, so widening is exact (`bits << 16`).
 *
 * Every function is a pure element-wise loop (the rounding and the bf16 add run on simd-add.ts's
 * WebAssembly SIMD kernels where available): the same inputs give the same bits on every machine,
 * which keeps reduce-scatter with `--wire bf16` deterministic for a given worker count.
 */

import { addBf16BytesSimd, roundToBf16Simd } from './simd-add.ts';

/** One float32's bits, reused by the scalar forms. */
const scalarFloat = new Float32Array(1);
const scalarBits = new Uint32Array(scalarFloat.buffer);

/** bf16 bits of a float32's bits: round to nearest even; NaN stays a (quiet) NaN. */
function bf16BitsOf(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x0040) & 0xffff;
  // Adding 0x7fff plus the lowest kept bit rounds half-way cases to the even neighbour; a carry
  // into the exponent is the correct rounding up (to infinity past the largest finite bf16).
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The bf16 bits of `value` (rounded to float32 first, as a Float32Array would store it). */
export function float32ToBf16(value: number): number {
  scalarFloat[0] = value;
  return bf16BitsOf(scalarBits[0]!);
}

/** The float32 value of bf16 bits (exact). */
export function bf16ToFloat32(bits: number): number {
  scalarBits[0] = (bits & 0xffff) << 16;
  return scalarFloat[0]!;
}

/** dst[i] = bf16(src[i]) for i < src.length (dst at least as long). */
export function roundToBf16(src: Float32Array, dst: Uint16Array): void {
  if (dst.length < src.length) throw new RangeError(`bf16 destination holds ${dst.length} values, the source ${src.length}`);
  // WebAssembly SIMD for whole groups of four where available (simd-add.ts), the same bits.
  const done = roundToBf16Simd(src, dst);
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = done; i < bits.length; i++) dst[i] = bf16BitsOf(bits[i]!);
}

/** Widening scratch for addBf16Into: 16 Ki floats per pass stay in cache. */
const WIDEN_FLOATS = 16 * 1024;
const widenedBits = new Uint32Array(WIDEN_FLOATS);
const widened = new Float32Array(widenedBits.buffer);

/** dst[i] += float32(src[i]) for i < dst.length (src at least as long): bf16 accumulated in float32. */
export function addBf16Into(dst: Float32Array, src: Uint16Array): void {
  if (src.length < dst.length) throw new RangeError(`bf16 source holds ${src.length} values, the destination ${dst.length}`);
  for (let done = 0; done < dst.length; done += WIDEN_FLOATS) {
    const count = Math.min(WIDEN_FLOATS, dst.length - done);
    for (let i = 0; i < count; i++) widenedBits[i] = src[done + i]! << 16;
    for (let i = 0; i < count; i++) dst[done + i]! += widened[i]!;
  }
}

/**
 * addBf16Into from raw little-endian bytes: dst[i] += the bf16 at source bytes [start + 2i, start + 2i + 2).
 * `start` need not be aligned (socket reads land anywhere).
 */
export function addBf16BytesInto(dst: Float32Array, source: Uint8Array, start: number): void {
  // WebAssembly SIMD where available (simd-add.ts), else the loop below: the same bits.
  if (addBf16BytesSimd(dst, source, start)) return;
  const address = source.byteOffset + start;
  if ((address & 1) === 0) {
    addBf16Into(dst, new Uint16Array(source.buffer, address, dst.length));
    return;
  }
  const aligned = new Uint16Array(dst.length);
  new Uint8Array(aligned.buffer).set(source.subarray(start, start + dst.length * 2));
  addBf16Into(dst, aligned);
}
