// The run's scalars for TensorBoard, in RUN_DIR/tb/, written by TensorFlow's own event-file writer
// (the C++ SummaryFileWriter behind tfjs-node's `tf.node.summaryFileWriter`), so the files are what
// `tensorboard --logdir` expects by construction. The coordinator computes nothing with TensorFlow:
// tfjs-node is loaded here only, lazily, and only when the install recorded a working engine
// (scripts/build-tensorflow-engine.mjs); without it the run goes on without TensorBoard files.
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { installStatus } from '../model/tensorflow-env.ts';
import type { EvalRecord, MetricsRecord, RestartRecord, StepRecord } from './metrics.ts';
import { stragglerScores } from './straggler.ts';

const TFJS_NODE = '@tensorflow/tfjs-node';
/** Events buffered before the writer flushes them, and the longest they wait: TensorBoard sees a live run within seconds. */
const MAX_QUEUE = 100;
const FLUSH_MS = 5_000;

/** The part of tfjs-node's API used here (it is imported by a variable name, so untyped). */
interface SummaryFileWriter {
  scalar(tag: string, value: number, step: number): void;
  flush(): void;
}
interface TfjsNode {
  getBackend(): string;
  setBackend(name: string): Promise<boolean>;
  node: { summaryFileWriter(logdir: string, maxQueue?: number, flushMillis?: number): SummaryFileWriter };
}

/** The TensorBoard log directory of a run directory. */
export function tensorboardDir(runDir: string): string {
  return join(runDir, 'tb');
}

/** Loads tfjs-node, or says why it cannot be used. */
async function loadTfjsNode(): Promise<TfjsNode> {
  const status = installStatus(TFJS_NODE);
  if (!status) throw new Error(`${TFJS_NODE} is not installed or its engine was never built (node scripts/build-tensorflow-engine.mjs)`);
  if (!status.ok)
    throw new Error(`the TensorFlow engine failed at install (${status.failure}); rebuild with node scripts/build-tensorflow-engine.mjs`);
  // TensorFlow announces oneDNN on stderr as it loads, before TF_CPP_MIN_LOG_LEVEL applies; only
  // this variable silences it, and it changes no number here (the writer runs no kernel that does
  // arithmetic). It must not reach the workers `launch` spawns from this process' environment: their
  // kernels, and so their bits, would change. So it is set around a synchronous require (tfjs-node
  // is CommonJS), which no spawn can interleave with, as it could with an awaited import.
  const onednn = process.env.TF_ENABLE_ONEDNN_OPTS;
  process.env.TF_ENABLE_ONEDNN_OPTS ??= '0';
  let tf: TfjsNode;
  try {
    tf = createRequire(import.meta.url)(TFJS_NODE) as TfjsNode;
  } catch (err) {
    throw new Error(`${TFJS_NODE} failed to load: ${(err as Error).message}`, { cause: err });
  } finally {
    if (onednn === undefined) delete process.env.TF_ENABLE_ONEDNN_OPTS;
  }
  // The summary ops run on the tensorflow backend only; the coordinator process uses no other.
  if (tf.getBackend() !== 'tensorflow' && !(await tf.setBackend('tensorflow')))
    throw new Error(`${TFJS_NODE} loaded but its tensorflow backend did not start`);
  return tf;
}

export class TensorBoardScalars {
  private constructor(
    readonly dir: string,
    private readonly writer: SummaryFileWriter,
  ) {}

  /** A writer into `tensorboardDir(runDir)`; rejects with the reason when the TensorFlow engine is not available. */
  static async open(runDir: string): Promise<TensorBoardScalars> {
    const tf = await loadTfjsNode();
    const dir = tensorboardDir(runDir);
    return new TensorBoardScalars(dir, tf.node.summaryFileWriter(dir, MAX_QUEUE, FLUSH_MS));
  }

  /** Takes in one metrics.jsonl record (Coordinator.onRecord). */
  observe(record: MetricsRecord): void {
    if (record.kind === 'step') this.writeStep(record);
    else if (record.kind === 'eval') this.writeEval(record);
    else if (record.kind === 'restart') this.writeRestart(record);
  }

  /** Writes what is buffered to disk (at the end of a run; evaluations flush by themselves). */
  flush(): void {
    this.writer.flush();
  }

  private writeStep(r: StepRecord): void {
    const scalars: [string, number | undefined][] = [
      ['train/loss', r.loss],
      ['train/distillation_loss', r.distillationLoss],
      ['train/accuracy', r.accuracy],
      ['train/learning_rate', r.lr],
      ['train/grad_norm', r.gradNorm],
      ['train/images_per_sec', r.imagesPerSec],
      ['cluster/workers', r.workers],
      ['time/compute_ms', r.computeMs],
      ['time/copy_ms', r.copyMs],
      ['time/comm_ms', r.commMs],
      ['time/exposed_comm_ms', r.exposedCommMs],
      ['time/data_wait_ms', r.dataWaitMs],
    ];
    const scores = stragglerScores(r.ranks);
    for (const [i, rank] of r.ranks.entries()) scalars.push([`straggler_score/rank_${rank.rank}`, scores[i]]);
    for (const [tag, value] of scalars) if (value !== undefined) this.writer.scalar(tag, value, r.step);
  }

  private writeEval(r: EvalRecord): void {
    this.writer.scalar('eval/test_accuracy', r.testAccuracy, r.step);
    this.writer.scalar('eval/test_loss', r.testLoss, r.step);
    if (r.testAccuracyClassHead !== undefined) this.writer.scalar('eval/test_accuracy_class_head', r.testAccuracyClassHead, r.step);
    if (r.testAccuracyDistHead !== undefined) this.writer.scalar('eval/test_accuracy_dist_head', r.testAccuracyDistHead, r.step);
    this.writer.flush();
  }

  private writeRestart(r: RestartRecord): void {
    this.writer.scalar('cluster/restarts', r.restarts, r.step);
    this.writer.scalar('cluster/generation', r.generation, r.step);
    this.writer.flush();
  }
}
