// `vit-dist data bench --data DIR`: the training pipeline's images/s per core on the user's own
// data, the same figure bench/data-vs-torchvision.sh sets beside torchvision's.
import { type Command, Option } from 'commander';
import { DATA_FORMATS } from '../data/source.ts';
import { loadRecipe } from '../train/recipe.ts';
import { nonNegativeInt, positiveInt, fraction } from './options.ts';

/** DeiT's training pipeline is the default: the heaviest of the recipes' per-sample work. */
const DEFAULT_BENCH_RECIPE = 'deit-base';

interface DataBenchFlags {
  data: string;
  format: (typeof DATA_FORMATS)[number];
  split: 'train' | 'val' | 'holdout';
  pipeline?: string;
  recipe: string;
  threads: number;
  images: number;
  batch: number;
  holdout: number;
  seed: number;
  json?: boolean;
}

export function registerDataBenchCommand(program: Command): void {
  program
    .command('data')
    .description('data set tools')
    .command('bench')
    .description('time the training pipeline on a data set: images/s, and per loader thread (one core each)')
    .requiredOption('--data <path>', 'the data set (a folder, packed shards, idx or CIFAR files)')
    .addOption(new Option('--format <format>', 'its layout').choices(DATA_FORMATS).default('imagefolder'))
    .addOption(new Option('--split <split>', 'which split to read').choices(['train', 'val', 'holdout']).default('train'))
    .option(
      '--pipeline <ops>',
      "per-sample transforms, e.g. 'random_resized_crop(224)|flip_lr|normalize(imagenet)' (default: --recipe's training pipeline)",
    )
    .option('--recipe <name>', 'take the training pipeline from this recipe', DEFAULT_BENCH_RECIPE)
    .option('--threads <n>', 'loader threads (0: on the main thread)', nonNegativeInt, 1)
    .option('--images <n>', 'images to time, after a warm-up', positiveInt, 1024)
    .option('--batch <n>', 'images per request, as a micro-batch', positiveInt, 64)
    .option('--holdout <fraction>', 'held-out fraction of the training files, as the run would use', fraction, 0)
    .option('--seed <s>', 'augmentation seed', nonNegativeInt, 0)
    .option('--json', 'print one JSON line')
    .action(runDataBench);
}

async function runDataBench(flags: DataBenchFlags): Promise<void> {
  const { benchPipeline } = await import('../data/bench.ts');
  const pipeline = flags.pipeline ?? loadRecipe(flags.recipe).data.trainPipeline;
  const spec = { format: flags.format, path: flags.data, holdout: flags.holdout, holdoutSeed: 0 };
  const result = await benchPipeline(spec, {
    split: flags.split,
    pipeline,
    threads: flags.threads,
    batchSize: flags.batch,
    images: flags.images,
    seed: flags.seed,
  });
  if (flags.json) return console.log(JSON.stringify({ pipeline, threads: flags.threads, ...result }));
  const { height, width, channels } = result.shape;
  console.log(`pipeline: ${pipeline}`);
  console.log(
    `${result.images} images to ${height}x${width}x${channels} in ${result.seconds.toFixed(2)} s: ${result.imagesPerSec.toFixed(1)} images/s with ${flags.threads} loader thread(s), ${result.imagesPerSecPerThread.toFixed(1)} images/s per thread`,
  );
}
