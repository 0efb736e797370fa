// A local cluster the chaos runner can hurt: a coordinator process it may kill -9 and start again
// on the same port and run directory, and worker slots whose control and ring links each run
// through a FaultProxy on loopback. The runner supervises the workers the way Kubernetes does:
// a worker process that exits is started again, and one whose liveness probe (the worker's
// progress-aware /healthz) fails for longer than the heartbeat timeout is killed and replaced.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { BIN, TOKEN, pickPort } from '../e2e/cluster.ts';
import { FaultProxy } from '../e2e/proxy.ts';

/** How often the supervisor probes each worker's /healthz, and how long one probe may take. */
export const PROBE_PERIOD_MS = 1_000;

export interface ClusterOptions {
  workers: number;
  /** Hot spares started beside the workers (the coordinator's --spares). */
  spares: number;
  outDir: string;
  /** Run flags of the coordinator (recipe, steps, checkpoints). */
  runArgs: string[];
  backend: string;
  heartbeatTimeoutS: number;
  /** Where the runner's own account of events goes. */
  note: (line: string) => void;
}

/** One worker's place: its links' proxies, its fixed ports, and the process that holds it now. */
export interface Slot {
  index: number;
  controlProxy: FaultProxy;
  ringProxy: FaultProxy;
  ringPort: number;
  healthPort: number;
  process: ChildProcess | null;
  /** Probes failed in a row since the process last answered; counted once it has answered once. */
  probeFailures: number;
  answered: boolean;
}

function alive(child: ChildProcess | null): child is ChildProcess {
  return child !== null && child.exitCode === null && child.signalCode === null;
}

function exited(child: ChildProcess): Promise<void> {
  return alive(child) ? new Promise((resolve) => child.once('exit', () => resolve())) : Promise.resolve();
}

export class ChaosCluster {
  readonly slots: Slot[] = [];
  coordinator: ChildProcess | null = null;
  /** Every process the cluster started, so that a caller can check none outlives it. */
  readonly spawned: number[] = [];
  private readonly coordinatorPort = pickPort();
  private readonly logDir: string;
  private supervising = true;
  private destroyed = false;
  private probeTimer: NodeJS.Timeout | null = null;
  /** Called with (slot, exit description) whenever a worker process ends while supervised. */
  onWorkerExit: (slot: Slot, how: string) => void = () => undefined;

  private constructor(private readonly options: ClusterOptions) {
    this.logDir = join(options.outDir, 'logs');
    mkdirSync(this.logDir, { recursive: true });
  }

  static async start(options: ClusterOptions): Promise<ChaosCluster> {
    const cluster = new ChaosCluster(options);
    cluster.startCoordinator();
    for (let index = 0; index < options.workers + options.spares; index++) {
      const ringPort = pickPort();
      cluster.slots.push({
        index,
        controlProxy: await FaultProxy.start(cluster.coordinatorPort),
        ringProxy: await FaultProxy.start(ringPort),
        ringPort,
        healthPort: pickPort(),
        process: null,
        probeFailures: 0,
        answered: false,
      });
    }
    for (const slot of cluster.slots) cluster.spawnWorker(slot);
    cluster.probeTimer = setInterval(() => void cluster.probeAll(), PROBE_PERIOD_MS);
    return cluster;
  }

  /** A child's stdout and stderr, appended to OUT/logs/NAME.out (replacements append to the same file). */
  private output(name: string): number {
    return openSync(join(this.logDir, `${name}.out`), 'a');
  }

  startCoordinator(): void {
    const { workers, outDir, runArgs, heartbeatTimeoutS } = this.options;
    const out = this.output('coordinator');
    this.coordinator = spawn(
      process.execPath,
      [
        BIN,
        'coordinator',
        '--workers',
        String(workers),
        '--spares',
        String(this.options.spares),
        '--host',
        '127.0.0.1',
        '--port',
        String(this.coordinatorPort),
        '--token',
        TOKEN,
        ...runArgs,
        '--heartbeat-timeout',
        String(heartbeatTimeoutS),
        '--out',
        outDir,
      ],
      { stdio: ['ignore', out, out] },
    );
    this.spawned.push(this.coordinator.pid!);
  }

  /** kill -9 of the coordinator; resolves once it is gone. */
  async killCoordinator(): Promise<void> {
    const coordinator = this.coordinator!;
    coordinator.kill('SIGKILL');
    await exited(coordinator);
  }

  private spawnWorker(slot: Slot): void {
    const { backend, heartbeatTimeoutS } = this.options;
    const out = this.output(`worker-${slot.index}`);
    const child = spawn(
      process.execPath,
      [
        BIN,
        'worker',
        '--coordinator',
        `ws://127.0.0.1:${slot.controlProxy.port}`,
        '--backend',
        backend,
        '--threads',
        '1',
        '--heartbeat-timeout',
        String(heartbeatTimeoutS),
        // Long enough to outlast any coordinator restart of the run.
        '--reconnect-timeout',
        '300',
        '--ring-port',
        String(slot.ringPort),
        '--advertise',
        `127.0.0.1:${slot.ringProxy.port}`,
        '--health-port',
        String(slot.healthPort),
        '--log-dir',
        this.logDir,
        '--log-name',
        `worker-${slot.index}`,
      ],
      { env: { ...process.env, VIT_DIST_TOKEN: TOKEN }, stdio: ['ignore', out, out] },
    );
    slot.process = child;
    this.spawned.push(child.pid!);
    slot.probeFailures = 0;
    slot.answered = false;
    child.once('exit', (code, signal) => {
      if (!this.supervising) return;
      this.onWorkerExit(slot, signal ?? `code ${code}`);
      // Its ports are free again now: the replacement binds the same ones behind the same proxies.
      this.spawnWorker(slot);
    });
  }

  /** The slots whose worker trains in the current generation (a rank on its /healthz), not a spare. */
  async members(): Promise<Slot[]> {
    const ranks = await Promise.all(
      this.slots.map(async (slot) => {
        try {
          const response = await fetch(`http://127.0.0.1:${slot.healthPort}/healthz`, { signal: AbortSignal.timeout(PROBE_PERIOD_MS) });
          return ((await response.json()) as { rank: number }).rank;
        } catch {
          return -1;
        }
      }),
    );
    return this.slots.filter((_, i) => ranks[i]! >= 0);
  }

  /** One liveness probe of `slot`'s /healthz: false when it does not answer within a probe period, or answers 503 (stuck). */
  private async probe(slot: Slot): Promise<boolean> {
    try {
      return (await fetch(`http://127.0.0.1:${slot.healthPort}/healthz`, { signal: AbortSignal.timeout(PROBE_PERIOD_MS) })).ok;
    } catch {
      return false;
    }
  }

  /**
   * One round of liveness probes. A worker that answered once and then fails probes for twice the
   * heartbeat timeout in a row (no answer: stopped or blocked; 503: its training loop is stuck) is
   * killed; the exit handler replaces it.
   */
  private async probeAll(): Promise<void> {
    const threshold = Math.ceil((2 * this.options.heartbeatTimeoutS * 1000) / PROBE_PERIOD_MS);
    await Promise.all(
      this.slots.map(async (slot) => {
        const child = slot.process;
        if (!alive(child)) return;
        const ok = await this.probe(slot);
        if (!this.supervising || slot.process !== child) return;
        if (ok) {
          slot.answered = true;
          slot.probeFailures = 0;
        } else if (slot.answered && ++slot.probeFailures >= threshold) {
          this.kill(slot, child, `failed ${threshold} liveness probes in a row`);
        }
      }),
    );
  }

  /**
   * The coordinator declared the worker process `pid` lost. As launch does, the supervisor acts at
   * once, but only on a process that is not alive by its own probe: a worker that merely lost its
   * control link answers, and reconnects by itself.
   */
  async workerLost(pid: number): Promise<void> {
    const slot = this.slots.find((s) => s.process?.pid === pid);
    const child = slot?.process ?? null;
    if (!slot || !alive(child) || (await this.probe(slot)) || slot.process !== child || !this.supervising) return;
    this.kill(slot, child, 'was declared lost by the coordinator and fails its liveness probe');
  }

  private kill(slot: Slot, child: ChildProcess, why: string): void {
    this.options.note(`  supervisor: worker ${slot.index} (pid ${child.pid}) ${why}: SIGKILL`);
    slot.answered = false;
    child.kill('SIGKILL');
  }

  /**
   * Ends the run as an operator would: SIGTERM to the coordinator, which finishes the step, writes
   * a checkpoint and stops the workers. Resolves with the coordinator's exit code (null when it had
   * to be killed after `timeoutMs`).
   */
  async finish(timeoutMs: number): Promise<number | null> {
    this.stopSupervising();
    const coordinator = this.coordinator!;
    coordinator.kill('SIGTERM');
    const timer = setTimeout(() => coordinator.kill('SIGKILL'), timeoutMs);
    await exited(coordinator);
    clearTimeout(timer);
    // The workers leave on the coordinator's stop; give them a moment before destroy() kills them.
    const workers = this.slots.map((s) => s.process).filter(alive);
    await Promise.race([Promise.all(workers.map(exited)), new Promise((r) => setTimeout(r, 15_000))]);
    return coordinator.exitCode;
  }

  private stopSupervising(): void {
    this.supervising = false;
    if (this.probeTimer) clearInterval(this.probeTimer);
    this.probeTimer = null;
  }

  /** Kills every process of the cluster that is left (a stopped one too) and closes the proxies. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    this.stopSupervising();
    const children = [this.coordinator, ...this.slots.map((s) => s.process)].filter(alive);
    for (const child of children) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    }
    await Promise.all(children.map(exited));
    await Promise.all(this.slots.flatMap((s) => [s.controlProxy.close(), s.ringProxy.close()]));
  }
}
