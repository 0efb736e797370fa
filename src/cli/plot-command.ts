// `vit-dist plot RUN_DIR [RUN_DIR...] --out curves.png`: the curves of one or more runs, read from
// their metrics.jsonl, drawn as SVG (curves.ts) and rasterized by resvg (Rust, prebuilt in npm's
// @resvg/resvg-js), so a PNG for a README or an issue needs no browser and no server.
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { Resvg } from '@resvg/resvg-js';
import type { Command } from 'commander';
import { InputError } from '../common/errors.ts';
import type { MetricsRecord } from '../coordinator/metrics.ts';
import { CURVES_WIDTH, curvesSvg, type RunCurves } from './curves.ts';

/** The records of `runDir`'s metrics.jsonl, with errors that name the run and the line. */
function readRunRecords(runDir: string): MetricsRecord[] {
  if (!existsSync(runDir)) throw new InputError('PLOT_NO_RUN', `${runDir}: no such run directory`);
  if (!statSync(runDir).isDirectory())
    throw new InputError('PLOT_NO_RUN', `${runDir} is not a directory: give a run directory (the --out of a run)`);
  const path = join(runDir, 'metrics.jsonl');
  if (!existsSync(path))
    throw new InputError('PLOT_NO_METRICS', `${runDir} has no metrics.jsonl: not a vit-dist run directory, or its run has not started`);
  return readFileSync(path, 'utf8')
    .split('\n')
    .flatMap((line, i) => {
      if (line.trim() === '') return [];
      try {
        return [JSON.parse(line) as MetricsRecord];
      } catch (err) {
        throw new InputError('PLOT_BAD_METRICS', `${path} line ${i + 1} is not a JSON record: ${(err as Error).message}`, { cause: err });
      }
    });
}

/** One run's curves; a run without a step yet has nothing to draw. */
export function readRunCurves(runDir: string, name: string): RunCurves {
  const records = readRunRecords(runDir);
  const steps = records.flatMap((r) => (r.kind === 'step' ? [r] : [])).sort((a, b) => a.step - b.step);
  if (steps.length === 0)
    throw new InputError('PLOT_NO_STEPS', `${join(runDir, 'metrics.jsonl')} has no step records: nothing to plot yet`);
  const evals = records.flatMap((r) => (r.kind === 'eval' ? [r] : [])).sort((a, b) => a.step - b.step);
  return {
    name,
    loss: steps.map((s) => [s.step, s.loss]),
    accuracy: steps.map((s) => [s.step, s.accuracy]),
    testAccuracy: evals.map((e) => [e.step, e.testAccuracy]),
    lr: steps.map((s) => [s.step, s.lr]),
    imagesPerSec: steps.map((s) => [s.step, s.imagesPerSec]),
  };
}

/** Legend names: each run directory's own name, or the path as given where two names collide. */
function runNames(runDirs: readonly string[]): string[] {
  const names = runDirs.map((d) => basename(resolve(d)));
  return names.map((n, i) => (names.indexOf(n) === names.lastIndexOf(n) ? n : runDirs[i]!));
}

/** Draws `runDirs`' curves into the PNG file `out`; returns its size in pixels. */
export function plotRuns(runDirs: readonly string[], out: string): { width: number; height: number } {
  if (runDirs.length === 0) throw new InputError('USAGE', 'give at least one run directory to plot');
  if (extname(out).toLowerCase() !== '.png') throw new InputError('USAGE', `--out must name a .png file, got ${out}`);
  const names = runNames(runDirs);
  const runs = runDirs.map((dir, i) => readRunCurves(dir, names[i]!));
  const png = new Resvg(curvesSvg(runs), {
    fitTo: { mode: 'width', value: CURVES_WIDTH },
    font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' },
  }).render();
  mkdirSync(dirname(resolve(out)), { recursive: true });
  writeFileSync(out, png.asPng());
  return { width: png.width, height: png.height };
}

export function registerPlotCommand(program: Command): void {
  program
    .command('plot')
    .description('draw the curves of one or more runs (loss, accuracy, test accuracy, lr, images/s over steps) into a PNG')
    .argument('<run-dirs...>', 'run directories (the --out of `launch` or `coordinator`), overlaid in one picture')
    .requiredOption('--out <file>', 'the .png file to write')
    .action((runDirs: string[], opts: { out: string }) => {
      const { width, height } = plotRuns(runDirs, opts.out);
      console.log(`wrote ${opts.out} (${width}x${height}, ${runDirs.length} run${runDirs.length === 1 ? '' : 's'})`);
    });
}
