/**
 * The server side of a ring link (see link.ts): the socket accepted on rank r's own server, over
 * which r sends data frames to its successor r+1. It reads only the successor's authentication
 * and control frames.
 */
import type { IncomingMessage } from 'node:http';
import type net from 'node:net';
import { makeNonce, proveToken, verifyProof } from './auth.ts';
import { encodeFrameHeader, FRAME_HEADER_BYTES, type FrameHeader } from './frame.ts';
import {
  authError,
  helloContext,
  hexField,
  type LinkConfig,
  LinkEnd,
  MAX_AUTH_MESSAGE_BYTES,
  RING_PATH,
  RING_PROTOCOL_VERSION,
  successorOf,
  welcomeContext,
} from './link.ts';
import { CloseCode, FrameParser, LinkError, Opcode, serverHandshakeResponse, writeFrameHeader } from './websocket.ts';

/** Longest WebSocket + data frame header prepended to a payload. */
const MAX_DATA_PREFIX_BYTES = 10 + FRAME_HEADER_BYTES;

interface QueuedWrite {
  head: Buffer;
  payload: Uint8Array;
  done: (err?: Error | null) => void;
}

/**
 * Authenticates the connecting successor, then sends it data frames. Payloads are written without
 * copying; `done` fires once the kernel has taken them, and the caller must not modify a payload
 * before that.
 */
export class SendLink extends LinkEnd {
  /** The successor's rank. */
  readonly peerRank: number;
  private readonly nonce = makeNonce();
  /** The successor sends only text (authentication) and control frames: binary ones are refused. */
  private readonly parser = new FrameParser({ expectMasked: true, maxTextBytes: MAX_AUTH_MESSAGE_BYTES, maxBinaryBytes: 0 }, this, null);
  private blocked = false;
  private readonly queue: QueuedWrite[] = [];

  private constructor(
    socket: net.Socket,
    private readonly config: LinkConfig,
    heartbeatTimeoutMs: number,
  ) {
    const successor = successorOf(config.rank, config.worldSize);
    super(false, `successor rank ${successor}`, heartbeatTimeoutMs);
    this.peerRank = successor;
    this.socket = socket;
  }

  /**
   * Completes the WebSocket upgrade of `request` and authenticates the client as this rank's
   * successor. Resolves once authenticated; rejects (after closing the socket with the reason)
   * when the client is refused or the handshake does not finish within `timeoutMs`. Afterwards
   * the link fails when the successor stays silent for `heartbeatTimeoutMs`.
   */
  static async accept(
    request: IncomingMessage,
    socket: net.Socket,
    head: Buffer,
    config: LinkConfig,
    timeoutMs: number,
    heartbeatTimeoutMs: number,
  ): Promise<SendLink> {
    const key = request.headers['sec-websocket-key'];
    const valid =
      request.method === 'GET' &&
      request.url === RING_PATH &&
      request.headers.upgrade?.toLowerCase() === 'websocket' &&
      request.headers['sec-websocket-version'] === '13' &&
      typeof key === 'string';
    if (!valid) {
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      throw new LinkError('RING_NOT_WEBSOCKET', `refused a non-WebSocket or wrong-path request ${request.method} ${request.url}`);
    }
    socket.setNoDelay(true);
    socket.write(serverHandshakeResponse(key));
    const link = new SendLink(socket, config, heartbeatTimeoutMs);
    const authenticated = link.untilAuthenticated(timeoutMs, () => authError('authentication timed out', CloseCode.PolicyViolation));
    link.watchSocket();
    socket.on('data', (data: Buffer) => link.receive(data));
    socket.on('drain', () => link.flushQueue());
    link.sendMessage(
      Opcode.Text,
      Buffer.from(JSON.stringify({ type: 'challenge', protocol: RING_PROTOCOL_VERSION, nonce: link.nonce.toString('hex') })),
    );
    if (head.length > 0) link.receive(head);
    await authenticated;
    return link;
  }

  private receive(data: Buffer): void {
    this.heartbeat.heard();
    try {
      this.parser.feed(data, 0, data.length);
    } catch (err) {
      this.failParsing(err);
    }
  }

  /**
   * The successor's frames are read until its socket closes: the server counts the connection
   * until then, and nothing read here lands in a caller's memory.
   */
  protected stopReading(): void {}

  protected pausedWithData(): boolean {
    return false;
  }

  protected authMessage(hello: Record<string, unknown>): void {
    const { config } = this;
    const successor = this.peerRank;
    if (hello.type !== 'hello') throw authError(`expected a hello message, got ${String(hello.type)}`);
    if (hello.protocol !== RING_PROTOCOL_VERSION) {
      throw authError(`protocol version ${String(hello.protocol)} is not ${RING_PROTOCOL_VERSION}`, CloseCode.VersionMismatch);
    }
    if (hello.generation !== config.generation) {
      throw authError(
        `generation ${String(hello.generation)} does not match this ring's generation ${config.generation}`,
        CloseCode.GenerationMismatch,
      );
    }
    if (hello.worldSize !== config.worldSize || hello.chunkBytes !== config.chunkBytes) {
      throw authError(
        `world size ${String(hello.worldSize)} / chunk bytes ${String(hello.chunkBytes)} differ from this ring's ${config.worldSize} / ${config.chunkBytes}`,
        CloseCode.ConfigMismatch,
      );
    }
    if (hello.rank !== successor) {
      throw authError(
        `rank ${String(hello.rank)} is not the successor of rank ${config.rank} (expected rank ${successor})`,
        CloseCode.UnexpectedPeer,
      );
    }
    const proof = hexField(hello, 'proof');
    if (!verifyProof(config.token, this.nonce, helloContext(config.generation, successor, config.rank), proof)) {
      throw authError(`rank ${successor} failed authentication (wrong token)`, CloseCode.AuthFailed);
    }
    const clientNonce = hexField(hello, 'nonce');
    let welcomeProof: Buffer;
    try {
      welcomeProof = proveToken(config.token, clientNonce, welcomeContext(config.generation, config.rank, successor));
    } catch (err) {
      throw authError(`bad hello nonce: ${(err as Error).message}`, undefined, { cause: err });
    }
    this.sendMessage(Opcode.Text, Buffer.from(JSON.stringify({ type: 'welcome', proof: welcomeProof.toString('hex') })));
    this.authenticatedNow();
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

  override close(code: number, reason: string): void {
    this.queue.length = 0;
    super.close(code, reason);
  }
}
