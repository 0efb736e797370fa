// `vit-dist sweep`: one fine-tuning per combination of the --grid values, one after another on a
// local cluster (the launch command, called in this process), each in its own run directory named
// from its values. Resumable: rerun the same command and a finished run is skipped, an unfinished
// one continues from its newest checkpoint (launch resumes from the checkpoints in --out), a
// missing one starts. OUT/sweep.json records the grid and each run's directory and status.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { latestCheckpoint, readCheckpoint } from '../train/checkpoint.ts';
import { MetricsLog, type EvalRecord, type StepRecord } from '../coordinator/metrics.ts';
import { splitSize } from '../data/loader.ts';
import { EpochSampler } from '../data/sampler.ts';
import { writeJsonAtomic } from '../soup/atomic-json.ts';
import { applyOverrides, totalSteps, validateRecipe, type Recipe } from '../train/recipe.ts';
import { addRunOptions, BACKENDS, nonNegativeInt, positiveInt, resolveRecipe, DEFAULT_DATA_THREADS } from './options.ts';
import { runLaunchCommand } from './run.ts';
import { InputError } from '../common/errors.ts';

export type LaunchFlags = Parameters<typeof runLaunchCommand>[0];
export type Launch = (flags: LaunchFlags) => Promise<void>;

/** Short grid keys for the recipe keys a fine-tuning sweep varies most (Wortsman et al. vary lr, wd, smoothing, seed). */
export const GRID_ALIASES: Readonly<Record<string, string>> = {
  lr: 'optimizer.lr',
  wd: 'optimizer.weightDecay',
  momentum: 'optimizer.momentum',
  smoothing: 'regularization.labelSmoothing',
};
export const SWEEP_FILE = 'sweep.json';
/** Grid values name directories: no separators, quotes or spaces. */
const VALUE_PATTERN = /^[A-Za-z0-9._+-]+$/;

export interface GridAxis {
  /** As given: an alias or a recipe key. */
  key: string;
  /** The dotted recipe key it sets, as --set takes it. */
  recipeKey: string;
  values: string[];
}

export interface GridPoint {
  /** The run directory's name: key=value pairs in the order of the --grid flags, e.g. lr=0.001,seed=0. */
  name: string;
  /** Recipe key to value, as --set takes them. */
  overrides: Record<string, string>;
}

/** Parses --grid KEY=V1,V2,... flags; errors name the flag. */
export function parseGrid(specs: readonly string[]): GridAxis[] {
  if (specs.length === 0) throw new InputError('USAGE', 'a sweep needs at least one --grid KEY=V1,V2,...');
  const axes: GridAxis[] = [];
  for (const spec of specs) {
    const at = spec.indexOf('=');
    if (at <= 0) throw new InputError('USAGE', `--grid ${spec}: expected KEY=V1,V2,... (e.g. lr=0.001,0.003)`);
    const key = spec.slice(0, at);
    const recipeKey = GRID_ALIASES[key] ?? key;
    const values = spec.slice(at + 1).split(',');
    for (const value of values) {
      if (!VALUE_PATTERN.test(value))
        throw new InputError('USAGE', `--grid ${spec}: value "${value}" cannot name a run directory (letters, digits and . _ + - only)`);
    }
    if (new Set(values).size !== values.length) throw new InputError('USAGE', `--grid ${spec}: a value is repeated`);
    const clash = axes.find((a) => a.recipeKey === recipeKey);
    if (clash) throw new InputError('USAGE', `--grid ${spec}: ${recipeKey} is already swept by --grid ${clash.key}=...`);
    axes.push({ key, recipeKey, values });
  }
  return axes;
}

/** The cartesian product, the first axis varying slowest (as nested loops in the flags' order). */
export function expandGrid(axes: readonly GridAxis[]): GridPoint[] {
  let points: { pairs: string[]; overrides: Record<string, string> }[] = [{ pairs: [], overrides: {} }];
  for (const axis of axes) {
    points = points.flatMap((p) =>
      axis.values.map((value) => ({ pairs: [...p.pairs, `${axis.key}=${value}`], overrides: { ...p.overrides, [axis.recipeKey]: value } })),
    );
  }
  return points.map((p) => ({ name: p.pairs.join(','), overrides: p.overrides }));
}

export type RunStatus = 'finished' | 'unfinished' | 'missing';

/** Training images of a recipe's data (the run length in steps depends on it when set in epochs). */
export type TrainSize = (recipe: Recipe) => Promise<number>;
const trainSplitSize: TrainSize = (recipe) => splitSize(recipe.data, 'train');

/**
 * Where the run in `dir` stands. Finished: its newest checkpoint is at the run's last step, and
 * metrics.jsonl agrees (the last step recorded is that step, with the checkpoint's parameter
 * digest, and the final evaluation is recorded), as the end-to-end tests recognize a complete run.
 * Unfinished: a checkpoint to resume from. Missing: none (a run that died before its first
 * checkpoint starts again).
 */
export async function runStatus(
  dir: string,
  trainSize: TrainSize = trainSplitSize,
): Promise<{ status: RunStatus; step: number; totalSteps: number | null }> {
  const latest = latestCheckpoint(dir);
  if (!latest) return { status: 'missing', step: 0, totalSteps: null };
  const { meta } = readCheckpoint(latest);
  const recipe = validateRecipe(meta.recipe, `the recipe in ${latest}`);
  const total =
    recipe.steps ??
    totalSteps(recipe, new EpochSampler(await trainSize(recipe), recipe.globalBatch, recipe.seed, recipe.data.repeats).stepsPerEpoch);
  if (meta.step < total) return { status: 'unfinished', step: meta.step, totalSteps: total };
  const records = new MetricsLog(join(dir, 'metrics.jsonl')).read();
  const lastStep = records.filter((r): r is StepRecord => r.kind === 'step').at(-1);
  const finalEval = records.some((r): r is EvalRecord => r.kind === 'eval' && r.step === total);
  if (lastStep?.step !== total || lastStep.paramDigest !== meta.paramDigest || !finalEval) {
    throw new Error(
      `${dir}: the checkpoint ${latest} is at the run's last step (${total}), but metrics.jsonl does not record the end of the run (last step ${lastStep?.step ?? 'none'}, digest ${lastStep?.paramDigest ?? 'none'} against ${meta.paramDigest}, final evaluation ${finalEval ? 'present' : 'missing'}): inspect the run, or move it away to train it again`,
    );
  }
  return { status: 'finished', step: meta.step, totalSteps: total };
}

export interface SweepFlags extends LaunchFlags {
  /** The --grid flags; undefined when none was given. */
  grid?: string[];
}

export interface SweepRun {
  name: string;
  dir: string;
  overrides: Record<string, string>;
  status: RunStatus | 'failed';
  /** Steps completed (the newest checkpoint's), and of how many; null until known. */
  step: number;
  totalSteps: number | null;
  error?: string;
}

export interface SweepRecord {
  recipe: string;
  init: string | null;
  grid: GridAxis[];
  runs: SweepRun[];
}

/** The recipe's value at a dotted key. */
function valueAt(recipe: Recipe, key: string): unknown {
  return key.split('.').reduce<unknown>((node, part) => (node as Record<string, unknown> | undefined)?.[part], recipe);
}

/**
 * Every run's recipe, resolved before any training: a bad key or value fails the sweep at once,
 * and so does a grid value that another flag would override (e.g. --grid seed=... with --seed).
 */
function checkRecipes(flags: SweepFlags, axes: readonly GridAxis[], points: readonly GridPoint[]): void {
  const base = resolveRecipe(flags, null, flags.workers);
  for (const point of points) {
    const recipe = resolveRecipe({ ...flags, set: { ...flags.set, ...point.overrides } }, null, flags.workers);
    for (const axis of axes) {
      const wanted = valueAt(applyOverrides(base, { [axis.recipeKey]: point.overrides[axis.recipeKey]! }), axis.recipeKey);
      if (valueAt(recipe, axis.recipeKey) !== wanted) {
        throw new InputError(
          'USAGE',
          `--grid ${axis.key}: run ${point.name} would not get ${axis.recipeKey} = ${point.overrides[axis.recipeKey]} (another flag sets ${axis.recipeKey}; drop it)`,
        );
      }
    }
  }
}

/**
 * Runs the sweep; `launch` trains one run to its end (or throws, or returns early when asked to
 * stop). Throws at the first run that fails; returns early, its record saying so, at the first
 * run that stopped before its end.
 */
export async function runSweep(
  flags: SweepFlags,
  launch: Launch = runLaunchCommand,
  trainSize: TrainSize = trainSplitSize,
): Promise<SweepRecord> {
  const out = flags.out;
  if (out === undefined)
    throw new InputError('USAGE', "--out DIR is required: the sweep's folder, where each run gets its own directory and a rerun continues");
  if (flags.resume !== undefined)
    throw new InputError(
      'USAGE',
      '--resume does not apply to a sweep: run the same sweep command again and each run continues from its own checkpoints',
    );
  const axes = parseGrid(flags.grid ?? []);
  const points = expandGrid(axes);
  for (const key of Object.keys(flags.set)) {
    const axis = axes.find((a) => a.recipeKey === key);
    if (axis) throw new InputError('USAGE', `--set ${key}=... and --grid ${axis.key}=... both set ${key}`);
  }
  checkRecipes(flags, axes, points);

  const record: SweepRecord = { recipe: flags.recipe, init: flags.init ?? null, grid: axes, runs: [] };
  for (const point of points) {
    const dir = join(out, point.name);
    record.runs.push({ name: point.name, dir, overrides: point.overrides, ...(await runStatus(dir, trainSize)) });
  }
  const save = (): void => writeJsonAtomic(join(out, SWEEP_FILE), record);
  mkdirSync(out, { recursive: true });
  save();
  console.log(
    `sweep of ${points.length} run${points.length === 1 ? '' : 's'} in ${out}: ${['finished', 'unfinished', 'missing'].map((s) => `${record.runs.filter((r) => r.status === s).length} ${s}`).join(', ')}`,
  );

  for (const [i, run] of record.runs.entries()) {
    const what = `run ${i + 1}/${record.runs.length} ${run.name}`;
    if (run.status === 'finished') {
      console.log(`${what}: finished (${run.step} steps), skipped`);
      continue;
    }
    console.log(`${what}: ${run.status === 'unfinished' ? `resuming at step ${run.step} of ${run.totalSteps}` : 'starting'} in ${run.dir}`);
    try {
      await launch({ ...flags, out: run.dir, set: { ...flags.set, ...run.overrides } });
    } catch (err) {
      Object.assign(run, { status: 'failed', error: (err as Error).message });
      save();
      throw new Error(`${what} failed: ${(err as Error).message}; run the same sweep command again to continue`, { cause: err });
    }
    const after = await runStatus(run.dir, trainSize);
    Object.assign(run, after);
    delete run.error;
    save();
    if (after.status !== 'finished') {
      // launch returns before the end only when asked to stop (SIGTERM): an orderly stop, as launch's own.
      console.log(
        `${what} stopped at step ${run.step} of ${run.totalSteps ?? '?'} on request; the sweep stops here: run the same command again to continue`,
      );
      return record;
    }
  }
  console.log(`sweep done: ${record.runs.length} finished runs in ${out} (${SWEEP_FILE} lists them)`);
  return record;
}

function collect(value: string, previous: string[] = []): string[] {
  if (!value.includes('=')) throw new InvalidArgumentError(`expected KEY=V1,V2,..., got "${value}"`);
  return [...previous, value];
}

export function registerSweepCommand(program: Command): void {
  addRunOptions(
    program
      .command('sweep')
      .description(
        `fine-tune once per combination of the --grid values, one run after another on a local cluster; --out DIR (required) is the sweep's folder: one run directory per combination, named from its values (e.g. lr=0.001,seed=0), and ${SWEEP_FILE}; rerun the same command to continue an interrupted sweep`,
      )
      .option(
        '--grid <key=values>',
        `a recipe key (as --set takes it, or an alias: ${Object.entries(GRID_ALIASES)
          .map(([a, k]) => `${a} = ${k}`)
          .join(', ')}) and its comma-separated values; repeatable, the runs are every combination`,
        collect,
      )
      .option('--workers <n>', 'local worker processes per run', positiveInt, 1)
      .option(
        '--data-threads <n>',
        "each worker's threads that decode and augment images (0: on its main thread)",
        nonNegativeInt,
        DEFAULT_DATA_THREADS,
      )
      .addOption(new Option('--backend <name>', 'compute backend of the workers').choices(BACKENDS).default('auto')),
  ).action(async (flags: SweepFlags) => {
    await runSweep(flags);
  });
}
