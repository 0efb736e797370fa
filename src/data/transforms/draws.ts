// Draw helpers over the per-sample generator, mirroring the Python draws the reference transforms
// make (random.uniform, random.randint, torch.randint, torch.randperm) so that an algorithm
// ported from them keeps its shape. Only the order and number of draws matter here: the values
// cannot match Python's generator, and need not.
import type { Mulberry32 } from '../../common/random.ts';

/** Uniform in [low, high), as Python's random.uniform and torch's uniform_. */
export function uniform(rng: Mulberry32, low: number, high: number): number {
  return low + (high - low) * rng.next();
}

/** Uniform integer in [low, high], both ends included (Python's random.randint). */
export function randomInt(rng: Mulberry32, low: number, high: number): number {
  return low + Math.floor(rng.next() * (high - low + 1));
}

/** A uniformly random permutation of 0..n-1 (Fisher-Yates), as torch.randperm. */
export function permutation(rng: Mulberry32, n: number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order;
}

/** Python 3's round(): to the nearest integer, ties to even (the references' box sizes use it). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : r;
}
