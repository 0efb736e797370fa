// Straggler scores as NVIDIA's straggler detection defines them (nvidia-resiliency-ext): each rank's
// performance relative to the fastest, fastest time / this rank's time, so 1.0 is as fast as the
// fastest and 0.5 twice as slow. The time is the rank's compute time for its share of the step: the
// ring makes every rank wait for the slowest, so only compute tells who is slow.
import type { RankStepRecord } from './metrics.ts';

export function stragglerScores(ranks: readonly Pick<RankStepRecord, 'computeMs'>[]): number[] {
  const fastest = Math.min(...ranks.map((r) => r.computeMs));
  return ranks.map((r) => (r.computeMs > 0 ? fastest / r.computeMs : 1));
}
