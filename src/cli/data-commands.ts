// `vit-dist pack`: decode and pre-resize a data set once into packed shards (src/data/packed.ts),
// which every data command then reads as `--format packed`.
import { resolve } from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { CorruptImageError } from '../data/image-folder.ts';
import { openImageSource, storedSplitExists } from '../data/open.ts';
import { DATA_FORMATS, type DataFormat } from '../data/source.ts';
import { DEFAULT_SHARD_BYTES, packSplit, type PackSummary } from '../data/packed.ts';
import { positiveInt } from './options.ts';
import { InputError } from '../common/errors.ts';

/** The usual pre-resize for ImageNet training at 224 (random-resized crops, evaluation at 224 / 0.875 = 256). */
export const DEFAULT_PACK_SIZE = 256;
const MIB = 1024 ** 2;
const PROGRESS_INTERVAL_MS = 5000;
const PACKABLE_SPLITS = ['train', 'val'] as const;
type PackableSplit = (typeof PACKABLE_SPLITS)[number];

export interface PackFlags {
  data: string;
  format: DataFormat;
  out: string;
  size: number;
  splits?: PackableSplit[];
  shardMib: number;
  skipCorrupt?: boolean;
}

function splitList(value: string): PackableSplit[] {
  const splits = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  const bad = splits.find((s) => !(PACKABLE_SPLITS as readonly string[]).includes(s));
  if (bad !== undefined || splits.length === 0)
    throw new InvalidArgumentError(`expected a comma-separated list of ${PACKABLE_SPLITS.join(', ')}, got "${value}"`);
  return [...new Set(splits)] as PackableSplit[];
}

function formatBytes(bytes: number): string {
  return bytes >= 1024 * MIB ? `${(bytes / (1024 * MIB)).toFixed(2)} GiB` : `${(bytes / MIB).toFixed(1)} MiB`;
}

function describeSummary(summary: PackSummary, seconds: number): string {
  const skipped = summary.skipped > 0 ? ` (${summary.skipped} corrupt skipped)` : '';
  return `${summary.split}: ${summary.images} images${skipped}, ${formatBytes(summary.bytes)} in ${summary.shards.length} shard(s), ${seconds.toFixed(1)} s`;
}

export async function runPackCommand(flags: PackFlags): Promise<void> {
  const { data, format, out, size } = flags;
  if (format === 'packed' && resolve(out) === resolve(data))
    throw new InputError('USAGE', `--out ${out} is the packed data set being read: pack into another folder`);
  let splits: PackableSplit[];
  if (flags.splits) {
    const missing = flags.splits.find((split) => !storedSplitExists(format, data, split));
    if (missing !== undefined) throw new InputError('USAGE', `--data ${data} has no ${missing} split of format ${format}`);
    splits = flags.splits;
  } else {
    splits = PACKABLE_SPLITS.filter((split) => storedSplitExists(format, data, split));
    if (splits.length === 0) throw new InputError('USAGE', `--data ${data} holds neither a train nor a val split of format ${format}`);
  }
  const started = performance.now();
  let images = 0;
  let skipped = 0;
  let bytes = 0;
  for (const split of splits) {
    const source = await openImageSource({ format, path: data, holdout: 0, holdoutSeed: 0 }, split);
    console.log(`packing the ${split} split of ${data}: ${source.size} images, shorter side at most ${size} px, into ${out}`);
    const splitStarted = performance.now();
    let lastReport = splitStarted;
    const summary = await packSplit(source, out, split, {
      size,
      shardBytes: flags.shardMib * MIB,
      skipCorrupt: flags.skipCorrupt ?? false,
      onSkip: (error: CorruptImageError) => console.warn(`skipped: ${error.message}`),
      onProgress: (done, total) => {
        const now = performance.now();
        if (now - lastReport < PROGRESS_INTERVAL_MS) return;
        lastReport = now;
        const rate = done / ((now - splitStarted) / 1000);
        console.log(`  ${split}: ${done}/${total} images (${((100 * done) / total).toFixed(1)}%), ${rate.toFixed(0)} images/s`);
      },
    });
    console.log(describeSummary(summary, (performance.now() - splitStarted) / 1000));
    images += summary.images;
    skipped += summary.skipped;
    bytes += summary.bytes;
  }
  const skippedText = skipped > 0 ? `, ${skipped} corrupt skipped` : '';
  console.log(
    `packed ${images} images${skippedText}, ${formatBytes(bytes)}, in ${((performance.now() - started) / 1000).toFixed(1)} s to ${out}`,
  );
}

export function registerDataCommands(program: Command): void {
  program
    .command('pack')
    .description('decode and pre-resize a data set once into packed shards, read back with --format packed')
    .requiredOption('--data <dir>', 'the data set to pack')
    .addOption(new Option('--format <format>', 'format of --data').choices(DATA_FORMATS).makeOptionMandatory())
    .requiredOption('--out <dir>', 'folder for the shards and their index (an earlier pack of the same splits there is replaced)')
    .option(
      '--size <px>',
      'shorter side of the stored images: larger images are downscaled to it (aspect kept), smaller ones stored as they are',
      positiveInt,
      DEFAULT_PACK_SIZE,
    )
    .option('--splits <list>', `comma-separated splits to pack (default: each of ${PACKABLE_SPLITS.join(', ')} that --data has)`, splitList)
    .option('--shard-mib <n>', 'start a new shard file before one would exceed this many MiB', positiveInt, DEFAULT_SHARD_BYTES / MIB)
    .option('--skip-corrupt', 'skip corrupt or unreadable images (each logged and counted) instead of failing')
    .action(runPackCommand);
}
