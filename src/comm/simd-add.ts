/**
 * Element-wise float32 accumulation (dst[i] += src[i]), the inner loop of reduce-scatter.
 *
 * A plain JS loop ran at 3.6-4 ns per float inside the ring; a WebAssembly SIMD loop (f32x4.add)
 * at 0.4-0.8 ns. WebAssembly can only touch its own memory, so the SIMD path stages blocks of
 * `dst` (and of `src`, unless the caller already read it into `wasmInput()`) in that memory. Where
 * WebAssembly SIMD is unavailable, the JS loop is used. Both give the same bits: each element is
 * one IEEE float32 addition.
 */

/** Floats staged per SIMD call: small enough to stay in L2, big enough to amortize the call. */
const BLOCK_FLOATS = 16 * 1024;
const BLOCK_BYTES = BLOCK_FLOATS * 4;
/**
 * Size of the input region that socket reads land in (see `wasmInput`), so at most one read's
 * worth. 64-256 KiB measured slightly faster than 1 MiB and much faster than 4 MiB: the bytes
 * are added while still in cache.
 */
export const WASM_INPUT_BYTES = 256 * 1024;
const WASM_PAGE_BYTES = 64 * 1024;
/** Memory layout: [dst block][src block][input region]. */
const DST_AT = 0;
const SRC_AT = BLOCK_BYTES;
const INPUT_AT = 2 * BLOCK_BYTES;
const MEMORY_PAGES = Math.ceil((INPUT_AT + WASM_INPUT_BYTES) / WASM_PAGE_BYTES);

/** Hand-assembled module: (import "env" "memory") (func (export "add") (param dst src n) ...). */
function simdAddModule(): Uint8Array<ArrayBuffer> {
  const section = (id: number, content: number[]) => [id, content.length, ...content];
  const name = (text: string) => [text.length, ...Array.from(text, (c) => c.charCodeAt(0))];
  const I32 = 0x7f;
  const [DST, SRC, N, END] = [0, 1, 2, 3];
  const body = [
    0x01,
    0x01,
    I32, //                 one local: end (i32)
    0x20,
    DST,
    0x20,
    N,
    0x41,
    2,
    0x74,
    0x6a,
    0x21,
    END, // end = dst + (n << 2)
    0x02,
    0x40, //                      block
    0x20,
    DST,
    0x20,
    END,
    0x4f,
    0x0d,
    0, // if dst >= end: break
    0x03,
    0x40, //                      loop
    0x20,
    DST, //                       (address for the store)
    0x20,
    DST,
    0xfd,
    0x00,
    0x00,
    0x00, // v128.load [dst] (align 1: any alignment)
    0x20,
    SRC,
    0xfd,
    0x00,
    0x00,
    0x00, // v128.load [src]
    0xfd,
    0xe4,
    0x01, //                f32x4.add
    0xfd,
    0x0b,
    0x00,
    0x00, //          v128.store [dst]
    0x20,
    SRC,
    0x41,
    16,
    0x6a,
    0x21,
    SRC, // src += 16
    0x20,
    DST,
    0x41,
    16,
    0x6a,
    0x22,
    DST, // dst += 16
    0x20,
    END,
    0x49,
    0x0d,
    0, //        continue while dst < end
    0x0b,
    0x0b, //                      end loop, end block
    0x0b, //                            end function
  ];
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00, // magic, version 1
    ...section(1, [1, 0x60, 3, I32, I32, I32, 0]), // type: (i32 i32 i32) -> ()
    ...section(2, [1, ...name('env'), ...name('memory'), 0x02, 0x00, MEMORY_PAGES]), // import memory
    ...section(3, [1, 0]), // one function of type 0
    ...section(7, [1, ...name('add'), 0x00, 0]), // export it as "add"
    ...section(10, [1, body.length, ...body]), // its code
  ]);
}

interface SimdKernel {
  memory: Uint8Array;
  add: (dst: number, src: number, n: number) => void;
}

function loadSimdKernel(): SimdKernel | null {
  const bytes = simdAddModule();
  if (typeof WebAssembly === 'undefined' || !WebAssembly.validate(bytes)) return null;
  const memory = new WebAssembly.Memory({ initial: MEMORY_PAGES, maximum: MEMORY_PAGES });
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
  // The memory never grows (maximum = initial), so this view stays valid.
  return { memory: new Uint8Array(memory.buffer), add: instance.exports.add as SimdKernel['add'] };
}

const kernel = process.env.VIT_DIST_NO_SIMD ? null : loadSimdKernel();

/** True when the WebAssembly SIMD kernel is in use. */
export const simdAvailable = kernel !== null;

/** The plain JS loop: the fallback, and the reference the SIMD path is tested against. */
export function addIntoScalar(dst: Float32Array, src: Float32Array): void {
  const n = dst.length;
  for (let i = 0; i < n; i++) dst[i]! += src[i]!;
}

/**
 * A region of WebAssembly memory that socket reads may land in; adds whose source lies there
 * skip one copy. Null without SIMD.
 */
export function wasmInput(): Buffer | null {
  return kernel ? Buffer.from(kernel.memory.buffer, INPUT_AT, WASM_INPUT_BYTES) : null;
}

/**
 * dst[i] += the float32 stored at source bytes [start + 4i, start + 4i + 4), for i < dst.length.
 * `start` need not be aligned. When `source` is `wasmInput()` the bytes are not copied.
 */
export function addBytesInto(dst: Float32Array, source: Uint8Array, start: number): void {
  if (!kernel) {
    const address = source.byteOffset + start;
    let src: Float32Array;
    if ((address & 3) === 0) {
      src = new Float32Array(source.buffer, address, dst.length);
    } else {
      src = new Float32Array(dst.length); // misaligned: copy to an aligned array first
      new Uint8Array(src.buffer).set(source.subarray(start, start + dst.length * 4));
    }
    addIntoScalar(dst, src);
    return;
  }
  const memory = kernel.memory;
  const resident = source.buffer === memory.buffer;
  const dstBytes = new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
  for (let done = 0; done < dst.length; done += BLOCK_FLOATS) {
    const count = Math.min(BLOCK_FLOATS, dst.length - done);
    const vectorCount = count & ~3;
    const byteStart = done * 4;
    memory.set(dstBytes.subarray(byteStart, byteStart + count * 4), DST_AT);
    let srcAt: number;
    if (resident) {
      srcAt = source.byteOffset + start + byteStart;
    } else {
      memory.set(source.subarray(start + byteStart, start + byteStart + count * 4), SRC_AT);
      srcAt = SRC_AT;
    }
    kernel.add(DST_AT, srcAt, vectorCount);
    if (vectorCount < count) {
      // The last 1-3 floats: scalar, through float32 views of the staged block.
      const dstBlock = new Float32Array(memory.buffer, DST_AT, count);
      const view = new DataView(memory.buffer);
      for (let i = vectorCount; i < count; i++) dstBlock[i]! += view.getFloat32(srcAt + i * 4, true);
    }
    dstBytes.set(memory.subarray(DST_AT, DST_AT + count * 4), byteStart);
  }
}

/** dst[i] += src[i] for i < dst.length (src must be at least as long). */
export function addInto(dst: Float32Array, src: Float32Array): void {
  if (!kernel) addIntoScalar(dst, src);
  else addBytesInto(dst, new Uint8Array(src.buffer, src.byteOffset, dst.length * 4), 0);
}
