// Recipes: one JSON file per training configuration under recipes/, as big_vision keeps one small
// config per experiment. Each file cites, in "sources", where each value came from. Reading a
// recipe validates it against RECIPE_SCHEMA: an unknown key or a wrong type is an error naming it.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const RECIPES_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'recipes');

export interface Recipe {
  name: string;
  description: string;
  /** A model name from the registry (src/model/registry.ts). */
  model: string;
  /** Changes to the named model's architecture, as timm.create_model(name, **kwargs) takes them. */
  modelArgs: Partial<Record<(typeof MODEL_ARG_KEYS)[number], number>>;
  data: { dataset: 'fashion-mnist'; path: string };
  /** Images per optimizer step over all workers together; independent of the worker count. */
  globalBatch: number;
  /** Images per forward/backward pass on a worker; a worker accumulates gradients over its slice. */
  microBatch: number;
  epochs: number;
  /** When set, the run length in steps (overrides epochs). */
  steps: number | null;
  optimizer: { name: 'adamw'; lr: number; beta1: number; beta2: number; eps: number; weightDecay: number };
  schedule: { warmupSteps: number; minLr: number };
  /** Global-norm clipping threshold; 0 disables clipping. */
  clipNorm: number;
  seed: number;
  /** Write a checkpoint every this many steps (and always at the end). */
  checkpointEvery: number;
  /** Where each value came from: a dotted key to a citation. */
  sources: Record<string, string>;
}

export class RecipeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RecipeError';
  }
}

/** The architecture fields a recipe may change (src/model/vit.ts VitConfig). */
export const MODEL_ARG_KEYS = ['imageSize', 'patchSize', 'inChannels', 'numClasses', 'embedDim', 'depth', 'numHeads', 'mlpRatio'] as const;

type FieldType =
  | { kind: 'string'; oneOf?: readonly string[] }
  | { kind: 'number'; min?: number; max?: number; integer?: boolean; nullable?: boolean; optional?: boolean }
  | { kind: 'object'; fields: Schema }
  | { kind: 'stringMap' };
type Schema = Record<string, FieldType>;

const positiveInteger: FieldType = { kind: 'number', integer: true, min: 1 };

export const RECIPE_SCHEMA: Schema = {
  name: { kind: 'string' },
  description: { kind: 'string' },
  model: { kind: 'string' },
  modelArgs: { kind: 'object', fields: Object.fromEntries(MODEL_ARG_KEYS.map((k) => [k, { kind: 'number', min: 1, optional: true }])) },
  data: { kind: 'object', fields: { dataset: { kind: 'string', oneOf: ['fashion-mnist'] }, path: { kind: 'string' } } },
  globalBatch: positiveInteger,
  microBatch: positiveInteger,
  epochs: { kind: 'number', min: 0 },
  steps: { kind: 'number', integer: true, min: 1, nullable: true },
  optimizer: {
    kind: 'object',
    fields: {
      name: { kind: 'string', oneOf: ['adamw'] },
      lr: { kind: 'number', min: 0 },
      beta1: { kind: 'number', min: 0, max: 1 },
      beta2: { kind: 'number', min: 0, max: 1 },
      eps: { kind: 'number', min: 0 },
      weightDecay: { kind: 'number', min: 0 },
    },
  },
  schedule: { kind: 'object', fields: { warmupSteps: { kind: 'number', integer: true, min: 0 }, minLr: { kind: 'number', min: 0 } } },
  clipNorm: { kind: 'number', min: 0 },
  seed: { kind: 'number', integer: true, min: 0 },
  checkpointEvery: positiveInteger,
  sources: { kind: 'stringMap' },
};

function describe(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
}

function validateObject(value: unknown, schema: Schema, path: string, where: string): void {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new RecipeError(`${where}: ${path || 'recipe'} must be an object, got ${describe(value)}`);
  }
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!(key in schema)) throw new RecipeError(`${where}: unknown key "${path}${key}" (known: ${Object.keys(schema).join(', ')})`);
  }
  for (const [key, type] of Object.entries(schema)) {
    const name = `${path}${key}`;
    if (!(key in record)) {
      if (type.kind === 'number' && type.optional) continue;
      throw new RecipeError(`${where}: missing key "${name}"`);
    }
    validateField(record[key], type, name, where);
  }
}

function validateField(value: unknown, type: FieldType, name: string, where: string): void {
  switch (type.kind) {
    case 'string':
      if (typeof value !== 'string') throw new RecipeError(`${where}: "${name}" must be a string, got ${describe(value)}`);
      if (type.oneOf && !type.oneOf.includes(value)) throw new RecipeError(`${where}: "${name}" must be one of ${type.oneOf.join(', ')}, got "${value}"`);
      return;
    case 'number':
      if (value === null && type.nullable) return;
      if (typeof value !== 'number' || !Number.isFinite(value)) throw new RecipeError(`${where}: "${name}" must be a finite number${type.nullable ? ' or null' : ''}, got ${describe(value)}`);
      if (type.integer && !Number.isInteger(value)) throw new RecipeError(`${where}: "${name}" must be an integer, got ${value}`);
      if (type.min !== undefined && value < type.min) throw new RecipeError(`${where}: "${name}" must be at least ${type.min}, got ${value}`);
      if (type.max !== undefined && value > type.max) throw new RecipeError(`${where}: "${name}" must be at most ${type.max}, got ${value}`);
      return;
    case 'object':
      validateObject(value, type.fields, `${name}.`, where);
      return;
    case 'stringMap':
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new RecipeError(`${where}: "${name}" must be an object, got ${describe(value)}`);
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string') throw new RecipeError(`${where}: "${name}.${k}" must be a string, got ${describe(v)}`);
      }
      return;
  }
}

export function validateRecipe(value: unknown, where: string): Recipe {
  validateObject(value, RECIPE_SCHEMA, '', where);
  const recipe = value as Recipe;
  if (recipe.microBatch > recipe.globalBatch) throw new RecipeError(`${where}: "microBatch" (${recipe.microBatch}) is larger than "globalBatch" (${recipe.globalBatch})`);
  if (recipe.steps === null && recipe.epochs <= 0) throw new RecipeError(`${where}: set "epochs" above 0 or "steps"`);
  return recipe;
}

/** Loads a recipe by name (recipes/NAME.json) or by path to a JSON file. */
export function loadRecipe(nameOrPath: string): Recipe {
  const path = nameOrPath.endsWith('.json') ? nameOrPath : join(RECIPES_DIR, `${nameOrPath}.json`);
  if (!existsSync(path)) {
    throw new RecipeError(`no recipe "${nameOrPath}" (looked for ${path}); known recipes: ${listRecipes().join(', ')}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new RecipeError(`${path}: not valid JSON (${(err as Error).message})`);
  }
  return validateRecipe(parsed, path);
}

export function listRecipes(): string[] {
  return readdirSync(RECIPES_DIR).filter((f) => f.endsWith('.json')).map((f) => basename(f, '.json')).sort();
}

/**
 * Applies "dotted.key=value" overrides (the CLI's --set and the named flags). The value is parsed
 * as JSON when it parses (numbers, null, true), else taken as a string; the result is validated again.
 */
export function applyOverrides(recipe: Recipe, overrides: Record<string, string | number | null>): Recipe {
  const copy = structuredClone(recipe) as unknown as Record<string, unknown>;
  for (const [key, raw] of Object.entries(overrides)) {
    const parts = key.split('.');
    let target = copy;
    for (const part of parts.slice(0, -1)) {
      const next = target[part];
      if (typeof next !== 'object' || next === null) throw new RecipeError(`override "${key}": "${part}" is not a section of the recipe`);
      target = next as Record<string, unknown>;
    }
    // An unknown last key is caught by the validation below, which names it.
    const last = parts[parts.length - 1]!;
    target[last] = typeof raw === 'string' ? parseOverrideValue(raw) : raw;
  }
  return validateRecipe(copy, 'overrides');
}

function parseOverrideValue(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/** The run length in steps: `steps` when set, else `epochs` full epochs of `stepsPerEpoch`. */
export function totalSteps(recipe: Recipe, stepsPerEpoch: number): number {
  return recipe.steps ?? Math.max(1, Math.round(recipe.epochs * stepsPerEpoch));
}
