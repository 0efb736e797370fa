import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { test } from 'node:test';
import {
  decodeFrameHeader,
  encodeFrameHeader,
  expectFrame,
  FRAME_HEADER_BYTES,
  type FrameHeader,
  MAX_CHUNK_BYTES,
  Phase,
} from '../../src/comm/frame.ts';
import { type BinarySink, encodeFrame, FrameParser, type MessageSink, Opcode, writeFrameHeader } from '../../src/comm/websocket.ts';

const header: FrameHeader = { phase: Phase.AllGather, generation: 9, step: 123456, chunk: 4, offset: 1 << 30, count: 1000 };

function encoded(h: FrameHeader = header): Uint8Array {
  const bytes = new Uint8Array(FRAME_HEADER_BYTES);
  encodeFrameHeader(h, bytes);
  return bytes;
}

test('header round-trips', () => {
  assert.deepEqual(decodeFrameHeader(encoded(), 0, 4000), header);
  const at = new Uint8Array(FRAME_HEADER_BYTES + 3);
  encodeFrameHeader(header, at, 3);
  assert.deepEqual(decodeFrameHeader(at, 3), header);
});

test('header length is a multiple of 4 so payloads keep float alignment', () => {
  assert.equal(FRAME_HEADER_BYTES % 4, 0);
});

test('malformed headers are refused with a clear message', () => {
  const badMagic = encoded();
  badMagic[0] = 0;
  assert.throws(() => decodeFrameHeader(badMagic), /bad frame magic/);
  const badVersion = encoded();
  badVersion[4] = 99;
  assert.throws(() => decodeFrameHeader(badVersion), /protocol version 99/);
  const badPhase = encoded();
  badPhase[5] = 7;
  assert.throws(() => decodeFrameHeader(badPhase), /unknown frame phase 7/);
  const badReserved = encoded();
  badReserved[6] = 1;
  assert.throws(() => decodeFrameHeader(badReserved), /reserved/);
  assert.throws(() => decodeFrameHeader(encoded().subarray(0, 10)), /shorter than/);
});

test('payload length must match the declared count', () => {
  assert.throws(() => decodeFrameHeader(encoded(), 0, 3996), /payload is 3996 bytes but the header declares 1000 elements/);
  const scalars = encoded({ ...header, phase: Phase.ScalarAllReduce, count: 3 });
  assert.doesNotThrow(() => decodeFrameHeader(scalars, 0, 24));
});

test('oversized and out-of-range fields are refused', () => {
  const huge = encoded();
  new DataView(huge.buffer).setUint32(24, MAX_CHUNK_BYTES / 4 + 1, true);
  assert.throws(() => decodeFrameHeader(huge), /MAX_CHUNK_BYTES/);
  assert.throws(() => encodeFrameHeader({ ...header, step: -1 }, new Uint8Array(FRAME_HEADER_BYTES)), {
    kind: 'input',
    code: 'RING_FRAME_FIELD',
  });
  assert.throws(() => encodeFrameHeader({ ...header, count: MAX_CHUNK_BYTES }, new Uint8Array(FRAME_HEADER_BYTES)), /MAX_CHUNK_BYTES/);
});

test('expectFrame names both frames on a mismatch', () => {
  assert.doesNotThrow(() => expectFrame({ ...header }, header));
  assert.throws(
    () => expectFrame({ ...header, step: 5 }, header),
    /got all-gather generation 9 step 5 .* expected all-gather generation 9 step 123456/,
  );
  assert.throws(() => expectFrame({ ...header, generation: 8 }, header), /unexpected frame/);
  assert.throws(() => expectFrame({ ...header, phase: Phase.ReduceScatter }, header), /reduce-scatter/);
  assert.throws(() => expectFrame({ ...header, chunk: 5 }, header), /chunk 5/);
});

// The RFC 6455 framing under the data frames (websocket.ts): the ring parses it by hand.

/** Records what a parser finds; binary payloads are reassembled from their streamed pieces. */
function recordingSink(): BinarySink & MessageSink & { events: string[]; ready: boolean } {
  let binary: number[] = [];
  return {
    events: [],
    ready: true,
    readyForBinary() {
      return this.ready;
    },
    binaryStart(length) {
      binary = [];
      this.events.push(`binary-start ${length}`);
    },
    binaryBytes(source, start, end) {
      binary.push(...source.subarray(start, end));
    },
    binaryEnd() {
      this.events.push(`binary ${Buffer.from(binary).toString()}`);
    },
    message(opcode, payload) {
      this.events.push(`${opcode} ${payload.toString()}`);
    },
  };
}

function serverBinaryFrame(payload: Buffer): Buffer {
  const frame = Buffer.alloc(14 + payload.length);
  const headerLength = writeFrameHeader(frame, 0, Opcode.Binary, payload.length);
  payload.copy(frame, headerLength);
  return frame.subarray(0, headerLength + payload.length);
}

test('frames split at every byte boundary parse the same', () => {
  const big = Buffer.alloc(70_000, 'x'); // 64-bit length form
  const medium = Buffer.alloc(300, 'm'); // 16-bit length form
  const stream = Buffer.concat([
    encodeFrame(Opcode.Text, Buffer.from('hello'), false),
    serverBinaryFrame(medium),
    serverBinaryFrame(big),
    encodeFrame(Opcode.Ping, Buffer.from('p'), false),
  ]);
  const whole = recordingSink();
  new FrameParser({ expectMasked: false, maxTextBytes: 100, maxBinaryBytes: 100_000 }, whole, whole).feed(stream, 0, stream.length);
  assert.deepEqual(whole.events, ['1 hello', 'binary-start 300', `binary ${medium}`, 'binary-start 70000', `binary ${big}`, '9 p']);
  for (const step of [1, 3, 7, 4096]) {
    const split = recordingSink();
    const parser = new FrameParser({ expectMasked: false, maxTextBytes: 100, maxBinaryBytes: 100_000 }, split, split);
    for (let at = 0; at < stream.length; at += step) parser.feed(stream, at, Math.min(at + step, stream.length));
    assert.deepEqual(split.events, whole.events, `split every ${step} bytes`);
  }
});

test('masked client frames are unmasked; the parser stops before a binary frame the sink is not ready for', () => {
  const sink = recordingSink();
  const parser = new FrameParser({ expectMasked: true, maxTextBytes: 100, maxBinaryBytes: 0 }, sink, null);
  const text = encodeFrame(Opcode.Text, Buffer.from('masked hello'), true);
  parser.feed(text, 0, text.length);
  assert.deepEqual(sink.events, ['1 masked hello']);

  const paused = recordingSink();
  paused.ready = false;
  const stream = Buffer.concat([encodeFrame(Opcode.Text, Buffer.from('a'), false), serverBinaryFrame(Buffer.from('data'))]);
  const consumed = new FrameParser({ expectMasked: false, maxTextBytes: 100, maxBinaryBytes: 100 }, paused, paused).feed(
    stream,
    0,
    stream.length,
  );
  assert.equal(consumed, 3, 'stops at the binary frame');
  assert.deepEqual(paused.events, ['1 a']);
});

test('protocol violations are refused with clear messages', () => {
  const parse = (bytes: Buffer, expectMasked = false, acceptsBinary = true) => {
    const sink = recordingSink();
    return new FrameParser({ expectMasked, maxTextBytes: 10, maxBinaryBytes: 100 }, sink, acceptsBinary ? sink : null).feed(
      bytes,
      0,
      bytes.length,
    );
  };
  assert.throws(() => parse(serverBinaryFrame(Buffer.alloc(101))), /binary frame of 101 bytes exceeds the limit of 100 bytes/);
  assert.throws(() => parse(encodeFrame(Opcode.Text, Buffer.alloc(11), false)), /text frame of 11 bytes exceeds/);
  assert.throws(() => parse(encodeFrame(Opcode.Text, Buffer.from('x'), true)), /server frame is masked/);
  assert.throws(() => parse(encodeFrame(Opcode.Text, Buffer.from('x'), false), true), /client frame is not masked/);
  assert.throws(() => parse(encodeFrame(Opcode.Binary, Buffer.from('x'), true), true, false), /binary frames are not accepted/);
  const fragment = encodeFrame(Opcode.Text, Buffer.from('x'), false);
  fragment[0] = 0x01; // FIN bit clear
  assert.throws(() => parse(fragment), /fragmented messages are not supported/);
  const rsv = encodeFrame(Opcode.Text, Buffer.from('x'), false);
  rsv[0]! |= 0x40;
  assert.throws(() => parse(rsv), /RSV bits/);
  assert.throws(() => parse(Buffer.from([0x83, 0x00])), /unknown opcode 0x3/);
});
