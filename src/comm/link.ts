/**
 * The two authenticated WebSocket links of a ring peer.
 *
 * Rank r listens; its successor (r+1 mod N) connects to it. Data flows from the accepting side to
 * the connecting side, so data frames are server frames and go unmasked:
 *   - `SendLink` is the socket accepted on r's own server: r sends data to r+1 over it.
 *   - `RecvLink` is the socket r opened to r-1's server: r receives data from r-1 over it, parsed
 *     straight out of one reused read buffer (`net` `onread`), without per-message allocations.
 *
 * Authentication (text frames carrying JSON, before any data):
 *   server -> client  {type:'challenge', protocol, nonce}
 *   client -> server  {type:'hello', protocol, generation, worldSize, chunkBytes, rank, nonce, proof}
 *                     proof = proveToken(token, serverNonce, helloContext)
 *   server -> client  {type:'welcome', proof}   proof = proveToken(token, clientNonce, welcomeContext)
 * so each side proves it holds the token without sending it. The server refuses, with a close
 * frame whose reason says why: another protocol version, another generation, a rank that is not
 * its successor, a different world size or chunk size, or a bad proof.
 *
 * Liveness: once authenticated, each side pings the other (RFC 6455 5.5.2) several times per
 * heartbeat timeout, whether or not data is flowing, and the other side answers with a pong. A
 * link that hears nothing at all (no data, ping or pong) for the timeout fails: a cut that sends
 * no FIN or RST (a frozen proxy, a partition) would otherwise leave a collective waiting forever.
 */
import net from 'node:net';
import type { IncomingMessage } from 'node:http';
import { authContext, makeNonce, proveToken, verifyProof } from './auth.ts';
import type { DataSink } from './receiver.ts';
import { WASM_INPUT_BYTES, wasmInput } from './simd-add.ts';
import { encodeFrameHeader, FRAME_HEADER_BYTES, type FrameHeader } from './frame.ts';
import {
  checkHandshakeResponse,
  clientHandshakeRequest,
  CloseCode,
  decodeClosePayload,
  encodeClosePayload,
  encodeFrame,
  FrameParser,
  type FrameSink,
  makeHandshakeKey,
  MAX_HANDSHAKE_BYTES,
  Opcode,
  serverHandshakeResponse,
  WebSocketProtocolError,
  writeFrameHeader,
} from './websocket.ts';

export const RING_PATH = '/vit-dist/ring';
export const RING_PROTOCOL_VERSION = 1;
/** Largest authentication message (they are ~300 bytes). */
const MAX_AUTH_MESSAGE_BYTES = 4096;
/** Size of the reused read buffer of a RecvLink without SIMD: the same as with it. */
const RECV_BUFFER_BYTES = WASM_INPUT_BYTES;
/** Pause between attempts to reach a predecessor that is not listening yet. */
const DIAL_RETRY_MS = 50;
/** After sending a close frame, how long to wait for the peer to close before destroying. */
const CLOSE_GRACE_MS = 1000;
/** Longest WebSocket + data frame header prepended to a payload. */
const MAX_DATA_PREFIX_BYTES = 10 + FRAME_HEADER_BYTES;
/**
 * Pings sent per heartbeat timeout. A peer whose event loop is blocked (a backward pass) sends
 * nothing meanwhile, so a link tolerates a blocked peer for the timeout minus one ping interval.
 */
const HEARTBEAT_PINGS_PER_TIMEOUT = 5;
const EMPTY = Buffer.alloc(0);

/** What both ends of a link must agree on. */
export interface LinkConfig {
  rank: number;
  worldSize: number;
  token: string;
  generation: number;
  chunkBytes: number;
}

export function successorOf(rank: number, worldSize: number): number {
  return (rank + 1) % worldSize;
}

export function predecessorOf(rank: number, worldSize: number): number {
  return (rank + worldSize - 1) % worldSize;
}

export function helloContext(generation: number, from: number, to: number): string {
  return authContext('vit-dist ring hello', { protocol: RING_PROTOCOL_VERSION, generation, from, to });
}

export function welcomeContext(generation: number, from: number, to: number): string {
  return authContext('vit-dist ring welcome', { protocol: RING_PROTOCOL_VERSION, generation, from, to });
}

/** The other side refused or broke the link; `closeCode` is the WebSocket close code to use. */
export class LinkError extends Error {
  override name = 'LinkError';
  constructor(
    message: string,
    readonly closeCode: number = CloseCode.ProtocolError,
  ) {
    super(message);
  }
}

function asLinkError(err: unknown): LinkError {
  if (err instanceof LinkError) return err;
  if (err instanceof WebSocketProtocolError) return new LinkError(err.message, err.closeCode);
  return new LinkError(err instanceof Error ? err.message : String(err));
}

function parseJson(payload: Buffer): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(payload.toString('utf8'));
    if (value && typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // Reported below as a malformed message.
  }
  throw new LinkError('malformed authentication message');
}

function hexField(message: Record<string, unknown>, name: string): Buffer {
  const value = message[name];
  if (typeof value !== 'string' || !/^[0-9a-f]*$/.test(value)) throw new LinkError(`authentication message field ${name} is not hex`);
  return Buffer.from(value, 'hex');
}

/** Sends a close frame and ends the socket, destroying it if the peer does not close in time. */
function closeSocket(socket: net.Socket, code: number, reason: string, masked: boolean): void {
  if (socket.destroyed) return;
  if (socket.writable) socket.end(encodeFrame(Opcode.Close, encodeClosePayload(code, reason), masked));
  setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
}

function closeDescription(close: { code: number; reason: string } | undefined): string {
  return close ? `close code ${close.code}${close.reason ? `: ${close.reason}` : ''}` : 'without a close frame';
}

/**
 * Liveness of one link: pings the peer every timeoutMs / HEARTBEAT_PINGS_PER_TIMEOUT and calls
 * `onSilence` once nothing has been heard from it for `timeoutMs`.
 */
class Heartbeat {
  private timer: NodeJS.Timeout | null = null;
  private lastHeard = 0;

  constructor(
    private readonly timeoutMs: number,
    private readonly ping: () => void,
    private readonly onSilence: () => void,
    /** True while this side itself stopped reading: the silence is then ours, not the peer's. */
    private readonly notReading: () => boolean = () => false,
  ) {}

  start(): void {
    this.lastHeard = Date.now();
    this.timer = setInterval(() => this.tick(), this.timeoutMs / HEARTBEAT_PINGS_PER_TIMEOUT);
    // The link's socket keeps the process alive; the heartbeat alone must not.
    this.timer.unref();
  }

  heard(): void {
    this.lastHeard = Date.now();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private tick(): void {
    this.ping();
    if (this.notReading()) this.heard();
    if (!this.silentTooLong()) return;
    // After our own event loop was blocked, timers run before the sockets are read: let this
    // loop iteration's poll phase read what already arrived before calling the peer silent.
    setImmediate(() => {
      if (this.timer && this.silentTooLong()) {
        this.stop();
        this.onSilence();
      }
    });
  }

  private silentTooLong(): boolean {
    return Date.now() - this.lastHeard > this.timeoutMs;
  }
}

/** "3 s", "0.25 s": how error messages state a timeout. */
function seconds(ms: number): string {
  return `${ms / 1000} s`;
}

interface QueuedWrite {
  head: Buffer;
  payload: Uint8Array;
  done: (err?: Error | null) => void;
}

/**
 * Server side of a link: authenticates the connecting successor, then sends it data frames.
 * Payloads are written without copying; `done` fires once the kernel has taken them, and the
 * caller must not modify a payload before that.
 */
export class SendLink implements FrameSink {
  /** The successor's rank, known once authenticated. */
  peerRank = -1;
  private readonly nonce = makeNonce();
  private readonly parser: FrameParser;
  private authenticated = false;
  private settleAuth: ((err?: Error) => void) | undefined;
  private onBroken: ((err: Error) => void) | undefined;
  private remoteClose: { code: number; reason: string } | undefined;
  private closing = false;
  private blocked = false;
  private readonly queue: QueuedWrite[] = [];
  private readonly heartbeat: Heartbeat;

  private constructor(
    private readonly socket: net.Socket,
    private readonly config: LinkConfig,
    heartbeatTimeoutMs: number,
  ) {
    this.parser = new FrameParser({ expectMasked: true, maxTextBytes: MAX_AUTH_MESSAGE_BYTES, maxBinaryBytes: 0 }, this);
    this.heartbeat = new Heartbeat(
      heartbeatTimeoutMs,
      // Written past any queued data frames: it goes between whole frames either way.
      () => this.socket.write(encodeFrame(Opcode.Ping, EMPTY, false)),
      () => this.refuse(new LinkError(`no heartbeat from successor rank ${this.peerRank} for ${seconds(heartbeatTimeoutMs)}`, CloseCode.GoingAway)),
    );
  }

  /**
   * Completes the WebSocket upgrade of `request` and authenticates the client as this rank's
   * successor. Resolves once authenticated; rejects (after closing the socket with the reason)
   * when the client is refused or the handshake does not finish within `timeoutMs`. Afterwards
   * the link fails when the successor stays silent for `heartbeatTimeoutMs`.
   */
  static accept(request: IncomingMessage, socket: net.Socket, head: Buffer, config: LinkConfig, timeoutMs: number, heartbeatTimeoutMs: number): Promise<SendLink> {
    const key = request.headers['sec-websocket-key'];
    const valid =
      request.method === 'GET' &&
      request.url === RING_PATH &&
      request.headers.upgrade?.toLowerCase() === 'websocket' &&
      request.headers['sec-websocket-version'] === '13' &&
      typeof key === 'string';
    if (!valid) {
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      return Promise.reject(new LinkError(`refused a non-WebSocket or wrong-path request ${request.method} ${request.url}`));
    }
    socket.setNoDelay(true);
    socket.write(serverHandshakeResponse(key));
    const link = new SendLink(socket, config, heartbeatTimeoutMs);
    return link.authenticate(head, timeoutMs);
  }

  private authenticate(head: Buffer, timeoutMs: number): Promise<SendLink> {
    return new Promise<SendLink>((resolve, reject) => {
      const timer = setTimeout(() => this.refuse(new LinkError('authentication timed out', CloseCode.PolicyViolation)), timeoutMs);
      this.settleAuth = (err) => {
        clearTimeout(timer);
        this.settleAuth = undefined;
        if (err) reject(err);
        else resolve(this);
      };
      this.socket.on('data', (data: Buffer) => this.receive(data));
      this.socket.on('error', (err) => this.broken(new LinkError(`socket error: ${err.message}`)));
      this.socket.on('close', () => this.broken(new LinkError(`connection closed ${closeDescription(this.remoteClose)}`, this.remoteClose?.code ?? CloseCode.InternalError)));
      this.socket.on('drain', () => this.flushQueue());
      this.socket.write(encodeFrame(Opcode.Text, Buffer.from(JSON.stringify({ type: 'challenge', protocol: RING_PROTOCOL_VERSION, nonce: this.nonce.toString('hex') })), false));
      if (head.length > 0) this.receive(head);
    });
  }

  /** Called once by the ring after authentication: `onBroken` hears of any later failure. */
  attach(onBroken: (err: Error) => void): void {
    this.onBroken = onBroken;
  }

  private receive(data: Buffer): void {
    this.heartbeat.heard();
    try {
      this.parser.feed(data, 0, data.length);
    } catch (err) {
      this.refuse(asLinkError(err));
    }
  }

  /** Closes the link with `err` as the reason and reports it. */
  private refuse(err: LinkError): void {
    if (!this.closing) {
      this.closing = true;
      closeSocket(this.socket, err.closeCode, err.message, false);
    }
    this.report(err);
  }

  private broken(err: LinkError): void {
    this.closing = true;
    this.socket.destroy();
    this.report(err);
  }

  private report(err: Error): void {
    this.heartbeat.stop();
    if (this.settleAuth) {
      this.settleAuth(err);
    } else if (this.onBroken) {
      const onBroken = this.onBroken;
      this.onBroken = undefined;
      onBroken(err);
    }
  }

  /** Always "ready", so that a binary frame's header is parsed and refused at once. */
  readyForBinary(): boolean {
    return true;
  }
  binaryStart(): void {}
  binaryBytes(): void {}
  binaryEnd(): void {}

  message(opcode: number, payload: Buffer): void {
    if (opcode === Opcode.Ping) {
      this.socket.write(encodeFrame(Opcode.Pong, payload, false));
    } else if (opcode === Opcode.Close) {
      this.remoteClose = decodeClosePayload(payload);
      if (!this.closing) {
        this.closing = true;
        this.socket.end(encodeFrame(Opcode.Close, encodeClosePayload(CloseCode.Normal, ''), false));
      }
    } else if (opcode === Opcode.Text && !this.authenticated) {
      this.checkHello(parseJson(payload));
    } else if (opcode !== Opcode.Pong) {
      throw new LinkError('unexpected message from the successor: it may only send close, ping and pong frames', CloseCode.PolicyViolation);
    }
  }

  private checkHello(hello: Record<string, unknown>): void {
    const { config } = this;
    const successor = successorOf(config.rank, config.worldSize);
    if (hello.type !== 'hello') throw new LinkError(`expected a hello message, got ${String(hello.type)}`);
    if (hello.protocol !== RING_PROTOCOL_VERSION) {
      throw new LinkError(`protocol version ${String(hello.protocol)} is not ${RING_PROTOCOL_VERSION}`, CloseCode.VersionMismatch);
    }
    if (hello.generation !== config.generation) {
      throw new LinkError(`generation ${String(hello.generation)} does not match this ring's generation ${config.generation}`, CloseCode.GenerationMismatch);
    }
    if (hello.worldSize !== config.worldSize || hello.chunkBytes !== config.chunkBytes) {
      throw new LinkError(
        `world size ${String(hello.worldSize)} / chunk bytes ${String(hello.chunkBytes)} differ from this ring's ${config.worldSize} / ${config.chunkBytes}`,
        CloseCode.ConfigMismatch,
      );
    }
    if (hello.rank !== successor) {
      throw new LinkError(`rank ${String(hello.rank)} is not the successor of rank ${config.rank} (expected rank ${successor})`, CloseCode.UnexpectedPeer);
    }
    const proof = hexField(hello, 'proof');
    if (!verifyProof(config.token, this.nonce, helloContext(config.generation, successor, config.rank), proof)) {
      throw new LinkError(`rank ${successor} failed authentication (wrong token)`, CloseCode.AuthFailed);
    }
    const clientNonce = hexField(hello, 'nonce');
    let welcomeProof: Buffer;
    try {
      welcomeProof = proveToken(config.token, clientNonce, welcomeContext(config.generation, config.rank, successor));
    } catch (err) {
      throw new LinkError(`bad hello nonce: ${(err as Error).message}`);
    }
    this.socket.write(encodeFrame(Opcode.Text, Buffer.from(JSON.stringify({ type: 'welcome', proof: welcomeProof.toString('hex') })), false));
    this.authenticated = true;
    this.peerRank = successor;
    this.heartbeat.start();
    this.settleAuth?.();
  }

  /** Queues one data frame. `done` fires when the payload has been written or the link failed. */
  sendData(header: FrameHeader, payload: Uint8Array, done: (err?: Error | null) => void): void {
    const prefix = Buffer.allocUnsafe(MAX_DATA_PREFIX_BYTES);
    const wsHeaderBytes = writeFrameHeader(prefix, 0, Opcode.Binary, FRAME_HEADER_BYTES + payload.byteLength);
    encodeFrameHeader(header, prefix, wsHeaderBytes);
    const write: QueuedWrite = { head: prefix.subarray(0, wsHeaderBytes + FRAME_HEADER_BYTES), payload, done };
    if (this.blocked) this.queue.push(write);
    else this.write(write);
  }

  /**
   * Backpressure: once the socket reports its buffer full, frames wait in `queue` (holding only
   * references to the caller's memory) until 'drain'.
   */
  private write(write: QueuedWrite): void {
    this.socket.cork();
    this.socket.write(write.head);
    const accepted = this.socket.write(write.payload, write.done);
    this.socket.uncork();
    if (!accepted) this.blocked = true;
  }

  private flushQueue(): void {
    this.blocked = false;
    while (!this.blocked && this.queue.length > 0) this.write(this.queue.shift()!);
  }

  close(code: number, reason: string): void {
    this.onBroken = undefined;
    this.heartbeat.stop();
    this.queue.length = 0;
    if (!this.closing) {
      this.closing = true;
      closeSocket(this.socket, code, reason, false);
    }
  }
}

/**
 * Client side of a link: dials the predecessor's server, authenticates, then hands each data
 * frame to `dataSink` as it is parsed out of the read buffer. Reading pauses (leaving the bytes
 * in the kernel, so TCP pushes back on the sender) while `dataSink` is not ready for a frame.
 */
export class RecvLink implements FrameSink {
  private readonly handshakeKey = makeHandshakeKey();
  private readonly nonce = makeNonce();
  private readonly parser: FrameParser;
  private socket!: net.Socket;
  private handshakeBytes: Buffer | null = Buffer.alloc(0);
  private authenticated = false;
  private settleAuth: ((err?: Error) => void) | undefined;
  private onBroken: ((err: Error) => void) | undefined;
  private remoteClose: { code: number; reason: string } | undefined;
  private closing = false;
  /** Bytes read while `dataSink` was not ready; fed again by `resumeReading`. */
  private stash: Uint8Array | null = null;
  private readonly heartbeat: Heartbeat;

  private constructor(
    private readonly config: LinkConfig,
    private readonly dataSink: DataSink,
    maxDataFrameBytes: number,
    heartbeatTimeoutMs: number,
  ) {
    this.parser = new FrameParser({ expectMasked: false, maxTextBytes: MAX_AUTH_MESSAGE_BYTES, maxBinaryBytes: maxDataFrameBytes }, this);
    const predecessor = predecessorOf(config.rank, config.worldSize);
    this.heartbeat = new Heartbeat(
      heartbeatTimeoutMs,
      () => this.socket.write(encodeFrame(Opcode.Ping, EMPTY, true)),
      () => this.fail(new LinkError(`no heartbeat from predecessor rank ${predecessor} for ${seconds(heartbeatTimeoutMs)}`, CloseCode.GoingAway)),
      // Paused with data waiting (the collective has not started here): the predecessor is ahead
      // of us, not gone, and its pings wait behind that data.
      () => this.stash !== null,
    );
  }

  /**
   * Connects to the predecessor at `address` (retrying while it refuses connections) and
   * authenticates. Rejects with the predecessor's close reason when it refuses this peer, or after
   * `timeoutMs`. Afterwards the link fails when the predecessor stays silent for
   * `heartbeatTimeoutMs`.
   */
  static async dial(
    address: { host: string; port: number },
    config: LinkConfig,
    dataSink: DataSink,
    timeoutMs: number,
    maxDataFrameBytes: number,
    heartbeatTimeoutMs: number,
  ): Promise<RecvLink> {
    const deadline = Date.now() + timeoutMs;
    // Reads land in WebAssembly memory when SIMD is on, so reduce-scatter adds skip a copy. All
    // links of a process may share that region: each read is fully consumed (or copied to the
    // stash) inside its onread callback, before any other socket is read.
    const receiveBuffer = wasmInput() ?? Buffer.allocUnsafe(RECV_BUFFER_BYTES);
    for (;;) {
      const link = new RecvLink(config, dataSink, maxDataFrameBytes, heartbeatTimeoutMs);
      try {
        return await link.open(address, receiveBuffer, deadline);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ECONNREFUSED' || Date.now() + DIAL_RETRY_MS >= deadline) throw err;
        await new Promise((resolve) => setTimeout(resolve, DIAL_RETRY_MS));
      }
    }
  }

  private open(address: { host: string; port: number }, receiveBuffer: Buffer, deadline: number): Promise<RecvLink> {
    return new Promise<RecvLink>((resolve, reject) => {
      const predecessor = predecessorOf(this.config.rank, this.config.worldSize);
      const timer = setTimeout(() => this.fail(new LinkError(`timed out connecting to predecessor rank ${predecessor} at ${address.host}:${address.port}`)), Math.max(0, deadline - Date.now()));
      this.settleAuth = (err) => {
        clearTimeout(timer);
        this.settleAuth = undefined;
        if (err) reject(err);
        else resolve(this);
      };
      this.socket = net.connect({
        host: address.host,
        port: address.port,
        noDelay: true,
        onread: {
          // Asked before each read: all-gather payloads are read straight into place.
          buffer: () => this.dataSink.nextReadBuffer(receiveBuffer),
          callback: (bytes: number, buffer: Uint8Array) => this.onRead(buffer, bytes),
        },
      });
      this.socket.on('connect', () => this.socket.write(clientHandshakeRequest(address.host, address.port, RING_PATH, this.handshakeKey)));
      this.socket.on('error', (err: NodeJS.ErrnoException) => {
        if (this.settleAuth && err.code === 'ECONNREFUSED') {
          this.closing = true;
          this.settleAuth(err);
        } else {
          this.fail(new LinkError(`socket error: ${err.message}`));
        }
      });
      this.socket.on('close', () => this.fail(new LinkError(`connection closed ${closeDescription(this.remoteClose)}`, this.remoteClose?.code ?? CloseCode.InternalError)));
    });
  }

  attach(onBroken: (err: Error) => void): void {
    this.onBroken = onBroken;
  }

  /** onread callback: returns false to pause reading when the data sink is not ready. */
  private onRead(buffer: Uint8Array, bytes: number): boolean {
    if (this.closing) return true;
    this.heartbeat.heard();
    try {
      let start = 0;
      if (this.handshakeBytes) {
        start = this.readHandshake(buffer, bytes);
        if (this.handshakeBytes) return true;
      }
      const consumed = this.parser.feed(buffer, start, bytes);
      if (consumed < bytes) {
        this.stash = Buffer.from(buffer.subarray(consumed, bytes)); // the read buffer is reused: copy
        return false;
      }
    } catch (err) {
      this.fail(asLinkError(err));
    }
    return true;
  }

  /** Collects the HTTP upgrade response; returns where the WebSocket stream starts in `buffer`. */
  private readHandshake(buffer: Uint8Array, bytes: number): number {
    const previous = this.handshakeBytes!;
    const combined = Buffer.concat([previous, buffer.subarray(0, bytes)]);
    const end = combined.indexOf('\r\n\r\n');
    if (end < 0) {
      if (combined.length > MAX_HANDSHAKE_BYTES) throw new LinkError('WebSocket upgrade response is too long');
      this.handshakeBytes = combined;
      return bytes;
    }
    checkHandshakeResponse(combined.subarray(0, end).toString('latin1'), this.handshakeKey);
    this.handshakeBytes = null;
    return end + 4 - previous.length;
  }

  /** Feeds the bytes kept while paused, then resumes reading from the socket. */
  resumeReading(): void {
    const stash = this.stash;
    if (!stash || this.closing) return;
    this.stash = null;
    try {
      const consumed = this.parser.feed(stash, 0, stash.length);
      if (consumed < stash.length) {
        this.stash = stash.subarray(consumed);
        return;
      }
    } catch (err) {
      this.fail(asLinkError(err));
      return;
    }
    this.socket.resume();
  }

  readyForBinary(): boolean {
    return this.authenticated && this.dataSink.readyForBinary();
  }
  binaryStart(payloadLength: number): void {
    this.dataSink.binaryStart(payloadLength);
  }
  binaryBytes(source: Uint8Array, start: number, end: number): void {
    this.dataSink.binaryBytes(source, start, end);
  }
  binaryEnd(): void {
    this.dataSink.binaryEnd();
  }

  message(opcode: number, payload: Buffer): void {
    if (opcode === Opcode.Ping) {
      this.socket.write(encodeFrame(Opcode.Pong, payload, true));
    } else if (opcode === Opcode.Close) {
      this.remoteClose = decodeClosePayload(payload);
      this.fail(new LinkError(`connection closed ${closeDescription(this.remoteClose)}`, this.remoteClose.code));
    } else if (opcode === Opcode.Text && !this.authenticated) {
      this.handleAuthMessage(parseJson(payload));
    } else if (opcode !== Opcode.Pong) {
      throw new LinkError('unexpected text message from the predecessor', CloseCode.PolicyViolation);
    }
  }

  private handleAuthMessage(message: Record<string, unknown>): void {
    const { config } = this;
    const predecessor = predecessorOf(config.rank, config.worldSize);
    if (message.type === 'challenge') {
      if (message.protocol !== RING_PROTOCOL_VERSION) {
        throw new LinkError(`predecessor speaks protocol version ${String(message.protocol)}, not ${RING_PROTOCOL_VERSION}`, CloseCode.VersionMismatch);
      }
      let proof: Buffer;
      try {
        proof = proveToken(config.token, hexField(message, 'nonce'), helloContext(config.generation, config.rank, predecessor));
      } catch (err) {
        throw new LinkError(`bad challenge: ${(err as Error).message}`);
      }
      const hello = {
        type: 'hello',
        protocol: RING_PROTOCOL_VERSION,
        generation: config.generation,
        worldSize: config.worldSize,
        chunkBytes: config.chunkBytes,
        rank: config.rank,
        nonce: this.nonce.toString('hex'),
        proof: proof.toString('hex'),
      };
      this.socket.write(encodeFrame(Opcode.Text, Buffer.from(JSON.stringify(hello)), true));
    } else if (message.type === 'welcome') {
      if (!verifyProof(config.token, this.nonce, welcomeContext(config.generation, predecessor, config.rank), hexField(message, 'proof'))) {
        throw new LinkError(`predecessor rank ${predecessor} failed authentication (wrong token)`, CloseCode.AuthFailed);
      }
      this.authenticated = true;
      this.heartbeat.start();
      this.settleAuth?.();
    } else {
      throw new LinkError(`unexpected authentication message ${String(message.type)}`);
    }
  }

  private fail(err: LinkError): void {
    this.heartbeat.stop();
    this.stopReading();
    if (!this.closing) {
      this.closing = true;
      if (this.remoteClose) {
        // The predecessor closed: answer its close frame, as RFC 6455 asks.
        closeSocket(this.socket, CloseCode.Normal, '', true);
      } else {
        closeSocket(this.socket, err.closeCode, err.message, true);
      }
    }
    if (this.settleAuth) {
      this.settleAuth(err);
    } else if (this.onBroken) {
      const onBroken = this.onBroken;
      this.onBroken = undefined;
      onBroken(err);
    }
  }

  close(code: number, reason: string): void {
    this.onBroken = undefined;
    this.heartbeat.stop();
    this.stopReading();
    if (!this.closing) {
      this.closing = true;
      closeSocket(this.socket, code, reason, true);
    }
  }

  /**
   * The pending read may target a caller's array (DataSink.nextReadBuffer): once the link is
   * broken or closed, nothing more is read, so no late bytes can land there.
   */
  private stopReading(): void {
    this.socket.pause();
  }
}
