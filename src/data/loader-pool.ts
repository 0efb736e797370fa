// A pool of loader threads. Each request is cut into one contiguous chunk per thread, so a
// micro-batch is decoded and augmented by all threads at once while the model computes the previous one.
import { RequestThread, startThreads } from '../common/request-thread.ts';
import type { DataSpec } from './open.ts';
import type { SampleOptions, SampleReport, SampleRequest } from './samples.ts';
import type { DataSplit } from './source.ts';

/** What a thread needs to open its own copy of the split. */
export interface ThreadSetup {
  spec: DataSpec;
  split: DataSplit;
  pipeline: string;
  options: SampleOptions;
  sampleSize: number;
}
export type ThreadRequest = SampleRequest & { id: number };
export type ThreadReply = { id: number; images: Float32Array; labels: Int32Array; skipped: string[] } | { id: number; error: string };
type LoaderThread = RequestThread<SampleRequest, { images: Float32Array; labels: Int32Array; skipped: string[] }, { ready: true }>;

const THREAD_ENTRY = new URL('./loader-thread.mjs', import.meta.url);

export class LoaderPool {
  private constructor(
    private readonly threads: LoaderThread[],
    private readonly sampleSize: number,
  ) {}

  static async start(count: number, setup: ThreadSetup): Promise<LoaderPool> {
    const threads = await startThreads(count, (): LoaderThread => new RequestThread(THREAD_ENTRY, setup, 'loader thread'), 'loader thread');
    return new LoaderPool(threads, setup.sampleSize);
  }

  async make(request: SampleRequest, out: Float32Array, labels: Int32Array): Promise<SampleReport> {
    const n = request.indices.length;
    const per = Math.ceil(n / this.threads.length);
    const chunks: Promise<{ from: number; reply: Awaited<ReturnType<LoaderThread['request']>> }>[] = [];
    for (let t = 0, from = 0; from < n; t++, from += per) {
      const to = Math.min(n, from + per);
      const chunk = { indices: request.indices.slice(from, to), repeats: request.repeats?.slice(from, to) ?? null, epoch: request.epoch };
      chunks.push(this.threads[t]!.request(chunk).then((reply) => ({ from, reply })));
    }
    const skipped: string[] = [];
    for (const { from, reply } of await Promise.all(chunks)) {
      out.set(reply.images, from * this.sampleSize);
      labels.set(reply.labels, from);
      skipped.push(...reply.skipped);
    }
    return { skipped };
  }

  async close(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.close()));
  }
}
