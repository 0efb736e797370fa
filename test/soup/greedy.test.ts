// The greedy soup's rule on constructed ingredients: one-parameter "models" whose soup is exactly
// predictable, and an evaluator that knows the held-out accuracy of each soup it may be asked about
// (and fails on any other, so each candidate is checked to be the average of the soup plus one).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { greedySoup, type GreedyCandidate } from '../../src/soup/greedy.ts';

interface Constructed {
  candidates: GreedyCandidate[];
  load: (name: string) => Float32Array;
  evaluate: (params: Float32Array) => Promise<number>;
  evaluated: number[];
}

/** Ingredients name -> [value, own held-out accuracy]; `soups` the accuracy of a soup by its value. */
function construct(ingredients: Record<string, [number, number]>, soups: Record<number, number>): Constructed {
  const evaluated: number[] = [];
  return {
    candidates: Object.entries(ingredients).map(([name, [, heldOutAccuracy]]) => ({ name, heldOutAccuracy })),
    load: (name) => Float32Array.of(ingredients[name]![0]),
    evaluate: async (params) => {
      const value = params[0]!;
      evaluated.push(value);
      const accuracy = soups[value];
      if (accuracy === undefined) throw new Error(`unexpected candidate soup ${value}`);
      return accuracy;
    },
    evaluated,
  };
}

test('starting from the best, an ingredient that helps is kept, one that hurts and one that ties are not', async () => {
  // Given out of order: the soup tries them by held-out accuracy, highest first.
  const c = construct(
    { hurts: [6, 0.8], ties: [9, 0.7], best: [0, 0.9], helps: [3, 0.85] },
    {
      1.5: 0.92, // best + helps
      3: 0.91, // best + helps + hurts: lower
      4: 0.92, // best + helps + ties: equal, not strictly higher
    },
  );
  const heard: string[] = [];
  const soup = await greedySoup(c.candidates, c.load, c.evaluate, (t) => heard.push(t.name));
  assert.deepEqual(heard, ['helps', 'hurts', 'ties'], 'each try is reported as it is decided');
  assert.deepEqual(
    soup.log.map((t) => t.name),
    ['best', 'helps', 'hurts', 'ties'],
  );
  assert.deepEqual(
    soup.log.map((t) => t.kept),
    [true, true, false, false],
  );
  assert.deepEqual(
    soup.log.map((t) => t.triedAccuracy),
    [0.9, 0.92, 0.91, 0.92],
  );
  assert.deepEqual(
    soup.log.map((t) => t.soupAccuracy),
    [0.9, 0.92, 0.92, 0.92],
  );
  assert.deepEqual(
    soup.log.map((t) => t.heldOutAccuracy),
    [0.9, 0.85, 0.8, 0.7],
  );
  assert.deepEqual(soup.ingredients, ['best', 'helps']);
  assert.equal(soup.accuracy, 0.92);
  assert.deepEqual([...soup.params], [1.5]);
  // The best ingredient's own accuracy is the first to beat: it is not evaluated again.
  assert.deepEqual(c.evaluated, [1.5, 3, 4]);
});

test('one pass: an ingredient dropped early is not tried again after the soup changes', async () => {
  const c = construct(
    { a: [0, 0.9], b: [6, 0.85], c: [-3, 0.8] },
    {
      3: 0.89, // a + b: lower, dropped
      [-1.5]: 0.95, // a + c: kept
      1: 0.99, // a + c + b would be higher, but b is not tried twice
    },
  );
  const soup = await greedySoup(c.candidates, c.load, c.evaluate);
  assert.deepEqual(soup.ingredients, ['a', 'c']);
  assert.deepEqual(c.evaluated, [3, -1.5]);
  assert.equal(soup.accuracy, 0.95);
});

test('ingredients of equal held-out accuracy keep their given order; a single ingredient is its own soup', async () => {
  const c = construct({ first: [1, 0.5], second: [2, 0.5], third: [3, 0.5] }, { 1.5: 0.4, 2: 0.4 });
  const soup = await greedySoup(c.candidates, c.load, c.evaluate);
  assert.deepEqual(
    soup.log.map((t) => t.name),
    ['first', 'second', 'third'],
  );
  assert.deepEqual(soup.ingredients, ['first']);
  assert.deepEqual([...soup.params], [1]);

  const alone = construct({ only: [7, 0.6] }, {});
  const single = await greedySoup(alone.candidates, alone.load, alone.evaluate);
  assert.deepEqual(single.ingredients, ['only']);
  assert.equal(single.accuracy, 0.6);
  assert.deepEqual(alone.evaluated, []);
  await assert.rejects(greedySoup([], alone.load, alone.evaluate), /at least one ingredient/);
});

test('the soup tried is the uniform average of the kept ingredients and the new one', async () => {
  const values: Record<string, number[]> = { a: [0, 8, -4], b: [2, 4, 4], c: [1, 0, 3] };
  const tried: number[][] = [];
  const soup = await greedySoup(
    [
      { name: 'a', heldOutAccuracy: 0.3 },
      { name: 'b', heldOutAccuracy: 0.2 },
      { name: 'c', heldOutAccuracy: 0.1 },
    ],
    (name) => Float32Array.from(values[name]!),
    async (params) => {
      tried.push([...params]);
      return 0.3 + tried.length; // every ingredient helps
    },
  );
  assert.deepEqual(tried, [
    [1, 6, 0],
    [1, 4, 1],
  ]);
  assert.deepEqual(soup.ingredients, ['a', 'b', 'c']);
  assert.deepEqual([...soup.params], [1, 4, 1]);
});
