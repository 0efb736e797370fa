// The run's record: OUT/metrics.jsonl, one JSON object per line, per step and per evaluation.
// Lines are appended synchronously so that a crash loses nothing that was reported.
import type { StepReport } from '../comm/control.ts';
import { appendFileSync, existsSync, readFileSync, renameSync, truncateSync, writeFileSync } from 'node:fs';

export interface StepRecord {
  kind: 'step';
  step: number;
  epoch: number;
  loss: number;
  /** Distilled models only: the mean over the global batch of the distillation head's loss term, before the alpha weighting. */
  distillationLoss?: number;
  /** Corrupt images replaced by their successors in this step (data.skipCorrupt); absent when none. */
  skippedImages?: number;
  accuracy: number;
  lr: number;
  gradNorm: number;
  paramDigest: string;
  workers: number;
  imagesPerSec: number;
  computeMs: number;
  /** The slowest rank's device <-> host copies (gradient down, weights up). */
  copyMs: number;
  commMs: number;
  /** The slowest rank's wait on the ring's collectives and on its loader. */
  exposedCommMs: number;
  dataWaitMs: number;
  /** Each rank's own figures, in rank order: stragglers show here. */
  ranks: RankStepRecord[];
  time: string;
}

/** One rank's timings and ring traffic for one step (its StepReport's figures). */
export type RankStepRecord = { rank: number } & Pick<
  StepReport,
  'computeMs' | 'copyMs' | 'commMs' | 'exposedCommMs' | 'dataWaitMs' | 'bytesSent' | 'bytesReceived'
>;

export interface EvalRecord {
  kind: 'eval';
  step: number;
  epoch: number;
  /** Of the joint classifier for a distilled model (the mean of both heads' logits). */
  testAccuracy: number;
  /** Distilled models only: the class head and the distillation head alone. */
  testAccuracyClassHead?: number;
  testAccuracyDistHead?: number;
  testLoss: number;
  samples: number;
  /** How long the ranks evaluated, the mean over ranks (ms). */
  ms: number;
  time: string;
}

/** The ring was restarted from the checkpoint at `step` (after a failure, or to take in new workers). */
export interface RestartRecord {
  kind: 'restart';
  step: number;
  generation: number;
  /** Failures recovered from so far. */
  restarts: number;
  cause: string;
  workers: number;
  time: string;
}

/** DiLoCo: the membership changed at the round's end at `step`, and the ring went on from there without a restart. */
export interface RegroupRecord {
  kind: 'regroup';
  step: number;
  generation: number;
  left: number;
  joined: number;
  workers: number;
  time: string;
}

export type MetricsRecord = StepRecord | EvalRecord | RestartRecord | RegroupRecord;

/** Hears each record once it is on disk (the status page, Prometheus, TensorBoard). */
export type RecordListener = (record: MetricsRecord) => void;

/** Where each record's line ends in the file, so that dropping the newest records cuts the file instead of rewriting it. */
interface LineIndex {
  /** Each record's step and the offset just past its line, in file order. */
  records: { step: number; end: number }[];
  size: number;
}

export class MetricsLog {
  private readonly listeners: RecordListener[] = [];
  /** Built by the first truncateAfter, kept by append; null until then (this process is the file's only writer). */
  private index: LineIndex | null = null;

  constructor(readonly path: string) {}

  onAppend(listener: RecordListener): void {
    this.listeners.push(listener);
  }

  append(record: MetricsRecord): void {
    const line = `${JSON.stringify(record)}\n`;
    appendFileSync(this.path, line);
    if (this.index) {
      this.index.size += Buffer.byteLength(line);
      this.index.records.push({ step: record.step, end: this.index.size });
    }
    for (const listener of this.listeners) listener(record);
  }

  read(): MetricsRecord[] {
    if (!existsSync(this.path)) return [];
    return readFileSync(this.path, 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as MetricsRecord);
  }

  /**
   * On resume, drops the records of steps after the checkpoint (they will be run again), so the file
   * tells one consistent history. Every kind of record carries the number of steps completed.
   */
  truncateAfter(completedSteps: number): void {
    if (!existsSync(this.path)) return;
    // A long run's file holds megabytes and every recovery comes here: when the records to drop
    // are the newest ones (steps are logged in order), cutting the file's end is enough.
    this.index ??= this.readIndex();
    const { records } = this.index;
    let keep = records.length;
    while (keep > 0 && records[keep - 1]!.step > completedSteps) keep--;
    if (records.slice(0, keep).every((r) => r.step <= completedSteps)) {
      const size = keep > 0 ? records[keep - 1]!.end : 0;
      truncateSync(this.path, size);
      records.length = keep;
      this.index.size = size;
      return;
    }
    const kept = this.read().filter((r) => r.step <= completedSteps);
    const temp = `${this.path}.tmp`;
    writeFileSync(temp, kept.map((r) => `${JSON.stringify(r)}\n`).join(''));
    renameSync(temp, this.path);
    this.index = null;
  }

  private readIndex(): LineIndex {
    const bytes = readFileSync(this.path);
    const records: LineIndex['records'] = [];
    for (let start = 0; start < bytes.length; ) {
      const newline = bytes.indexOf(0x0a, start);
      const end = newline < 0 ? bytes.length : newline + 1;
      const line = bytes.toString('utf8', start, end);
      if (line.trim() !== '') records.push({ step: (JSON.parse(line) as MetricsRecord).step, end });
      start = end;
    }
    return { records, size: bytes.length };
  }
}
