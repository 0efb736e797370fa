// What both soup commands do: check the ingredients, evaluate each on the held-out and the test
// split, make the uniform soup and the greedy soup, and evaluate both, so that every soup command
// ends with the same table. Ingredients are read one at a time, each time they are needed: the
// files are read up to three times, but memory holds one ingredient, the float64 sum and the soups.
import type { DataSplit } from '../data/source.ts';
import type { EvalPool } from './eval-pool.ts';
import type { EvalResult } from './evaluate.ts';
import { greedySoup, type GreedyTry } from './greedy.ts';
import { assertSameArchitecture, loadIngredient, type IngredientInfo } from './ingredients.ts';
import { WeightSum } from './uniform.ts';

/** The held-out split chooses the greedy soup; the test split only reports. */
export const SELECTION_SPLIT: DataSplit = 'holdout';
export const TEST_SPLIT: DataSplit = 'val';

export interface SplitResults {
  heldOut: EvalResult;
  test: EvalResult;
}

export interface SoupReport {
  /** The first ingredient without its weights: the architecture every ingredient shares. */
  architecture: IngredientInfo;
  ingredients: (SplitResults & { name: string; file: string })[];
  uniform: SplitResults & { params: Float32Array };
  greedy: SplitResults & { params: Float32Array; ingredients: string[]; log: GreedyTry[] };
}

/** What cooking needs of an EvalPool. */
export type SplitEvaluator = Pick<EvalPool, 'evaluate' | 'close'>;

export interface CookOptions {
  useEma: boolean;
  /** Starts the evaluation (an EvalPool) for the ingredients' architecture and data, known after the first pass. */
  startPool(first: IngredientInfo, all: readonly IngredientInfo[]): Promise<SplitEvaluator>;
  /** One line of progress. */
  progress(line: string): void;
}

const percent = (accuracy: number): string => `${(accuracy * 100).toFixed(2)}%`;

/**
 * The first pass: every ingredient checked against the first and added to the uniform sum.
 * Returns what the evaluation needs to know of them, without their weights.
 */
function firstPass(names: readonly string[], useEma: boolean): { infos: IngredientInfo[]; uniform: Float32Array } {
  const infos: IngredientInfo[] = [];
  let sum: WeightSum | null = null;
  for (const name of names) {
    if (infos.some((i) => i.name === name)) throw new Error(`ingredient ${name} is given twice`);
    const { params, ...info } = loadIngredient(name, { useEma });
    if (infos.length > 0) assertSameArchitecture(infos[0]!, info);
    sum ??= new WeightSum(params.length);
    sum.add(params);
    infos.push(info);
  }
  if (sum === null) throw new Error('a soup needs at least one ingredient');
  return { infos, uniform: sum.mean() };
}

export async function cookSoups(names: readonly string[], options: CookOptions): Promise<SoupReport> {
  const { useEma, progress } = options;
  const { infos, uniform } = firstPass(names, useEma);
  const first = infos[0]!;
  progress(
    `${infos.length} ingredient${infos.length === 1 ? '' : 's'} of ${first.model}, ${uniform.length.toLocaleString('en-US')} parameters each`,
  );
  const load = (name: string): Float32Array => {
    const ingredient = loadIngredient(name, { useEma });
    assertSameArchitecture(first, ingredient);
    return ingredient.params;
  };
  const pool = await options.startPool(first, infos);
  try {
    const evaluateBoth = async (params: Float32Array): Promise<SplitResults> => ({
      heldOut: await pool.evaluate(params, SELECTION_SPLIT),
      test: await pool.evaluate(params, TEST_SPLIT),
    });

    const ingredients: SoupReport['ingredients'] = [];
    for (const [i, info] of infos.entries()) {
      const results = await evaluateBoth(load(info.name));
      ingredients.push({ name: info.name, file: info.file, ...results });
      progress(
        `ingredient ${i + 1}/${infos.length} ${info.name}: held-out ${percent(results.heldOut.top1)}, test ${percent(results.test.top1)}`,
      );
    }

    const uniformResults = await evaluateBoth(uniform);
    progress(
      `uniform soup of ${infos.length}: held-out ${percent(uniformResults.heldOut.top1)}, test ${percent(uniformResults.test.top1)}`,
    );

    // Each try's full held-out result, in order, so the greedy soup's need not be computed again.
    const tries: EvalResult[] = [];
    const greedy = await greedySoup(
      ingredients.map((r) => ({ name: r.name, heldOutAccuracy: r.heldOut.top1 })),
      load,
      async (params) => {
        const result = await pool.evaluate(params, SELECTION_SPLIT);
        tries.push(result);
        return result.top1;
      },
      (t) =>
        progress(
          `greedy: + ${t.name} gives held-out ${percent(t.triedAccuracy)}: ${t.kept ? 'kept' : `dropped (the soup has ${percent(t.soupAccuracy)})`}`,
        ),
    );
    const lastKept = greedy.log
      .map((t, i) => (t.kept ? i : -1))
      .filter((i) => i > 0)
      .at(-1);
    const best = ingredients.find((r) => r.name === greedy.ingredients[0])!;
    // A soup of the best ingredient alone is that ingredient: its results are known.
    const greedyResults: SplitResults =
      lastKept === undefined
        ? { heldOut: best.heldOut, test: best.test }
        : { heldOut: tries[lastKept - 1]!, test: await pool.evaluate(greedy.params, TEST_SPLIT) };
    progress(
      `greedy soup of ${greedy.ingredients.length}: held-out ${percent(greedyResults.heldOut.top1)}, test ${percent(greedyResults.test.top1)}`,
    );

    return {
      architecture: first,
      ingredients,
      uniform: { ...uniformResults, params: uniform },
      greedy: { ...greedyResults, params: greedy.params, ingredients: greedy.ingredients, log: greedy.log },
    };
  } finally {
    await pool.close();
  }
}
