/**
 * The fixed binary header of ring data frames. One data frame is one binary WebSocket message:
 *
 *   offset size field
 *        0    4 magic       FRAME_MAGIC ("VDRG" little-endian)
 *        4    1 version     FRAME_VERSION
 *        5    1 phase       0 reduce-scatter, 1 all-gather, 2 scalar all-reduce, 3 reduce-scatter in bf16
 *        6    2 reserved    must be 0
 *        8    4 generation  run generation (a restarted ring gets a new one)
 *       12    4 step        training step of the collective
 *       16    4 chunk       index of the chunk within its shard
 *       20    4 offset      element offset of the payload in the flat buffer
 *       24    4 count       number of elements in the payload
 *       28  ... payload     count little-endian float32 (float64 for the scalar phase, bf16 for phase 3)
 *
 * All integers are little-endian. The header length is a multiple of 8, so a payload is aligned
 * whenever the frame is.
 */
import { InputError, RecoverableError } from '../common/errors.ts';

export const FRAME_MAGIC = 0x47524456; // bytes 'V' 'D' 'R' 'G'
export const FRAME_VERSION = 1;
export const FRAME_HEADER_BYTES = 28;
/** Largest payload one frame may carry; chunk sizes are capped to it. */
export const MAX_CHUNK_BYTES = 16 * 1024 * 1024;
/** Largest generation, step, chunk, offset or count (they are u32 on the wire). */
export const MAX_U32 = 0xffffffff;

export const Phase = {
  ReduceScatter: 0,
  AllGather: 1,
  ScalarAllReduce: 2,
  /** Reduce-scatter with bf16 payloads (`--wire bf16`), added into float32 sums on receipt. */
  ReduceScatterBf16: 3,
} as const;
export type Phase = (typeof Phase)[keyof typeof Phase];

const PHASE_NAMES: Record<Phase, string> = {
  [Phase.ReduceScatter]: 'reduce-scatter',
  [Phase.AllGather]: 'all-gather',
  [Phase.ScalarAllReduce]: 'scalar all-reduce',
  [Phase.ReduceScatterBf16]: 'reduce-scatter (bf16)',
};

export function phaseName(phase: Phase): string {
  return PHASE_NAMES[phase];
}

/** Bytes per payload element: float32 for the gradient phases, float64 for scalars, 2 for bf16. */
export function elementBytes(phase: Phase): number {
  if (phase === Phase.ScalarAllReduce) return 8;
  return phase === Phase.ReduceScatterBf16 ? 2 : 4;
}

export interface FrameHeader {
  phase: Phase;
  generation: number;
  step: number;
  chunk: number;
  offset: number;
  count: number;
}

/** A received frame header that is malformed: the sender broke the wire format. */
export function badFrame(message: string): RecoverableError {
  return new RecoverableError('RING_BAD_FRAME', message);
}

/** A header to send with a field out of range: the caller's mistake. */
function badField(message: string): InputError {
  return new InputError('RING_FRAME_FIELD', message);
}

function isPhase(value: number): value is Phase {
  return value === Phase.ReduceScatter || value === Phase.AllGather || value === Phase.ScalarAllReduce || value === Phase.ReduceScatterBf16;
}

function checkU32(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > MAX_U32) {
    throw badField(`frame ${name} must be a u32, got ${value}`);
  }
}

/** Writes `header` into `target` at `at` (FRAME_HEADER_BYTES bytes). */
export function encodeFrameHeader(header: FrameHeader, target: Uint8Array, at = 0): void {
  if (!isPhase(header.phase)) throw badField(`unknown frame phase ${header.phase}`);
  for (const field of ['generation', 'step', 'chunk', 'offset', 'count'] as const) {
    checkU32(field, header[field]);
  }
  if (header.count * elementBytes(header.phase) > MAX_CHUNK_BYTES) {
    throw badField(`frame payload of ${header.count} elements exceeds MAX_CHUNK_BYTES (${MAX_CHUNK_BYTES})`);
  }
  const view = new DataView(target.buffer, target.byteOffset + at, FRAME_HEADER_BYTES);
  view.setUint32(0, FRAME_MAGIC, true);
  view.setUint8(4, FRAME_VERSION);
  view.setUint8(5, header.phase);
  view.setUint16(6, 0, true);
  view.setUint32(8, header.generation, true);
  view.setUint32(12, header.step, true);
  view.setUint32(16, header.chunk, true);
  view.setUint32(20, header.offset, true);
  view.setUint32(24, header.count, true);
}

/**
 * Reads and validates the header at `source[at..]`. `payloadBytes`, when given, is the number of
 * bytes that follow the header in the message; it must match the declared count exactly.
 */
export function decodeFrameHeader(source: Uint8Array, at = 0, payloadBytes?: number): FrameHeader {
  if (source.length - at < FRAME_HEADER_BYTES) {
    throw badFrame(`frame of ${source.length - at} bytes is shorter than the ${FRAME_HEADER_BYTES}-byte header`);
  }
  const view = new DataView(source.buffer, source.byteOffset + at, FRAME_HEADER_BYTES);
  const magic = view.getUint32(0, true);
  if (magic !== FRAME_MAGIC) {
    throw badFrame(`bad frame magic 0x${magic.toString(16).padStart(8, '0')} (expected 0x${FRAME_MAGIC.toString(16)})`);
  }
  const version = view.getUint8(4);
  if (version !== FRAME_VERSION) {
    throw badFrame(`frame protocol version ${version} is not supported (expected ${FRAME_VERSION})`);
  }
  const phase = view.getUint8(5);
  if (!isPhase(phase)) throw badFrame(`unknown frame phase ${phase}`);
  const reserved = view.getUint16(6, true);
  if (reserved !== 0) throw badFrame(`frame reserved field is ${reserved}, expected 0`);
  const header: FrameHeader = {
    phase,
    generation: view.getUint32(8, true),
    step: view.getUint32(12, true),
    chunk: view.getUint32(16, true),
    offset: view.getUint32(20, true),
    count: view.getUint32(24, true),
  };
  const declaredBytes = header.count * elementBytes(phase);
  if (declaredBytes > MAX_CHUNK_BYTES) {
    throw badFrame(`frame declares ${declaredBytes} payload bytes, above MAX_CHUNK_BYTES (${MAX_CHUNK_BYTES})`);
  }
  if (payloadBytes !== undefined && payloadBytes !== declaredBytes) {
    throw badFrame(`frame payload is ${payloadBytes} bytes but the header declares ${header.count} elements (${declaredBytes} bytes)`);
  }
  return header;
}

export function describeFrame(header: FrameHeader): string {
  return `${phaseName(header.phase)} generation ${header.generation} step ${header.step} chunk ${header.chunk} offset ${header.offset} count ${header.count}`;
}

/** Throws, naming both frames, unless `actual` is exactly the `expected` frame. */
export function expectFrame(actual: FrameHeader, expected: FrameHeader): void {
  const same =
    actual.phase === expected.phase &&
    actual.generation === expected.generation &&
    actual.step === expected.step &&
    actual.chunk === expected.chunk &&
    actual.offset === expected.offset &&
    actual.count === expected.count;
  if (!same) {
    throw new RecoverableError(
      'RING_UNEXPECTED_FRAME',
      `unexpected frame: got ${describeFrame(actual)}, expected ${describeFrame(expected)}`,
    );
  }
}
