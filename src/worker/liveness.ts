// A worker's own view of whether it is alive, for its supervisor and for itself.
//
// - `OrderProgress`: the order the training loop is carrying out (a step, an evaluation, a
//   snapshot) and since when. An order in flight for longer than the stall timeout means the loop
//   is stuck (a deadlocked op, a GPU readback that never resolves), even though the process and its
//   HTTP server are up: `/healthz` then answers 503 so that a liveness probe replaces the worker.
//   A process that is stopped or whose event loop is blocked does not answer at all, which a probe
//   counts as a failure too.
// - `LoopStallWatch`: notices that this process itself was stopped (SIGSTOP, a frozen VM) or
//   blocked for longer than the heartbeat timeout. The coordinator heard nothing from it meanwhile,
//   so it has declared the worker lost and fenced its generation; the worker must not go on as if
//   nothing happened.
import { createServer, type Server } from 'node:http';

/** The orders whose duration is the training loop's progress; setup orders have their own timeouts at the coordinator. */
export type TrackedOrder = 'step' | 'eval';

export class OrderProgress {
  private current: { order: TrackedOrder; step: number; since: number } | null = null;
  private lastDoneAt: number | null = null;

  constructor(private readonly stallTimeoutMs: number) {}

  begin(order: TrackedOrder, step: number): void {
    this.current = { order, step, since: Date.now() };
  }

  /** The order ended (done, failed or abandoned). */
  end(): void {
    this.current = null;
    this.lastDoneAt = Date.now();
  }

  /** True when an order has been in flight for longer than the stall timeout. */
  stalled(now = Date.now()): boolean {
    return this.current !== null && now - this.current.since > this.stallTimeoutMs;
  }

  /** What /healthz reports. */
  report(now = Date.now()): object {
    const { current, lastDoneAt } = this;
    return {
      inFlight: current ? { order: current.order, step: current.step, seconds: (now - current.since) / 1000 } : null,
      secondsSinceLastOrder: lastDoneAt === null ? null : (now - lastDoneAt) / 1000,
      stallTimeoutSeconds: this.stallTimeoutMs / 1000,
    };
  }
}

/**
 * Serves the worker's probes on `port`: `/healthz` (liveness: 503 once the training loop is stuck,
 * see OrderProgress) and `/readyz` (readiness: 200 while connected to a coordinator); both tell
 * the worker's rank (-1 while it waits for a generation, as a spare does).
 */
export function serveHealth(port: number, progress: OrderProgress, session: () => { connected: boolean; rank: number }): Promise<Server> {
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://worker').pathname;
    const stalled = progress.stalled();
    const { connected, rank } = session();
    const body = { status: stalled ? 'stalled' : 'ok', connected, rank, ...progress.report() };
    const code = path === '/healthz' ? (stalled ? 503 : 200) : path === '/readyz' ? (body.connected ? 200 : 503) : 404;
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, () => resolve(server));
  });
}

/** Checks of the loop per heartbeat timeout: a stop shows as a gap between two checks. */
const STALL_CHECKS_PER_TIMEOUT = 10;

/**
 * Calls `onStall(ms)` whenever two checks of this process's event loop lie further apart than
 * `thresholdMs` (the heartbeat timeout): the process was stopped or blocked that long. A continued
 * process may read a socket before its timers run: `check()` then tells at once.
 */
export class LoopStallWatch {
  private readonly timer: NodeJS.Timeout;
  private readonly intervalMs: number;
  private last = Date.now();

  constructor(
    private readonly thresholdMs: number,
    private readonly onStall: (stalledMs: number) => void,
  ) {
    this.intervalMs = Math.max(10, thresholdMs / STALL_CHECKS_PER_TIMEOUT);
    this.timer = setInterval(() => this.check(), this.intervalMs);
    this.timer.unref();
  }

  /**
   * Checks now, not at the next tick: a continued process may read its sockets before its timers
   * run, so whoever acts on a socket's news asks here first.
   */
  check(): void {
    const now = Date.now();
    // The loop was away for the gap since the last check, less the interval it was meant to wait.
    const stalledMs = now - this.last - this.intervalMs;
    this.last = now;
    if (stalledMs > this.thresholdMs) this.onStall(stalledMs);
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
