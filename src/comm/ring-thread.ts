/**
 * The ring all-reduce (ring.ts) run in a worker thread of its own. TensorFlow's CPU kernels and
 * wasm run synchronously on the main thread, so a ring on the main thread moves nothing while a
 * backward pass runs: a gradient bucket handed over mid-pass waits, unsent and unreceived, until
 * the pass ends. In its own thread the ring receives, adds, rounds and forwards meanwhile, and its
 * links' heartbeats are answered on time.
 *
 * The API is RingPeer's (listen, address, connect, reduceScatter, allGather, allReduce,
 * allReduceScalars, traffic, close; events 'error' and 'close'), with one difference: collectives
 * may be requested before the previous one has settled. They run in the order requested, so
 * every rank must still request the same collectives in the same order. Buffers must be backed by
 * a SharedArrayBuffer (`sharedFloat32Array`): the thread reads and writes them in place.
 */
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { InputError, RecoverableError } from '../common/errors.ts';
import type { WireTraffic } from './link.ts';
import type { AllReduceOptions, PeerAddress, ReduceScatterOptions, RingOptions } from './ring.ts';
import { KERNEL_MEMORY_DATA_AT, kernelMemory } from './simd-add.ts';
import {
  deserializeError,
  type RingRequest,
  type RingThreadMessage,
  type RingThreadSetup,
  type SharedView,
} from './ring-thread-protocol.ts';

const THREAD_ENTRY = new URL('./ring-thread-entry.mjs', import.meta.url);

/** The kernel memories behind sharedFloat32Array's arrays, by their buffer. */
const kernelMemories = new WeakMap<ArrayBufferLike, WebAssembly.Memory>();

/**
 * A zeroed Float32Array in shared memory: a ring thread reads and writes it without copies. Where
 * WebAssembly SIMD runs, it lives in a kernel memory (simd-add.ts), so that the thread's adds
 * into it and its socket reads for them copy nothing either; its `buffer` then holds more than
 * the array: use byteOffset and length.
 */
export function sharedFloat32Array(length: number): Float32Array {
  const memory = kernelMemory(length);
  if (!memory) return new Float32Array(new SharedArrayBuffer(length * Float32Array.BYTES_PER_ELEMENT));
  kernelMemories.set(memory.buffer, memory);
  return new Float32Array(memory.buffer, KERNEL_MEMORY_DATA_AT, length);
}

export class RingThread extends EventEmitter {
  readonly rank: number;
  readonly worldSize: number;
  private readonly traffics: Float64Array;
  private nextId = 0;
  /** Ids of the kernel memories already sent to the thread. */
  private readonly memoryIds = new WeakMap<WebAssembly.Memory, number>();
  private nextMemoryId = 0;
  private readonly pending = new Map<number, { resolve: (sums?: Float64Array) => void; reject: (err: Error) => void }>();
  /** Set once the thread has gone: every later request rejects with it. */
  private gone: Error | null = null;

  private constructor(
    private readonly worker: Worker,
    traffic: SharedArrayBuffer,
    options: RingOptions,
    private readonly listenAddress: PeerAddress,
  ) {
    super();
    this.rank = options.rank;
    this.worldSize = options.worldSize;
    this.traffics = new Float64Array(traffic);
  }

  /** Starts the thread and its ring server; rejects as RingPeer.listen would (a bad option, a port in use). */
  static async listen(options: RingOptions): Promise<RingThread> {
    const { logger, ...threadOptions } = options;
    const traffic = new SharedArrayBuffer(2 * Float64Array.BYTES_PER_ELEMENT);
    const worker = new Worker(THREAD_ENTRY, { workerData: { options: threadOptions, traffic } satisfies RingThreadSetup });
    const forwardLog = (message: RingThreadMessage) => {
      if (message.type === 'log') logger?.[message.level](message.obj, message.msg);
    };
    worker.on('message', forwardLog);
    const address = await new Promise<PeerAddress>((resolve, reject) => {
      const settle = (settled: () => void) => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
        settled();
      };
      const onMessage = (message: RingThreadMessage) => {
        if (message.type === 'listening') settle(() => resolve(message.address));
        else if (message.type === 'startFailed') settle(() => reject(deserializeError(message.error)));
      };
      const onError = (err: Error) =>
        settle(() =>
          reject(
            new RecoverableError('RING_THREAD', `rank ${options.rank}: the ring thread failed to start: ${err.message}`, { cause: err }),
          ),
        );
      const onExit = (code: number) =>
        settle(() =>
          reject(new RecoverableError('RING_THREAD', `rank ${options.rank}: the ring thread exited with code ${code} before listening`)),
        );
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    }).catch(async (err: Error) => {
      await worker.terminate();
      throw err;
    });
    const ring = new RingThread(worker, traffic, options, address);
    worker.on('message', (message: RingThreadMessage) => ring.onMessage(message));
    worker.on('error', (err) =>
      ring.threadGone(new RecoverableError('RING_THREAD', `rank ${options.rank}: the ring thread failed: ${err.message}`, { cause: err })),
    );
    worker.on('exit', (code) =>
      ring.threadGone(new RecoverableError('RING_THREAD', `rank ${options.rank}: the ring thread exited with code ${code}`)),
    );
    return ring;
  }

  /** Where the successor must connect: publish this to the other ranks. */
  get address(): PeerAddress {
    return { ...this.listenAddress };
  }

  /** Bytes both ring links had written and read when the thread last settled a request. */
  traffic(): WireTraffic {
    return { sent: this.traffics[0]!, received: this.traffics[1]! };
  }

  async connect(peers: PeerAddress[]): Promise<void> {
    await this.request({ id: this.nextId++, type: 'connect', peers });
  }

  async reduceScatter(buf: Float32Array, step: number, opts: ReduceScatterOptions = {}): Promise<void> {
    const range = opts.range ?? { start: 0, end: buf.length };
    await this.request({ id: this.nextId++, type: 'reduceScatter', buf: this.shared(buf), step, range, wire: opts.wire ?? 'fp32' });
  }

  async allGather(buf: Float32Array, step: number): Promise<void> {
    await this.request({ id: this.nextId++, type: 'allGather', buf: this.shared(buf), step });
  }

  /**
   * RingPeer.allReduce in one request: the thread starts the all-gather as the reduce-scatter
   * ends, without a round trip through this thread between them.
   */
  async allReduce(buf: Float32Array, step: number, opts: AllReduceOptions = {}): Promise<void> {
    await this.request({ id: this.nextId++, type: 'allReduce', buf: this.shared(buf), step, wire: opts.wire ?? 'fp32' });
  }

  /** Element-wise sum of `values` over all ranks, the same bits on every rank (RingPeer.allReduceScalars). */
  async allReduceScalars(values: Float64Array, step: number): Promise<Float64Array> {
    const sums = await this.request({ id: this.nextId++, type: 'allReduceScalars', values, step });
    return sums!;
  }

  /** Closes the ring (a pending collective rejects) and ends the thread. */
  async close(): Promise<void> {
    if (!this.gone) {
      try {
        await this.request({ id: this.nextId++, type: 'close' });
      } finally {
        this.gone = new RecoverableError('RING_CLOSED', `rank ${this.rank}: ring closed`);
        await this.worker.terminate();
      }
    }
  }

  /** The thread's view of `buf`; a buffer outside shared memory is the caller's mistake. */
  private shared(buf: Float32Array): SharedView {
    if (!(buf.buffer instanceof SharedArrayBuffer))
      throw new InputError('RING_ARGUMENT', 'the ring thread takes buffers in shared memory (sharedFloat32Array), got an ArrayBuffer');
    const view: SharedView = { buffer: buf.buffer, byteOffset: buf.byteOffset, length: buf.length };
    const memory = kernelMemories.get(buf.buffer);
    if (!memory) return view;
    const known = this.memoryIds.get(memory);
    if (known !== undefined) return { ...view, memoryId: known };
    const memoryId = this.nextMemoryId++;
    this.memoryIds.set(memory, memoryId);
    return { ...view, memoryId, memory };
  }

  private request(request: RingRequest): Promise<Float64Array | undefined> {
    if (this.gone) return Promise.reject(this.gone);
    return new Promise((resolve, reject) => {
      this.pending.set(request.id, { resolve, reject });
      this.worker.postMessage(request);
    });
  }

  private onMessage(message: RingThreadMessage): void {
    if (message.type === 'reply') {
      const waiter = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (message.error) waiter?.reject(deserializeError(message.error));
      else waiter?.resolve(message.sums);
    } else if (message.type === 'error') {
      if (this.listenerCount('error') > 0) this.emit('error', deserializeError(message.error));
    } else if (message.type === 'close') {
      this.emit('close');
    }
  }

  /** The thread failed or exited: every pending and later request rejects; an exit not asked for by close() is an 'error'. */
  private threadGone(err: Error): void {
    if (!this.gone && this.listenerCount('error') > 0) this.emit('error', err);
    this.gone ??= err;
    for (const waiter of this.pending.values()) waiter.reject(this.gone);
    this.pending.clear();
  }
}

/**
 * What the trainers use of a ring: a RingThread, or a RingPeer of one rank (whose collectives
 * return at once, so it too accepts a collective before the previous one has settled).
 */
export type GradientRing = Pick<RingThread, 'reduceScatter' | 'allGather' | 'allReduce' | 'allReduceScalars' | 'traffic'>;
