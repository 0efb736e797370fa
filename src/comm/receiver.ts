/**
 * Lands incoming data frames in place: each frame must be exactly the next one the current
 * collective expects. Reduce-scatter payloads are added into the destination straight from the
 * socket's read buffer (which lives in WebAssembly memory for the SIMD add: the destination's own
 * kernel memory when it has one, simd-add.ts), float32 or bf16
 * (`--wire bf16`: widened and added in float32); all-gather and scalar payloads are read by the
 * kernel directly into the destination (nextReadBuffer).
 */
import { addBf16BytesInto, bf16ToFloat32 } from './bf16.ts';
import { badFrame, decodeFrameHeader, expectFrame, FRAME_HEADER_BYTES, type FrameHeader } from './frame.ts';
import { addBytesInto, wasmInputOf } from './simd-add.ts';
import type { BinarySink } from './websocket.ts';

/** Below this many payload bytes left, a read goes to the shared buffer (no tiny reads). */
const MIN_DIRECT_READ_BYTES = 64 * 1024;
/** WebSocket header of a frame of 64 KiB or more, plus the data frame header. */
const LARGE_FRAME_HEADERS_BYTES = 10 + FRAME_HEADER_BYTES;

/** A BinarySink that also chooses where the next socket read lands. */
export interface DataSink extends BinarySink {
  nextReadBuffer(shared: Uint8Array): Uint8Array;
}

export interface ReceivePlan {
  /** The frames expected, in arrival order. */
  frames: FrameHeader[];
  /** Destination bytes; a frame's payload lands at offset × element size. */
  target: Uint8Array;
  /**
   * When set, payloads are added into this float32 view of `target` instead of copied: a frame's
   * element i goes to accumulate[offset + i]. Payload elements are float32, or bf16 when
   * elementBytes is 2.
   */
  accumulate: Float32Array | null;
  /** Bytes per element of the payload. */
  elementBytes: number;
  /** Frame `index` of `frames` has fully landed. */
  onFrame(index: number): void;
}

export class DataReceiver implements DataSink {
  private plan: ReceivePlan | null = null;
  private next = 0;
  private readonly header = new Uint8Array(FRAME_HEADER_BYTES);
  private headerHave = 0;
  private payloadBytes = 0;
  /** Inside a frame whose header has been validated, until binaryEnd. */
  private inPayload = false;
  /** Byte position in `plan.target` just past the current frame's payload. */
  private payloadEnd = 0;
  /** Byte position in `plan.target` where the next payload byte goes. */
  private writeAt = 0;
  /** Element of `plan.accumulate` the next added payload element goes to. */
  private addAt = 0;
  /** An element split across two reads: its first bytes wait here. */
  private readonly carry = new Uint8Array(4);
  private readonly carryFloat = new Float32Array(this.carry.buffer);
  private readonly carryBf16 = new Uint16Array(this.carry.buffer, 0, 1);
  private carryHave = 0;

  start(plan: ReceivePlan): void {
    this.plan = plan;
    this.next = 0;
  }

  stop(): void {
    this.plan = null;
    this.inPayload = false;
  }

  readyForBinary(): boolean {
    return this.plan !== null && this.next < this.plan.frames.length;
  }

  binaryStart(payloadLength: number): void {
    if (payloadLength < FRAME_HEADER_BYTES) {
      throw badFrame(`data frame of ${payloadLength} bytes is shorter than the ${FRAME_HEADER_BYTES}-byte header`);
    }
    this.headerHave = 0;
    this.inPayload = false;
    this.payloadBytes = payloadLength - FRAME_HEADER_BYTES;
    this.carryHave = 0;
  }

  binaryBytes(source: Uint8Array, start: number, end: number): void {
    const plan = this.plan!;
    let pos = start;
    if (this.headerHave < FRAME_HEADER_BYTES) {
      const take = Math.min(FRAME_HEADER_BYTES - this.headerHave, end - pos);
      this.header.set(source.subarray(pos, pos + take), this.headerHave);
      this.headerHave += take;
      pos += take;
      if (this.headerHave < FRAME_HEADER_BYTES) return;
      const actual = decodeFrameHeader(this.header, 0, this.payloadBytes);
      expectFrame(actual, plan.frames[this.next]!);
      this.writeAt = actual.offset * plan.elementBytes;
      this.addAt = actual.offset;
      this.payloadEnd = this.writeAt + this.payloadBytes;
      this.inPayload = true;
    }
    if (pos === end) return;
    if (plan.accumulate) this.addPayload(plan.accumulate, source, pos, end);
    else {
      // After a direct read (see nextReadBuffer) the bytes are already in place.
      const inPlace = source.buffer === plan.target.buffer && source.byteOffset + pos === plan.target.byteOffset + this.writeAt;
      if (!inPlace) plan.target.set(source.subarray(pos, end), this.writeAt);
      this.writeAt += end - pos;
    }
  }

  /**
   * Copied payloads (all-gather, scalars) are read by the kernel straight into their destination,
   * saving a copy: between such frames only the headers are read (into `shared`), then the rest
   * of the payload lands in place. That region never extends past the payload, so a read into it
   * holds nothing else. Reduce-scatter payloads, which are added rather than copied, are read into
   * the input region of the destination's kernel memory where it has one (the add then copies
   * nothing); everything else (headers, small frames) into `shared`.
   */
  nextReadBuffer(shared: Uint8Array): Uint8Array {
    const plan = this.plan;
    if (plan?.accumulate) return wasmInputOf(plan.accumulate.buffer) ?? shared;
    if (!plan || this.next >= plan.frames.length) return shared;
    if (this.inPayload) {
      return this.payloadEnd - this.writeAt >= MIN_DIRECT_READ_BYTES ? plan.target.subarray(this.writeAt, this.payloadEnd) : shared;
    }
    const upcoming = plan.frames[this.next]!;
    return upcoming.count * plan.elementBytes >= MIN_DIRECT_READ_BYTES ? shared.subarray(0, LARGE_FRAME_HEADERS_BYTES) : shared;
  }

  /** Adds source[start..end) (float32, or bf16 for 2-byte elements) into `dst` at addAt, handling elements split across reads. */
  private addPayload(dst: Float32Array, source: Uint8Array, start: number, end: number): void {
    const bytes = this.plan!.elementBytes;
    let pos = start;
    let element = this.addAt;
    if (this.carryHave > 0) {
      const take = Math.min(bytes - this.carryHave, end - pos);
      this.carry.set(source.subarray(pos, pos + take), this.carryHave);
      this.carryHave += take;
      pos += take;
      if (this.carryHave < bytes) return;
      dst[element]! += bytes === 2 ? bf16ToFloat32(this.carryBf16[0]!) : this.carryFloat[0]!;
      element++;
      this.carryHave = 0;
    }
    const whole = Math.floor((end - pos) / bytes);
    if (whole > 0) {
      const into = dst.subarray(element, element + whole);
      if (bytes === 2) addBf16BytesInto(into, source, pos);
      else addBytesInto(into, source, pos);
      element += whole;
      pos += whole * bytes;
    }
    this.carry.set(source.subarray(pos, end));
    this.carryHave = end - pos;
    this.addAt = element;
  }

  binaryEnd(): void {
    if (this.headerHave < FRAME_HEADER_BYTES) throw badFrame('data frame ended inside its header');
    this.inPayload = false;
    const index = this.next++;
    this.plan!.onFrame(index);
  }
}
