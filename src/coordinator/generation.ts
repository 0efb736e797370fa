// One generation of the ring: a fixed set of workers trained in lockstep from a start state until
// the run ends, a worker fails (the caller starts the next generation from the last checkpoint),
// or new workers wait to join at a checkpoint boundary. With DiLoCo, a member lost during a round
// leaves it and workers join at a round's end without a checkpoint (runRounds, RoundRegroup).
//
// Each step the coordinator sends every rank its slice of the global batch and the learning rate,
// waits for every report, checks that all ranks hold the same parameter digest, records metrics,
// evaluates at epoch ends and checkpoints. It never sees a gradient: those travel around the ring.
import { shardRange } from '../common/shard.ts';
import type { ResumeState, WorkerMessage } from '../comm/control.ts';
import { EpochSampler } from '../data/sampler.ts';
import { paramDigest } from '../train/digest.ts';
import { totalSteps, type Recipe } from '../train/recipe.ts';
import { learningRate, recipeSchedule, type ScheduleConfig } from '../train/schedule.ts';
import { FatalError } from '../common/errors.ts';
import type { Logger } from '../common/logger.ts';
import type { CheckpointMeta, CheckpointState } from '../train/checkpoint.ts';
import { writeCheckpoint } from './checkpoint.ts';
import { assembleDilocoState, dilocoResumeShard, isDiloco } from './diloco-round.ts';
import { isRoundEnd } from '../train/outer-optimizer.ts';
import type { EvalRecord, MetricsLog, StepRecord } from './metrics.ts';
import type { ProgressPrinter } from './progress.ts';
import type { GenerationStart } from './run-status.ts';
import type { WorkerLink } from './worker-link.ts';

/** How long workers get to load data, build the model and connect the ring. */
export const SETUP_TIMEOUT_MS = 600_000;

type Reply<T extends WorkerMessage['type']> = Extract<WorkerMessage, { type: T }>;

/** Where a generation starts: step 0 from the seed or from initial weights (--init), or a checkpoint. */
export interface StartState {
  step: number;
  checkpoint: { meta: CheckpointMeta; state: CheckpointState } | null;
  /** Parameters for step 0 with a fresh optimizer; null: the seed's initialization. Only without a checkpoint. */
  initialParams: Float32Array | null;
  /** DiLoCo: the membership changed at the round's end at `step`; the workers keep or receive the state (no checkpoint). */
  regroup: DilocoRegroup | null;
}

/** A DiLoCo round whose inner steps are done and whose outer step the next generation runs. */
export interface PendingRound {
  /** Steps completed: the round's end. */
  step: number;
  /** Workers that finished the round's inner steps: the outer step divides by them. */
  reporters: number;
  /** The round's last step, appended once the outer step has added its bytes and digest. */
  record: StepRecord;
  evaluationDue: boolean;
  checkpointDue: boolean;
  optimizerStep: number;
}

/** How a regrouped generation starts: its first `stayers` members keep their trainers, the rest join. */
export interface DilocoRegroup {
  pending: PendingRound;
  stayers: number;
  /** Each member's data slot (member order), and the number of slots (the local batch is globalBatch / slotCount). */
  slots: number[];
  slotCount: number;
}

/**
 * Thrown at a DiLoCo round's end when members left during the round or workers wait to join: the
 * caller forms a new generation of `stayers` (who keep their state) and joiners, which runs the
 * round's outer step. Stayers keep their data slots; a joiner takes the lowest free slot.
 */
export class RoundRegroup extends Error {
  constructor(
    readonly pending: PendingRound,
    readonly stayers: WorkerLink[],
    readonly slots: number[],
    readonly slotCount: number,
    readonly left: number,
  ) {
    super(
      `${left > 0 ? `${left} worker${left === 1 ? '' : 's'} left` : 'workers wait to join'}: the ring regroups at the round's end after step ${pending.step}`,
    );
    this.name = 'RoundRegroup';
  }
}

/** What both training loops share: the sampler, the run's length and schedule, the model and test sizes, the starting digest. */
interface TrainingLoop {
  sampler: EpochSampler;
  steps: number;
  schedule: ScheduleConfig;
  numParams: number;
  testSize: number;
  digest: string;
}

/** DiLoCo's state across rounds in one generation. */
interface RoundState {
  digest: string;
  testAccuracy: number | null;
  optimizerStep: number;
  /** An epoch's end or a checkpoint due while the workers hold different weights waits for the round's end. */
  evaluationDue: boolean;
  checkpointDue: boolean;
  /**
   * A checkpoint whose snapshots were ordered at a round's end and travel while the next round
   * runs: each worker sends its snapshot before that round's step reports, and the checkpoint is
   * written once the last arrives. Null when none is in flight.
   */
  snapshotsInFlight: CheckpointPoint | null;
}

/**
 * A DiLoCo outer step whose exchange runs while the next round's first `mergeAfter` inner steps do
 * (--outer-overlap): each member replies after that many of them, then sends its evaluation and
 * snapshot when the round's end was due one (both of the merged outer weights).
 */
interface OverlappedRound {
  /** The round's end. */
  step: number;
  mergeAfter: number;
  /** The evaluation due at the round's end (its epoch, and the test split's size). */
  evaluation: { epoch: number; testSize: number } | null;
  /** The checkpoint due at the round's end, taken at the merge: its digest is the merged outer weights'. */
  checkpoint: Omit<CheckpointPoint, 'digest'> | null;
}

/** The step a checkpoint is taken at, with what the coordinator knows of it. */
interface CheckpointPoint {
  step: number;
  numParams: number;
  optimizerStep: number;
  digest: string;
}

export interface RunSummary {
  runId: string;
  /** Steps completed. */
  steps: number;
  totalSteps: number;
  testAccuracy: number | null;
  paramDigest: string;
  checkpoint: string | null;
  restarts: number;
  /** True when the run was asked to stop (SIGTERM) before its last step. */
  stopped: boolean;
}

/** The workers hold different parameters: the error names the ranks that hold each digest. */
export function desyncError(step: number, digests: string[]): FatalError {
  const groups = new Map<string, number[]>();
  digests.forEach((d, rank) => {
    groups.set(d, [...(groups.get(d) ?? []), rank]);
  });
  const detail = [...groups].map(([d, ranks]) => `rank${ranks.length > 1 ? 's' : ''} ${ranks.join(',')}: ${d}`).join('; ');
  return new FatalError('DESYNC', `desync after step ${step}: workers hold different parameters (${detail})`);
}

/** Thrown at a checkpoint boundary when workers wait to join a smaller-than-asked ring. */
export class MembershipChange extends Error {
  constructor(readonly step: number) {
    super(`new workers join at the checkpoint after step ${step}`);
    this.name = 'MembershipChange';
  }
}

/** What a generation shares with the coordinator that runs it. */
export interface RunContext {
  runId: string;
  recipe: Recipe;
  /** The worker count asked for; a generation may run with fewer (--min-workers). */
  workers: number;
  minWorkers: number;
  /** DiLoCo: how long after the first worker finishes a round the others have (--round-deadline); null: --step-timeout. */
  roundDeadlineMs: number | null;
  stepTimeoutMs: number;
  checkpointDir: string;
  logger: Logger;
  metrics: MetricsLog;
  progress: ProgressPrinter;
  restarts: number;
  /** The newest checkpoint written in this process, kept in memory for restarts. */
  lastCheckpoint: { meta: CheckpointMeta; state: CheckpointState; path: string } | null;
  stopRequested(): boolean;
  waitingJoiners(): number;
  /** The ring formed and knows how many steps the run has (the status page). */
  generationStarted(start: Omit<GenerationStart, 'time'>): void;
}

export class Generation {
  constructor(
    private readonly context: RunContext,
    private readonly members: WorkerLink[],
    readonly generation: number,
    private readonly start: StartState,
  ) {}

  private get worldSize(): number {
    return this.members.length;
  }

  /** DiLoCo: each member's data slot; without a regroup, its rank. */
  private get slots(): number[] {
    return this.start.regroup?.slots ?? this.members.map((_, rank) => rank);
  }

  /** DiLoCo: one slot per worker asked for, so a ring short of workers leaves slots for joiners and the local batch never changes. */
  private get slotCount(): number {
    return this.start.regroup?.slotCount ?? this.context.workers;
  }

  /** One reply of `type` from every rank, failing fast on the first worker that fails. */
  private gather<T extends WorkerMessage['type']>(type: T, timeoutMs: number): Promise<Reply<T>[]> {
    return Promise.all(this.members.map((link) => link.expect(type, timeoutMs)));
  }

  async run(): Promise<RunSummary> {
    const { recipe, progress } = this.context;
    const { generation } = this;
    const ready = await this.formRing();
    const { numParams, trainSize, testSize } = ready;

    const sampler = new EpochSampler(trainSize, recipe.globalBatch, recipe.seed, recipe.data.repeats);
    const steps = totalSteps(recipe, sampler.stepsPerEpoch);
    if (this.start.step >= steps)
      throw new FatalError(
        'RUN_ALREADY_COMPLETE',
        `the checkpoint is at step ${this.start.step}, the run has only ${steps} steps: nothing to do`,
      );
    // The recipe's lr scaled for its global batch; warmup epochs resolved to steps.
    const schedule = recipeSchedule(recipe, sampler.stepsPerEpoch, steps);
    progress.begin(steps, this.start.step);
    this.context.generationStarted({
      generation,
      startStep: this.start.step,
      totalSteps: steps,
      members: this.members.map((link) => ({ rank: link.rank, ...link.info })),
    });
    const loop: TrainingLoop = { sampler, steps, schedule, numParams, testSize, digest: ready.paramDigest };
    return isDiloco(recipe) ? this.runRounds(loop) : this.runLockstep(loop);
  }

  private async runLockstep(loop: TrainingLoop): Promise<RunSummary> {
    const { recipe, logger, stepTimeoutMs } = this.context;
    const { generation, worldSize } = this;
    const { sampler, steps, schedule, numParams, testSize } = loop;
    let digest = loop.digest;
    let testAccuracy: number | null = null;
    let optimizerStep = this.start.checkpoint?.meta.optimizerStep ?? 0;

    for (let step = this.start.step; step < steps; step++) {
      const started = performance.now();
      const lr = learningRate(schedule, step);
      const epoch = sampler.epochOf(step);
      this.members.forEach((link, rank) => {
        const { indices, repeats, offset } = sampler.slice(step, rank, worldSize);
        // Without repeated augmentation every repeat number is 0: not worth sending.
        link.send({ type: 'step', generation, step, lr, indices, repeats: recipe.data.repeats > 1 ? repeats : null, offset, epoch });
      });
      const reports = await this.gather('stepDone', stepTimeoutMs);
      const completed = step + 1;
      digest = checkDigests(
        reports.map((r) => r.paramDigest),
        completed,
      );
      optimizerStep += 1;
      const record = stepRecord(reports, { step: completed, epoch, lr, imagesExpected: recipe.globalBatch, started });
      this.publishStep(record);

      const last = completed === steps;
      const stopping = this.context.stopRequested();
      if (completed % sampler.stepsPerEpoch === 0 || last) testAccuracy = await this.evaluate(completed, epoch, testSize);
      if (completed % recipe.checkpointEvery === 0 || last || stopping) {
        await this.saveCheckpoint({ step: completed, numParams, optimizerStep, digest });
        if (stopping && !last) {
          logger.info({ step: completed }, 'stopping on request after a checkpoint');
          return this.summary(completed, steps, testAccuracy, digest, true);
        }
        if (!last && this.worldSize < this.context.workers && this.context.waitingJoiners() > 0) throw new MembershipChange(completed);
      }
    }
    return this.summary(steps, steps, testAccuracy, digest, false);
  }

  /**
   * DiLoCo: round after round. A round's step orders go out together (inner steps need nothing from
   * the other workers, so none waits for the slowest between them, nor for the coordinator's round
   * trip); the coordinator collects each member's reports as they come, records a step once every
   * member still in the round has reported it, then orders the outer step. A member
   * lost during a round leaves it (its slot's slices go untrained) and the round closes with the
   * rest, if at least --min-workers; when members left or workers wait to join, the outer step runs
   * in a new generation of the stayers and the joiners (RoundRegroup) instead of a restart from the
   * checkpoint. With --outer-overlap K the outer order and the next round's orders go out together
   * (except at the run's end, on a requested stop and at a regroup): the exchange runs during that
   * round's first K inner steps, and an evaluation or checkpoint due comes at the merge after them.
   * A member lost before its exchange ended breaks the ring, and the run restarts from the checkpoint.
   */
  private async runRounds(loop: TrainingLoop): Promise<RunSummary> {
    const { recipe, logger, progress, minWorkers } = this.context;
    const sync = recipe.sync!;
    const { generation, slots, slotCount } = this;
    const { sampler, steps, schedule, numParams, testSize } = loop;
    if (recipe.globalBatch % slotCount !== 0)
      throw new FatalError(
        'DILOCO_BATCH',
        `DiLoCo splits the global batch of ${recipe.globalBatch} evenly: ${slotCount} workers do not divide it`,
      );
    const localBatch = recipe.globalBatch / slotCount;
    const rounds: RoundState = {
      digest: loop.digest,
      testAccuracy: null,
      optimizerStep: this.start.checkpoint?.meta.optimizerStep ?? this.start.regroup?.pending.optimizerStep ?? 0,
      evaluationDue: false,
      checkpointDue: false,
      snapshotsInFlight: null,
    };
    let step = this.start.step;
    const regroup = this.start.regroup;
    if (regroup) {
      const { pending, stayers } = regroup;
      const joiners = this.worldSize - stayers;
      rounds.digest = await this.closeRound(this.members, pending.record, {
        reporters: pending.reporters,
        stayers,
        broadcastFrom: joiners > 0 ? 0 : null,
      });
      rounds.evaluationDue = pending.evaluationDue;
      rounds.checkpointDue = pending.checkpointDue;
      const stopped = await this.afterRound(step, loop, rounds);
      if (stopped) return stopped;
    }
    let active = [...this.members];
    const roundEndAfter = (from: number): number => {
      let end = from + 1;
      while (!isRoundEnd(sync, end, steps)) end += 1;
      return end;
    };
    // The outer step of the round before, when it runs during this one (--outer-overlap).
    let overlapped: OverlappedRound | null = null;
    while (step < steps) {
      const roundEnd = roundEndAfter(step);
      const lrs: number[] = [];
      for (let s = step; s < roundEnd; s++) {
        const lr = learningRate(schedule, s);
        const epoch = sampler.epochOf(s);
        lrs.push(lr);
        this.members.forEach((link, rank) => {
          if (!active.includes(link)) return;
          const { indices, repeats, offset } = sampler.slice(s, slots[rank]!, slotCount);
          link.send({ type: 'step', generation, step: s, lr, indices, repeats: recipe.data.repeats > 1 ? repeats : null, offset, epoch });
        });
      }
      let record: StepRecord | null = null;
      let started = performance.now();
      const checkpoint = rounds.snapshotsInFlight;
      rounds.snapshotsInFlight = null;
      const round = await this.gatherRound(active, step, roundEnd, checkpoint, overlapped, (s, replies) => {
        const completed = s + 1;
        rounds.digest = checkDigests(
          replies.map((r) => r.paramDigest),
          completed,
        );
        rounds.optimizerStep += 1;
        record = stepRecord(replies, {
          step: completed,
          epoch: sampler.epochOf(s),
          lr: lrs[s - step]!,
          imagesExpected: localBatch * replies.length,
          started,
        });
        started = performance.now();
        rounds.evaluationDue ||= completed % sampler.stepsPerEpoch === 0 || completed === steps;
        rounds.checkpointDue ||= completed % recipe.checkpointEvery === 0 || completed === steps || this.context.stopRequested();
        if (completed === roundEnd) return;
        this.publishStep(record);
      });
      active = round.members;
      const { left } = round;
      // The overlapped exchange ran during this round: its time and bytes go to the round's last step.
      if (overlapped) addOuterFigures(record!, round.merged);
      if (round.testAccuracy !== null) rounds.testAccuracy = round.testAccuracy;
      if (left.length > 0) {
        const names = left.map((link) => link.name).join(', ');
        logger.warn({ step: roundEnd, left: names, stay: active.length }, 'workers left the round');
        progress.note(`${names} left the round ending at step ${roundEnd}; it closes with ${active.length}`);
      }
      if (active.length < minWorkers) throw round.cause!;
      step = roundEnd;
      const last = step === steps;
      const joining = !last && this.context.waitingJoiners() > 0 && active.length < this.context.workers;
      if (left.length > 0 || joining)
        throw new RoundRegroup(
          {
            step,
            reporters: active.length,
            record: record!,
            evaluationDue: rounds.evaluationDue,
            checkpointDue: rounds.checkpointDue,
            optimizerStep: rounds.optimizerStep,
          },
          active,
          active.map((link) => slots[this.members.indexOf(link)]!),
          slotCount,
          left.length,
        );
      if (sync.overlapSteps > 0 && !last && !this.context.stopRequested()) {
        // Evaluations and checkpoints due at this round's end come at the merge, of the merged outer weights.
        const mergeAfter = Math.min(sync.overlapSteps, roundEndAfter(step) - step);
        overlapped = {
          step,
          mergeAfter,
          evaluation: rounds.evaluationDue ? { epoch: sampler.epochOf(step - 1), testSize } : null,
          // A merge at the run's last step is followed by its final checkpoint.
          checkpoint:
            rounds.checkpointDue && step + mergeAfter < steps
              ? { step: step + mergeAfter, numParams, optimizerStep: rounds.optimizerStep + mergeAfter }
              : null,
        };
        rounds.evaluationDue = false;
        rounds.checkpointDue = false;
        const { evaluation } = overlapped;
        this.members.forEach((link, rank) => {
          link.send({
            type: 'outer',
            generation,
            step,
            reporters: this.worldSize,
            contributes: true,
            broadcastFrom: null,
            mergeAfter,
            evaluate: evaluation ? shardRange(testSize, this.worldSize, rank) : null,
            snapshot: overlapped!.checkpoint !== null,
          });
        });
        this.publishStep(record!);
        continue;
      }
      overlapped = null;
      rounds.digest = await this.closeRound(active, record!, { reporters: active.length, stayers: active.length, broadcastFrom: null });
      const stopped = await this.afterRound(step, loop, rounds);
      if (stopped) return stopped;
    }
    return this.summary(steps, steps, rounds.testAccuracy, rounds.digest, false);
  }

  /**
   * The reports of steps [first, end) from every member, each at its own pace; `onStep` gets each
   * step's replies (rank order) once every member still in the round has sent its own. A member
   * whose connection ends leaves the round (`left`); any other failure fails the generation once
   * the others are done. With --round-deadline, once the first member has reported the round's
   * last step the others have that long, then the late ones are dropped: they leave, and may join
   * again as new workers. With a `checkpoint` in flight, each member's snapshot comes first, and the
   * checkpoint is written once every member's has arrived. With the round before's outer step
   * `overlapped`, each member's reply to it follows its report of the merge's step, then its
   * evaluation and snapshot when due: the evaluation is recorded and the checkpoint written once
   * every member's has arrived.
   */
  private async gatherRound(
    members: WorkerLink[],
    first: number,
    end: number,
    checkpoint: CheckpointPoint | null,
    overlapped: OverlappedRound | null,
    onStep: (step: number, replies: Reply<'stepDone'>[]) => void,
  ): Promise<{
    members: WorkerLink[];
    left: WorkerLink[];
    cause: Error | null;
    merged: Reply<'outerDone'>[];
    testAccuracy: number | null;
  }> {
    const { stepTimeoutMs, roundDeadlineMs, logger } = this.context;
    const reports: Reply<'stepDone'>[][] = members.map(() => []);
    const merged: Reply<'outerDone'>[] = [];
    const evaluations: Reply<'evalDone'>[] = [];
    const mergedShards: Reply<'snapshotData'>[] = [];
    let testAccuracy: number | null = null;
    // Checked once every member's reply to the overlapped outer step is in.
    let mergedDigest: string | null = null;
    // Each member's replies after the merge's step: the outer step's, then the evaluation and snapshot due.
    const afterMerge = async (link: WorkerLink, i: number, round: OverlappedRound): Promise<void> => {
      merged[i] = await link.expect('outerDone', stepTimeoutMs);
      if (count(merged) === members.length)
        mergedDigest = checkDigests(
          merged.map((d) => d.paramDigest),
          round.step,
        );
      if (round.evaluation) {
        evaluations[i] = await link.expect('evalDone', stepTimeoutMs);
        if (count(evaluations) === members.length)
          testAccuracy = this.recordEvaluation(evaluations, round.step, round.evaluation.epoch, round.evaluation.testSize);
      }
      if (round.checkpoint) {
        mergedShards[i] = await link.expect('snapshotData', stepTimeoutMs);
        // Each member replied to the outer step before it sent its snapshot, so the digest is checked.
        if (count(mergedShards) === members.length) this.writeSnapshots(mergedShards, { ...round.checkpoint, digest: mergedDigest! });
      }
    };
    // The snapshots of the checkpoint in flight come first on each link, before the round's reports.
    const shards: Reply<'snapshotData'>[] = [];
    let snapshotsArrived = 0;
    let active = [...members];
    const left: WorkerLink[] = [];
    const finished = new Set<WorkerLink>();
    let cause: Error | null = null;
    let failure: Error | null = null;
    let next = first;
    const flush = (): void => {
      while (!failure && active.length > 0 && next < end && active.every((link) => reports[members.indexOf(link)]!.length > next - first)) {
        const replies = active.map((link) => reports[members.indexOf(link)]![next - first]!);
        try {
          onStep(next, replies);
        } catch (err) {
          failure = err as Error;
          return;
        }
        next += 1;
      }
    };
    let deadline: NodeJS.Timeout | null = null;
    const roundDone = (link: WorkerLink): void => {
      finished.add(link);
      if (roundDeadlineMs === null || deadline) return;
      deadline = setTimeout(() => {
        for (const late of active)
          if (!finished.has(late))
            late.drop(`did not finish the round within ${Math.round(roundDeadlineMs / 1000)} s of the first worker (--round-deadline)`);
      }, roundDeadlineMs);
    };
    await Promise.all(
      members.map(async (link, i) => {
        try {
          if (checkpoint) {
            shards[i] = await link.expect('snapshotData', stepTimeoutMs);
            snapshotsArrived += 1;
            if (snapshotsArrived === members.length) this.writeSnapshots(shards, checkpoint);
          }
          for (let s = first; s < end; s++) {
            reports[i]!.push(await link.expect('stepDone', stepTimeoutMs));
            flush();
            if (overlapped && s + 1 === overlapped.step + overlapped.mergeAfter) await afterMerge(link, i, overlapped);
          }
          roundDone(link);
        } catch (err) {
          if (link.alive) {
            failure ??= err as Error;
            return;
          }
          active = active.filter((other) => other !== link);
          left.push(link);
          cause ??= err as Error;
          flush();
        }
      }),
    );
    if (deadline) clearTimeout(deadline);
    if (failure) throw failure;
    const lost = (what: string, step: number): void =>
      logger.warn({ step, left: left.map((link) => link.name).join(', ') }, `${what}: workers left before theirs arrived`);
    if (checkpoint && snapshotsArrived < members.length) lost('checkpoint not written (the last one written stands)', checkpoint.step);
    if (overlapped?.checkpoint && count(mergedShards) < members.length)
      lost('checkpoint not written (the last one written stands)', overlapped.checkpoint.step);
    if (overlapped?.evaluation && count(evaluations) < members.length) lost('evaluation not recorded', overlapped.step);
    return { members: active, left, cause, merged, testAccuracy };
  }

  /**
   * The outer step of the round that `record` (its last step) ends: `members` (this generation's
   * ranks) exchange pseudo-gradients, the first `stayers` contributing theirs; `reporters` of them
   * finished the round. The record gets the exchange's time, bytes and the new digest.
   */
  private async closeRound(
    members: WorkerLink[],
    record: StepRecord,
    order: { reporters: number; stayers: number; broadcastFrom: number | null },
  ): Promise<string> {
    const { generation } = this;
    const step = record.step;
    members.forEach((link, rank) => {
      link.send({
        type: 'outer',
        generation,
        step,
        reporters: order.reporters,
        contributes: rank < order.stayers,
        broadcastFrom: order.broadcastFrom,
        mergeAfter: 0,
        evaluate: null,
        snapshot: false,
      });
    });
    const done = await Promise.all(members.map((link) => link.expect('outerDone', this.context.stepTimeoutMs)));
    const digest = checkDigests(
      done.map((d) => d.paramDigest),
      step,
    );
    addOuterFigures(record, done);
    record.paramDigest = digest;
    this.publishStep(record);
    return digest;
  }

  /** A step's record to metrics.jsonl (and its listeners), the debug log and the console. */
  private publishStep(record: StepRecord): void {
    this.context.metrics.append(record);
    this.context.logger.debug(record, 'step');
    this.context.progress.step(record);
  }

  /**
   * At a round's end, where every worker holds the outer weights: evaluations and checkpoints due,
   * a requested stop. A checkpoint before the run's last round, with no stop requested, is taken
   * without waiting: over a slow link the snapshots take seconds to reach the coordinator, and the
   * next round's inner steps need nothing from them (gatherRound collects them and writes it).
   */
  private async afterRound(completed: number, loop: TrainingLoop, rounds: RoundState): Promise<RunSummary | null> {
    const { steps, sampler, numParams, testSize } = loop;
    const last = completed === steps;
    if (rounds.evaluationDue) {
      rounds.evaluationDue = false;
      rounds.testAccuracy = await this.evaluate(completed, sampler.epochOf(completed - 1), testSize);
    }
    if (!rounds.checkpointDue) return null;
    rounds.checkpointDue = false;
    const point = { step: completed, numParams, optimizerStep: rounds.optimizerStep, digest: rounds.digest };
    if (!last && !this.context.stopRequested()) {
      this.requestSnapshots(completed);
      rounds.snapshotsInFlight = point;
      return null;
    }
    await this.saveCheckpoint(point);
    if (this.context.stopRequested() && !last) {
      this.context.logger.info({ step: completed }, 'stopping on request after a checkpoint');
      return this.summary(completed, steps, rounds.testAccuracy, rounds.digest, true);
    }
    return null;
  }

  private summary(steps: number, total: number, testAccuracy: number | null, digest: string, stopped: boolean): RunSummary {
    const { runId, lastCheckpoint, restarts } = this.context;
    return {
      runId,
      steps,
      totalSteps: total,
      testAccuracy,
      paramDigest: digest,
      checkpoint: lastCheckpoint?.path ?? null,
      restarts,
      stopped,
    };
  }

  /**
   * Assigns ranks (in member order) and the generation; each worker opens its ring server and
   * reports its address; everyone gets the addresses, connects, and reports ready with the
   * digest of the parameters it starts from, which must agree (and match the checkpoint's).
   */
  private async formRing(): Promise<Reply<'ready'>> {
    const { recipe, logger } = this.context;
    const { generation, worldSize, start, slots, slotCount } = this;
    const diloco = isDiloco(recipe);
    const stayers = start.regroup?.stayers ?? 0;
    this.members.forEach((link, rank) => {
      link.enterGeneration(generation, rank);
      link.send({
        type: 'assign',
        rank,
        worldSize,
        generation,
        recipe,
        startStep: start.step,
        resume: start.checkpoint ? (diloco ? dilocoResumeShard : resumeShard)(start.checkpoint, worldSize, rank) : null,
        init: start.initialParams,
        diloco: diloco ? { slot: slots[rank]!, slots: slotCount, carry: rank < stayers } : null,
      });
    });
    const peers = (await this.gather('ringListening', SETUP_TIMEOUT_MS)).map((r) => r.ring);
    for (const link of this.members) link.send({ type: 'ringPeers', generation, peers });
    const ready = await this.gather('ready', SETUP_TIMEOUT_MS);
    const first = ready[0]!;
    for (const r of ready) {
      if (r.numParams !== first.numParams || r.trainSize !== first.trainSize || r.testSize !== first.testSize) {
        throw new FatalError(
          'WORKERS_DISAGREE',
          `workers disagree on the setup: rank 0 has ${first.numParams} parameters and ${first.trainSize}/${first.testSize} train/test samples, rank ${r.rank} has ${r.numParams} and ${r.trainSize}/${r.testSize}`,
        );
      }
    }
    // After a regroup only the stayers hold the outer weights; the joiners get them in the outer step, whose digests are checked.
    const digest = checkDigests(
      (start.regroup ? ready.slice(0, stayers) : ready).map((r) => r.paramDigest),
      start.step,
    );
    if (start.checkpoint) {
      if (first.numParams !== start.checkpoint.meta.numParams)
        throw new FatalError(
          'CHECKPOINT_MODEL_MISMATCH',
          `the checkpoint holds ${start.checkpoint.meta.numParams} parameters but the recipe's model has ${first.numParams}`,
        );
      if (digest !== start.checkpoint.meta.paramDigest)
        throw new FatalError(
          'CHECKPOINT_DIGEST_MISMATCH',
          `workers loaded the checkpoint but hold digest ${digest}, the checkpoint recorded ${start.checkpoint.meta.paramDigest}`,
        );
    }
    if (start.initialParams && digest !== paramDigest(start.initialParams)) {
      throw new FatalError(
        'INIT_DIGEST_MISMATCH',
        `workers loaded the initial weights but hold digest ${digest}, the weights have ${paramDigest(start.initialParams)}`,
      );
    }
    const backends = this.members.map((l) => l.info.backend);
    logger.info(
      { generation, workers: worldSize, startStep: start.step, numParams: first.numParams, backends, digest },
      'ring formed, all workers ready',
    );
    this.context.progress.note(
      `ring of ${worldSize} worker${worldSize === 1 ? '' : 's'} formed (backends: ${backends.join(', ')}), ${first.numParams.toLocaleString('en-US')} parameters, starting at step ${start.step}`,
    );
    // Engines round differently, so such a ring still trains in lockstep (the optimizer step is
    // shared) but its gradients, and so its run, are not bit-reproducible on one engine alone.
    const odd = backends.flatMap((backend, rank) => (backend === backends[0] ? [] : [`rank ${rank} runs ${backend}`]));
    if (odd.length > 0) {
      logger.warn({ generation, backends }, 'workers run different compute engines');
      this.context.progress.note(`warning: rank 0 runs ${backends[0]} but ${odd.join(', ')}: their gradients round differently`);
    }
    return first;
  }

  /** Data-parallel evaluation on the test split: each rank a contiguous slice, counts summed. */
  private async evaluate(completed: number, epoch: number, testSize: number): Promise<number> {
    const { generation, worldSize } = this;
    this.members.forEach((link, rank) => {
      link.send({ type: 'eval', generation, step: completed, ...shardRange(testSize, worldSize, rank) });
    });
    return this.recordEvaluation(await this.gather('evalDone', this.context.stepTimeoutMs), completed, epoch, testSize);
  }

  /** The evaluation record from every rank's counts (rank order): metrics, log and console; its test accuracy. */
  private recordEvaluation(results: Reply<'evalDone'>[], completed: number, epoch: number, testSize: number): number {
    const samples = results.reduce((a, r) => a + r.count, 0);
    if (samples !== testSize)
      throw new FatalError('EVAL_COUNT_MISMATCH', `evaluation covered ${samples} samples, the test split has ${testSize}`);
    const accuracy = (correct: (r: Reply<'evalDone'>) => number) => results.reduce((a, r) => a + correct(r), 0) / samples;
    // A distilled model's ranks also count each head's hits; testAccuracy is then the joint classifier's.
    const distilled = results[0]!.correctClassHead !== undefined;
    const record: EvalRecord = {
      kind: 'eval',
      step: completed,
      epoch,
      testAccuracy: accuracy((r) => r.correct),
      ...(distilled
        ? { testAccuracyClassHead: accuracy((r) => r.correctClassHead!), testAccuracyDistHead: accuracy((r) => r.correctDistHead!) }
        : {}),
      testLoss: results.reduce((a, r) => a + r.lossSum, 0) / samples,
      samples,
      ms: results.reduce((a, r) => a + r.ms, 0) / results.length,
      time: new Date().toISOString(),
    };
    this.context.metrics.append(record);
    const { kind: _kind, time: _time, ...summary } = record;
    this.context.logger.info(summary, 'evaluation');
    this.context.progress.evaluation(record);
    return record.testAccuracy;
  }

  /** Collects every rank's shard of parameters and optimizer state and writes one checkpoint. */
  private async saveCheckpoint(point: CheckpointPoint): Promise<void> {
    this.requestSnapshots(point.step);
    this.writeSnapshots(await this.gather('snapshotData', this.context.stepTimeoutMs), point);
  }

  private requestSnapshots(completed: number): void {
    const { generation } = this;
    for (const link of this.members) link.send({ type: 'snapshot', generation, step: completed });
  }

  /** Assembles every rank's snapshot (rank order) into one checkpoint, checks its digest and writes it. */
  private writeSnapshots(shards: Reply<'snapshotData'>[], { step: completed, numParams, optimizerStep, digest }: CheckpointPoint): void {
    const { worldSize } = this;
    const state = isDiloco(this.context.recipe) ? assembleDilocoState(shards, numParams) : assembleShardedState(shards, numParams);
    const assembled = paramDigest(state.params);
    if (assembled !== digest)
      throw new FatalError(
        'SNAPSHOT_DIGEST_MISMATCH',
        `the snapshot shards assemble to digest ${assembled}, but every rank reported ${digest}`,
      );
    const { recipe, runId } = this.context;
    const meta: CheckpointMeta = {
      runId,
      step: completed,
      recipe,
      numParams,
      worldSize,
      optimizerStep,
      sampler: { seed: recipe.seed, step: completed },
      paramDigest: digest,
    };
    const path = writeCheckpoint(this.context.checkpointDir, meta, state);
    this.context.lastCheckpoint = { meta, state, path };
    this.context.logger.info({ step: completed, path }, 'checkpoint written');
  }
}

/** The replies that arrived (a sparse array's filled places). */
function count(replies: unknown[]): number {
  return replies.filter((reply) => reply !== undefined).length;
}

/**
 * Adds each rank's outer step (time, its waits, bytes; `done` in rank order, without the ranks that
 * left before replying) to the figures of the step `record` closes or ran it during.
 */
function addOuterFigures(record: StepRecord, done: Reply<'outerDone'>[]): void {
  done.forEach((outer, rank) => {
    const figures = (record.ranks[rank] ??= {
      rank,
      computeMs: 0,
      copyMs: 0,
      commMs: 0,
      exposedCommMs: 0,
      dataWaitMs: 0,
      bytesSent: 0,
      bytesReceived: 0,
    });
    figures.commMs += outer.commMs;
    figures.exposedCommMs += outer.commMs;
    figures.bytesSent += outer.bytesSent;
    figures.bytesReceived += outer.bytesReceived;
  });
  record.commMs = Math.max(...record.ranks.map((r) => r.commMs));
  record.exposedCommMs = Math.max(...record.ranks.map((r) => r.exposedCommMs));
}

/** The checkpoint state of a lockstep run from every rank's snapshot (rank order): each tensor assembled whole from its shards. */
function assembleShardedState(shards: Reply<'snapshotData'>[], numParams: number): CheckpointState {
  const worldSize = shards.length;
  // Every rank keeps the same optimizer, so rank 0's state names and EMA are what all must send.
  const names = Object.keys(shards[0]!.optimizerState).sort();
  const hasEma = shards[0]!.ema !== null;
  const state: CheckpointState = {
    params: new Float32Array(numParams),
    optimizerState: Object.fromEntries(names.map((name) => [name, new Float32Array(numParams)])),
    ema: hasEma ? new Float32Array(numParams) : null,
  };
  shards.forEach((shard, rank) => {
    const { start, end } = shardRange(numParams, worldSize, rank);
    const tensors = [shard.params, ...Object.values(shard.optimizerState), ...(shard.ema ? [shard.ema] : [])];
    if (shard.start !== start || shard.end !== end || tensors.some((t) => t.length !== end - start)) {
      throw new FatalError(
        'SNAPSHOT_MISMATCH',
        `rank ${rank} sent a snapshot of [${shard.start}, ${shard.end}), expected [${start}, ${end})`,
      );
    }
    if (Object.keys(shard.optimizerState).sort().join() !== names.join() || (shard.ema !== null) !== hasEma) {
      throw new FatalError(
        'SNAPSHOT_MISMATCH',
        `rank ${rank} sent optimizer state [${Object.keys(shard.optimizerState).join(', ')}]${shard.ema ? ' and an EMA' : ''}, rank 0 [${names.join(', ')}]${hasEma ? ' and an EMA' : ''}`,
      );
    }
    state.params.set(shard.params, start);
    for (const name of names) state.optimizerState[name]!.set(shard.optimizerState[name]!, start);
    if (shard.ema) state.ema!.set(shard.ema, start);
  });
  return state;
}

/** The step's record from the reports of the workers that trained it (rank order). */
function stepRecord(
  reports: Reply<'stepDone'>[],
  at: { step: number; epoch: number; lr: number; imagesExpected: number; started: number },
): StepRecord {
  const count = reports.reduce((a, r) => a + r.count, 0);
  if (count !== at.imagesExpected)
    throw new FatalError('SAMPLE_COUNT_MISMATCH', `step ${at.step}: workers processed ${count} samples, expected ${at.imagesExpected}`);
  const distilled = reports[0]!.distillationLossSum !== undefined;
  const skippedImages = reports.reduce((a, r) => a + r.skipped.length, 0);
  return {
    kind: 'step',
    step: at.step,
    epoch: at.epoch,
    loss: reports.reduce((a, r) => a + r.lossSum, 0) / count,
    ...(distilled ? { distillationLoss: reports.reduce((a, r) => a + r.distillationLossSum!, 0) / count } : {}),
    ...(skippedImages > 0 ? { skippedImages } : {}),
    accuracy: reports.reduce((a, r) => a + r.correct, 0) / count,
    lr: at.lr,
    gradNorm: reports[0]!.gradNorm,
    paramDigest: reports[0]!.paramDigest,
    workers: reports.length,
    imagesPerSec: count / ((performance.now() - at.started) / 1000),
    computeMs: Math.max(...reports.map((r) => r.computeMs)),
    copyMs: Math.max(...reports.map((r) => r.copyMs)),
    commMs: Math.max(...reports.map((r) => r.commMs)),
    exposedCommMs: Math.max(...reports.map((r) => r.exposedCommMs)),
    dataWaitMs: Math.max(...reports.map((r) => r.dataWaitMs)),
    ranks: reports.map(({ computeMs, copyMs, commMs, exposedCommMs, dataWaitMs, bytesSent, bytesReceived }, rank) => ({
      rank,
      computeMs,
      copyMs,
      commMs,
      exposedCommMs,
      dataWaitMs,
      bytesSent,
      bytesReceived,
    })),
    time: new Date().toISOString(),
  };
}

/** All ranks must report the same digest; otherwise the run stops with an error naming the ranks. */
function checkDigests(digests: string[], step: number): string {
  if (digests.some((d) => d !== digests[0])) throw desyncError(step, digests);
  return digests[0]!;
}

/** What rank `rank` of `worldSize` needs from a checkpoint: all parameters, its shard of the optimizer state and EMA. */
function resumeShard(checkpoint: { meta: CheckpointMeta; state: CheckpointState }, worldSize: number, rank: number): ResumeState {
  const { start, end } = shardRange(checkpoint.meta.numParams, worldSize, rank);
  const { state, meta } = checkpoint;
  const optimizerState = Object.fromEntries(Object.entries(state.optimizerState).map(([name, tensor]) => [name, tensor.slice(start, end)]));
  return { params: state.params, optimizerState, ema: state.ema?.slice(start, end) ?? null, optimizerStep: meta.optimizerStep };
}
