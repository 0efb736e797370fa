// Straggler scores as NVIDIA's straggler detection defines them (nvidia-resiliency-ext): each rank's
// performance relative to the fastest, fastest time / this rank's time, so 1.0 is as fast as the
// fastest and 0.5 twice as slow. The time is the rank's compute time for its share of the step: the
// ring makes every rank wait for the slowest, so only compute tells who is slow.
import type { RankStepRecord } from './metrics.ts';

export function stragglerScores(ranks: readonly Pick<RankStepRecord, 'computeMs'>[]): number[] {
  const fastest = Math.min(...ranks.map((r) => r.computeMs));
  return ranks.map((r) => (r.computeMs > 0 ? fastest / r.computeMs : 1));
}

/** A rank whose score stays below this over the whole window is a straggler (2 ranks: 1.43x slower). */
export const STRAGGLER_THRESHOLD = 0.7;
/** Steps a score must stay below (or, to clear, at or above) the threshold: short enough to name a slow rank within a few steps, long enough that one noisy step names nobody. */
export const STRAGGLER_WINDOW = 5;

/** A rank that became a straggler at `step` (or stopped being one), with its mean score over the window. */
export interface StragglerChange {
  rank: number;
  straggling: boolean;
  step: number;
  meanScore: number;
}

/**
 * Names stragglers from the step records of one ring: a rank is named once its score has been below
 * the threshold for `window` steps in a row, and cleared once it has been at or above it as long.
 * A new ring (another generation) has other ranks: `reset` forgets everything.
 */
export class StragglerDetector {
  private recent: number[][] = [];
  private readonly named = new Set<number>();

  constructor(
    readonly threshold = STRAGGLER_THRESHOLD,
    readonly window = STRAGGLER_WINDOW,
  ) {
    if (!(threshold > 0 && threshold < 1)) throw new Error(`a straggler threshold must lie in (0, 1), got ${threshold}`);
    if (!Number.isInteger(window) || window < 1) throw new Error(`a straggler window must be a positive number of steps, got ${window}`);
  }

  /** Feeds one step's per-rank figures (in rank order); returns the ranks named or cleared by it. */
  observe(step: number, ranks: readonly Pick<RankStepRecord, 'computeMs'>[]): StragglerChange[] {
    if (ranks.length !== this.recent.length) this.reset(ranks.length);
    const changes: StragglerChange[] = [];
    stragglerScores(ranks).forEach((score, rank) => {
      const scores = this.recent[rank]!;
      scores.push(score);
      if (scores.length > this.window) scores.shift();
      if (scores.length < this.window) return;
      const meanScore = scores.reduce((a, s) => a + s, 0) / scores.length;
      const slow = scores.every((s) => s < this.threshold);
      const fast = scores.every((s) => s >= this.threshold);
      if (slow && !this.named.has(rank)) {
        this.named.add(rank);
        changes.push({ rank, straggling: true, step, meanScore });
      } else if (fast && this.named.has(rank)) {
        this.named.delete(rank);
        changes.push({ rank, straggling: false, step, meanScore });
      }
    });
    return changes;
  }

  /** The ranks named now. */
  stragglers(): number[] {
    return [...this.named].sort((a, b) => a - b);
  }

  /** Each rank's mean score over the steps seen in the window so far (1 before any step). */
  meanScores(): number[] {
    return this.recent.map((scores) => (scores.length === 0 ? 1 : scores.reduce((a, s) => a + s, 0) / scores.length));
  }

  reset(worldSize = 0): void {
    this.recent = Array.from({ length: worldSize }, () => []);
    this.named.clear();
  }
}
