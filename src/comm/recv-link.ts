/**
 * The client side of a ring link (see link.ts): the socket rank r opens to its predecessor's
 * server, over which r receives data frames. The data path runs one way: the socket's reads land
 * in one reused buffer (`net` `onread`), the FrameParser finds the frames in it, binary frames go
 * straight to the DataReceiver (receiver.ts), which lands them in the collective's buffer; the
 * link itself sees only the authentication and control frames.
 */
import net from 'node:net';
import { makeNonce, proveToken, verifyProof } from './auth.ts';
import {
  authError,
  helloContext,
  hexField,
  type LinkConfig,
  LinkEnd,
  MAX_AUTH_MESSAGE_BYTES,
  type PeerAddress,
  predecessorOf,
  RING_PATH,
  RING_PROTOCOL_VERSION,
  welcomeContext,
} from './link.ts';
import { reachableLocalPath } from './local-socket.ts';
import type { DataSink } from './receiver.ts';
import { WASM_INPUT_BYTES, wasmInput } from './simd-add.ts';
import {
  checkHandshakeResponse,
  clientHandshakeRequest,
  CloseCode,
  FrameParser,
  LinkError,
  makeHandshakeKey,
  MAX_HANDSHAKE_BYTES,
  Opcode,
} from './websocket.ts';

/** Size of the reused read buffer of a RecvLink without SIMD: the same as with it. */
const RECV_BUFFER_BYTES = WASM_INPUT_BYTES;
/** Pause between attempts to reach a predecessor that is not listening yet. */
const DIAL_RETRY_MS = 50;

/**
 * Dials the predecessor's server, authenticates, then streams its data frames into `dataSink`.
 * Reading pauses (leaving the bytes in the kernel, so TCP pushes back on the sender) while
 * `dataSink` is not ready for a frame. The sink is ready only while a collective runs, which
 * starts only after this link is authenticated, so no data frame is taken before that.
 */
export class RecvLink extends LinkEnd {
  private readonly handshakeKey = makeHandshakeKey();
  private readonly nonce = makeNonce();
  private readonly parser: FrameParser;
  private handshakeBytes: Buffer | null = Buffer.alloc(0);
  /** Bytes read while `dataSink` was not ready; fed again by `resumeReading`. */
  private stash: Uint8Array | null = null;

  private constructor(
    private readonly config: LinkConfig,
    dataSink: DataSink,
    maxDataFrameBytes: number,
    heartbeatTimeoutMs: number,
  ) {
    super(true, `predecessor rank ${predecessorOf(config.rank, config.worldSize)}`, heartbeatTimeoutMs);
    this.parser = new FrameParser(
      { expectMasked: false, maxTextBytes: MAX_AUTH_MESSAGE_BYTES, maxBinaryBytes: maxDataFrameBytes },
      this,
      dataSink,
    );
  }

  /**
   * Connects to the predecessor at `address` (retrying while it refuses connections) and
   * authenticates. Rejects with the predecessor's close reason when it refuses this peer, or after
   * `timeoutMs`. Afterwards the link fails when the predecessor stays silent for
   * `heartbeatTimeoutMs`.
   */
  static async dial(
    address: PeerAddress,
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
        await link.open(address, dataSink, receiveBuffer, deadline);
        return link;
      } catch (err) {
        const refused = err instanceof LinkError && (err.cause as NodeJS.ErrnoException | undefined)?.code === 'ECONNREFUSED';
        if (!refused || Date.now() + DIAL_RETRY_MS >= deadline) throw err;
        await new Promise((resolve) => setTimeout(resolve, DIAL_RETRY_MS));
      }
    }
  }

  private open(address: PeerAddress, dataSink: DataSink, receiveBuffer: Buffer, deadline: number): Promise<void> {
    const authenticated = this.untilAuthenticated(
      Math.max(0, deadline - Date.now()),
      () => new LinkError('RING_CONNECT_TIMEOUT', `timed out connecting to ${this.peerName} at ${address.host}:${address.port}`),
    );
    // A predecessor on this machine is dialled on its Unix socket (local-socket.ts), others over TCP.
    const localPath = reachableLocalPath(address.local);
    this.socket = net.connect({
      ...(localPath === null ? { host: address.host, port: address.port } : { path: localPath }),
      noDelay: true,
      onread: {
        // Asked before each read: all-gather payloads are read straight into place.
        buffer: () => dataSink.nextReadBuffer(receiveBuffer),
        callback: (bytes: number, buffer: Uint8Array) => this.onRead(buffer, bytes),
      },
    });
    this.socket.on('connect', () => this.socket.write(clientHandshakeRequest(address.host, address.port, RING_PATH, this.handshakeKey)));
    this.watchSocket();
    return authenticated;
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
      this.failParsing(err);
    }
    return true;
  }

  /** Collects the HTTP upgrade response; returns where the WebSocket stream starts in `buffer`. */
  private readHandshake(buffer: Uint8Array, bytes: number): number {
    const previous = this.handshakeBytes!;
    const combined = Buffer.concat([previous, buffer.subarray(0, bytes)]);
    const end = combined.indexOf('\r\n\r\n');
    if (end < 0) {
      if (combined.length > MAX_HANDSHAKE_BYTES) throw new LinkError('WEBSOCKET_PROTOCOL', 'WebSocket upgrade response is too long');
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
      this.failParsing(err);
      return;
    }
    this.socket.resume();
  }

  /** Paused with data waiting (the collective has not started here): the predecessor is ahead of us, not gone, and its pings wait behind that data. */
  protected pausedWithData(): boolean {
    return this.stash !== null;
  }

  /**
   * The pending read may target a caller's array (DataSink.nextReadBuffer): once the link is
   * broken or closed, nothing more is read, so no late bytes can land there.
   */
  protected stopReading(): void {
    this.socket.pause();
  }

  protected authMessage(message: Record<string, unknown>): void {
    const { config } = this;
    const predecessor = predecessorOf(config.rank, config.worldSize);
    if (message.type === 'challenge') {
      if (message.protocol !== RING_PROTOCOL_VERSION) {
        throw authError(
          `predecessor speaks protocol version ${String(message.protocol)}, not ${RING_PROTOCOL_VERSION}`,
          CloseCode.VersionMismatch,
        );
      }
      let proof: Buffer;
      try {
        proof = proveToken(config.token, hexField(message, 'nonce'), helloContext(config.generation, config.rank, predecessor));
      } catch (err) {
        throw authError(`bad challenge: ${(err as Error).message}`, undefined, { cause: err });
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
      this.sendMessage(Opcode.Text, Buffer.from(JSON.stringify(hello)));
    } else if (message.type === 'welcome') {
      if (!verifyProof(config.token, this.nonce, welcomeContext(config.generation, predecessor, config.rank), hexField(message, 'proof'))) {
        throw authError(`predecessor rank ${predecessor} failed authentication (wrong token)`, CloseCode.AuthFailed);
      }
      this.authenticatedNow();
    } else {
      throw authError(`unexpected authentication message ${String(message.type)}`);
    }
  }
}
