/**
 * The two authenticated WebSocket links of a ring peer, and what they share (`LinkEnd`: the
 * socket's control frames, authentication's settling, heartbeat, failure and close).
 *
 * Rank r listens; its successor (r+1 mod N) connects to it. Data flows from the accepting side to
 * the connecting side, so data frames are server frames and go unmasked:
 *   - `SendLink` (send-link.ts) is the socket accepted on r's own server: r sends data to r+1 over it.
 *   - `RecvLink` (recv-link.ts) is the socket r opened to r-1's server: r receives data from r-1
 *     over it, parsed straight out of one reused read buffer (`net` `onread`), without
 *     per-message allocations: socket, then FrameParser, then the DataReceiver (receiver.ts).
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
 * Liveness (heartbeat.ts): once authenticated, each side pings the other (RFC 6455 5.5.2) several
 * times per heartbeat timeout, whether or not data is flowing, and the other side answers with a
 * pong. A link that hears nothing at all (no data, ping or pong) for the timeout fails: a cut that
 * sends no FIN or RST (a frozen proxy, a partition) would otherwise leave a collective waiting
 * forever.
 */
import type net from 'node:net';
import { VitDistError } from '../common/errors.ts';
import { authContext } from './auth.ts';
import { Heartbeat, seconds } from './heartbeat.ts';
import type { LocalEndpoint } from './local-socket.ts';
import { CloseCode, decodeClosePayload, encodeClosePayload, encodeFrame, LinkError, type MessageSink, Opcode } from './websocket.ts';

export const RING_PATH = '/vit-dist/ring';
export const RING_PROTOCOL_VERSION = 1;
/** Largest authentication message (they are ~300 bytes). */
export const MAX_AUTH_MESSAGE_BYTES = 4096;
/** After sending a close frame, how long to wait for the peer to close before destroying. */
const CLOSE_GRACE_MS = 1000;
const EMPTY = Buffer.alloc(0);

/**
 * Where a ring server listens: its TCP address, and on Linux also a Unix socket that neighbours on
 * the same machine and network namespace dial instead (local-socket.ts).
 */
export interface PeerAddress {
  host: string;
  port: number;
  local?: LocalEndpoint;
}

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

/** A refusal of the peer's authentication message, closed with the default ProtocolError code unless given. */
export function authError(message: string, closeCode?: number, options?: ErrorOptions): LinkError {
  return new LinkError('RING_AUTH', message, closeCode, options);
}

export function parseJson(payload: Buffer): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(payload.toString('utf8'));
    if (value && typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch (err) {
    throw authError('malformed authentication message', undefined, { cause: err });
  }
  throw authError('malformed authentication message');
}

export function hexField(message: Record<string, unknown>, name: string): Buffer {
  const value = message[name];
  if (typeof value !== 'string' || !/^[0-9a-f]*$/.test(value)) throw authError(`authentication message field ${name} is not hex`);
  return Buffer.from(value, 'hex');
}

/** Any error met while parsing what the peer sent, as the LinkError that closes the link. */
function asLinkError(err: unknown): LinkError {
  if (err instanceof LinkError) return err;
  const code = err instanceof VitDistError ? err.code : 'RING_PROTOCOL';
  return new LinkError(code, err instanceof Error ? err.message : String(err), CloseCode.ProtocolError, { cause: err });
}

/** Bytes on the wire, both directions of one socket or a sum of them. */
export interface WireTraffic {
  sent: number;
  received: number;
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
 * What both ends of a ring link share: authentication that settles a promise, control frames
 * (ping, pong, close), the heartbeat, and failing or closing with a close frame that says why.
 * Subclasses own how bytes reach the parser and what the authentication messages say.
 */
export abstract class LinkEnd implements MessageSink {
  protected socket!: net.Socket;
  private authenticated = false;
  protected closing = false;
  private remoteClose: { code: number; reason: string } | undefined;
  private settleAuth: ((err?: Error) => void) | undefined;
  private onBroken: ((err: Error) => void) | undefined;
  protected readonly heartbeat: Heartbeat;

  constructor(
    /** Client frames are masked (RFC 6455 5.3): true on the side that connected. */
    private readonly masked: boolean,
    /** Who is at the other end ("successor rank 2"), for error messages. */
    protected readonly peerName: string,
    heartbeatTimeoutMs: number,
  ) {
    this.heartbeat = new Heartbeat({
      timeoutMs: heartbeatTimeoutMs,
      // Written past any queued data frames: it goes between whole frames either way.
      ping: () => this.sendMessage(Opcode.Ping, EMPTY),
      onSilence: () =>
        this.fail(new LinkError('RING_HEARTBEAT', `no heartbeat from ${peerName} for ${seconds(heartbeatTimeoutMs)}`, CloseCode.GoingAway)),
      notReading: () => this.pausedWithData(),
    });
  }

  /** Bytes written to and read from this link's socket so far, WebSocket framing and heartbeats included. */
  traffic(): WireTraffic {
    return { sent: this.socket?.bytesWritten ?? 0, received: this.socket?.bytesRead ?? 0 };
  }

  /** Called once by the ring after authentication: `onBroken` hears of any later failure. */
  attach(onBroken: (err: Error) => void): void {
    this.onBroken = onBroken;
  }

  /** Handles a text message of the authentication exchange; throws a LinkError to refuse. */
  protected abstract authMessage(message: Record<string, unknown>): void;

  /** Stops reading once the link is broken or closed. */
  protected abstract stopReading(): void;

  /** True while this side paused reading with the peer's data waiting: the peer is ahead, not gone. */
  protected abstract pausedWithData(): boolean;

  /**
   * Settles once `authenticated()` is called (resolving) or the link fails (rejecting); after
   * `timeoutMs` it fails with `onTimeout()`.
   */
  protected untilAuthenticated(timeoutMs: number, onTimeout: () => LinkError): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(onTimeout()), timeoutMs);
      this.settleAuth = (err) => {
        clearTimeout(timer);
        this.settleAuth = undefined;
        if (err) reject(err);
        else resolve();
      };
    });
  }

  /** The peer proved itself: the heartbeat starts and the authentication promise resolves. */
  protected authenticatedNow(): void {
    this.authenticated = true;
    this.heartbeat.start();
    this.settleAuth?.();
  }

  /** A socket error or close fails the link; the close code is the peer's, if it sent one. */
  protected watchSocket(): void {
    this.socket.on('error', (err) =>
      this.fail(new LinkError('RING_SOCKET', `socket error: ${err.message}`, CloseCode.ProtocolError, { cause: err })),
    );
    this.socket.on('close', () =>
      this.fail(
        new LinkError(
          'RING_CLOSED',
          `connection closed ${closeDescription(this.remoteClose)}`,
          this.remoteClose?.code ?? CloseCode.InternalError,
        ),
      ),
    );
  }

  protected sendMessage(opcode: number, payload: Buffer): void {
    this.socket.write(encodeFrame(opcode, payload, this.masked));
  }

  /** What the peer sent broke the protocol (or the frame format): the link fails with the reason. */
  protected failParsing(err: unknown): void {
    this.fail(asLinkError(err));
  }

  message(opcode: number, payload: Buffer): void {
    if (opcode === Opcode.Ping) {
      this.sendMessage(Opcode.Pong, payload);
    } else if (opcode === Opcode.Close) {
      this.remoteClose = decodeClosePayload(payload);
      this.fail(new LinkError('RING_CLOSED', `connection closed ${closeDescription(this.remoteClose)}`, this.remoteClose.code));
    } else if (opcode === Opcode.Text && !this.authenticated) {
      this.authMessage(parseJson(payload));
    } else if (opcode !== Opcode.Pong) {
      throw new LinkError(
        'RING_UNEXPECTED_MESSAGE',
        `unexpected text message from ${this.peerName} after authentication`,
        CloseCode.PolicyViolation,
      );
    }
  }

  /** Closes the link with `err` as the reason (or answers the peer's close frame) and reports it. */
  protected fail(err: LinkError): void {
    this.heartbeat.stop();
    this.stopReading();
    if (!this.closing) {
      this.closing = true;
      // After the peer's close frame, answer it, as RFC 6455 asks.
      if (this.remoteClose) closeSocket(this.socket, CloseCode.Normal, '', this.masked);
      else closeSocket(this.socket, err.closeCode, err.message, this.masked);
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
      closeSocket(this.socket, code, reason, this.masked);
    }
  }
}
