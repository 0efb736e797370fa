// What the status page shows of a run, kept up to date from the run's records: the run and its
// recipe (also written to RUN_DIR/run.json, so `vit-dist status` can show a finished run), the
// generation and its workers, the restarts with their causes, every step and evaluation, each
// worker's latest timings with its straggler score, and the ETA. Listeners hear every change.
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../common/errors.ts';
import type { Recipe } from '../train/recipe.ts';
import type { MetricsRecord, RestartRecord, StepRecord } from './metrics.ts';
import { STRAGGLER_WINDOW, type StragglerChange, StragglerDetector, stragglerScores } from './straggler.ts';

export const RUN_INFO_FILE = 'run.json';

/** One member of a ring, as its `hello` described it. */
export interface MemberInfo {
  rank: number;
  host: string;
  pid: number;
  backend: string;
  /** The worker's --gpu index; null when it was given none. */
  gpu: number | null;
}

/** A ring that formed: its members and where it started. */
export interface GenerationStart {
  generation: number;
  startStep: number;
  totalSteps: number;
  members: MemberInfo[];
  time: string;
}

/** RUN_DIR/run.json: what metrics.jsonl does not say about a run. */
export interface RunInfo {
  runId: string;
  recipe: Recipe;
  outDir: string;
  startedAt: string;
  /** The worker count asked for (--workers). */
  workers: number;
  /** The newest ring; null until the first one formed. */
  generation: GenerationStart | null;
  /** How the coordinator's run ended; null while it runs, or when it was killed. */
  ended: { phase: EndPhase; failure: string | null; time: string } | null;
}

type EndPhase = 'finished' | 'stopped' | 'failed';
export type RunPhase = 'waiting' | 'training' | EndPhase;

/** A worker's row on the page: who it is and its figures of the latest step. */
export interface WorkerRow extends MemberInfo {
  computeMs: number | null;
  dataWaitMs: number | null;
  commMs: number | null;
  exposedCommMs: number | null;
  /** Of the latest step (NVIDIA's definition: fastest compute time / this rank's). */
  score: number | null;
  /** The median over the straggler detector's window. */
  windowScore: number | null;
  straggler: boolean;
}

/** The derived part of the page, small enough to send with every record. */
export interface StatusView {
  phase: RunPhase;
  /** Why the run failed, when it did. */
  failure: string | null;
  step: number;
  totalSteps: number | null;
  etaSeconds: number | null;
  workers: WorkerRow[];
  restarts: RestartRecord[];
}

export type StatusEvent =
  | { type: 'snapshot'; info: RunInfo; records: MetricsRecord[]; view: StatusView }
  | { type: 'update'; info: RunInfo; record: MetricsRecord | null; view: StatusView };

export class RunStatus {
  private records: MetricsRecord[] = [];
  private phase: RunPhase;
  private failure: string | null = null;
  private readonly detector = new StragglerDetector();
  private readonly listeners = new Set<(event: StatusEvent) => void>();
  private readonly stragglerListeners: ((change: StragglerChange, member: MemberInfo | null) => void)[] = [];

  /** `persist`: keep RUN_DIR/run.json up to date (the live coordinator); false for a run read back. */
  constructor(
    private info: RunInfo,
    private readonly persist: boolean,
    records: readonly MetricsRecord[] = [],
  ) {
    for (const record of records) this.apply(record);
    // Read back, a run that did not record its end was killed, or runs elsewhere still.
    this.phase = persist ? 'waiting' : (info.ended?.phase ?? 'stopped');
    this.failure = info.ended?.failure ?? null;
    if (persist) writeRunInfo(info);
  }

  /** Hears every change; returns the function that stops it. */
  subscribe(listener: (event: StatusEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Hears each straggler named or cleared (the console's note). */
  onStragglerChange(listener: (change: StragglerChange, member: MemberInfo | null) => void): void {
    this.stragglerListeners.push(listener);
  }

  snapshot(): StatusEvent {
    return { type: 'snapshot', info: this.info, records: this.records, view: this.view() };
  }

  record(record: MetricsRecord): void {
    this.apply(record);
    this.emit(record);
  }

  generationStarted(start: Omit<GenerationStart, 'time'>): void {
    // The generation replays the steps after its checkpoint: their old records are gone from metrics.jsonl too.
    this.records = this.records.filter((r) => r.step <= start.startStep);
    this.detector.reset(start.members.length);
    this.info = { ...this.info, generation: { ...start, time: new Date().toISOString() } };
    this.phase = 'training';
    if (this.persist) writeRunInfo(this.info);
    this.emit(null);
  }

  end(phase: EndPhase, failure: string | null = null): void {
    this.phase = phase;
    this.failure = failure;
    this.info = { ...this.info, ended: { phase, failure, time: new Date().toISOString() } };
    if (this.persist) writeRunInfo(this.info);
    this.emit(null);
  }

  private apply(record: MetricsRecord): void {
    if (record.kind === 'restart') this.records = this.records.filter((r) => r.step <= record.step);
    this.records.push(record);
    if (record.kind !== 'step') {
      if (record.kind === 'restart') this.detector.reset();
      return;
    }
    for (const change of this.detector.observe(record.step, record.ranks)) {
      const member = this.info.generation?.members[change.rank] ?? null;
      for (const listener of this.stragglerListeners) listener(change, member);
    }
  }

  private emit(record: MetricsRecord | null): void {
    if (this.listeners.size === 0) return;
    const event: StatusEvent = { type: 'update', info: this.info, record, view: this.view() };
    for (const listener of this.listeners) listener(event);
  }

  private lastStep(): StepRecord | null {
    for (let i = this.records.length - 1; i >= 0; i--) {
      const r = this.records[i]!;
      if (r.kind === 'step') return r;
    }
    return null;
  }

  view(): StatusView {
    const last = this.lastStep();
    const generation = this.info.generation;
    const step = last?.step ?? generation?.startStep ?? 0;
    const scores = last ? stragglerScores(last.ranks) : [];
    const windowScores = this.detector.windowScores();
    const named = new Set(this.detector.stragglers());
    const members: MemberInfo[] =
      generation?.members ?? (last?.ranks.map((r) => ({ rank: r.rank, host: '?', pid: 0, backend: '?', gpu: null })) || []);
    const workers = members.map((member): WorkerRow => {
      const figures = last?.ranks[member.rank];
      return {
        ...member,
        computeMs: figures?.computeMs ?? null,
        dataWaitMs: figures?.dataWaitMs ?? null,
        commMs: figures?.commMs ?? null,
        exposedCommMs: figures?.exposedCommMs ?? null,
        score: scores[member.rank] ?? null,
        windowScore: windowScores[member.rank] ?? null,
        straggler: named.has(member.rank),
      };
    });
    return {
      phase: this.phase,
      failure: this.failure,
      step,
      totalSteps: generation?.totalSteps ?? null,
      etaSeconds: this.etaSeconds(last),
      workers,
      restarts: this.records.filter((r): r is RestartRecord => r.kind === 'restart'),
    };
  }

  /** The remaining steps at the pace of this generation so far (its start-up excluded, evaluations included). */
  private etaSeconds(last: StepRecord | null): number | null {
    const generation = this.info.generation;
    if (this.phase === 'finished') return 0;
    if (!generation || !last || last.step <= generation.startStep || this.phase !== 'training') return null;
    const secondsPerStep = (Date.parse(last.time) - Date.parse(generation.time)) / 1000 / (last.step - generation.startStep);
    return Math.max(0, secondsPerStep * (generation.totalSteps - last.step));
  }
}

/** Writes RUN_DIR/run.json whole or not at all (temporary file, then rename). */
export function writeRunInfo(info: RunInfo): void {
  const path = join(info.outDir, RUN_INFO_FILE);
  const temp = `${path}.tmp`;
  writeFileSync(temp, `${JSON.stringify(info, null, 2)}\n`);
  renameSync(temp, path);
}

export function readRunInfo(runDir: string): RunInfo {
  const path = join(runDir, RUN_INFO_FILE);
  if (!existsSync(path))
    throw new InputError(
      'RUN_INFO_MISSING',
      `${path} not found: is ${runDir} a run directory? (the coordinator writes ${RUN_INFO_FILE} when a run starts)`,
    );
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as RunInfo;
  } catch (err) {
    throw new InputError('RUN_INFO_INVALID', `${path} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

/** The console's line for a straggler named or cleared. */
export function stragglerNote(change: StragglerChange, member: MemberInfo | null): string {
  const who = `rank ${change.rank}${member ? ` (${member.host} pid ${member.pid})` : ''}`;
  const score = change.windowScore.toFixed(2);
  return change.straggling
    ? `straggler: ${who} computes at ${score} of the fastest rank's speed (median of the last ${STRAGGLER_WINDOW} steps, step ${change.step})`
    : `${who} is no longer a straggler: ${score} of the fastest rank's speed (median of the last ${STRAGGLER_WINDOW} steps, step ${change.step})`;
}
