/**
 * Element-wise float32 accumulation (dst[i] += src[i]), the inner loop of reduce-scatter.
 *
 * A plain JS loop ran at 3.6-4 ns per float inside the ring; a WebAssembly SIMD loop (f32x4.add)
 * at 0.4-0.8 ns. WebAssembly can only touch its own memory, so the SIMD path stages blocks of
 * `dst` (and of `src`, unless the caller already read it into `wasmInput()`) in that memory. A
 * `dst` that lives in a kernel memory (`kernelMemory`, adopted by the adding thread with
 * `adoptKernelMemory`) is added in place, and its socket reads land in that memory's own input
 * region (`wasmInputOf`): no copies at all. Where WebAssembly SIMD is unavailable, the JS loop is
 * used. All give the same bits: each element is one IEEE float32 addition.
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
/** Where a kernel memory's data starts: after the kernel's blocks and input region. */
export const KERNEL_MEMORY_DATA_AT = MEMORY_PAGES * WASM_PAGE_BYTES;
/** WebAssembly (32-bit) memories hold at most 65536 pages, 4 GiB. */
const MAX_MEMORY_PAGES = 65536;

/**
 * One hand-assembled loop over n elements, 4 per iteration: [dst] = [dst] + widen([src]), dst
 * advancing 16 bytes and src `srcStep` bytes; `load` is the opcode (after 0xfd) that reads src
 * and `widen` what turns it into four float32.
 */
function simdLoop(load: number, srcStep: number, widen: number[]): number[] {
  const I32 = 0x7f;
  const [DST, SRC, N, END] = [0, 1, 2, 3];
  // biome-ignore format: one instruction per line
  return [
    0x01, 0x01, I32, //                                   one local: end (i32)
    0x20, DST, 0x20, N, 0x41, 2, 0x74, 0x6a, 0x21, END, // end = dst + (n << 2)
    0x02, 0x40, //                                        block
    0x20, DST, 0x20, END, 0x4f, 0x0d, 0, //                if dst >= end: break
    0x03, 0x40, //                                        loop
    0x20, DST, //                                         (address for the store)
    0x20, DST, 0xfd, 0x00, 0x00, 0x00, //                 v128.load [dst] (align 1: any alignment)
    0x20, SRC, 0xfd, load, 0x00, 0x00, //                 load [src]
    ...widen,
    0xfd, 0xe4, 0x01, //                                  f32x4.add
    0xfd, 0x0b, 0x00, 0x00, //                            v128.store [dst]
    0x20, SRC, 0x41, srcStep, 0x6a, 0x21, SRC, //         src += srcStep
    0x20, DST, 0x41, 16, 0x6a, 0x22, DST, //              dst += 16
    0x20, END, 0x49, 0x0d, 0, //                          continue while dst < end
    0x0b, 0x0b, //                                        end loop, end block
    0x0b, //                                              end function
  ];
}

/**
 * The hand-assembled float32 -> bf16 loop, 4 per iteration (src advancing 16 bytes, dst 8), as
 * bf16.ts rounds: bits + 0x7fff + ((bits >>> 16) & 1), >>> 16; a NaN keeps its top half with the
 * quiet bit set (bitselect on f32x4.ne(x, x)); i16x8.narrow_i32x4_u and v128.store64_lane write
 * the four halves.
 */
function toBf16Loop(): number[] {
  const [I32, V128] = [0x7f, 0x7b];
  const [DST, SRC, N, END, X] = [0, 1, 2, 3, 4];
  const splat = (leb: number[]) => [0x41, ...leb, 0xfd, 0x11]; // i32.const; i32x4.splat
  const shr16 = [0x41, 16, 0xfd, 0xad, 0x01]; // i32.const 16; i32x4.shr_u
  // biome-ignore format: one instruction per line
  return [
    0x02, 0x01, I32, 0x01, V128, //                       locals: end (i32), x (v128)
    0x20, SRC, 0x20, N, 0x41, 2, 0x74, 0x6a, 0x21, END, // end = src + (n << 2)
    0x02, 0x40, //                                        block
    0x20, SRC, 0x20, END, 0x4f, 0x0d, 0, //                if src >= end: break
    0x03, 0x40, //                                        loop
    0x20, DST, //                                         (address for the store)
    0x20, SRC, 0xfd, 0x00, 0x00, 0x00, 0x21, X, //        x = v128.load [src]
    0x20, X, ...shr16, ...splat([0xc0, 0x00]), 0xfd, 0x50, // quiet NaN: (x >>> 16) | 0x40
    0x20, X, 0x20, X, ...shr16, ...splat([1]), 0xfd, 0x4e, // x, (x >>> 16) & 1
    ...splat([0xff, 0xff, 0x01]), 0xfd, 0xae, 0x01, //    + 0x7fff
    0xfd, 0xae, 0x01, ...shr16, //                        rounded: (x + bias) >>> 16
    0x20, X, 0x20, X, 0xfd, 0x42, //                      NaN mask: f32x4.ne(x, x)
    0xfd, 0x52, //                                        v128.bitselect(quiet NaN, rounded, mask)
    0x22, X, 0x20, X, 0xfd, 0x86, 0x01, //                i16x8.narrow_i32x4_u(it, it)
    0xfd, 0x5b, 0x00, 0x00, 0x00, //                     v128.store64_lane [dst] lane 0
    0x20, SRC, 0x41, 16, 0x6a, 0x21, SRC, //              src += 16
    0x20, DST, 0x41, 8, 0x6a, 0x21, DST, //               dst += 8
    0x20, SRC, 0x20, END, 0x49, 0x0d, 0, //               continue while src < end
    0x0b, 0x0b, //                                        end loop, end block
    0x0b, //                                              end function
  ];
}

/**
 * Hand-assembled module: (import "env" "memory"), (func (export "add") (param dst src n)) adding
 * float32, (func (export "addBf16") (param dst src n)) adding bf16 widened to float32
 * (v128.load16x4_u, then i32x4.shl by 16: exact), and (func (export "toBf16") (param dst src n)).
 */
function simdAddModule(sharedMemory: boolean): Uint8Array<ArrayBuffer> {
  const section = (id: number, content: number[]) => [id, ...leb128(content.length), ...content];
  const name = (text: string) => [text.length, ...Array.from(text, (c) => c.charCodeAt(0))];
  const I32 = 0x7f;
  const add = simdLoop(0x00, 16, []);
  const addBf16 = simdLoop(0x04, 8, [0x41, 16, 0xfd, 0xab, 0x01]); // v128.load16x4_u; i32.const 16; i32x4.shl
  const toBf16 = toBf16Loop();
  const code = (body: number[]) => [...leb128(body.length), ...body];
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
    // import memory: at least MEMORY_PAGES; a shared one (limits flag 3) needs a maximum
    ...section(2, [
      1,
      ...name('env'),
      ...name('memory'),
      0x02,
      ...(sharedMemory ? [0x03, ...leb128(MEMORY_PAGES), ...leb128(MAX_MEMORY_PAGES)] : [0x00, ...leb128(MEMORY_PAGES)]),
    ]),
    ...section(3, [3, 0, 0, 0]), // three functions of type 0
    ...section(7, [3, ...name('add'), 0x00, 0, ...name('addBf16'), 0x00, 1, ...name('toBf16'), 0x00, 2]), // export them
    ...section(10, [3, ...code(add), ...code(addBf16), ...code(toBf16)]), // their code
  ]);
}

/** Unsigned LEB128, as WebAssembly encodes sizes. */
function leb128(value: number): number[] {
  const bytes: number[] = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value !== 0) byte |= 0x80;
    bytes.push(byte);
  } while (value !== 0);
  return bytes;
}

interface SimdKernel {
  memory: Uint8Array;
  add: (dst: number, src: number, n: number) => void;
  addBf16: (dst: number, src: number, n: number) => void;
  toBf16: (dst: number, src: number, n: number) => void;
}

function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): SimdKernel {
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  // The memories never grow (maximum = initial), so this view stays valid.
  const { add, addBf16, toBf16 } = instance.exports as unknown as Omit<SimdKernel, 'memory'>;
  return { memory: new Uint8Array(memory.buffer), add, addBf16, toBf16 };
}

function loadSimdKernel(): SimdKernel | null {
  const bytes = simdAddModule(false);
  if (typeof WebAssembly === 'undefined' || !WebAssembly.validate(bytes)) return null;
  return instantiate(new WebAssembly.Module(bytes), new WebAssembly.Memory({ initial: MEMORY_PAGES, maximum: MEMORY_PAGES }));
}

const kernel = process.env.VIT_DIST_NO_SIMD ? null : loadSimdKernel();
/** The kernels over adopted kernel memories, by their buffer: an array whose buffer is one of these is added in place. */
const residentKernels = new WeakMap<ArrayBufferLike, SimdKernel>();
let sharedModule: WebAssembly.Module | null = null;

/**
 * A shared WebAssembly memory for `length` floats at KERNEL_MEMORY_DATA_AT, after the room a
 * kernel needs: a thread that adopts it adds into those floats in place. Null without SIMD or
 * beyond 4 GiB (the caller then uses a plain SharedArrayBuffer, added through staging blocks).
 */
export function kernelMemory(length: number): WebAssembly.Memory | null {
  if (!kernel) return null;
  const pages = Math.ceil((KERNEL_MEMORY_DATA_AT + length * 4) / WASM_PAGE_BYTES);
  if (pages > MAX_MEMORY_PAGES) return null;
  return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
}

/**
 * Instantiates the kernel over `memory` (from kernelMemory) in this thread: afterwards adds into
 * arrays on `memory.buffer` run in place. Two threads must not add through one memory at once
 * (its blocks and input region are the kernel's scratch): the ring thread is the one that adds.
 */
export function adoptKernelMemory(memory: WebAssembly.Memory): void {
  if (!kernel || residentKernels.has(memory.buffer)) return;
  sharedModule ??= new WebAssembly.Module(simdAddModule(true));
  residentKernels.set(memory.buffer, instantiate(sharedModule, memory));
}

/** The input region of the adopted kernel memory whose buffer is `buffer`, or null. */
export function wasmInputOf(buffer: ArrayBufferLike): Buffer | null {
  const resident = residentKernels.get(buffer);
  return resident ? Buffer.from(resident.memory.buffer, INPUT_AT, WASM_INPUT_BYTES) : null;
}

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
  addStaged(kernel, dst, source, start, 4);
}

/**
 * The SIMD form of bf16.ts's addBf16BytesInto: dst[i] += float32(the bf16 at source bytes
 * [start + 2i, start + 2i + 2)). Returns false, doing nothing, without SIMD.
 */
export function addBf16BytesSimd(dst: Float32Array, source: Uint8Array, start: number): boolean {
  if (!kernel) return false;
  addStaged(kernel, dst, source, start, 2);
  return true;
}

/**
 * bf16.ts's roundToBf16 on the SIMD kernel: dst[i] = bf16 bits of src[i] for the first
 * `src.length & ~3` elements, block by block through WebAssembly memory; returns how many it did
 * (0 without SIMD), the caller rounds the rest.
 */
export function roundToBf16Simd(src: Float32Array, dst: Uint16Array): number {
  if (!kernel) return 0;
  const memory = kernel.memory;
  const vectorTotal = src.length & ~3;
  const srcBytes = new Uint8Array(src.buffer, src.byteOffset, vectorTotal * 4);
  const dstBytes = new Uint8Array(dst.buffer, dst.byteOffset, vectorTotal * 2);
  for (let done = 0; done < vectorTotal; done += BLOCK_FLOATS) {
    const count = Math.min(BLOCK_FLOATS, vectorTotal - done);
    memory.set(srcBytes.subarray(done * 4, (done + count) * 4), SRC_AT);
    kernel.toBf16(DST_AT, SRC_AT, count);
    dstBytes.set(memory.subarray(DST_AT, DST_AT + count * 2), done * 2);
  }
  return vectorTotal;
}

/**
 * Adds `elementBytes`-wide source elements (float32 or bf16) into dst: in place when dst lives in
 * an adopted kernel memory, else staged block by block in the kernel's memory. The source is
 * copied in only when it is not in that memory already.
 */
function addStaged(ownKernel: SimdKernel, dst: Float32Array, source: Uint8Array, start: number, elementBytes: 2 | 4): void {
  const dstKernel = residentKernels.get(dst.buffer);
  const kernel = dstKernel ?? ownKernel;
  const memory = kernel.memory;
  const sourceResident = source.buffer === memory.buffer;
  /** dst's bytes when they must be staged at DST_AT; null when dst is in the kernel's memory. */
  const dstBytes = dstKernel ? null : new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
  const vectorAdd = elementBytes === 4 ? kernel.add : kernel.addBf16;
  const view = new DataView(memory.buffer);
  const block = dstKernel && sourceResident ? dst.length : BLOCK_FLOATS;
  for (let done = 0; done < dst.length; done += block) {
    const count = Math.min(block, dst.length - done);
    const vectorCount = count & ~3;
    const byteStart = done * 4;
    const srcStart = start + done * elementBytes;
    const dstAt = dstBytes ? DST_AT : dst.byteOffset + byteStart;
    if (dstBytes) memory.set(dstBytes.subarray(byteStart, byteStart + count * 4), DST_AT);
    let srcAt: number;
    if (sourceResident) {
      srcAt = source.byteOffset + srcStart;
    } else {
      memory.set(source.subarray(srcStart, srcStart + count * elementBytes), SRC_AT);
      srcAt = SRC_AT;
    }
    vectorAdd(dstAt, srcAt, vectorCount);
    if (vectorCount < count) {
      // The last 1-3 elements: scalar, through a float32 view of the block.
      const dstBlock = new Float32Array(memory.buffer, dstAt, count);
      for (let i = vectorCount; i < count; i++) {
        const at = srcAt + i * elementBytes;
        dstBlock[i]! += elementBytes === 4 ? view.getFloat32(at, true) : widenBf16(view.getUint16(at, true));
      }
    }
    if (dstBytes) dstBytes.set(memory.subarray(DST_AT, DST_AT + count * 4), byteStart);
  }
}

const widenScratch = new DataView(new ArrayBuffer(4));
function widenBf16(bits: number): number {
  widenScratch.setUint32(0, bits << 16);
  return widenScratch.getFloat32(0);
}

/** dst[i] += src[i] for i < dst.length (src must be at least as long). */
export function addInto(dst: Float32Array, src: Float32Array): void {
  if (!kernel) addIntoScalar(dst, src);
  else addBytesInto(dst, new Uint8Array(src.buffer, src.byteOffset, dst.length * 4), 0);
}
