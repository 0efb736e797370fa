// Flag parsers and the options shared by `coordinator` and `launch`. A bad value is refused by
// commander with a message naming the flag.
import { randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { latestCheckpoint } from '../train/checkpoint.ts';
import {
  applyOverrides,
  DEFAULT_BUCKET_MB,
  DEFAULT_DILOCO,
  loadRecipe,
  SYNC_MODES,
  type Recipe,
  type SyncSettings,
} from '../train/recipe.ts';
import { PSEUDO_GRADIENT_WIRES } from '../comm/pseudo-gradient-wire.ts';
import { InputError } from '../common/errors.ts';

/** torchrun's default rendezvous port. */
export const DEFAULT_COORDINATOR_PORT = 29500;
export const DEFAULT_RECIPE = 'fmnist-vit-tiny';
export const DEFAULT_JOIN_TIMEOUT_S = 300;
export const DEFAULT_STEP_TIMEOUT_S = 600;
export const DEFAULT_REJOIN_TIMEOUT_S = 60;
/** Must exceed the longest stretch a process spends without yielding (one micro-batch's compute). */
export const DEFAULT_HEARTBEAT_TIMEOUT_S = 30;
/** The compute backends a worker may be asked for (src/model/backend.ts). */
export const BACKENDS = ['auto', 'tensorflow', 'wasm', 'cpu', 'webgpu'] as const;
/** One loader thread per worker: it makes the next micro-batch while the model computes this one. */
export const DEFAULT_DATA_THREADS = 1;
export const DEFAULT_MAX_RESTARTS = 3;
export const DEFAULT_RECONNECT_TIMEOUT_S = 120;
/** A worker's step or evaluation in flight this long means its training loop is stuck (its /healthz fails). */
export const DEFAULT_STALL_TIMEOUT_S = 300;
export const TOKEN_ENV = 'VIT_DIST_TOKEN';

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`expected a positive integer, got "${value}"`);
  return n;
}

export function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a non-negative integer, got "${value}"`);
  return n;
}

export function nonNegativeNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`expected a non-negative number, got "${value}"`);
  return n;
}

export function positiveNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`expected a positive number, got "${value}"`);
  return n;
}

export function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError(`expected a port number 0-65535, got "${value}"`);
  return n;
}

/** A fraction in [0, 1), written as 0.01 or 1%. */
export function fraction(value: string): number {
  const n = value.endsWith('%') ? Number(value.slice(0, -1)) / 100 : Number(value);
  if (!(n >= 0 && n < 1)) throw new InvalidArgumentError(`expected a fraction in [0, 1) such as 0.01 or 1%, got "${value}"`);
  return n;
}

function keyValue(value: string, previous: Record<string, string>): Record<string, string> {
  const at = value.indexOf('=');
  if (at <= 0) throw new InvalidArgumentError(`expected key=value, got "${value}"`);
  return { ...previous, [value.slice(0, at)]: value.slice(at + 1) };
}

/** The options of a training run, shared by `coordinator` and `launch`. */
export function addRunOptions(command: Command): Command {
  return command
    .option('--recipe <name>', 'recipe name (see `vit-dist recipes`) or path to a recipe JSON file', DEFAULT_RECIPE)
    .option('--data <dir>', "dataset directory (overrides the recipe's data.path)")
    .option(
      '--holdout <fraction>',
      'hold this fraction of the training set out (never trained on), e.g. 0.01 or 1% (sets data.holdout)',
      fraction,
    )
    .option('--skip-corrupt', 'skip (log and count) corrupt images instead of failing (sets data.skipCorrupt)')
    .option('--out <dir>', 'run directory for metrics, logs and checkpoints (default: runs/RECIPE-TIMESTAMP)')
    .option('--steps <n>', 'train for this many optimizer steps (overrides --epochs)', positiveInt)
    .option('--epochs <e>', 'train for this many epochs', positiveNumber)
    .option('--global-batch <b>', 'images per optimizer step over all workers', positiveInt)
    .option('--micro-batch <m>', 'images per forward/backward pass on a worker (gradient accumulation)', positiveInt)
    .option('--seed <s>', 'run seed (initialization and sampling)', nonNegativeInt)
    .option('--checkpoint-every <k>', 'write a checkpoint every K steps (and at the end)', positiveInt)
    .addOption(
      new Option(
        '--distillation <mode>',
        "DeiT distillation of a distilled model's second head from --teacher (sets distillation.mode; none trains it on the labels)",
      ).choices(['none', 'soft', 'hard']),
    )
    .option(
      '--teacher <path>',
      'the distillation teacher: a run directory or checkpoint file of vit-dist, or a .safetensors file from `vit-dist export` (sets distillation.teacher)',
    )
    .addOption(
      new Option(
        '--wire <format>',
        'how gradients travel: fp32, or bf16 (rounded to nearest even, added into fp32 sums) in the reduce-scatter (sets comm.wire); with --sync diloco also int8 (per-chunk scales, error feedback) for the pseudo-gradients and outer updates (sets sync.wire)',
      ).choices(PSEUDO_GRADIENT_WIRES),
    )
    .option(
      '--bucket-mb <mb>',
      `gradient bucket size in MiB for overlapping the ring with the last micro-batch's backward pass (default ${DEFAULT_BUCKET_MB}); 0 starts the ring after the whole gradient (sets comm.bucketMb)`,
      nonNegativeNumber,
    )
    .addOption(
      new Option(
        '--sync <mode>',
        "lockstep: all-reduce every step; diloco: --inner-steps local steps per worker, then an outer Nesterov step on the workers' mean weight change (sets sync.mode)",
      ).choices(SYNC_MODES),
    )
    .option('--inner-steps <h>', `DiLoCo: local steps per round (default ${DEFAULT_DILOCO.innerSteps}; sets sync.innerSteps)`, positiveInt)
    .option(
      '--outer-lr <lr>',
      `DiLoCo: the outer SGD's learning rate (default ${DEFAULT_DILOCO.outerLr}; sets sync.outerLr)`,
      nonNegativeNumber,
    )
    .option(
      '--outer-momentum <m>',
      `DiLoCo: the outer SGD's Nesterov momentum (default ${DEFAULT_DILOCO.outerMomentum}; sets sync.outerMomentum)`,
      nonNegativeNumber,
    )
    .option(
      '--outer-overlap <k>',
      `DiLoCo: run each outer exchange while the next round's first K inner steps do, and merge its result after them (default ${DEFAULT_DILOCO.overlapSteps}: at the round's end; sets sync.overlapSteps)`,
      nonNegativeInt,
    )
    .option('--set <key=value>', 'override any recipe value by its dotted key (repeatable), e.g. --set optimizer.lr=0.002', keyValue, {})
    .option('--resume <dir>', 'continue from the newest checkpoint in this run directory (or from this checkpoint file)')
    .option(
      '--init <file>',
      'start from these weights (.safetensors with timm names, e.g. from `vit-dist export` or timm/DeiT) at step 0 with a fresh optimizer; a head of another class count is freshly initialized (fine-tuning); a checkpoint to resume from takes precedence',
    )
    .option('--token <token>', `shared secret every worker and ring peer must prove (default: $${TOKEN_ENV})`)
    .option('--status-token <token>', 'a read-only token for the status page at / (the run token is accepted too)')
    .option('--join-timeout <seconds>', 'how long to wait for all workers to join', positiveNumber, DEFAULT_JOIN_TIMEOUT_S)
    .option('--step-timeout <seconds>', 'how long to wait for every worker to finish a step', positiveNumber, DEFAULT_STEP_TIMEOUT_S)
    .option(
      '--min-workers <m>',
      'after a failure, carry on with at least this many workers (default: --workers); the global batch stays the same',
      positiveInt,
    )
    .option(
      '--round-deadline <seconds>',
      'DiLoCo: once the first worker has finished a round, how long the others have; later ones leave the round, which closes with at least --min-workers (default: --step-timeout)',
      positiveNumber,
    )
    .option(
      '--rejoin-timeout <seconds>',
      'after a failure, how long to wait for replacement workers',
      positiveNumber,
      DEFAULT_REJOIN_TIMEOUT_S,
    )
    .option(
      '--spares <n>',
      'hot spares: admit this many workers beyond --workers; they wait connected and replace a failed worker at once (launch starts them too)',
      nonNegativeInt,
      0,
    )
    .option('--heartbeat-timeout <seconds>', 'a worker silent for this long counts as lost', positiveNumber, DEFAULT_HEARTBEAT_TIMEOUT_S)
    .option('--max-restarts <n>', 'worker failures to recover from before giving up', nonNegativeInt, DEFAULT_MAX_RESTARTS)
    .option('--log-level <level>', 'debug, info, warn or error', 'info');
}

/** TLS for the coordinator: both files or neither. */
export function tlsFiles(flags: { tlsCert?: string; tlsKey?: string }): { certFile: string; keyFile: string } | null {
  if (!flags.tlsCert && !flags.tlsKey) return null;
  if (!flags.tlsCert || !flags.tlsKey) throw new InputError('USAGE', '--tls-cert and --tls-key go together');
  for (const file of [flags.tlsCert, flags.tlsKey]) if (!existsSync(file)) throw new InputError('USAGE', `TLS file not found: ${file}`);
  return { certFile: flags.tlsCert, keyFile: flags.tlsKey };
}

export interface RunFlags {
  recipe: string;
  data?: string;
  holdout?: number;
  skipCorrupt?: boolean;
  out?: string;
  steps?: number;
  epochs?: number;
  globalBatch?: number;
  microBatch?: number;
  seed?: number;
  checkpointEvery?: number;
  distillation?: Recipe['distillation']['mode'];
  teacher?: string;
  wire?: SyncSettings['wire'];
  bucketMb?: number;
  sync?: SyncSettings['mode'];
  innerSteps?: number;
  outerLr?: number;
  outerMomentum?: number;
  outerOverlap?: number;
  set: Record<string, string>;
  resume?: string;
  init?: string;
  token?: string;
  statusToken?: string;
  joinTimeout: number;
  stepTimeout: number;
  minWorkers?: number;
  /** Hot spares beyond --workers (0 when absent). */
  spares?: number;
  rejoinTimeout: number;
  roundDeadline?: number;
  heartbeatTimeout: number;
  maxRestarts: number;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
}

/**
 * The recipe after the named flags and --set overrides; on resume, the checkpoint's recipe is the
 * base. A --global-batch below the recipe's micro-batch shrinks the micro-batch to each of the
 * `workers`' share of the global batch, as DDP users expect, and says so.
 */
export function resolveRecipe(flags: RunFlags, resumeRecipe: Recipe | null, workers: number): Recipe {
  const base = resumeRecipe ?? loadRecipe(flags.recipe);
  const overrides: Record<string, string | number | null> = { ...flags.set };
  // JSON-quoted: an override string is parsed as JSON first, and a path like "1" must stay a string.
  if (flags.data !== undefined) overrides['data.path'] = JSON.stringify(flags.data);
  if (flags.holdout !== undefined) overrides['data.holdout'] = flags.holdout;
  if (flags.skipCorrupt) overrides['data.skipCorrupt'] = 'true';
  if (flags.steps !== undefined) overrides.steps = flags.steps;
  if (flags.epochs !== undefined) {
    overrides.epochs = flags.epochs;
    if (flags.steps === undefined) overrides.steps = null;
  }
  if (flags.globalBatch !== undefined) overrides.globalBatch = flags.globalBatch;
  if (flags.microBatch !== undefined) overrides.microBatch = flags.microBatch;
  else if (flags.globalBatch !== undefined && flags.globalBatch < base.microBatch) {
    const share = Math.ceil(flags.globalBatch / workers);
    overrides.microBatch = share;
    console.log(
      `--global-batch ${flags.globalBatch} is below the recipe's micro-batch ${base.microBatch}: micro-batch ${share}, each of ${workers} worker${workers === 1 ? "'s" : "s'"} share`,
    );
  }
  if (flags.seed !== undefined) overrides.seed = flags.seed;
  if (flags.checkpointEvery !== undefined) overrides.checkpointEvery = flags.checkpointEvery;
  if (flags.distillation !== undefined) {
    overrides['distillation.mode'] = flags.distillation;
    // A recipe names a teacher exactly when it distils: switching distillation off drops the teacher.
    if (flags.distillation === 'none' && flags.teacher === undefined) overrides['distillation.teacher'] = null;
  }
  if (flags.teacher !== undefined) overrides['distillation.teacher'] = JSON.stringify(flags.teacher);
  const sync = syncOverride(flags, base.sync);
  if (sync) overrides.sync = JSON.stringify(sync);
  const lockstepWire = (sync ?? base.sync)?.mode === 'diloco' ? undefined : flags.wire;
  if (lockstepWire === 'int8')
    throw new InputError('USAGE', '--wire int8 is for DiLoCo pseudo-gradients: add --sync diloco, or use fp32 or bf16');
  if (lockstepWire !== undefined || flags.bucketMb !== undefined) {
    // The whole section (JSON), as a recipe need not have one for --set comm.KEY to reach into.
    const comm = {
      ...base.comm,
      ...(lockstepWire !== undefined && { wire: lockstepWire }),
      ...(flags.bucketMb !== undefined && { bucketMb: flags.bucketMb }),
    };
    overrides.comm = JSON.stringify(comm);
  }
  return applyOverrides(base, overrides);
}

/** The recipe's sync section after --sync and the DiLoCo flags, or null when none is given; DiLoCo's knobs need DiLoCo. */
function syncOverride(flags: RunFlags, base: SyncSettings | undefined): SyncSettings | null {
  const knobs = {
    innerSteps: flags.innerSteps,
    outerLr: flags.outerLr,
    outerMomentum: flags.outerMomentum,
    overlapSteps: flags.outerOverlap,
  };
  const given: Partial<SyncSettings> = Object.fromEntries(Object.entries(knobs).filter(([, value]) => value !== undefined));
  const mode = flags.sync ?? base?.mode ?? 'lockstep';
  // --wire is DiLoCo's pseudo-gradient format under --sync diloco, the lockstep ring's otherwise.
  if (mode === 'diloco' && flags.wire !== undefined) given.wire = flags.wire;
  if (flags.sync === undefined && Object.keys(given).length === 0) return null;
  if (mode !== 'diloco' && Object.keys(given).length > 0)
    throw new InputError('USAGE', `--inner-steps, --outer-lr, --outer-momentum and --outer-overlap set DiLoCo's knobs: add --sync diloco`);
  if (flags.outerMomentum !== undefined && flags.outerMomentum >= 1)
    throw new InputError('USAGE', `--outer-momentum must be below 1, got ${flags.outerMomentum}`);
  return { ...DEFAULT_DILOCO, ...base, ...given, mode };
}

/** The checkpoint file that --resume names: a checkpoint file, or the newest one in a run directory. */
export function resolveResume(path: string): string {
  if (!existsSync(path)) throw new InputError('USAGE', `--resume ${path}: no such file or directory`);
  if (statSync(path).isFile()) return path;
  const latest = latestCheckpoint(path);
  if (!latest) throw new InputError('USAGE', `--resume ${path}: no checkpoint found in ${path} or ${join(path, 'checkpoints')}`);
  return latest;
}

export function defaultOutDir(recipe: string): string {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  return join('runs', `${recipe.replace(/[^\w.-]/g, '_')}-${stamp}`);
}

/** The shared token from --token or the environment; `launch` makes one when neither is set. */
export function resolveToken(flag: string | undefined, generateIfMissing: boolean): string {
  const token = flag ?? process.env[TOKEN_ENV];
  if (token) return token;
  if (generateIfMissing) return randomBytes(24).toString('base64url');
  throw new InputError('USAGE', `a shared token is required: pass --token or set ${TOKEN_ENV}`);
}
