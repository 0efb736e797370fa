/**
 * Bandwidth-optimal ring all-reduce over authenticated WebSocket links.
 *
 * Public API:
 *   RingPeer.listen(opts: RingOptions): Promise<RingPeer>   start the server; publish `address`
 *   peer.address: { host: string; port: number; local?: LocalEndpoint }
 *   peer.connect(peers: PeerAddress[]): Promise<void>
 *       peers[i] is the address of rank i. Connects to the predecessor's server (over its Unix
 *       socket when it is on this machine, local-socket.ts; else TCP) and waits until the
 *       successor has connected and authenticated.
 *   peer.reduceScatter(buf: Float32Array, step: number, opts?: { range?, wire? }): Promise<void>
 *       afterwards buf[shardRange(buf.length, N, rank)] holds the element-wise sum over all ranks;
 *       the rest of buf is scratch. With `range` (a gradient bucket) only the elements of that
 *       range travel, each still summed towards the owner of its shard in the same order as
 *       without a range, so reduce-scattering a buffer's buckets one by one gives the same bits as
 *       reduce-scattering it whole. With `wire: 'bf16'` the chunks travel as bf16 (round to
 *       nearest even) and are added into the float32 sums on receipt: half the bytes, and the
 *       same bits on every run with the same worker count.
 *   peer.allGather(buf: Float32Array, step: number): Promise<void>
 *       each rank's own shard is authoritative before; afterwards every rank holds every shard,
 *       bit for bit equal to its owner's.
 *   peer.allReduce(buf: Float32Array, step: number, opts?: { wire? }): Promise<void>
 *       reduceScatter (in `wire`) + allGather (float32) of the whole buffer.
 *   peer.allReduceScalars(values: Float64Array, step: number): Promise<Float64Array>
 *       sum of a small vector, added in rank order 0..N-1 so every rank gets the same bits.
 *   peer.close(): Promise<void>
 *       closes links and server; a pending collective rejects. Every rank should call it once
 *       the run is over: a neighbour's orderly close is not an error.
 *   events: 'error' (err: Error) when the ring breaks (emitted only if someone listens: the
 *       pending collective rejects with the same error either way); 'close' () once closed, by
 *       close() or by a neighbour's orderly close.
 *
 * One collective at a time; every rank must call the same collectives, in the same order, with
 * buffers of the same length and the same `step`. The buffer must not be touched until the
 * promise settles (its memory is sent without copying). A peer that disconnects or sends a bad
 * frame breaks the ring: the pending operation rejects with an Error naming the peer rank and
 * the cause, this peer closes its links so the failure travels around the ring, and every later
 * operation rejects at once. A broken ring is not repaired: build a new one with a new
 * generation. A link cut silently (no FIN, no RST) breaks the ring the same way once its
 * neighbour has been silent for `heartbeatTimeoutMs` (each side pings the other, heartbeat.ts).
 *
 * Wire layout (see link.ts): rank r listens; r+1 connects to it. r sends to r+1 over the socket
 * accepted on its server (unmasked server frames, send-link.ts) and receives from r-1 over the
 * socket it opened (recv-link.ts). Received data runs socket, FrameParser, DataReceiver, then the
 * Collective (collective.ts), which forwards it. Each shard travels in the fewest chunks of at
 * most `chunkBytes`, of near-equal sizes (chunkRanges), one binary frame each (frame.ts). Chunks
 * are pipelined: a chunk is forwarded as soon as it has been added, so all hops overlap.
 *
 * Reduce-scatter, rank r, hop h = 0..N-2: receives shard (r-h-2) mod N and adds it in, forwards
 * it at hop h+1 if h < N-2; at hop 0 it sends shard (r-1). After the last hop shard r holds the
 * sum. All-gather: sends shard r at hop 0, receives shard (r-h-1) at hop h, copies and forwards.
 * On each link frames travel in (hop, chunk) order, so the receiver knows exactly which frame
 * comes next and refuses anything else.
 *
 * worldSize 1 opens no socket: collectives return at once.
 */
import { EventEmitter } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { FatalError, InputError, RecoverableError } from '../common/errors.ts';
import { roundToBf16 } from './bf16.ts';
import { Collective, type CollectivePlan } from './collective.ts';
import { elementBytes, FRAME_HEADER_BYTES, type FrameHeader, MAX_CHUNK_BYTES, MAX_U32, Phase } from './frame.ts';
import { type LinkConfig, type PeerAddress, predecessorOf, successorOf, type WireTraffic } from './link.ts';
import { LOCAL_SOCKET_ORIGIN, newLocalEndpoint } from './local-socket.ts';
import { DataReceiver } from './receiver.ts';
import { RecvLink } from './recv-link.ts';
import { SendLink } from './send-link.ts';
import { chunkRanges, type ElementRange, shardRange } from '../common/shard.ts';
import { WIRE_FORMATS, type WireFormat } from '../common/wire.ts';
import { CloseCode, LinkError } from './websocket.ts';

/**
 * 4 MiB: with 8 ranks sharing 2 cores over Unix sockets, an all-reduce of 22M floats took 7% less
 * CPU time (all ranks, `/usr/bin/time`) than with 1 MiB, as a rank handles a quarter of the frames.
 */
export const DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024;
/**
 * Smallest chunk accepted (tests use small chunks to get many frames). For speed keep the
 * default: 64 KiB was far too small (per-frame overhead).
 */
export const MIN_CHUNK_BYTES = 4 * 1024;
export const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;
/**
 * A neighbour silent for this long counts as gone. It must exceed the longest time a rank's event
 * loop is blocked (one micro-batch's forward and backward pass) plus one ping interval.
 */
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 30_000;
export const DEFAULT_HOST = '127.0.0.1';

/** A pino-compatible logger (pino's Logger fits). */
export interface RingLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export interface RingOptions {
  rank: number;
  worldSize: number;
  /** Shared secret; never sent, only proven (auth.ts). */
  token: string;
  /** Run generation: links of another generation are refused. u32. */
  generation: number;
  /** Listen host, default 127.0.0.1. */
  host?: string;
  /** Listen port, default 0 (ephemeral; fixed ports above 32768 may collide with outgoing ones). */
  port?: number;
  /** Also listen on a Unix socket for neighbours on this machine (local-socket.ts); default true. */
  localSocket?: boolean;
  /** Payload bytes per data frame, default 4 MiB; must be equal on all ranks, multiple of 8. */
  chunkBytes?: number;
  /** How long connect() waits for both links, default 30 s. */
  connectTimeoutMs?: number;
  /** A connected link that hears nothing (data, ping or pong) for this long fails; default 30 s. */
  heartbeatTimeoutMs?: number;
  logger?: RingLogger;
}

export interface ReduceScatterOptions {
  /** Only these elements (a gradient bucket); default the whole buffer. */
  range?: ElementRange;
  /** Default 'fp32'. */
  wire?: WireFormat;
}

/** The whole buffer is reduced; the wire applies to the reduce-scatter (the all-gather is float32). */
export type AllReduceOptions = Pick<ReduceScatterOptions, 'wire'>;

export type { PeerAddress } from './link.ts';

const silentLogger: RingLogger = { info() {}, warn() {}, error() {}, debug() {} };

/** The collective in flight and how to settle its promise. */
interface InFlight {
  collective: Collective;
  resolve(): void;
  reject(err: Error): void;
}

/** A bad option or argument: the caller's mistake. */
function badArgument(message: string): InputError {
  return new InputError('RING_ARGUMENT', message);
}

export class RingPeer extends EventEmitter {
  readonly rank: number;
  readonly worldSize: number;
  readonly chunkBytes: number;
  private readonly config: LinkConfig;
  private readonly log: RingLogger;
  private readonly connectTimeoutMs: number;
  private readonly heartbeatTimeoutMs: number;
  private server: http.Server | null = null;
  private readonly localSocket: boolean;
  private localServer: net.Server | null = null;
  private listenAddress: PeerAddress;
  private sendLink: SendLink | null = null;
  private recvLink: RecvLink | null = null;
  private successorArrived: (() => void) | null = null;
  private stopWaitingForSuccessor: ((err: Error) => void) | null = null;
  private readonly receiver = new DataReceiver();
  private op: InFlight | null = null;
  private failure: Error | null = null;
  private closedByPeer: Error | null = null;
  private closed = false;
  /** bf16 payloads being sent, by element offset; reused by every collective (one runs at a time). */
  private bf16Staging = new Uint16Array(0);

  private constructor(opts: RingOptions) {
    super();
    const { rank, worldSize, generation } = opts;
    if (!Number.isInteger(worldSize) || worldSize < 1) throw badArgument(`worldSize must be a positive integer, got ${worldSize}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) throw badArgument(`rank must be in [0, ${worldSize}), got ${rank}`);
    if (!Number.isInteger(generation) || generation < 0 || generation > MAX_U32)
      throw badArgument(`generation must be a u32, got ${generation}`);
    if (!opts.token) throw badArgument('ring token is empty');
    const chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if (!Number.isInteger(chunkBytes) || chunkBytes < MIN_CHUNK_BYTES || chunkBytes > MAX_CHUNK_BYTES || chunkBytes % 8 !== 0) {
      throw badArgument(`chunkBytes must be a multiple of 8 in [${MIN_CHUNK_BYTES}, ${MAX_CHUNK_BYTES}], got ${chunkBytes}`);
    }
    this.rank = rank;
    this.worldSize = worldSize;
    this.chunkBytes = chunkBytes;
    this.config = { rank, worldSize, token: opts.token, generation, chunkBytes };
    this.log = opts.logger ?? silentLogger;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.heartbeatTimeoutMs = opts.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
    if (!Number.isFinite(this.heartbeatTimeoutMs) || this.heartbeatTimeoutMs <= 0) {
      throw badArgument(`heartbeatTimeoutMs must be a positive number, got ${this.heartbeatTimeoutMs}`);
    }
    this.listenAddress = { host: opts.host ?? DEFAULT_HOST, port: opts.port ?? 0 };
    this.localSocket = opts.localSocket ?? true;
  }

  /** Creates a peer and starts its server (none for worldSize 1). */
  static async listen(opts: RingOptions): Promise<RingPeer> {
    const peer = new RingPeer(opts);
    if (peer.worldSize > 1) {
      await peer.startServer();
      if (peer.localSocket) await peer.startLocalServer();
    }
    return peer;
  }

  /** Where the successor must connect: publish this to the other ranks. */
  get address(): PeerAddress {
    return { ...this.listenAddress };
  }

  private startServer(): Promise<void> {
    const server = http.createServer((_request, response) => {
      response.writeHead(426, { 'content-type': 'text/plain', connection: 'close' });
      response.end('vit-dist ring endpoint: WebSocket upgrade required\n');
    });
    server.on('upgrade', (request, socket, head) => this.onUpgrade(request, socket as net.Socket, head));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.listenAddress.port, this.listenAddress.host, () => {
        server.off('error', reject);
        server.on('error', (err) =>
          this.fail(new RecoverableError('RING_SERVER', `rank ${this.rank}: ring server error: ${err.message}`, { cause: err })),
        );
        const bound = server.address() as net.AddressInfo;
        this.listenAddress = { host: this.listenAddress.host, port: bound.port };
        resolve();
      });
    });
  }

  /** Listens on a Unix socket too, whose connections the ring server handles like TCP ones. */
  private startLocalServer(): Promise<void> {
    const endpoint = newLocalEndpoint();
    const server = this.server;
    if (endpoint === null || server === null) return Promise.resolve();
    const localServer = net.createServer((socket) => server.emit('connection', socket));
    this.localServer = localServer;
    return new Promise((resolve, reject) => {
      localServer.once('error', reject);
      localServer.listen(endpoint.path, () => {
        localServer.off('error', reject);
        localServer.on('error', (err) =>
          this.fail(new RecoverableError('RING_SERVER', `rank ${this.rank}: ring Unix socket error: ${err.message}`, { cause: err })),
        );
        this.listenAddress = { ...this.listenAddress, local: endpoint };
        resolve();
      });
    });
  }

  private onUpgrade(request: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const from = socket.remoteAddress === undefined ? LOCAL_SOCKET_ORIGIN : `${socket.remoteAddress}:${socket.remotePort}`;
    SendLink.accept(request, socket, head, this.config, this.connectTimeoutMs, this.heartbeatTimeoutMs).then(
      (link) => {
        if (this.sendLink || this.closed || this.failure) {
          const reason = this.sendLink ? 'successor already connected' : 'ring is closed';
          this.log.warn({ rank: this.rank, from }, `refused ring connection: ${reason}`);
          link.close(CloseCode.PolicyViolation, reason);
          return;
        }
        this.sendLink = link;
        const successor = link.peerRank;
        link.attach((err) => this.linkBroken(err, 'send', `connection to successor rank ${successor}`));
        this.log.info({ rank: this.rank, successor, from }, 'successor connected');
        this.successorArrived?.();
      },
      (err: Error) => this.log.warn({ rank: this.rank, from, err: err.message }, `refused ring connection: ${err.message}`),
    );
  }

  /**
   * Connects to the predecessor (peers[rank-1]) and waits for the successor to connect. Rejects
   * when either does not happen within connectTimeoutMs or the predecessor refuses this peer.
   */
  async connect(peers: PeerAddress[]): Promise<void> {
    if (this.worldSize === 1) return;
    if (peers.length !== this.worldSize) throw badArgument(`expected ${this.worldSize} peer addresses, got ${peers.length}`);
    this.checkUsable();
    const predecessor = predecessorOf(this.rank, this.worldSize);
    const address = peers[predecessor]!;
    const maxFrameBytes = FRAME_HEADER_BYTES + this.chunkBytes;
    const dial = RecvLink.dial(address, this.config, this.receiver, this.connectTimeoutMs, maxFrameBytes, this.heartbeatTimeoutMs).then(
      (link) => {
        if (this.closed || this.failure) {
          link.close(CloseCode.Normal, 'ring is closed');
          throw this.failure ?? new RecoverableError('RING_CLOSED', `rank ${this.rank}: ring closed`);
        }
        this.recvLink = link;
        link.attach((err) => this.linkBroken(err, 'receive', `connection from predecessor rank ${predecessor}`));
        this.log.info({ rank: this.rank, predecessor }, 'connected to predecessor');
      },
      (err: Error) => {
        throw new RecoverableError(
          'RING_CONNECT',
          `rank ${this.rank}: could not connect to predecessor rank ${predecessor} at ${address.host}:${address.port}: ${err.message}`,
          { cause: err },
        );
      },
    );
    await Promise.all([dial, this.waitForSuccessor()]);
  }

  private waitForSuccessor(): Promise<void> {
    if (this.sendLink) return Promise.resolve();
    const successor = successorOf(this.rank, this.worldSize);
    return new Promise((resolve, reject) => {
      const settle = (err?: Error) => {
        clearTimeout(timer);
        this.successorArrived = null;
        this.stopWaitingForSuccessor = null;
        if (err) reject(err);
        else resolve();
      };
      const timer = setTimeout(
        () =>
          settle(
            new RecoverableError(
              'RING_CONNECT_TIMEOUT',
              `rank ${this.rank}: timed out after ${this.connectTimeoutMs} ms waiting for successor rank ${successor} to connect`,
            ),
          ),
        this.connectTimeoutMs,
      );
      this.successorArrived = () => settle();
      this.stopWaitingForSuccessor = settle;
    });
  }

  /** Bytes both ring links have written and read since they connected (their sockets' counters). */
  traffic(): WireTraffic {
    const links = [this.sendLink, this.recvLink].filter((link) => link !== null);
    return {
      sent: links.reduce((sum, link) => sum + link.traffic().sent, 0),
      received: links.reduce((sum, link) => sum + link.traffic().received, 0),
    };
  }

  async reduceScatter(buf: Float32Array, step: number, opts: ReduceScatterOptions = {}): Promise<void> {
    const range = opts.range ?? { start: 0, end: buf.length };
    if (
      !Number.isSafeInteger(range.start) ||
      !Number.isSafeInteger(range.end) ||
      range.start < 0 ||
      range.start > range.end ||
      range.end > buf.length
    ) {
      throw badArgument(`reduce-scatter range [${range.start}, ${range.end}) is not within the buffer of ${buf.length} elements`);
    }
    const wire = opts.wire ?? 'fp32';
    if (!(WIRE_FORMATS as readonly string[]).includes(wire))
      throw badArgument(`unknown wire format ${JSON.stringify(wire)} (known: ${WIRE_FORMATS.join(', ')})`);
    if (this.worldSize === 1) return;
    const { rank, worldSize } = this;
    await this.runGradientPhase(
      wire === 'bf16' ? Phase.ReduceScatterBf16 : Phase.ReduceScatter,
      buf,
      step,
      range,
      (rank + worldSize - 1) % worldSize,
      (hop) => (rank - hop - 2 + 2 * worldSize) % worldSize,
    );
  }

  async allGather(buf: Float32Array, step: number): Promise<void> {
    if (this.worldSize === 1) return;
    const { rank, worldSize } = this;
    const whole = { start: 0, end: buf.length };
    await this.runGradientPhase(Phase.AllGather, buf, step, whole, rank, (hop) => (rank - hop - 1 + worldSize) % worldSize);
  }

  /** reduceScatter (in `opts.wire`) then allGather (in float32) of the whole buffer. */
  async allReduce(buf: Float32Array, step: number, opts: AllReduceOptions = {}): Promise<void> {
    await this.reduceScatter(buf, step, opts);
    await this.allGather(buf, step);
  }

  /**
   * Element-wise sum of `values` over all ranks. Every rank gathers every rank's vector and adds
   * them in rank order, so all ranks get bitwise identical sums.
   */
  async allReduceScalars(values: Float64Array, step: number): Promise<Float64Array> {
    const { rank, worldSize } = this;
    const length = values.length;
    if (worldSize === 1) return Float64Array.from(values);
    if (length * 8 > this.chunkBytes) {
      throw badArgument(`allReduceScalars takes at most ${this.chunkBytes / 8} values (chunkBytes / 8), got ${length}`);
    }
    const gathered = new Float64Array(worldSize * length);
    gathered.set(values, rank * length);
    if (length > 0) {
      const frameOf = (origin: number): FrameHeader => ({
        phase: Phase.ScalarAllReduce,
        generation: this.config.generation,
        step,
        chunk: 0,
        offset: origin * length,
        count: length,
      });
      const frames: FrameHeader[] = [];
      for (let hop = 0; hop < worldSize - 1; hop++) frames.push(frameOf((rank - hop - 1 + worldSize) % worldSize));
      // One frame per hop: all but the last hop's are forwarded.
      const plan = {
        frames,
        forwardedFrames: worldSize - 2,
        target: new Uint8Array(gathered.buffer),
        accumulate: null,
        elementBytes: 8,
        encode: null,
      };
      await this.run(step, plan, [frameOf(rank)]);
    }
    const sum = new Float64Array(length);
    for (let origin = 0; origin < worldSize; origin++) {
      for (let i = 0; i < length; i++) sum[i]! += gathered[origin * length + i]!;
    }
    return sum;
  }

  /** A gradient phase over the elements of `range`, each shard's part travelling as in the whole buffer's phase. */
  private runGradientPhase(
    phase: Phase,
    buf: Float32Array,
    step: number,
    range: ElementRange,
    firstShard: number,
    shardAtHop: (hop: number) => number,
  ): Promise<void> {
    if (buf.length > MAX_U32) throw badArgument(`buffer of ${buf.length} elements exceeds the u32 offsets of the wire format`);
    const { worldSize } = this;
    const chunkElements = this.chunkBytes / elementBytes(phase);
    const partOfShard = (shard: number): ElementRange => {
      const whole = shardRange(buf.length, worldSize, shard);
      const start = Math.max(whole.start, range.start);
      return { start, end: Math.max(start, Math.min(whole.end, range.end)) };
    };
    const framesOfShard = (shard: number): FrameHeader[] =>
      chunkRanges(partOfShard(shard), chunkElements).map((range: ElementRange, chunk) => ({
        phase,
        generation: this.config.generation,
        step,
        chunk,
        offset: range.start,
        count: range.end - range.start,
      }));
    const frames: FrameHeader[] = [];
    let forwardedFrames = 0;
    for (let hop = 0; hop < worldSize - 1; hop++) {
      frames.push(...framesOfShard(shardAtHop(hop)));
      // All hops but the last are forwarded.
      if (hop < worldSize - 2) forwardedFrames = frames.length;
    }
    const bf16 = phase === Phase.ReduceScatterBf16;
    const plan: CollectivePlan = {
      frames,
      forwardedFrames,
      target: new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength),
      accumulate: phase === Phase.AllGather ? null : buf,
      elementBytes: elementBytes(phase),
      encode: bf16 ? this.bf16Encoder(buf) : null,
    };
    return this.run(step, plan, framesOfShard(firstShard));
  }

  /** Rounds a frame's float32 values (its partial sums, when forwarded) to bf16 in the staging buffer, which outlives the write. */
  private bf16Encoder(buf: Float32Array): (frame: FrameHeader) => Uint8Array {
    if (this.bf16Staging.length < buf.length) this.bf16Staging = new Uint16Array(buf.length);
    const staging = this.bf16Staging;
    return (frame) => {
      const values = staging.subarray(frame.offset, frame.offset + frame.count);
      roundToBf16(buf.subarray(frame.offset, frame.offset + frame.count), values);
      return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    };
  }

  /** Runs one collective: sends `initial`, then lands and forwards the expected frames. */
  private run(step: number, plan: CollectivePlan, initial: FrameHeader[]): Promise<void> {
    if (!Number.isInteger(step) || step < 0 || step > MAX_U32) return Promise.reject(badArgument(`step must be a u32, got ${step}`));
    try {
      this.checkUsable();
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.op) return Promise.reject(new FatalError('RING_BUSY', `rank ${this.rank}: a collective is already in progress`));
    if (!this.sendLink || !this.recvLink)
      return Promise.reject(new FatalError('RING_NOT_CONNECTED', `rank ${this.rank}: connect() has not completed`));
    const successor = successorOf(this.rank, this.worldSize);
    return new Promise<void>((resolve, reject) => {
      const collective: Collective = new Collective(
        plan,
        this.sendLink!,
        () => this.finishIfDone(collective),
        (err) =>
          this.fail(
            new RecoverableError('RING_SEND', `rank ${this.rank}: sending to successor rank ${successor} failed: ${err.message}`, {
              cause: err,
            }),
          ),
      );
      this.op = { collective, resolve, reject };
      // Sends are queued before any receive is processed: on every link the hop-0 frames precede
      // all forwarded ones, which is the order the successor expects.
      for (const frame of initial) collective.send(frame);
      this.receiver.start(collective);
      this.recvLink!.resumeReading();
      this.finishIfDone(collective);
    });
  }

  private finishIfDone(collective: Collective): void {
    const op = this.op;
    if (op?.collective !== collective || !collective.done) return;
    this.op = null;
    this.receiver.stop();
    op.resolve();
    if (this.closedByPeer) this.endByPeer(this.closedByPeer);
  }

  private checkUsable(): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new RecoverableError('RING_CLOSED', `rank ${this.rank}: ring is closed`);
  }

  /**
   * A neighbour that closes normally has finished its last collective. That collective may still
   * be finishing here: its successor has all it needs, and its predecessor sent everything before
   * the close frame. Only if frames are still missing is the close an error.
   */
  private linkBroken(err: Error, side: 'send' | 'receive', which: string): void {
    const closedNormally = err instanceof LinkError && err.closeCode === CloseCode.Normal;
    const collective = this.op?.collective;
    if (!closedNormally || (collective && side === 'receive' && collective.missingFrames)) {
      this.fail(new RecoverableError('RING_LINK', `rank ${this.rank}: ${which} failed: ${err.message}`, { cause: err }));
      return;
    }
    this.log.info({ rank: this.rank }, `${which} closed by the peer`);
    this.closedByPeer = new RecoverableError('RING_CLOSED', `rank ${this.rank}: ring closed: ${which} closed by the peer`, { cause: err });
    if (!collective) {
      this.endByPeer(this.closedByPeer);
      return;
    }
    if (side === 'send') collective.successorHasFinished();
    else this.finishIfDone(collective);
  }

  /** Orderly end started by a neighbour: not an error, later collectives are refused. */
  private endByPeer(reason: Error): void {
    if (this.failure || this.closed) return;
    this.shutDown(reason);
    this.emit('close');
  }

  /** Breaks the ring: rejects the pending collective and closes both links with the reason. */
  private fail(error: Error): void {
    if (this.failure || this.closed) return;
    this.log.error({ rank: this.rank, err: error.message }, 'ring failed');
    const op = this.shutDown(error, CloseCode.InternalError);
    op?.reject(error);
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }

  private shutDown(reason: Error, closeCode: number = CloseCode.Normal): InFlight | null {
    this.failure = reason;
    this.stopWaitingForSuccessor?.(reason);
    const op = this.op;
    this.op = null;
    this.receiver.stop();
    this.sendLink?.close(closeCode, reason.message);
    this.recvLink?.close(closeCode, reason.message);
    return op;
  }

  /** Closes both links and the server. A pending collective rejects. */
  async close(): Promise<void> {
    if (this.closed) return;
    const error = new RecoverableError('RING_CLOSED', `rank ${this.rank}: ring closed`);
    // Closing mid-collective is abnormal for the neighbours (they lose frames): say so.
    const op = this.failure ? null : this.shutDown(error, this.op ? CloseCode.GoingAway : CloseCode.Normal);
    this.closed = true;
    op?.reject(error);
    await Promise.all(
      [this.server, this.localServer].map((server) => server && new Promise<void>((resolve) => server.close(() => resolve()))),
    );
    this.emit('close');
  }
}
