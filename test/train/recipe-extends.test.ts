import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listRecipes, loadRecipe, type Recipe } from '../../src/train/recipe.ts';

/**
 * Every shipped recipe as loadRecipe resolved it before recipes could extend one another (written
 * from the files of commit fd9fa56, before any of them changed).
 */
const BEFORE: Record<string, Recipe> = JSON.parse(
  readFileSync(join(import.meta.dirname, '..', 'fixtures', 'recipes-resolved.json'), 'utf8'),
);

/**
 * What changed on purpose since: augreg-vit-b16-i1k follows big_vision's vit_i1k.py as it is now;
 * the main job computes each worker's share of the global batch in one pass (faster on TensorFlow).
 */
const CHANGED: Record<string, Partial<Recipe>> = {
  'augreg-vit-b16-i1k': { loss: 'sigmoid_xent', initHeadBias: -6.9 },
  'fmnist-vit-tiny': { microBatch: 256 },
};
/** Citations added for those changes. */
const ADDED_SOURCES: Record<string, string[]> = { 'augreg-vit-b16-i1k': ['loss', 'initHeadBias'] };

test("every shipped recipe resolves to what it was before extends, but for the citations' wording", () => {
  assert.deepEqual(listRecipes(), Object.keys(BEFORE).sort());
  for (const name of listRecipes()) {
    const { sources, ...resolved } = loadRecipe(name);
    const { sources: sourcesBefore, ...before } = BEFORE[name]!;
    assert.deepEqual(resolved, { ...before, ...CHANGED[name] }, name);
    // Pinning the citations rewrote their text; each cites the same keys.
    assert.deepEqual(
      Object.keys(sources).sort(),
      [...Object.keys(sourcesBefore), ...(ADDED_SOURCES[name] ?? [])].sort(),
      `${name}: cited keys`,
    );
  }
});

test('the DeiT variants extend deit-tiny in a few lines', () => {
  for (const name of ['deit-small', 'deit-base']) {
    const raw = JSON.parse(readFileSync(join(import.meta.dirname, '..', '..', 'recipes', `${name}.json`), 'utf8'));
    assert.equal(raw.extends, 'deit-tiny', name);
    assert.ok(Object.keys(raw).length <= 7, `${name}: ${Object.keys(raw).join(', ')}`);
  }
});

function recipeDir(files: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'vit-dist-recipes-'));
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), JSON.stringify(content));
  return dir;
}

test('extends merges objects key by key, replaces other values and null, and resolves paths beside the file', () => {
  const dir = recipeDir({
    'child.json': { extends: 'middle.json', name: 'child', data: { mixup: null }, sources: { epochs: 'child' } },
    'middle.json': { extends: 'deit-tiny', name: 'middle', optimizer: { lr: 0.001 }, epochs: 30 },
  });
  const child = loadRecipe(join(dir, 'child.json'));
  const tiny = loadRecipe('deit-tiny');
  assert.equal(child.name, 'child');
  assert.equal(child.epochs, 30);
  assert.deepEqual(child.optimizer, { ...tiny.optimizer, lr: 0.001 });
  assert.deepEqual(child.data, { ...tiny.data, mixup: null });
  assert.deepEqual(child.sources, { ...tiny.sources, epochs: 'child' });
  assert.equal('extends' in child, false);
});

test('extends: a cycle, a missing base and an unknown key after the merge are errors naming them', () => {
  const dir = recipeDir({
    'a.json': { extends: 'b.json' },
    'b.json': { extends: 'a.json' },
    'lost.json': { extends: 'no-such-recipe' },
    'typo.json': { extends: 'deit-tiny', optimiser: { lr: 1 } },
    'number.json': { extends: 3 },
  });
  assert.throws(
    () => loadRecipe(join(dir, 'a.json')),
    (err: Error & { code?: string }) =>
      err.code === 'RECIPE_EXTENDS_CYCLE' &&
      err.message.includes(`${join(dir, 'a.json')} -> ${join(dir, 'b.json')} -> ${join(dir, 'a.json')}`),
  );
  assert.throws(() => loadRecipe(join(dir, 'lost.json')), /no recipe "no-such-recipe"/);
  assert.throws(() => loadRecipe(join(dir, 'typo.json')), /unknown key "optimiser"/);
  assert.throws(() => loadRecipe(join(dir, 'number.json')), /"extends" must be a recipe name or path, got number/);
});
