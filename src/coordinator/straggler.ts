// Straggler scores as NVIDIA's straggler detection defines them (nvidia-resiliency-ext): each rank's
// performance relative to the fastest, fastest time / this rank's time, so 1.0 is as fast as the
// fastest and 0.5 twice as slow. The time is the rank's compute time for its share of the step: the
// ring makes every rank wait for the slowest, so only compute tells who is slow.
import type { RankStepRecord } from './metrics.ts';

export function stragglerScores(ranks: readonly Pick<RankStepRecord, 'computeMs'>[]): number[] {
  const fastest = Math.min(...ranks.map((r) => r.computeMs));
  return ranks.map((r) => (r.computeMs > 0 ? fastest / r.computeMs : 1));
}

/** A rank whose median score over the window is below this is a straggler (2 ranks: 1.43x slower). */
export const STRAGGLER_THRESHOLD = 0.7;
/**
 * Steps whose median score judges a rank: the median ignores the odd step that a loaded machine makes
 * slow or fast, and a rank slowed for good is named after about half the window.
 */
export const STRAGGLER_WINDOW = 10;

/** A rank that became a straggler at `step` (or stopped being one), with its median score over the window. */
export interface StragglerChange {
  rank: number;
  straggling: boolean;
  step: number;
  windowScore: number;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/**
 * Names stragglers from the step records of one ring: a rank is named once the median of its scores
 * over the last `window` steps is below the threshold, and cleared once that median is back at or
 * above it. A new ring (another generation) has other ranks: `reset` forgets everything.
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
      const windowScore = median(scores);
      const slow = windowScore < this.threshold;
      if (slow !== this.named.has(rank)) {
        if (slow) this.named.add(rank);
        else this.named.delete(rank);
        changes.push({ rank, straggling: slow, step, windowScore });
      }
    });
    return changes;
  }

  /** The ranks named now. */
  stragglers(): number[] {
    return [...this.named].sort((a, b) => a - b);
  }

  /** Each rank's median score over the steps of the window seen so far (1 before any step). */
  windowScores(): number[] {
    return this.recent.map((scores) => (scores.length === 0 ? 1 : median(scores)));
  }

  reset(worldSize = 0): void {
    this.recent = Array.from({ length: worldSize }, () => []);
    this.named.clear();
  }
}
