// Data-parallel evaluation on one machine: N worker threads, each with its own backend and copy of
// the model, each evaluating a contiguous, batch-aligned range of the split; their tallies are
// merged in split order, so the result does not depend on N (src/soup/evaluate.ts).
import { RequestThread, startThreads } from '../common/request-thread.ts';
import type { ElementRange } from '../common/shard.ts';
import { splitSize } from '../data/loader.ts';
import type { DataSpec } from '../data/open.ts';
import type { DataSplit } from '../data/source.ts';
import type { BackendChoice } from '../model/backend.ts';
import type { ModelConfig } from '../model/model.ts';
import { batchAlignedRanges, mergeTallies, summarize, type EvalResult, type EvalTally } from './evaluate.ts';

/** Images per forward pass: large enough for efficient matrix products, small enough for a ViT-B's activations. */
export const DEFAULT_EVAL_BATCH = 256;

/** Where the images come from and how they are prepared for the model. */
export interface EvalData {
  spec: DataSpec;
  /** The evaluation transforms (a recipe's data.evalPipeline). */
  pipeline: string;
}

/** What a thread needs to build its model and read its ranges. */
export interface EvalThreadSetup extends EvalData {
  config: ModelConfig;
  batchSize: number;
  backend: BackendChoice;
}
export interface EvalJob {
  id: number;
  params: Float32Array;
  split: DataSplit;
  range: ElementRange;
}
export type EvalReply = { id: number; tally: EvalTally } | { id: number; error: string };
type ReadyMessage = { ready: true; backend: string };

const THREAD_ENTRY = new URL('./eval-thread.mjs', import.meta.url);

/** One evaluation thread: a job is a parameter vector, a split and a range; the reply its tally. */
type EvalThread = RequestThread<Omit<EvalJob, 'id'>, { tally: EvalTally }, ReadyMessage>;

export class EvalPool {
  private readonly sizes = new Map<DataSplit, number>();

  private constructor(
    private readonly threads: EvalThread[],
    private readonly setup: EvalThreadSetup,
    /** The backend the threads run on, and why. */
    readonly backend: string,
  ) {}

  static async start(threads: number, setup: EvalThreadSetup): Promise<EvalPool> {
    const started = await startThreads(
      threads,
      (): EvalThread => new RequestThread(THREAD_ENTRY, setup, 'evaluation thread'),
      'evaluation thread',
    );
    return new EvalPool(started, setup, (await started[0]!.ready).backend);
  }

  /** The size of `split`, read once. */
  async size(split: DataSplit): Promise<number> {
    let size = this.sizes.get(split);
    if (size === undefined) {
      size = await splitSize(this.setup.spec, split);
      if (size === 0) throw new Error(`the ${split} split of ${this.setup.spec.path} is empty`);
      this.sizes.set(split, size);
    }
    return size;
  }

  /** Top-1, top-5 and loss of `params` (the setup's architecture) over the whole of `split`. */
  async evaluate(params: Float32Array, split: DataSplit): Promise<EvalResult> {
    const size = await this.size(split);
    const ranges = batchAlignedRanges(size, this.setup.batchSize, this.threads.length);
    const tallies = await Promise.all(
      ranges.map((range, t) =>
        range.end > range.start ? this.threads[t]!.request({ params, split, range }).then((reply) => reply.tally) : null,
      ),
    );
    const merged = mergeTallies(tallies.filter((t): t is EvalTally => t !== null));
    if (merged.samples !== size) throw new Error(`the evaluation covered ${merged.samples} samples, the ${split} split holds ${size}`);
    return summarize(merged);
  }

  async close(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.close()));
  }
}
