// `vit-dist eval` (top-1, top-5 and loss of a model on a split, data-parallel over worker threads)
// and `vit-dist soup uniform|greedy` (model soups: average fine-tuned models' weights, evaluate the
// ingredients and both soups, write one soup as timm-compatible safetensors and soup.json beside it).
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { type Command, Option } from 'commander';
import { DATA_FORMATS } from '../data/source.ts';
import type { DataSplit } from '../data/source.ts';
import type { BackendChoice } from '../model/backend.ts';
import { writeSafetensors } from '../model/safetensors.ts';
import { exportTimmState, weightsMetadata } from '../model/weights.ts';
import { writeJsonAtomic } from '../soup/atomic-json.ts';
import { cookSoups, SELECTION_SPLIT, type SoupReport, type SplitResults } from '../soup/cook.ts';
import { resolveEvalData, type DataFlags } from '../soup/eval-data.ts';
import { DEFAULT_EVAL_BATCH, EvalPool } from '../soup/eval-pool.ts';
import type { EvalResult } from '../soup/evaluate.ts';
import { loadIngredient, type IngredientInfo } from '../soup/ingredients.ts';
import { BACKENDS, fraction, nonNegativeInt, positiveInt } from './options.ts';
import { SWEEP_FILE, type SweepRecord } from './sweep.ts';
import { InputError } from '../common/errors.ts';

const WEIGHTS_EXTENSION = '.safetensors';
/** soup.json: the ingredients' and both soups' results and the greedy soup's log, beside the soup's weights. */
export const SOUP_REPORT_FILE = 'soup.json';

interface EvalOptionFlags extends DataFlags {
  workers: number;
  batch: number;
  backend: BackendChoice;
  useEma?: boolean;
}

interface EvalFlags extends EvalOptionFlags {
  weights?: string;
  checkpoint?: string;
  split: DataSplit;
  json?: boolean;
}

interface SoupFlags extends EvalOptionFlags {
  out: string;
}

type SoupMethod = 'uniform' | 'greedy';

/** Data, parallelism and backend: shared by `eval` and the soup commands. */
function addEvalOptions(command: Command): Command {
  return command
    .option(
      '--data <path>',
      "the data set (default: the recipe's or the .safetensors metadata's data.path; required for a file without them)",
    )
    .addOption(
      new Option(
        '--format <format>',
        "its layout (default: the recipe's or metadata's data.format; required for a file without them)",
      ).choices(DATA_FORMATS),
    )
    .option(
      '--holdout <fraction>',
      "held-out fraction of the training files (default: the recipe's or metadata's data.holdout; else 0.1)",
      fraction,
    )
    .option(
      '--holdout-seed <s>',
      "seed that chose the held-out files (default: the recipe's or metadata's data.holdoutSeed; else 0)",
      nonNegativeInt,
    )
    .option(
      '--pipeline <ops>',
      "evaluation transforms, e.g. 'normalize(fashion-mnist)' (default: the recipe's or metadata's data.evalPipeline; required for a file without them)",
    )
    .option('--workers <n>', 'evaluation threads, each on a contiguous part of the split', positiveInt, 1)
    .option('--batch <n>', 'images per forward pass', positiveInt, DEFAULT_EVAL_BATCH)
    .addOption(new Option('--backend <name>', 'compute backend').choices(BACKENDS).default('auto'))
    .option('--use-ema', "take each checkpoint's moving average of the weights instead of the weights");
}

export function registerSoupCommands(program: Command): void {
  addEvalOptions(
    program
      .command('eval')
      .description('top-1, top-5 and loss of a model on a split (for a distilled model also each head)')
      .option('--weights <file>', 'a .safetensors file whose metadata names its model (from `vit-dist export` or `vit-dist soup`)')
      .option('--checkpoint <path>', 'a run directory (its newest checkpoint) or a checkpoint file')
      .addOption(
        new Option('--split <split>', 'the test files (val) or the held-out part of the training files')
          .choices(['val', 'holdout'])
          .default('val'),
      )
      .option('--json', 'print one JSON line'),
  ).action(runEvalCommand);

  const soup = program
    .command('soup')
    .description('model soups: average the weights of models fine-tuned from one start (Wortsman et al. 2022)');
  for (const method of ['uniform', 'greedy'] as const) {
    addEvalOptions(
      soup
        .command(method)
        .description(
          method === 'uniform'
            ? 'write the average of all the ingredients; then evaluate the ingredients and both soups'
            : "write the greedy soup: ingredients by held-out accuracy, each kept only if it raises the soup's; then evaluate both soups",
        )
        .argument(
          '<ingredients...>',
          `run directories (their newest checkpoint), checkpoint files, .safetensors files, or a sweep's folder (its runs, from ${SWEEP_FILE})`,
        )
        .requiredOption('--out <file>', `the soup's ${WEIGHTS_EXTENSION} file (${SOUP_REPORT_FILE} is written beside it)`)
        .addOption(
          new Option(
            '--split <split>',
            'the split that chooses the greedy soup: the held-out part of the training files, never the test files',
          )
            .choices([SELECTION_SPLIT])
            .default(SELECTION_SPLIT),
        ),
    ).action((ingredients: string[], flags: SoupFlags) => runSoupCommand(method, ingredients, flags));
  }
}

const percent = (accuracy: number): string => `${(accuracy * 100).toFixed(2)}%`;

async function startPool(info: IngredientInfo, data: ReturnType<typeof resolveEvalData>, flags: EvalOptionFlags): Promise<EvalPool> {
  const pool = await EvalPool.start(flags.workers, { ...data, config: info.config, batchSize: flags.batch, backend: flags.backend });
  console.log(
    `evaluating on ${data.spec.format} ${data.spec.path} ("${data.pipeline}") with ${flags.workers} thread${flags.workers === 1 ? '' : 's'}; backend ${pool.backend}`,
  );
  return pool;
}

async function runEvalCommand(flags: EvalFlags): Promise<void> {
  if ((flags.weights === undefined) === (flags.checkpoint === undefined))
    throw new InputError('USAGE', 'pass exactly one of --weights FILE and --checkpoint DIR');
  if (flags.weights !== undefined && !flags.weights.endsWith(WEIGHTS_EXTENSION))
    throw new InputError('USAGE', `--weights ${flags.weights}: expected a ${WEIGHTS_EXTENSION} file (a checkpoint goes to --checkpoint)`);
  if (flags.checkpoint?.endsWith(WEIGHTS_EXTENSION))
    throw new InputError('USAGE', `--checkpoint ${flags.checkpoint} is a ${WEIGHTS_EXTENSION} file: pass it as --weights`);
  const path = (flags.weights ?? flags.checkpoint)!;
  const { params, ...info } = loadIngredient(path, { useEma: flags.useEma ?? false, role: 'model' });
  // Evaluating on the held-out split is only meaningful if it is the one the model never trained on.
  const data = resolveEvalData([{ name: path, data: info.data }], flags, flags.split === 'holdout');
  const pool = await startPool(info, data, flags);
  let result: EvalResult;
  try {
    result = await pool.evaluate(params, flags.split);
  } finally {
    await pool.close();
  }
  if (flags.json) {
    console.log(JSON.stringify({ model: info.model, file: info.file, ema: flags.useEma ?? false, split: flags.split, ...result }));
    return;
  }
  console.log(
    `${info.file} (${info.model}${flags.useEma ? ', EMA weights' : ''}) on the ${flags.split} split, ${result.samples} images: top-1 ${percent(result.top1)}, top-5 ${percent(result.top5)}, loss ${result.loss.toFixed(4)}`,
  );
  if (result.classHeadTop1 !== undefined && result.distHeadTop1 !== undefined) {
    console.log(
      `top-1 by head: class head ${percent(result.classHeadTop1)}, distillation head ${percent(result.distHeadTop1)}, joint classifier ${percent(result.top1)}`,
    );
  }
}

/** A sweep's folder (it holds sweep.json) stands for its runs, which must all have finished. */
function expandSweeps(names: readonly string[]): string[] {
  return names.flatMap((name) => {
    const file = join(name, SWEEP_FILE);
    if (!existsSync(file)) return [name];
    const sweep = JSON.parse(readFileSync(file, 'utf8')) as SweepRecord;
    const unfinished = sweep.runs.filter((r) => r.status !== 'finished');
    if (unfinished.length > 0) {
      throw new InputError(
        'USAGE',
        `sweep ${name}: ${unfinished.map((r) => `${r.name} is ${r.status}`).join(', ')}; run the sweep again to finish it, or name the runs to use`,
      );
    }
    return sweep.runs.map((r) => join(name, r.name));
  });
}

async function runSoupCommand(method: SoupMethod, given: string[], flags: SoupFlags): Promise<void> {
  if (!flags.out.endsWith(WEIGHTS_EXTENSION))
    throw new InputError(
      'USAGE',
      `--out ${flags.out}: the soup is written as ${WEIGHTS_EXTENSION}, name the file so (e.g. soup${WEIGHTS_EXTENSION})`,
    );
  const names = expandSweeps(given);
  const report = await cookSoups(names, {
    useEma: flags.useEma ?? false,
    progress: (line) => console.log(line),
    startPool: async (first, all) => {
      const data = resolveEvalData(
        all.map((i) => ({ name: i.name, data: i.data })),
        flags,
        true,
      );
      if (data.spec.holdout === 0) {
        throw new InputError(
          'USAGE',
          'the ingredients hold out no training images (data.holdout 0), and the greedy soup is chosen on held-out images: fine-tune with --holdout, e.g. 0.1',
        );
      }
      return startPool(first, data, flags);
    },
  });
  const first = report.architecture;
  const soup = method === 'uniform' ? { params: report.uniform.params, ingredients: names } : report.greedy;
  mkdirSync(dirname(flags.out), { recursive: true });
  // The ingredients agree on what chose the held-out images (resolveEvalData checks it): the first one's settings stand for all.
  writeSafetensors(
    flags.out,
    exportTimmState(first.specs, soup.params),
    weightsMetadata(first.model, first.modelArgs, first.data, {
      soup: method,
      ingredients: JSON.stringify(soup.ingredients),
    }),
  );
  const reportPath = join(dirname(flags.out), SOUP_REPORT_FILE);
  writeJsonAtomic(reportPath, soupJson(method, flags, report));
  printTable(report);
  console.log(
    `wrote the ${method} soup of ${soup.ingredients.length} ingredient${soup.ingredients.length === 1 ? '' : 's'} to ${flags.out}, its report to ${reportPath}`,
  );
}

function soupJson(method: SoupMethod, flags: SoupFlags, report: SoupReport): object {
  const results = ({ heldOut, test }: SplitResults) => ({ heldOut, test });
  return {
    method,
    weights: flags.out,
    ema: flags.useEma ?? false,
    ingredients: report.ingredients.map(({ name, file, ...r }) => ({ name, file, ...results(r) })),
    uniform: results(report.uniform),
    greedy: { ingredients: report.greedy.ingredients, ...results(report.greedy), log: report.greedy.log },
  };
}

/** Each ingredient's and both soups' top-1 on the held-out and the test split. */
function printTable(report: SoupReport): void {
  const kept = new Set(report.greedy.ingredients);
  const rows: [string, SplitResults][] = [
    ...report.ingredients.map((r): [string, SplitResults] => [`${kept.has(r.name) ? '*' : ' '} ${r.name}`, r]),
    [`  uniform soup (${report.ingredients.length})`, report.uniform],
    [`  greedy soup (${report.greedy.ingredients.length}, the ingredients marked *)`, report.greedy],
  ];
  const width = Math.max(...rows.map(([label]) => label.length));
  const header = ['held-out', 'test'].map((h) => h.padStart(9)).join(' ');
  console.log(`\n${'top-1'.padEnd(width)} ${header}`);
  for (const [label, r] of rows)
    console.log(`${label.padEnd(width)} ${percent(r.heldOut.top1).padStart(9)} ${percent(r.test.top1).padStart(9)}`);
  console.log();
}
