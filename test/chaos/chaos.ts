// The chaos runner (issue #15): a local cluster of workers trains for a given duration while seeded
// faults of every kind hit it, one at a time; then a fault-free run of the same recipe and length.
// It reports each fault with its detection time (fault to the coordinator ending the generation,
// or to the workers noticing a lost coordinator) and its recovery time (detection to the next step
// completed), the images/s of both runs and their parameter digests at the chaos run's last step.
//
// Faults, each on a worker slot drawn at random unless it is the coordinator's:
// - kill-9: SIGKILL of the worker process; the supervisor starts a replacement.
// - sigstop: SIGSTOP, SIGCONT a little after the heartbeat timeout (the worker wakes fenced and
//   exits) unless the supervisor's liveness probe killed it first.
// - cut-ring: the ring link into the worker frozen (no data, no FIN); the ring heartbeat finds it.
// - cut-control: the worker's control link frozen; both ends' heartbeats find it, the worker
//   reconnects through a fresh connection.
// - slow: the worker stopped and continued every 100 ms so that it gets a fraction of a core.
// - coordinator-kill-9: SIGKILL of the coordinator, started again a second later (as its
//   supervisor would) on the same run directory; workers reconnect.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Mulberry32 } from '../../src/common/random.ts';
import type { StepRecord } from '../../src/coordinator/metrics.ts';
import { stepRecords } from '../e2e/cluster.ts';
import { ChaosCluster, type Slot } from './cluster.ts';
import { LineTail } from './tail.ts';

export const FAULT_KINDS = ['kill-9', 'sigstop', 'cut-ring', 'cut-control', 'slow', 'coordinator-kill-9'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface ChaosOptions {
  /** Seconds of training, from the first step, for both runs. */
  durationS: number;
  seed: number;
  /** Mean seconds between faults; a fault waits until the one before has recovered. */
  meanIntervalS: number;
  heartbeatTimeoutS: number;
  workers: number;
  /** Hot spares beside the workers: a failed worker's place is taken at once. */
  spares: number;
  backend: string;
  recipe: string;
  checkpointEvery: number;
  /** Run directories go below: chaos/ and fault-free/. */
  outDir: string;
  /** The fault-free run may stop once it has reached the chaos run's last step, before the full duration. */
  shortBaseline: boolean;
  print: (line: string) => void;
}

export interface FaultOutcome {
  kind: FaultKind;
  target: string;
  /** Seconds after the first step. */
  at: number;
  /** Seconds from the fault to its detection; null when nothing was detected (a slow worker is no failure). */
  detectionS: number | null;
  detectedBy: string | null;
  /** Seconds from detection to the next completed step. */
  recoveryS: number | null;
  note: string;
}

export interface ChaosReport {
  faults: FaultOutcome[];
  chaos: RunFigures;
  faultFree: RunFigures;
  /** The fault-free run's digest at the chaos run's last step. */
  faultFreeDigestAtChaosStep: string;
  /** Every process both runs started; all are gone when runChaos returns. */
  processes: number[];
}

export interface RunFigures {
  dir: string;
  /** Steps of the final history, 1..steps, each once. */
  steps: number;
  digest: string;
  /** Images per second over the measured window from the first step. */
  imagesPerSec: number;
  windowS: number;
  exitCode: number | null;
}

/** Training runs far longer than any chaos run, so both runs share one learning-rate schedule. */
const STEPS = 1_000_000;
/** A fault not recovered within this long fails the chaos run. */
const RECOVERY_LIMIT_MS = 120_000;
/** Seconds between the coordinator's kill -9 and its restart, as a supervisor's restart delay. */
const COORDINATOR_RESTART_DELAY_MS = 1_000;
const POLL_MS = 100;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What the coordinator's and workers' JSON logs say, read as they grow. */
class Observer {
  private readonly coordinatorLog: LineTail;
  private readonly workerLogs: LineTail[];
  /** Times (ms) of each completed step, of the generations that ended and of coordinators lost by workers. */
  readonly steps: { step: number; time: number }[] = [];
  readonly generationsEnded: { time: number; cause: string }[] = [];
  readonly coordinatorLost: { time: number; reason: string }[] = [];

  constructor(dir: string, workers: number) {
    this.coordinatorLog = new LineTail(join(dir, 'logs', 'coordinator.log'));
    this.workerLogs = Array.from({ length: workers }, (_, i) => new LineTail(join(dir, 'logs', `worker-${i}.log`)));
  }

  /** Called with the pid of every worker the coordinator declares lost. */
  onWorkerLost: (pid: number) => void = () => undefined;

  poll(): void {
    for (const line of this.coordinatorLog.poll()) {
      // A step's record carries its own ISO time, which replaces pino's epoch milliseconds.
      const time = typeof line.time === 'string' ? Date.parse(line.time) : (line.time as number);
      if (line.msg === 'step') this.steps.push({ step: line.step as number, time });
      else if (line.msg === 'generation ended') this.generationsEnded.push({ time, cause: line.cause as string });
      else if (line.msg === 'worker declared lost and fenced') this.onWorkerLost(line.pid as number);
    }
    for (const tail of this.workerLogs)
      for (const line of tail.poll())
        if (line.msg === 'lost the coordinator; reconnecting')
          this.coordinatorLost.push({ time: line.time as number, reason: line.reason as string });
  }

  lastStep(): { step: number; time: number } | null {
    return this.steps.at(-1) ?? null;
  }

  /** Polls until `find` returns a value, or rejects after `limitMs`. */
  async until<T>(find: () => T | undefined, limitMs: number, what: string): Promise<T> {
    const deadline = Date.now() + limitMs;
    for (;;) {
      this.poll();
      const found = find();
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`chaos: timed out after ${limitMs / 1000} s waiting for ${what}`);
      await sleep(POLL_MS);
    }
  }
}

interface PlannedFault {
  /** Seconds after the first step. */
  at: number;
  kind: FaultKind;
  slot: number;
  /** sigstop: seconds until SIGCONT; slow: seconds the slowdown lasts. */
  seconds: number;
  /** slow: the fraction of each 100 ms the worker may run. */
  fraction: number;
}

/**
 * The seeded plan: every kind once first, in a random order, then kinds at random, at gaps drawn
 * uniformly between half and one and a half times `meanIntervalS`, until `lastAtS`.
 */
export function planFaults(seed: number, meanIntervalS: number, lastAtS: number, workers: number, heartbeatS: number): PlannedFault[] {
  const rng = new Mulberry32(seed);
  const firstRound = [...FAULT_KINDS];
  for (let i = firstRound.length - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [firstRound[i], firstRound[j]] = [firstRound[j]!, firstRound[i]!];
  }
  const plan: PlannedFault[] = [];
  let at = 0;
  for (let k = 0; ; k++) {
    at += (0.5 + rng.next()) * meanIntervalS;
    if (at > lastAtS) return plan;
    const kind = k < firstRound.length ? firstRound[k]! : FAULT_KINDS[Math.floor(rng.next() * FAULT_KINDS.length)]!;
    const slot = Math.floor(rng.next() * workers);
    const seconds = kind === 'sigstop' ? heartbeatS + 0.5 + rng.next() * heartbeatS : 6 + rng.next() * 6;
    plan.push({ at, kind, slot, seconds, fraction: rng.next() < 0.5 ? 0.25 : 0.5 });
  }
}

function runArgs(options: ChaosOptions): string[] {
  return [
    '--recipe',
    options.recipe,
    '--steps',
    String(STEPS),
    '--checkpoint-every',
    String(options.checkpointEvery),
    '--rejoin-timeout',
    '60',
    '--max-restarts',
    '100000',
    // Every step's record in the coordinator's log, with its time: the runner's live view.
    '--log-level',
    'debug',
  ];
}

/** Runs the cluster until `keepGoing` says stop (checked every poll), then SIGTERMs the coordinator. */
async function runCluster(
  options: ChaosOptions,
  dir: string,
  during: (cluster: ChaosCluster, observer: Observer, firstStepAt: number) => Promise<void>,
): Promise<{ firstStepAt: number; exitCode: number | null; processes: number[] }> {
  const cluster = await ChaosCluster.start({
    workers: options.workers,
    spares: options.spares,
    outDir: dir,
    runArgs: runArgs(options),
    backend: options.backend,
    heartbeatTimeoutS: options.heartbeatTimeoutS,
    note: options.print,
  });
  cluster.onWorkerExit = (slot, how) => options.print(`  supervisor: worker ${slot.index} exited with ${how}; starting a replacement`);
  const observer = new Observer(dir, options.workers + options.spares);
  observer.onWorkerLost = (pid) => void cluster.workerLost(pid);
  const polling = setInterval(() => observer.poll(), POLL_MS);
  try {
    const first = await observer.until(() => observer.steps[0], 600_000, 'the first step');
    await during(cluster, observer, first.time);
    // Stop on a healthy cluster: a step completed after the last fault.
    const since = Date.now();
    await observer.until(() => (observer.lastStep()!.time > since ? true : undefined), RECOVERY_LIMIT_MS, 'a step before stopping');
    const exitCode = await cluster.finish(60_000);
    return { firstStepAt: first.time, exitCode, processes: cluster.spawned };
  } finally {
    clearInterval(polling);
    await cluster.destroy();
  }
}

async function injectFault(fault: PlannedFault, cluster: ChaosCluster, observer: Observer, firstStepAt: number): Promise<FaultOutcome> {
  // A worker in the ring, not an idle spare: the plan's slot number picks among the members.
  const members = await cluster.members();
  const slot: Slot = members.length > 0 ? members[fault.slot % members.length]! : cluster.slots[fault.slot % cluster.slots.length]!;
  const pid = slot.process?.pid;
  const target =
    fault.kind === 'coordinator-kill-9' ? `coordinator (pid ${cluster.coordinator?.pid})` : `worker ${slot.index} (pid ${pid})`;
  const injectedAt = Date.now();
  let note = '';
  switch (fault.kind) {
    case 'kill-9':
      slot.process?.kill('SIGKILL');
      break;
    case 'sigstop': {
      const child = slot.process!;
      child.kill('SIGSTOP');
      setTimeout(() => child.kill('SIGCONT'), fault.seconds * 1000);
      note = `SIGCONT after ${fault.seconds.toFixed(1)} s`;
      break;
    }
    case 'cut-ring':
    case 'cut-control': {
      const cut = (fault.kind === 'cut-ring' ? slot.ringProxy : slot.controlProxy).freezeOpenConnections();
      if (cut === 0)
        return {
          kind: fault.kind,
          target,
          at: (injectedAt - firstStepAt) / 1000,
          detectionS: null,
          detectedBy: null,
          recoveryS: null,
          note: 'no open connection to cut',
        };
      note = `${cut} connection(s) frozen`;
      break;
    }
    case 'slow':
      note = await slowDown(slot, fault.fraction, fault.seconds * 1000, observer);
      break;
    case 'coordinator-kill-9':
      await cluster.killCoordinator();
      await sleep(COORDINATOR_RESTART_DELAY_MS);
      cluster.startCoordinator();
      note = `restarted after ${COORDINATOR_RESTART_DELAY_MS / 1000} s`;
      break;
  }
  const at = (injectedAt - firstStepAt) / 1000;
  const detection =
    fault.kind === 'slow'
      ? observer.generationsEnded.find((g) => g.time >= injectedAt)
      : await observer.until(
          () =>
            fault.kind === 'coordinator-kill-9'
              ? observer.coordinatorLost.find((l) => l.time >= injectedAt)
              : observer.generationsEnded.find((g) => g.time >= injectedAt),
          RECOVERY_LIMIT_MS,
          `the detection of ${fault.kind} on ${target}`,
        );
  if (!detection) return { kind: fault.kind, target, at, detectionS: null, detectedBy: null, recoveryS: null, note };
  const next = await observer.until(
    () => observer.steps.find((s) => s.time > detection.time),
    RECOVERY_LIMIT_MS,
    `the first step after ${fault.kind} on ${target}`,
  );
  const detectedBy = 'cause' in detection ? detection.cause : `a worker: ${detection.reason}`;
  return {
    kind: fault.kind,
    target,
    at,
    detectionS: (detection.time - injectedAt) / 1000,
    detectedBy,
    recoveryS: (next.time - detection.time) / 1000,
    note,
  };
}

/** Stops and continues `slot`'s process every 100 ms so that it runs `fraction` of the time, for `ms`. */
async function slowDown(slot: Slot, fraction: number, ms: number, observer: Observer): Promise<string> {
  const child = slot.process!;
  observer.poll();
  const stepsBefore = observer.lastStep()?.step ?? 0;
  const until = Date.now() + ms;
  while (Date.now() < until && child.exitCode === null && child.signalCode === null) {
    child.kill('SIGSTOP');
    await sleep(100 * (1 - fraction));
    child.kill('SIGCONT');
    await sleep(100 * fraction);
  }
  observer.poll();
  const steps = (observer.lastStep()?.step ?? 0) - stepsBefore;
  return `${Math.round(fraction * 100)}% of a core for ${(ms / 1000).toFixed(1)} s: ${steps} steps meanwhile`;
}

/** Images/s of a finished run over [first step, first step + windowS], from its metrics. */
function figures(dir: string, firstStepAt: number, windowS: number, exitCode: number | null, globalBatch: number): RunFigures {
  const records: StepRecord[] = stepRecords(dir);
  const last = records.at(-1)!;
  const within = records.filter((r) => Date.parse(r.time) <= firstStepAt + windowS * 1000).length;
  return { dir, steps: last.step, digest: last.paramDigest, imagesPerSec: (within * globalBatch) / windowS, windowS, exitCode };
}

export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const { print, durationS, heartbeatTimeoutS } = options;
  const globalBatch = (JSON.parse(readFileSync(options.recipe, 'utf8')) as { globalBatch: number }).globalBatch;
  // Faults stop early enough that the last one has recovered before the duration is up.
  const lastAtS = Math.max(0, durationS - 4 * heartbeatTimeoutS - 15);
  const plan = planFaults(options.seed, options.meanIntervalS, lastAtS, options.workers, heartbeatTimeoutS);
  print(
    `chaos: ${options.workers} workers and ${options.spares} spare(s) (${options.backend}), ${durationS} s, seed ${options.seed}, ${plan.length} faults planned (mean interval ${options.meanIntervalS} s), heartbeat timeout ${heartbeatTimeoutS} s`,
  );
  const faults: FaultOutcome[] = [];
  const chaosDir = join(options.outDir, 'chaos');
  const chaos = await runCluster(options, chaosDir, async (cluster, observer, firstStepAt) => {
    for (const fault of plan) {
      // Recoveries that took longer than the gaps push the plan back; what no longer fits is dropped.
      if (Date.now() > firstStepAt + lastAtS * 1000) break;
      const wait = firstStepAt + fault.at * 1000 - Date.now();
      if (wait > 0) await sleep(wait);
      const outcome = await injectFault(fault, cluster, observer, firstStepAt);
      faults.push(outcome);
      print(describe(outcome));
    }
    const rest = firstStepAt + durationS * 1000 - Date.now();
    if (rest > 0) await sleep(rest);
  });
  const chaosFigures = figures(chaosDir, chaos.firstStepAt, durationS, chaos.exitCode, globalBatch);
  print(`chaos run: exit ${chaos.exitCode}, ${chaosFigures.steps} steps, digest ${chaosFigures.digest}`);

  const freeDir = join(options.outDir, 'fault-free');
  let freeWindowS = durationS;
  const free = await runCluster(options, freeDir, async (_cluster, observer, firstStepAt) => {
    const deadline = firstStepAt + durationS * 1000;
    await observer.until(
      () => {
        const last = observer.lastStep()!;
        const reached = last.step >= chaosFigures.steps;
        return (options.shortBaseline ? reached : reached && Date.now() >= deadline) ? true : undefined;
      },
      10 * durationS * 1000 + 600_000,
      `the fault-free run to reach step ${chaosFigures.steps}`,
    );
    freeWindowS = Math.min(durationS, (Date.now() - firstStepAt) / 1000);
  });
  const freeFigures = figures(freeDir, free.firstStepAt, freeWindowS, free.exitCode, globalBatch);
  const atChaosStep = stepRecords(freeDir).find((r) => r.step === chaosFigures.steps)!.paramDigest;
  const report = {
    faults,
    chaos: chaosFigures,
    faultFree: freeFigures,
    faultFreeDigestAtChaosStep: atChaosStep,
    processes: [...chaos.processes, ...free.processes],
  };
  for (const line of summary(report, heartbeatTimeoutS)) print(line);
  return report;
}

function describe(f: FaultOutcome): string {
  const detection =
    f.detectionS === null
      ? 'no failure detected'
      : `detected after ${f.detectionS.toFixed(1)} s, next step ${f.recoveryS!.toFixed(1)} s later`;
  return `t=${f.at.toFixed(1).padStart(6)} s  ${f.kind.padEnd(18)} ${f.target.padEnd(26)} ${detection}${f.note ? `; ${f.note}` : ''}${f.detectedBy ? ` [${f.detectedBy}]` : ''}`;
}

const mean = (xs: number[]): number => xs.reduce((a, x) => a + x, 0) / xs.length;

/** The per-kind table and the comparison with the fault-free run, as printed and as docs/operations.md shows them. */
export function summary(report: ChaosReport, heartbeatTimeoutS: number): string[] {
  const lines = ['', '| fault | count | detection s (mean / max) | detection to next step s (mean / max) |', '|---|---|---|---|'];
  for (const kind of FAULT_KINDS) {
    const of = report.faults.filter((f) => f.kind === kind);
    const detected = of.filter((f) => f.detectionS !== null);
    const cell = (xs: number[]) => (xs.length ? `${mean(xs).toFixed(1)} / ${Math.max(...xs).toFixed(1)}` : '-');
    lines.push(
      `| ${kind} | ${of.length}${detected.length < of.length ? ` (${of.length - detected.length} without a restart)` : ''} | ${cell(detected.map((f) => f.detectionS!))} | ${cell(detected.map((f) => f.recoveryS!))} |`,
    );
  }
  const { chaos, faultFree } = report;
  const ratio = chaos.imagesPerSec / faultFree.imagesPerSec;
  lines.push(
    '',
    `throughput: ${chaos.imagesPerSec.toFixed(1)} images/s with faults over ${chaos.windowS.toFixed(0)} s, ${faultFree.imagesPerSec.toFixed(1)} fault-free over ${faultFree.windowS.toFixed(0)} s: ${(ratio * 100).toFixed(1)}%`,
    `digest at step ${chaos.steps}: ${chaos.digest} with faults, ${report.faultFreeDigestAtChaosStep} fault-free: ${chaos.digest === report.faultFreeDigestAtChaosStep ? 'identical' : 'DIFFERENT'}`,
    `slowest detection: ${Math.max(0, ...report.faults.map((f) => f.detectionS ?? 0)).toFixed(1)} s (heartbeat timeout ${heartbeatTimeoutS} s)`,
  );
  return lines;
}
