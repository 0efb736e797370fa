// When a worker tries the coordinator again after losing it (or before first reaching it).
//
// A coordinator that went away usually comes back within seconds (its supervisor restarts it on
// the same run directory), and every second the workers wait after it is up again is a second the
// whole run stands still: so for the first seconds of an outage the worker retries on a short fixed
// interval. An outage that lasts longer is more likely a coordinator that is down for good or
// unreachable, and the delay then doubles per attempt up to a cap, as usual. Every delay carries
// ±50% jitter so that a cluster's workers do not knock in lockstep.

/** Retry interval for the first RECONNECT_FAST_WINDOW_MS of an outage. */
export const RECONNECT_FAST_DELAY_MS = 200;
/** How long after losing the coordinator the worker keeps retrying on the short interval. */
export const RECONNECT_FAST_WINDOW_MS = 15_000;
/** After the fast window: the first delay, doubled per attempt up to RECONNECT_MAX_DELAY_MS. */
export const RECONNECT_BASE_DELAY_MS = 250;
export const RECONNECT_MAX_DELAY_MS = 5_000;

export class ReconnectSchedule {
  private lostAt: number;
  private backoffAttempts = 0;

  constructor(now: number) {
    this.lostAt = now;
  }

  /** The coordinator was lost at `now` after a session that got in: a new outage begins. */
  outage(now: number): void {
    this.lostAt = now;
    this.backoffAttempts = 0;
  }

  /** Milliseconds to wait before the next attempt; `random` in [0, 1) picks the jitter. */
  nextDelayMs(now: number, random: number = Math.random()): number {
    const jitter = 0.5 + random;
    if (now - this.lostAt < RECONNECT_FAST_WINDOW_MS) return RECONNECT_FAST_DELAY_MS * jitter;
    const delay = Math.min(RECONNECT_MAX_DELAY_MS, RECONNECT_BASE_DELAY_MS * 2 ** this.backoffAttempts);
    this.backoffAttempts += 1;
    return delay * jitter;
  }
}
