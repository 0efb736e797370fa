// A worker thread that answers numbered requests, as the loader's and the evaluation pool's threads
// do. The thread posts one ready message first, then for each request `{id, ...}` a reply with the
// same id: `{id, error}` when it failed (the request then rejects), anything else otherwise.
import { Worker, type Transferable } from 'node:worker_threads';

export class RequestThread<Request extends object, Reply extends object, Ready> {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (reply: Reply) => void; reject: (err: Error) => void }>();
  private readonly worker: Worker;
  /** The thread's ready message, once it has set itself up. */
  readonly ready: Promise<Ready>;

  /** `what` names the thread in errors ("loader thread"). */
  constructor(entry: URL, workerData: unknown, what: string) {
    this.worker = new Worker(entry, { workerData });
    this.ready = new Promise((resolve, reject) => {
      this.worker.once('message', (message: Ready) => resolve(message));
      this.worker.once('error', reject);
    });
    this.worker.on('message', (reply: ({ id: number; error?: string } & Reply) | Ready) => {
      if (typeof reply !== 'object' || reply === null || !('id' in reply)) return;
      const waiter = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      if (typeof reply.error === 'string') waiter?.reject(new Error(reply.error));
      else waiter?.resolve(reply);
    });
    this.worker.on('error', (err) => this.failAll(err));
    this.worker.on('exit', (code) => this.failAll(new Error(`${what} exited with code ${code}`)));
  }

  request(body: Request, transfer: Transferable[] = []): Promise<Reply> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...body, id }, transfer);
    });
  }

  private failAll(err: Error): void {
    for (const waiter of this.pending.values()) waiter.reject(err);
    this.pending.clear();
  }

  async close(): Promise<void> {
    this.worker.removeAllListeners('exit');
    await this.worker.terminate();
  }
}

/** Starts `count` threads and waits until all are ready; on a failure closes them all and rejects naming `what`. */
export async function startThreads<T extends { readonly ready: Promise<unknown>; close(): Promise<void> }>(
  count: number,
  start: () => T,
  what: string,
): Promise<T[]> {
  const threads = Array.from({ length: count }, start);
  try {
    await Promise.all(threads.map((t) => t.ready));
    return threads;
  } catch (err) {
    await Promise.all(threads.map((t) => t.close()));
    throw new Error(`a ${what} failed to start: ${(err as Error).message}`, { cause: err });
  }
}
