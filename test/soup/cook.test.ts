// Both soup commands' work on constructed ingredients (checkpoints whose weights are one value
// repeated) with a stand-in evaluator whose accuracies are known: what is evaluated, how often,
// and what the report holds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeCheckpoint } from '../../src/coordinator/checkpoint.ts';
import type { DataSplit } from '../../src/data/source.ts';
import { modelParamSpecs } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { cookSoups, type SplitEvaluator } from '../../src/soup/cook.ts';
import type { EvalResult } from '../../src/soup/evaluate.ts';
import type { IngredientInfo } from '../../src/soup/ingredients.ts';
import { applyOverrides, loadRecipe, type Recipe } from '../../src/train/recipe.ts';

const recipe = loadRecipe(fileURLToPath(new URL('../fixtures/fmnist-micro.json', import.meta.url)));
const numParams = (r: Recipe): number => modelParamSpecs(createModelConfig(r.model, r.modelArgs)).reduce((n, s) => n + s.size, 0);

/** A run directory whose checkpoint holds `value` in every parameter. */
function run(root: string, name: string, value: number, r: Recipe = recipe): string {
  const dir = join(root, name);
  const params = new Float32Array(numParams(r)).fill(value);
  writeCheckpoint(
    join(dir, 'checkpoints'),
    {
      runId: name,
      step: 1,
      recipe: r,
      numParams: params.length,
      worldSize: 1,
      optimizerStep: 1,
      sampler: { seed: 0, step: 1 },
      paramDigest: name,
    },
    { params, optimizerState: { momentum: params }, ema: null },
  );
  return dir;
}

const result = (top1: number): EvalResult => ({ samples: 100, top1, top5: 1, loss: 1 - top1 });

/** Held-out accuracy by the soup's value (any other is a mistake); test accuracy value / 10. */
function evaluator(heldOut: Record<number, number>): SplitEvaluator & { calls: [DataSplit, number][]; closed: boolean } {
  const state = {
    calls: [] as [DataSplit, number][],
    closed: false,
    async evaluate(params: Float32Array, split: DataSplit): Promise<EvalResult> {
      const value = params[0]!;
      assert.ok(
        params.every((v) => v === value),
        'a soup of constant vectors is constant',
      );
      state.calls.push([split, value]);
      if (split === 'val') return result(value / 10);
      const accuracy = heldOut[value];
      if (accuracy === undefined) throw new Error(`unexpected soup ${value} evaluated on the held-out split`);
      return result(accuracy);
    },
    async close(): Promise<void> {
      state.closed = true;
    },
  };
  return state;
}

test('each ingredient and both soups are evaluated once on each split; the greedy soup reuses its tries', async () => {
  const root = mkdtempSync(join(tmpdir(), 'vit-dist-cook-'));
  const names = [run(root, 'c', 6), run(root, 'a', 0), run(root, 'b', 3)];
  const pool = evaluator({ 0: 0.9, 3: 0.85, 6: 0.8, 1.5: 0.92 });
  let started: IngredientInfo[] = [];
  const lines: string[] = [];
  const report = await cookSoups(names, {
    useEma: false,
    progress: (line) => lines.push(line),
    startPool: async (first, all) => {
      started = [...all];
      assert.equal(first.name, names[0]);
      return pool;
    },
  });
  assert.deepEqual(
    started.map((i) => i.name),
    names,
  );
  assert.ok(
    started.every((i) => !('params' in i)),
    'the pool is told about the ingredients, not given their weights',
  );
  assert.deepEqual(
    report.ingredients.map((r) => [r.name, r.heldOut.top1, r.test.top1]),
    [
      [names[0], 0.8, 0.6],
      [names[1], 0.9, 0],
      [names[2], 0.85, 0.3],
    ],
  );
  // The uniform soup: (6 + 0 + 3) / 3.
  assert.ok(report.uniform.params.every((v) => v === 3));
  assert.deepEqual([report.uniform.heldOut.top1, report.uniform.test.top1], [0.85, 0.3]);
  // The greedy soup: a (0.90), + b gives 1.5 (0.92, kept), + c gives 3 (0.85, dropped).
  assert.deepEqual(report.greedy.ingredients, [names[1], names[2]]);
  assert.deepEqual(
    report.greedy.log.map((t) => [t.triedAccuracy, t.kept]),
    [
      [0.9, true],
      [0.92, true],
      [0.85, false],
    ],
  );
  assert.ok(report.greedy.params.every((v) => v === 1.5));
  assert.deepEqual([report.greedy.heldOut.top1, report.greedy.test.top1], [0.92, 0.15]);
  assert.deepEqual(pool.calls, [
    ['holdout', 6],
    ['val', 6],
    ['holdout', 0],
    ['val', 0],
    ['holdout', 3],
    ['val', 3], // the ingredients
    ['holdout', 3],
    ['val', 3], // the uniform soup
    ['holdout', 1.5],
    ['holdout', 3], // the greedy tries
    ['val', 1.5], // the greedy soup on the test split; its held-out result is its try's
  ]);
  assert.equal(report.architecture.model, recipe.model);
  assert.ok(pool.closed);
  assert.ok(
    lines.some((l) => /greedy: \+ .*b gives held-out 92.00%: kept/.test(l)),
    lines.join('\n'),
  );
});

test('a greedy soup of the best ingredient alone is not evaluated again', async () => {
  const root = mkdtempSync(join(tmpdir(), 'vit-dist-cook-'));
  const names = [run(root, 'a', 0), run(root, 'b', 4)];
  const pool = evaluator({ 0: 0.9, 4: 0.7, 2: 0.8 });
  const report = await cookSoups(names, { useEma: false, progress: () => undefined, startPool: async () => pool });
  assert.deepEqual(report.greedy.ingredients, [names[0]]);
  assert.deepEqual(report.greedy.test, report.ingredients[0]!.test);
  assert.deepEqual(
    pool.calls.filter(([split]) => split === 'val').map(([, v]) => v),
    [0, 4, 2],
  );
});

test('mismatched or repeated ingredients fail before any evaluation', async () => {
  const root = mkdtempSync(join(tmpdir(), 'vit-dist-cook-'));
  const a = run(root, 'a', 0);
  const fiveClasses = run(root, 'five', 1, applyOverrides(recipe, { 'modelArgs.numClasses': 5 }));
  const never = async (): Promise<SplitEvaluator> => assert.fail('no evaluation may start');
  await assert.rejects(
    cookSoups([a, fiveClasses], { useEma: false, progress: () => undefined, startPool: never }),
    /tensor "head.weight" is \[10, 16\] in .*a, \[5, 16\] in .*five/,
  );
  await assert.rejects(cookSoups([a, a], { useEma: false, progress: () => undefined, startPool: never }), /ingredient .*a is given twice/);
});
