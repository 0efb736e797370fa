// Recipes: one JSON file per training configuration under recipes/, as big_vision keeps one small
// config per experiment. Each file cites, in "sources", where each value came from. A recipe may
// name a base (`"extends": "deit-tiny"`) and give only the keys it changes: objects merge key by
// key, anything else replaces. Reading a recipe validates the merged result against RECIPE_SCHEMA:
// an unknown key or a wrong type is an error naming it.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PSEUDO_GRADIENT_WIRES, type PseudoGradientWire } from '../comm/pseudo-gradient-wire.ts';
import { InputError } from '../common/errors.ts';
import { WIRE_FORMATS, type WireFormat } from '../common/wire.ts';
import { DATA_FORMATS, type DataFormat } from '../data/source.ts';
import type { DecayConvention, OptimizerName } from './optimizer.ts';
import type { LrScalingRule } from './schedule.ts';

export const RECIPES_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'recipes');

export interface Recipe {
  name: string;
  description: string;
  /** A model name from the registry (src/model/registry.ts), timm's names. */
  model: string;
  /** Changes to the named model's architecture, as timm.create_model(name, **kwargs) takes them. */
  modelArgs: Partial<Record<(typeof MODEL_ARG_KEYS)[number], number>>;
  /** Where the images come from and how they are augmented (src/data). */
  data: RecipeData;
  /** Images per optimizer step over all workers together; independent of the worker count. */
  globalBatch: number;
  /** Images per forward/backward pass on a worker; a worker accumulates gradients over its slice. */
  microBatch: number;
  epochs: number;
  /** When set, the run length in steps (overrides epochs). */
  steps: number | null;
  /** The training loss of the class head: softmax cross entropy (absent: the default) or big_vision's per-class sigmoid cross entropy. */
  loss?: LossName;
  /** big_vision's init_head_bias: the classifier heads' biases start at this value instead of 0. */
  initHeadBias?: number;
  /** Adam and AdamW take beta1, beta2, eps and decayConvention; SGD takes momentum (src/train/optimizer.ts). */
  optimizer: {
    name: OptimizerName;
    /** Base learning rate at lrScaling.referenceBatch; the schedule's peak is this scaled for globalBatch. */
    lr: number;
    beta1?: number;
    beta2?: number;
    eps?: number;
    momentum?: number;
    weightDecay: number;
    decayConvention?: DecayConvention;
  };
  lrScaling: { rule: LrScalingRule; referenceBatch: number };
  /** Exactly one of warmupSteps and warmupEpochs is set. */
  schedule: { warmupSteps: number | null; warmupEpochs: number | null; minLr: number };
  /** Global-norm clipping threshold; 0 disables clipping. */
  clipNorm: number;
  /** An exponential moving average of the weights, saved in checkpoints beside them; null: off. */
  ema: { decay: number } | null;
  /** Rates for the model's regularizers (dropout after attention/MLP, attention dropout, stochastic depth) and the loss's label smoothing. */
  regularization: { dropout: number; attnDropout?: number; dropPath: number; labelSmoothing: number };
  /** DeiT's distillation: the teacher (a model name or checkpoint path) and the loss mix. */
  distillation: { mode: 'none' | 'soft' | 'hard'; alpha: number; tau: number; teacher: string | null };
  seed: number;
  /** Write a checkpoint every this many steps (and always at the end). */
  checkpointEvery: number;
  /** How gradients travel around the ring (absent: float32, 25 MB buckets); `recipeComm` fills the defaults. */
  comm?: { wire?: WireFormat; bucketMb?: number };
  /** How the workers keep their weights together; absent: lockstep (one all-reduce per step). */
  sync?: SyncSettings;
  /** Where each value came from: a dotted key to a citation. */
  sources: Record<string, string>;
}

export const SYNC_MODES = ['lockstep', 'diloco'] as const;

/**
 * lockstep: every step all-reduces the gradient. diloco (Douillard et al. 2023): each worker takes
 * `innerSteps` steps of the recipe's optimizer on its own share of the batches, then the workers
 * average their weight changes (pseudo-gradients) and an outer Nesterov SGD step applies them.
 */
export interface SyncSettings {
  mode: (typeof SYNC_MODES)[number];
  innerSteps: number;
  outerLr: number;
  outerMomentum: number;
  wire: PseudoGradientWire;
  /**
   * 0: each round's outer step runs at its end, and the next round starts from its result. K > 0
   * (Douillard et al. 2025, "Streaming DiLoCo with overlapping communication", its delay tau):
   * the exchange runs while the next round's first K inner steps do, and its result is merged in
   * after them, their progress kept.
   */
  overlapSteps: number;
}

/** OpenDiLoCo's (Prime Intellect, 2024) outer optimizer: SGD, lr 0.7, Nesterov momentum 0.9. */
export const DEFAULT_DILOCO: SyncSettings = {
  mode: 'diloco',
  innerSteps: 50,
  outerLr: 0.7,
  outerMomentum: 0.9,
  wire: 'fp32',
  overlapSteps: 0,
};

export const LOSS_NAMES = ['softmax_xent', 'sigmoid_xent'] as const;
/** DDP's default bucket_cap_mb. */
export const DEFAULT_BUCKET_MB = 25;

/**
 * The recipe's `comm` with its defaults: the wire format, and the gradient bucket size in MiB
 * (DDP's bucket_cap_mb) for overlapping the ring with the backward pass; 0 turns overlap off.
 */
export function recipeComm(recipe: Recipe): { wire: WireFormat; bucketMb: number } {
  return { wire: recipe.comm?.wire ?? 'fp32', bucketMb: recipe.comm?.bucketMb ?? DEFAULT_BUCKET_MB };
}
export type LossName = (typeof LOSS_NAMES)[number];

export interface RecipeData {
  /** The file layout at `path` (src/data/open.ts); 'imagefolder' is torchvision's ImageFolder layout, as DeiT reads ImageNet. */
  format: DataFormat;
  path: string;
  /** The fraction of the training files held out (never trained on), big_vision's minival and model soups' held-out set. */
  holdout: number;
  /** Picks the held-out images; separate from `seed` so that every run of a sweep holds out the same ones. */
  holdoutSeed: number;
  /** Per-sample transforms for training and for evaluation, as big_vision's `op(args)|op` strings (src/data/transforms/pipeline.ts). */
  trainPipeline: string;
  evalPipeline: string;
  /** DeiT's repeated augmentation: each image appears this many times per global batch, augmented differently (1: off). */
  repeats: number;
  /** Batch-level mixing within each micro-batch (src/data/mixup.ts); null: off. */
  mixup: MixupSettings | null;
  /** A corrupt image is skipped (and counted) instead of failing the run. */
  skipCorrupt: boolean;
}

/** timm's Mixup/CutMix (DeiT) or big_vision's mixup (AugReg); label smoothing comes from `regularization`. */
export type MixupSettings =
  | { kind: 'timm'; mixupAlpha: number; cutmixAlpha: number; prob: number; switchProb: number }
  | { kind: 'big_vision'; p: number };

/** The architecture fields a recipe may change (src/model/vit.ts VitConfig). */
export const MODEL_ARG_KEYS = ['imageSize', 'patchSize', 'inChannels', 'numClasses', 'embedDim', 'depth', 'numHeads', 'mlpRatio'] as const;

type FieldType = (
  | { kind: 'string'; oneOf?: readonly string[] }
  | { kind: 'boolean' }
  | { kind: 'number'; min?: number; max?: number; integer?: boolean }
  | { kind: 'object'; fields: Schema }
  | { kind: 'stringMap' }
) & {
  /** null is a valid value. */
  nullable?: boolean;
  /** The key may be left out. */
  optional?: boolean;
};
type Schema = Record<string, FieldType>;

/** A held-out fraction above this leaves too little to train on to be anything but a mistake. */
const MAX_HOLDOUT = 0.5;
const positiveInteger: FieldType = { kind: 'number', integer: true, min: 1 };
const rate: FieldType = { kind: 'number', min: 0, max: 1 };

export const RECIPE_SCHEMA: Schema = {
  name: { kind: 'string' },
  description: { kind: 'string' },
  model: { kind: 'string' },
  modelArgs: { kind: 'object', fields: Object.fromEntries(MODEL_ARG_KEYS.map((k) => [k, { kind: 'number', min: 1, optional: true }])) },
  data: {
    kind: 'object',
    fields: {
      format: { kind: 'string', oneOf: DATA_FORMATS },
      path: { kind: 'string' },
      holdout: { kind: 'number', min: 0, max: MAX_HOLDOUT },
      holdoutSeed: { kind: 'number', integer: true, min: 0 },
      trainPipeline: { kind: 'string' },
      evalPipeline: { kind: 'string' },
      repeats: positiveInteger,
      mixup: {
        kind: 'object',
        nullable: true,
        fields: {
          kind: { kind: 'string', oneOf: ['timm', 'big_vision'] },
          mixupAlpha: { kind: 'number', min: 0, optional: true },
          cutmixAlpha: { kind: 'number', min: 0, optional: true },
          prob: { ...rate, optional: true },
          switchProb: { ...rate, optional: true },
          p: { kind: 'number', min: 0, optional: true },
        },
      },
      skipCorrupt: { kind: 'boolean' },
    },
  },
  globalBatch: positiveInteger,
  microBatch: positiveInteger,
  epochs: { kind: 'number', min: 0 },
  steps: { kind: 'number', integer: true, min: 1, nullable: true },
  loss: { kind: 'string', oneOf: LOSS_NAMES, optional: true },
  initHeadBias: { kind: 'number', optional: true },
  optimizer: {
    kind: 'object',
    fields: {
      name: { kind: 'string', oneOf: ['adam', 'adamw', 'sgd'] },
      lr: { kind: 'number', min: 0 },
      beta1: { ...rate, optional: true },
      beta2: { ...rate, optional: true },
      eps: { kind: 'number', min: 0, optional: true },
      momentum: { ...rate, optional: true },
      weightDecay: { kind: 'number', min: 0 },
      decayConvention: { kind: 'string', oneOf: ['lr-scaled', 'absolute'], optional: true },
    },
  },
  lrScaling: { kind: 'object', fields: { rule: { kind: 'string', oneOf: ['none', 'linear', 'sqrt'] }, referenceBatch: positiveInteger } },
  schedule: {
    kind: 'object',
    fields: {
      warmupSteps: { kind: 'number', integer: true, min: 0, nullable: true },
      warmupEpochs: { kind: 'number', min: 0, nullable: true },
      minLr: { kind: 'number', min: 0 },
    },
  },
  clipNorm: { kind: 'number', min: 0 },
  ema: { kind: 'object', nullable: true, fields: { decay: rate } },
  regularization: {
    kind: 'object',
    fields: { dropout: rate, attnDropout: { ...rate, optional: true }, dropPath: rate, labelSmoothing: rate },
  },
  distillation: {
    kind: 'object',
    fields: {
      mode: { kind: 'string', oneOf: ['none', 'soft', 'hard'] },
      alpha: rate,
      tau: { kind: 'number', min: 0 },
      teacher: { kind: 'string', nullable: true },
    },
  },
  seed: { kind: 'number', integer: true, min: 0 },
  checkpointEvery: positiveInteger,
  comm: {
    kind: 'object',
    optional: true,
    fields: { wire: { kind: 'string', oneOf: WIRE_FORMATS, optional: true }, bucketMb: { kind: 'number', min: 0, optional: true } },
  },
  sync: {
    kind: 'object',
    optional: true,
    fields: {
      mode: { kind: 'string', oneOf: SYNC_MODES },
      innerSteps: positiveInteger,
      outerLr: { kind: 'number', min: 0 },
      outerMomentum: rate,
      wire: { kind: 'string', oneOf: PSEUDO_GRADIENT_WIRES },
      overlapSteps: { kind: 'number', integer: true, min: 0, optional: true },
    },
  },
  sources: { kind: 'stringMap' },
};

/** The optimizer fields each optimizer takes beyond name, lr and weightDecay; any other is an error. */
const OPTIMIZER_FIELDS: Record<OptimizerName, readonly string[]> = {
  adam: ['beta1', 'beta2', 'eps', 'decayConvention'],
  adamw: ['beta1', 'beta2', 'eps', 'decayConvention'],
  sgd: ['momentum'],
};
const OPTIONAL_OPTIMIZER_FIELDS = new Set(Object.values(OPTIMIZER_FIELDS).flat());

function describe(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
}

function validateObject(value: unknown, schema: Schema, path: string, where: string): void {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InputError('RECIPE_BAD_VALUE', `${where}: ${path || 'recipe'} must be an object, got ${describe(value)}`);
  }
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!(key in schema))
      throw new InputError('RECIPE_UNKNOWN_KEY', `${where}: unknown key "${path}${key}" (known: ${Object.keys(schema).join(', ')})`);
  }
  for (const [key, type] of Object.entries(schema)) {
    const name = `${path}${key}`;
    if (!(key in record)) {
      if (type.optional) continue;
      throw new InputError('RECIPE_MISSING_KEY', `${where}: missing key "${name}"`);
    }
    validateField(record[key], type, name, where);
  }
}

function validateField(value: unknown, type: FieldType, name: string, where: string): void {
  if (value === null && type.nullable) return;
  const orNull = type.nullable ? ' or null' : '';
  switch (type.kind) {
    case 'string':
      if (typeof value !== 'string')
        throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}" must be a string${orNull}, got ${describe(value)}`);
      if (type.oneOf && !type.oneOf.includes(value))
        throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}" must be one of ${type.oneOf.join(', ')}, got "${value}"`);
      return;
    case 'boolean':
      if (typeof value !== 'boolean')
        throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}" must be true or false${orNull}, got ${describe(value)}`);
      return;
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value))
        throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}" must be a finite number${orNull}, got ${describe(value)}`);
      if (type.integer && !Number.isInteger(value))
        throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}" must be an integer, got ${value}`);
      if (type.min !== undefined && value < type.min)
        throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}" must be at least ${type.min}, got ${value}`);
      if (type.max !== undefined && value > type.max)
        throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}" must be at most ${type.max}, got ${value}`);
      return;
    case 'object':
      if (type.nullable && (typeof value !== 'object' || Array.isArray(value)))
        throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}" must be an object or null, got ${describe(value)}`);
      validateObject(value, type.fields, `${name}.`, where);
      return;
    case 'stringMap':
      if (typeof value !== 'object' || value === null || Array.isArray(value))
        throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}" must be an object, got ${describe(value)}`);
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string')
          throw new InputError('RECIPE_BAD_VALUE', `${where}: "${name}.${k}" must be a string, got ${describe(v)}`);
      }
      return;
  }
}

export function validateRecipe(value: unknown, where: string): Recipe {
  validateObject(value, RECIPE_SCHEMA, '', where);
  const recipe = value as Recipe;
  if (recipe.microBatch > recipe.globalBatch)
    throw new InputError(
      'RECIPE_INCONSISTENT',
      `${where}: "microBatch" (${recipe.microBatch}) is larger than "globalBatch" (${recipe.globalBatch})`,
    );
  if (recipe.steps === null && recipe.epochs <= 0) throw new InputError('RECIPE_INCONSISTENT', `${where}: set "epochs" above 0 or "steps"`);
  validateOptimizerFields(recipe.optimizer, where);
  if (recipe.data.mixup) validateMixupFields(recipe.data.mixup, where);
  if (recipe.data.repeats > recipe.globalBatch)
    throw new InputError(
      'RECIPE_INCONSISTENT',
      `${where}: "data.repeats" (${recipe.data.repeats}) is larger than "globalBatch" (${recipe.globalBatch}): each image's repeats share one global batch`,
    );
  const { warmupSteps, warmupEpochs } = recipe.schedule;
  if ((warmupSteps === null) === (warmupEpochs === null)) {
    throw new InputError(
      'RECIPE_INCONSISTENT',
      `${where}: set exactly one of "schedule.warmupSteps" and "schedule.warmupEpochs" (the other null), got ${warmupSteps} and ${warmupEpochs}`,
    );
  }
  if (recipe.sync) {
    // A recipe written before the overlap existed runs its outer steps at round ends.
    recipe.sync.overlapSteps ??= 0;
    if (recipe.sync.overlapSteps >= recipe.sync.innerSteps)
      throw new InputError(
        'RECIPE_INCONSISTENT',
        `${where}: "sync.overlapSteps" (${recipe.sync.overlapSteps}) must be below "sync.innerSteps" (${recipe.sync.innerSteps}): the exchange overlaps the next round's first inner steps`,
      );
  }
  const { mode, teacher } = recipe.distillation;
  if ((mode === 'none') !== (teacher === null)) {
    throw new InputError(
      'RECIPE_INCONSISTENT',
      `${where}: "distillation.teacher" must be null when "distillation.mode" is none and a teacher otherwise, got mode ${mode} and teacher ${JSON.stringify(teacher)}`,
    );
  }
  return recipe;
}

/** Each optimizer takes exactly its own fields: a missing one or one of another optimizer is an error naming it. */
function validateOptimizerFields(optimizer: Recipe['optimizer'], where: string): void {
  const wanted = new Set(OPTIMIZER_FIELDS[optimizer.name]);
  for (const field of OPTIONAL_OPTIMIZER_FIELDS) {
    const present = field in optimizer;
    if (wanted.has(field) && !present)
      throw new InputError(
        'RECIPE_MISSING_KEY',
        `${where}: missing key "optimizer.${field}" (${optimizer.name} needs ${[...wanted].join(', ')})`,
      );
    if (!wanted.has(field) && present)
      throw new InputError(
        'RECIPE_KEY_NOT_APPLICABLE',
        `${where}: "optimizer.${field}" does not apply to ${optimizer.name} (it takes ${[...wanted].join(', ')})`,
      );
  }
}

/** The mixing fields each kind takes, all required; any other is an error. */
const MIXUP_FIELDS: Record<MixupSettings['kind'], readonly string[]> = {
  timm: ['mixupAlpha', 'cutmixAlpha', 'prob', 'switchProb'],
  big_vision: ['p'],
};

function validateMixupFields(mixup: MixupSettings, where: string): void {
  const wanted = MIXUP_FIELDS[mixup.kind];
  for (const field of Object.values(MIXUP_FIELDS).flat()) {
    const present = field in mixup;
    if (wanted.includes(field) && !present)
      throw new InputError(
        'RECIPE_MISSING_KEY',
        `${where}: missing key "data.mixup.${field}" (${mixup.kind} mixing needs ${wanted.join(', ')})`,
      );
    if (!wanted.includes(field) && present)
      throw new InputError(
        'RECIPE_KEY_NOT_APPLICABLE',
        `${where}: "data.mixup.${field}" does not apply to ${mixup.kind} mixing (it takes ${wanted.join(', ')})`,
      );
  }
}

/** The file of a recipe named by name (recipes/NAME.json) or by path to a JSON file. */
function recipePath(nameOrPath: string): string {
  const path = nameOrPath.endsWith('.json') ? nameOrPath : join(RECIPES_DIR, `${nameOrPath}.json`);
  if (!existsSync(path)) {
    throw new InputError('RECIPE_NOT_FOUND', `no recipe "${nameOrPath}" (looked for ${path}); known recipes: ${listRecipes().join(', ')}`);
  }
  return path;
}

/** Loads a recipe by name (recipes/NAME.json) or by path to a JSON file, its bases merged in. */
export function loadRecipe(nameOrPath: string): Recipe {
  const path = recipePath(nameOrPath);
  return validateRecipe(resolveExtends(path, []), path);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The recipe at `path` with its chain of bases merged in, unvalidated. `extends` names a recipe as
 * loadRecipe takes it; a path is relative to the extending file's folder. `chain` holds the files
 * that extend this one, to refuse a cycle.
 */
function resolveExtends(path: string, chain: string[]): Record<string, unknown> {
  if (chain.includes(path))
    throw new InputError('RECIPE_EXTENDS_CYCLE', `${path}: "extends" forms a cycle: ${[...chain, path].join(' -> ')}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new InputError('RECIPE_NOT_JSON', `${path}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (!isObject(parsed)) throw new InputError('RECIPE_BAD_VALUE', `${path}: a recipe must be a JSON object`);
  const { extends: base, ...own } = parsed;
  if (base === undefined) return own;
  if (typeof base !== 'string')
    throw new InputError('RECIPE_BAD_VALUE', `${path}: "extends" must be a recipe name or path, got ${describe(base)}`);
  const basePath = recipePath(base.endsWith('.json') ? join(dirname(path), base) : base);
  return mergeRecipe(resolveExtends(basePath, [...chain, path]), own);
}

/** `over` merged onto `base`: objects merge key by key, recursively; any other value (null, arrays) replaces. */
function mergeRecipe(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const merged: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const under = merged[key];
    merged[key] = isObject(under) && isObject(value) ? mergeRecipe(under, value) : value;
  }
  return merged;
}

export function listRecipes(): string[] {
  return readdirSync(RECIPES_DIR)
    .filter((f) => f.endsWith('.json'))
    .map((f) => basename(f, '.json'))
    .sort();
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
      if (typeof next !== 'object' || next === null)
        throw new InputError('RECIPE_BAD_OVERRIDE', `override "${key}": "${part}" is not a section of the recipe`);
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
