// The greedy soup, as Wortsman et al. 2022 ("Model soups", Recipe 1 and the greedy soup of their
// reference code) define it: sort the ingredients by held-out accuracy, highest first; the soup
// starts as the best one; each next ingredient is tried once, in that order, as the uniform
// average of the soup's ingredients plus it, and kept only if the soup's held-out accuracy becomes
// strictly higher. The accuracy to beat starts at the best ingredient's own.
import { WeightSum } from './uniform.ts';

export interface GreedyCandidate {
  name: string;
  /** The ingredient's own accuracy on the held-out split. */
  heldOutAccuracy: number;
}

export interface GreedyTry {
  name: string;
  heldOutAccuracy: number;
  /** The held-out accuracy of the soup with this ingredient added; for the first, its own. */
  triedAccuracy: number;
  kept: boolean;
  /** The soup's held-out accuracy after this try. */
  soupAccuracy: number;
}

export interface GreedyResult {
  params: Float32Array;
  /** The kept ingredients, in the order they were added. */
  ingredients: string[];
  /** The soup's held-out accuracy. */
  accuracy: number;
  /** Every ingredient in the order tried (the first is the start). */
  log: GreedyTry[];
}

/**
 * `load` gives an ingredient's parameters (read when needed, one at a time); `evaluate` the
 * held-out accuracy of a parameter vector; `onTry` hears of each try as it is decided. Ties in the
 * ranking keep the order of `candidates`.
 */
export async function greedySoup(
  candidates: readonly GreedyCandidate[],
  load: (name: string) => Float32Array | Promise<Float32Array>,
  evaluate: (params: Float32Array) => Promise<number>,
  onTry: (step: GreedyTry) => void = () => undefined,
): Promise<GreedyResult> {
  // Array.prototype.sort is stable, so equal accuracies keep their given order.
  const ranked = [...candidates].sort((a, b) => b.heldOutAccuracy - a.heldOutAccuracy);
  const [best, ...rest] = ranked;
  if (best === undefined) throw new Error('a soup needs at least one ingredient');
  const first = await load(best.name);
  const sum = new WeightSum(first.length);
  sum.add(first);
  let accuracy = best.heldOutAccuracy;
  const ingredients = [best.name];
  const log: GreedyTry[] = [{ name: best.name, heldOutAccuracy: accuracy, triedAccuracy: accuracy, kept: true, soupAccuracy: accuracy }];
  for (const candidate of rest) {
    const params = await load(candidate.name);
    const tried = await evaluate(sum.meanWith(params));
    const kept = tried > accuracy;
    if (kept) {
      sum.add(params);
      accuracy = tried;
      ingredients.push(candidate.name);
    }
    const step = { name: candidate.name, heldOutAccuracy: candidate.heldOutAccuracy, triedAccuracy: tried, kept, soupAccuracy: accuracy };
    log.push(step);
    onTry(step);
  }
  return { params: sum.mean(), ingredients, accuracy, log };
}
