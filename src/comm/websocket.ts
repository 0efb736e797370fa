/**
 * The small part of RFC 6455 the ring needs, written against raw sockets so the data path can
 * parse frames straight out of a reused read buffer (the `ws` library allocates and copies every
 * message, which the wire measurements found to be the largest cost after the add loop).
 *
 * Supported: the HTTP/1.1 upgrade handshake (both sides), unfragmented text, binary, close, ping
 * and pong frames, masking for client frames. Not supported, and refused with a protocol error:
 * fragmented messages and extensions (none are ever negotiated, so RSV bits must be 0).
 * Standard clients and servers (e.g. `ws`) interoperate with it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { RecoverableError } from '../common/errors.ts';

const HANDSHAKE_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** An upgrade request or response longer than this is refused. */
export const MAX_HANDSHAKE_BYTES = 8 * 1024;
/** Control frames (close, ping, pong) carry at most this many bytes (RFC 6455 5.5). */
const MAX_CONTROL_FRAME_BYTES = 125;
/** A close reason is at most 123 bytes: 125 minus the 2-byte status code. */
const MAX_CLOSE_REASON_BYTES = 123;

export const Opcode = {
  Continuation: 0x0,
  Text: 0x1,
  Binary: 0x2,
  Close: 0x8,
  Ping: 0x9,
  Pong: 0xa,
} as const;

/** Close status codes used by vit-dist (4000-4999 are free for applications). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  PolicyViolation: 1008,
  TooBig: 1009,
  InternalError: 1011,
  AuthFailed: 4001,
  VersionMismatch: 4002,
  GenerationMismatch: 4003,
  UnexpectedPeer: 4004,
  ConfigMismatch: 4005,
} as const;

/**
 * A link failed: the other side broke the protocol, refused us, closed or went silent. Recoverable
 * (a new ring generation). `closeCode` is the WebSocket close code the link is (or was) closed with:
 * the ring tells a neighbour's orderly close (Normal) from a failure by it.
 */
export class LinkError extends RecoverableError {
  constructor(
    code: string,
    message: string,
    readonly closeCode: number = CloseCode.ProtocolError,
    options?: ErrorOptions,
  ) {
    super(code, message, options);
  }
}

/** A violation of RFC 6455 by the other side. */
function protocolError(message: string, closeCode: number = CloseCode.ProtocolError): LinkError {
  return new LinkError('WEBSOCKET_PROTOCOL', message, closeCode);
}

export function makeHandshakeKey(): string {
  return randomBytes(16).toString('base64');
}

/** Sec-WebSocket-Accept for a Sec-WebSocket-Key. */
export function handshakeAccept(key: string): string {
  return createHash('sha1')
    .update(key + HANDSHAKE_GUID)
    .digest('base64');
}

export function clientHandshakeRequest(host: string, port: number, path: string, key: string): string {
  const hostHeader = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  return (
    `GET ${path} HTTP/1.1\r\n` +
    `Host: ${hostHeader}\r\n` +
    'Upgrade: websocket\r\n' +
    'Connection: Upgrade\r\n' +
    `Sec-WebSocket-Key: ${key}\r\n` +
    'Sec-WebSocket-Version: 13\r\n\r\n'
  );
}

export function serverHandshakeResponse(key: string): string {
  return (
    'HTTP/1.1 101 Switching Protocols\r\n' +
    'Upgrade: websocket\r\n' +
    'Connection: Upgrade\r\n' +
    `Sec-WebSocket-Accept: ${handshakeAccept(key)}\r\n\r\n`
  );
}

/**
 * Validates the server's answer to `clientHandshakeRequest` (the text up to and excluding the
 * blank line). Throws with the status line when the upgrade was refused.
 */
export function checkHandshakeResponse(head: string, key: string): void {
  const [statusLine = '', ...headerLines] = head.split('\r\n');
  if (!/^HTTP\/1\.1 101 /.test(statusLine)) {
    throw protocolError(`WebSocket upgrade refused: ${statusLine || '(empty response)'}`);
  }
  const headers = new Map<string, string>();
  for (const line of headerLines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  if (headers.get('upgrade')?.toLowerCase() !== 'websocket') {
    throw protocolError('WebSocket upgrade response lacks "Upgrade: websocket"');
  }
  if (headers.get('sec-websocket-accept') !== handshakeAccept(key)) {
    throw protocolError('WebSocket upgrade response has a wrong Sec-WebSocket-Accept');
  }
  if (headers.has('sec-websocket-extensions')) {
    throw protocolError('server negotiated an extension that was not offered');
  }
}

/** Length of the frame header for a payload of `payloadLength` bytes. */
export function frameHeaderLength(payloadLength: number, masked: boolean): number {
  const lengthBytes = payloadLength < 126 ? 0 : payloadLength < 0x10000 ? 2 : 8;
  return 2 + lengthBytes + (masked ? 4 : 0);
}

/**
 * Writes a final-fragment frame header into `target` at `at`; returns its length. With a mask
 * key the header carries it, and the caller must mask the payload with `maskPayload`.
 */
export function writeFrameHeader(target: Uint8Array, at: number, opcode: number, payloadLength: number, maskKey?: Uint8Array): number {
  let pos = at;
  target[pos++] = 0x80 | opcode;
  const maskBit = maskKey ? 0x80 : 0;
  if (payloadLength < 126) {
    target[pos++] = maskBit | payloadLength;
  } else if (payloadLength < 0x10000) {
    target[pos++] = maskBit | 126;
    target[pos++] = payloadLength >>> 8;
    target[pos++] = payloadLength & 0xff;
  } else {
    target[pos++] = maskBit | 127;
    new DataView(target.buffer, target.byteOffset + pos, 8).setBigUint64(0, BigInt(payloadLength), false);
    pos += 8;
  }
  if (maskKey) {
    target.set(maskKey.subarray(0, 4), pos);
    pos += 4;
  }
  return pos - at;
}

/** XORs `data` in place with the 4-byte mask key (RFC 6455 5.3); the same call unmasks. */
export function maskPayload(data: Uint8Array, maskKey: Uint8Array): void {
  for (let i = 0; i < data.length; i++) data[i]! ^= maskKey[i & 3]!;
}

/** One complete small frame (control or text), masked when `masked` (client to server). */
export function encodeFrame(opcode: number, payload: Uint8Array, masked: boolean): Buffer {
  const frame = Buffer.allocUnsafe(frameHeaderLength(payload.length, masked) + payload.length);
  const maskKey = masked ? randomBytes(4) : undefined;
  const headerLength = writeFrameHeader(frame, 0, opcode, payload.length, maskKey);
  frame.set(payload, headerLength);
  if (maskKey) maskPayload(frame.subarray(headerLength), maskKey);
  return frame;
}

export function encodeClosePayload(code: number, reason: string): Buffer {
  let reasonBytes = Buffer.from(reason, 'utf8');
  if (reasonBytes.length > MAX_CLOSE_REASON_BYTES) {
    // Cut on a character boundary so the peer can still decode the reason as UTF-8.
    reasonBytes = Buffer.from(
      reasonBytes
        .subarray(0, MAX_CLOSE_REASON_BYTES)
        .toString('utf8')
        .replace(/\uFFFD+$/, ''),
      'utf8',
    );
  }
  const payload = Buffer.allocUnsafe(2 + reasonBytes.length);
  payload.writeUInt16BE(code, 0);
  payload.set(reasonBytes, 2);
  return payload;
}

export function decodeClosePayload(payload: Uint8Array): { code: number; reason: string } {
  if (payload.length < 2) return { code: 1005, reason: '' };
  const code = (payload[0]! << 8) | payload[1]!;
  return { code, reason: Buffer.from(payload.buffer, payload.byteOffset + 2, payload.length - 2).toString('utf8') };
}

/** Receives the binary frames a `FrameParser` finds, streamed: the data path. */
export interface BinarySink {
  /** Asked before a binary frame's header is consumed: false leaves it (and all after it) unread. */
  readyForBinary(): boolean;
  binaryStart(payloadLength: number): void;
  /** Payload bytes source[start..end) of the current binary frame, in order. Never masked. */
  binaryBytes(source: Uint8Array, start: number, end: number): void;
  binaryEnd(): void;
}

/** Receives the other frames a `FrameParser` finds: the link's own business. */
export interface MessageSink {
  /** A complete, unmasked text, close, ping or pong frame. */
  message(opcode: number, payload: Buffer): void;
}

export interface FrameParserLimits {
  /** True for the server side: client frames must be masked, server frames must not. */
  expectMasked: boolean;
  /** Largest text frame accepted. */
  maxTextBytes: number;
  /** Largest binary frame accepted (when there is a binary sink). */
  maxBinaryBytes: number;
}

enum ParseState {
  Header,
  SmallPayload,
  BinaryPayload,
}

/**
 * Incremental frame parser: feed it bytes as they arrive, in any split. Binary payloads are
 * streamed to the binary sink without copying (only unmasked binary frames are accepted); text and
 * control payloads are collected into a buffer first and go to the message sink. Without a binary
 * sink, binary frames are refused.
 */
export class FrameParser {
  private state = ParseState.Header;
  private readonly header = Buffer.alloc(14);
  private headerHave = 0;
  private opcode = 0;
  private remaining = 0;
  private small: Buffer = Buffer.alloc(0);
  private smallHave = 0;
  private readonly maskKey = Buffer.alloc(4);
  private masked = false;

  constructor(
    private readonly limits: FrameParserLimits,
    private readonly messages: MessageSink,
    private readonly binary: BinarySink | null,
  ) {}

  /**
   * Parses source[start..end). Returns how far it got: less than `end` only when the sink was not
   * ready for the next binary frame; the caller keeps the rest and feeds it again later.
   */
  feed(source: Uint8Array, start: number, end: number): number {
    let pos = start;
    while (pos < end) {
      if (this.state === ParseState.Header) {
        if (this.headerHave === 0 && (source[pos]! & 0x0f) === Opcode.Binary && this.binary && !this.binary.readyForBinary()) {
          return pos;
        }
        pos = this.readHeader(source, pos, end);
      } else if (this.state === ParseState.BinaryPayload) {
        const take = Math.min(this.remaining, end - pos);
        this.binary!.binaryBytes(source, pos, pos + take);
        pos += take;
        this.remaining -= take;
        if (this.remaining === 0) this.finishBinary();
      } else {
        const take = Math.min(this.small.length - this.smallHave, end - pos);
        this.small.set(source.subarray(pos, pos + take), this.smallHave);
        this.smallHave += take;
        pos += take;
        if (this.smallHave === this.small.length) this.finishSmall();
      }
    }
    return pos;
  }

  private finishBinary(): void {
    this.state = ParseState.Header;
    this.binary!.binaryEnd();
  }

  private finishSmall(): void {
    this.state = ParseState.Header;
    if (this.masked) maskPayload(this.small, this.maskKey);
    const payload = this.small;
    this.small = Buffer.alloc(0);
    this.messages.message(this.opcode, payload);
  }

  /** Collects header bytes; once complete, validates them and enters the payload state. */
  private readHeader(source: Uint8Array, pos: number, end: number): number {
    // How many header bytes there are depends on the second byte: collect two, then the rest.
    while (pos < end) {
      const total = this.headerHave < 2 ? 2 : this.fullHeaderLength();
      if (this.headerHave === total) break;
      this.header[this.headerHave++] = source[pos++]!;
    }
    if (this.headerHave < 2 || this.headerHave < this.fullHeaderLength()) return pos;
    this.startFrame();
    return pos;
  }

  private fullHeaderLength(): number {
    const length7 = this.header[1]! & 0x7f;
    const lengthBytes = length7 === 126 ? 2 : length7 === 127 ? 8 : 0;
    return 2 + lengthBytes + (this.header[1]! & 0x80 ? 4 : 0);
  }

  private startFrame(): void {
    const first = this.header[0]!;
    const second = this.header[1]!;
    this.headerHave = 0;
    const fin = (first & 0x80) !== 0;
    const opcode = first & 0x0f;
    this.masked = (second & 0x80) !== 0;
    const length7 = second & 0x7f;
    let length: number;
    let at = 2;
    if (length7 === 126) {
      length = this.header.readUInt16BE(2);
      at = 4;
    } else if (length7 === 127) {
      const big = this.header.readBigUInt64BE(2);
      length = big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big);
      at = 10;
    } else {
      length = length7;
    }
    if (this.masked) this.header.copy(this.maskKey, 0, at, at + 4);

    if (first & 0x70) throw protocolError('frame has RSV bits set but no extension was negotiated');
    if (this.masked !== this.limits.expectMasked) {
      throw protocolError(this.limits.expectMasked ? 'client frame is not masked' : 'server frame is masked');
    }
    if (!fin || opcode === Opcode.Continuation) {
      throw protocolError('fragmented messages are not supported', CloseCode.PolicyViolation);
    }
    this.opcode = opcode;
    switch (opcode) {
      case Opcode.Binary:
        if (!this.binary) {
          throw protocolError('binary frames are not accepted on this connection', CloseCode.PolicyViolation);
        }
        if (this.masked) throw protocolError('masked binary frames are not supported here');
        if (length > this.limits.maxBinaryBytes) {
          throw protocolError(`binary frame of ${length} bytes exceeds the limit of ${this.limits.maxBinaryBytes} bytes`, CloseCode.TooBig);
        }
        this.state = ParseState.BinaryPayload;
        this.remaining = length;
        this.binary.binaryStart(length);
        if (length === 0) this.finishBinary();
        return;
      case Opcode.Text:
        if (length > this.limits.maxTextBytes) {
          throw protocolError(`text frame of ${length} bytes exceeds the limit of ${this.limits.maxTextBytes} bytes`, CloseCode.TooBig);
        }
        break;
      case Opcode.Close:
      case Opcode.Ping:
      case Opcode.Pong:
        if (length > MAX_CONTROL_FRAME_BYTES) {
          throw protocolError(`control frame of ${length} bytes exceeds ${MAX_CONTROL_FRAME_BYTES} bytes`);
        }
        break;
      default:
        throw protocolError(`unknown opcode 0x${opcode.toString(16)}`);
    }
    this.small = Buffer.allocUnsafe(length);
    this.smallHave = 0;
    this.state = ParseState.SmallPayload;
    if (length === 0) this.finishSmall();
  }
}
