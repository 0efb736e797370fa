// The coordinator's end of one worker's control connection. It sends orders, hands out the
// worker's replies of the current generation in order (replies of an older generation, still in
// flight when a generation was abandoned, are dropped), and watches the connection's heartbeat.
// A reply of an unexpected type, a 'failed' report, a close, a missed heartbeat or a timeout
// rejects whatever the coordinator is waiting for with an error that names the worker.
import type { WebSocket } from 'ws';
import { CLOSE_CODES, decodeWorkerMessage, encodeMessage, type CoordinatorMessage, type WorkerMessage } from '../comm/control.ts';
import { seconds, watchWebSocket, type Heartbeat } from '../comm/heartbeat.ts';
import { FatalError, RecoverableError } from '../common/errors.ts';

type Waiter = { resolve: (m: WorkerMessage) => void; reject: (e: Error) => void };
type Reply<T extends WorkerMessage['type']> = Extract<WorkerMessage, { type: T }>;

export interface WorkerInfo {
  host: string;
  pid: number;
  backend: string;
  /** The worker's --gpu index; null without one. */
  gpu: number | null;
}

export class WorkerLink {
  /** Set when the worker is given a rank; -1 while it waits to be taken into a ring. */
  rank = -1;
  /** The generation of the ring this worker belongs to; replies of older ones are dropped. */
  generation = -1;
  private readonly queue: WorkerMessage[] = [];
  private waiter: Waiter | null = null;
  /** Set when the connection is gone for good (closed, cut off, or misbehaved). */
  private closedWith: Error | null = null;
  private readonly heartbeat: Heartbeat;
  /** Called once when the connection ends, for whoever holds the link in a list. */
  onClose: (() => void) | null = null;
  /**
   * Called once when the coordinator declares the worker lost (silent past the heartbeat timeout,
   * or no acknowledgement of an abort) rather than seeing it leave: the process may still exist,
   * stopped or hung, and whoever supervises it should replace it.
   */
  onLost: ((reason: string) => void) | null = null;
  private lost = false;
  /** True while the coordinator waits for this worker to leave an abandoned generation. */
  private abandoning = false;

  constructor(
    private readonly socket: WebSocket,
    readonly workerId: number,
    readonly info: WorkerInfo,
    heartbeatTimeoutMs: number,
  ) {
    socket.on('message', (data: Buffer, isBinary: boolean) => this.receive(data, isBinary));
    socket.on('close', (code: number, reason: Buffer) => {
      this.end(
        new RecoverableError(
          'WORKER_DISCONNECTED',
          `${this.name} disconnected (code ${code}${reason.length ? `: ${reason.toString()}` : ''})`,
        ),
      );
    });
    socket.on('error', (err: Error) =>
      this.end(new RecoverableError('WORKER_CONNECTION_ERROR', `${this.name} connection error: ${err.message}`, { cause: err })),
    );
    // A cut link sends no close: a worker not heard from (ping, pong or reply) for heartbeatTimeoutMs counts as gone.
    this.heartbeat = watchWebSocket(socket, {
      timeoutMs: heartbeatTimeoutMs,
      onSilence: () => {
        const reason = `missed its heartbeat for ${seconds(heartbeatTimeoutMs)} (--heartbeat-timeout)`;
        this.end(new RecoverableError('WORKER_HEARTBEAT', `${this.name} ${reason}`));
        socket.terminate();
        this.declareLost(reason);
      },
    });
  }

  get name(): string {
    const who = `${this.info.host} pid ${this.info.pid}`;
    return this.rank >= 0 ? `rank ${this.rank} (${who})` : `worker ${this.workerId} (${who})`;
  }

  get alive(): boolean {
    return this.closedWith === null;
  }

  private receive(data: Buffer, isBinary: boolean): void {
    // Fenced: whatever a worker sends after it was declared lost or left is refused.
    if (this.closedWith) return;
    let message: WorkerMessage;
    try {
      if (!isBinary)
        throw new RecoverableError('CONTROL_TEXT_FRAME', `${this.name} sent a text frame; the control protocol is binary msgpack`);
      message = decodeWorkerMessage(data, this.name);
    } catch (err) {
      return this.refuse(err as Error);
    }
    if ('generation' in message && message.generation !== this.generation) return; // from an abandoned generation
    if (message.type === 'failed') {
      // The ring of a generation being abandoned breaks under every member: expected, not news.
      if (this.abandoning) return;
      const text = `${this.name} failed: ${message.message}`;
      return this.rejectWaiter(message.fatal ? new FatalError('WORKER_FAILED_FATALLY', text) : new RecoverableError('WORKER_FAILED', text));
    }
    if (this.waiter) {
      const { resolve } = this.waiter;
      this.waiter = null;
      resolve(message);
    } else {
      this.queue.push(message);
    }
  }

  send(message: CoordinatorMessage): void {
    if (this.closedWith) throw this.closedWith;
    this.socket.send(encodeMessage(message));
  }

  /** The next reply of the current generation, which must be of type `type`; rejects after `timeoutMs`. */
  async expect<T extends WorkerMessage['type']>(type: T, timeoutMs: number): Promise<Reply<T>> {
    const message = await this.next(timeoutMs, type);
    if (message.type !== type) {
      const error = new RecoverableError('CONTROL_UNEXPECTED_REPLY', `${this.name}: expected a '${type}' message, got '${message.type}'`);
      this.refuse(error);
      throw error;
    }
    return message as Reply<T>;
  }

  /**
   * Waits for the worker's acknowledgement that it left the current generation, discarding the
   * generation's other replies still on their way, its failure reports included. A dead worker cannot acknowledge: its link
   * closes, misses its heartbeat or times out, which rejects.
   */
  async awaitAbortAck(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    this.abandoning = true;
    try {
      for (;;) {
        const message = await this.next(Math.max(1, deadline - Date.now()), 'aborted');
        if (message.type === 'aborted') return;
      }
    } finally {
      this.abandoning = false;
    }
  }

  private next(timeoutMs: number, what: string): Promise<WorkerMessage> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    // A wait still pending from an abandoned generation is over: its timer must not outlive it.
    this.rejectWaiter(new RecoverableError('WORKER_WAIT_SUPERSEDED', `${this.name}: superseded wait`));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        if (this.waiter === waiter) this.waiter = null;
        reject(
          new RecoverableError(
            'WORKER_TIMEOUT',
            `${this.name} sent no '${what}' within ${Math.round(timeoutMs / 1000)} s (--step-timeout)`,
          ),
        );
      }, timeoutMs);
      this.waiter = waiter;
    });
  }

  private rejectWaiter(error: Error): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.reject(error);
  }

  /**
   * Moves the worker into `generation`: replies queued from the previous one are discarded and a
   * wait still pending on it is rejected.
   */
  enterGeneration(generation: number, rank: number): void {
    this.generation = generation;
    this.rank = rank;
    this.queue.length = 0;
    this.rejectWaiter(new RecoverableError('GENERATION_ABANDONED', `${this.name}: generation abandoned`));
  }

  /** Drops a worker that stopped answering: it leaves the lists now, and may reconnect as a new worker. */
  drop(reason: string): void {
    // A worker whose connection closed meanwhile left by itself: it is gone, not lost.
    const wasAlive = this.alive;
    this.end(new RecoverableError('WORKER_CLOSED', `${this.name}: ${reason}`));
    this.close(CLOSE_CODES.badMessage, reason);
    if (wasAlive) this.declareLost(reason);
  }

  private declareLost(reason: string): void {
    if (this.lost) return;
    this.lost = true;
    this.onLost?.(reason);
  }

  /** Closes the connection of a worker that broke the protocol; the run recovers as from a failure. */
  private refuse(error: Error): void {
    this.end(error);
    this.close(CLOSE_CODES.badMessage, error.message);
  }

  private end(error: Error): void {
    if (this.closedWith) return;
    this.closedWith = error;
    this.heartbeat.stop();
    this.rejectWaiter(error);
    this.onClose?.();
  }

  close(code: number, reason: string): void {
    this.heartbeat.stop();
    // Close reasons are limited to 123 bytes by RFC 6455.
    if (this.socket.readyState <= 1) this.socket.close(code, Buffer.from(reason).subarray(0, 123).toString());
  }
}
