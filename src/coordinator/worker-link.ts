// The coordinator's end of one worker's control connection: sends orders and hands out the
// worker's replies in order. A reply of an unexpected type, a 'failed' report, a close or a
// timeout rejects whatever the coordinator is waiting for with an error that names the worker.
import type { WebSocket } from 'ws';
import { CLOSE_CODES, ProtocolError, decodeWorkerMessage, encodeMessage, type CoordinatorMessage, type WorkerMessage } from '../comm/control.ts';

type Waiter = { resolve: (m: WorkerMessage) => void; reject: (e: Error) => void };

export class WorkerFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkerFailure';
  }
}

export class WorkerLink {
  /** Set once ranks are assigned; before that the worker is named by its join order. */
  rank = -1;
  private readonly queue: WorkerMessage[] = [];
  private waiter: Waiter | null = null;
  private failure: Error | null = null;
  /** Called when the connection closes, for whoever holds the link in a list. */
  onClose: (() => void) | null = null;

  constructor(
    private readonly socket: WebSocket,
    readonly workerId: number,
    readonly info: { host: string; pid: number; backend: string },
  ) {
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) return this.fail(new ProtocolError(`${this.name}: sent a text frame; the control protocol is binary msgpack`), CLOSE_CODES.badMessage);
      let message: WorkerMessage;
      try {
        message = decodeWorkerMessage(data, this.name);
      } catch (err) {
        return this.fail(err as Error, CLOSE_CODES.badMessage);
      }
      if (message.type === 'failed') return this.fail(new WorkerFailure(`${this.name} failed: ${message.message}`));
      if (this.waiter) {
        const { resolve } = this.waiter;
        this.waiter = null;
        resolve(message);
      } else {
        this.queue.push(message);
      }
    });
    socket.on('close', (code: number, reason: Buffer) => {
      this.onClose?.();
      this.fail(new WorkerFailure(`${this.name} disconnected (code ${code}${reason.length ? `, ${reason.toString()}` : ''})`));
    });
    socket.on('error', (err: Error) => this.fail(new WorkerFailure(`${this.name} connection error: ${err.message}`)));
  }

  get name(): string {
    return this.rank >= 0 ? `rank ${this.rank} (${this.info.host} pid ${this.info.pid})` : `worker ${this.workerId} (${this.info.host} pid ${this.info.pid})`;
  }

  get failed(): Error | null {
    return this.failure;
  }

  send(message: CoordinatorMessage): void {
    if (this.failure) throw this.failure;
    this.socket.send(encodeMessage(message));
  }

  /** The next reply, which must be of type `type`; rejects after `timeoutMs`. */
  async expect<T extends WorkerMessage['type']>(type: T, timeoutMs: number): Promise<Extract<WorkerMessage, { type: T }>> {
    const message = await this.next(timeoutMs, type);
    if (message.type !== type) {
      const error = new ProtocolError(`${this.name}: expected a '${type}' message, got '${message.type}'`);
      this.fail(error, CLOSE_CODES.badMessage);
      throw error;
    }
    return message as Extract<WorkerMessage, { type: T }>;
  }

  private next(timeoutMs: number, what: string): Promise<WorkerMessage> {
    if (this.failure) return Promise.reject(this.failure);
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new WorkerFailure(`${this.name} sent no '${what}' within ${(timeoutMs / 1000).toFixed(0)} s`));
      }, timeoutMs);
      this.waiter = {
        resolve: (m) => { clearTimeout(timer); resolve(m); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
    });
  }

  /** Records the first failure, rejects the pending wait and closes the connection. */
  fail(error: Error, closeCode: number = CLOSE_CODES.runFailed): void {
    if (this.failure) return;
    this.failure = error;
    this.waiter?.reject(error);
    this.waiter = null;
    this.close(closeCode, error.message);
  }

  close(code: number, reason: string): void {
    // Close reasons are limited to 123 bytes by RFC 6455.
    if (this.socket.readyState <= 1) this.socket.close(code, Buffer.from(reason).subarray(0, 123).toString());
  }
}
