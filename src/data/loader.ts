// The data path's first stage: a split of a data set, through a pipeline, into float batches for
// the model. Samples are made inline or by a pool of threads (`threads`); either way a sample's
// pixels depend only on (seed, epoch, index, repeat), never on the worker count or the thread.
import { LoaderPool } from './loader-pool.ts';
import { openImageSource, type DataSpec } from './open.ts';
import { makeSamples, type SampleOptions, type SampleReport, type SampleRequest } from './samples.ts';
import type { DataSplit, ImageSource } from './source.ts';
import { parsePipeline, type Pipeline } from './transforms/pipeline.ts';

/** Two unlike image sizes: a pipeline that maps both to one shape gives every image that shape. */
const PROBE_SIZES = [
  [480, 640],
  [333, 250],
] as const;

export interface LoaderOptions extends SampleOptions {
  /** Loader threads; 0 makes samples on the calling thread. */
  threads: number;
}

export interface SampleShape {
  height: number;
  width: number;
  channels: number;
}

export class BatchLoader {
  readonly sampleSize: number;

  private constructor(
    private readonly source: ImageSource,
    private readonly pipeline: Pipeline,
    readonly shape: SampleShape,
    private readonly options: LoaderOptions,
    private readonly pool: LoaderPool | null,
  ) {
    this.sampleSize = shape.height * shape.width * shape.channels;
  }

  static async open(spec: DataSpec, split: DataSplit, pipelineText: string, options: LoaderOptions): Promise<BatchLoader> {
    const source = await openImageSource(spec, split);
    const pipeline = parsePipeline(pipelineText, { channels: source.channels });
    const shape = outputShape(source, pipeline, pipelineText);
    const sampleSize = shape.height * shape.width * shape.channels;
    const pool =
      options.threads > 0
        ? await LoaderPool.start(options.threads, {
            spec,
            split,
            pipeline: pipelineText,
            options: { seed: options.seed, skipCorrupt: options.skipCorrupt },
            sampleSize,
          })
        : null;
    return new BatchLoader(source, pipeline, shape, options, pool);
  }

  get size(): number {
    return this.source.size;
  }

  get classes(): readonly string[] {
    return this.source.classes;
  }

  /** Writes the requested samples' floats (NHWC) into `out` and their labels into `labels`. */
  load(request: SampleRequest, out: Float32Array, labels: Int32Array): Promise<SampleReport> {
    if (this.pool) return this.pool.make(request, out, labels);
    return makeSamples(this.source, this.pipeline, request, this.options, out, labels, this.sampleSize);
  }

  async close(): Promise<void> {
    await this.pool?.close();
  }
}

/** The one shape the pipeline gives every image of the source; an error when sizes would vary. */
function outputShape(source: ImageSource, pipeline: Pipeline, text: string): SampleShape {
  if (source.fixedSize) return pipeline.outputShape(source.fixedSize.height, source.fixedSize.width);
  const [a, b] = PROBE_SIZES.map(([h, w]) => pipeline.outputShape(h, w));
  if (a!.height !== b!.height || a!.width !== b!.width) {
    throw new Error(
      `pipeline "${text}" keeps each image's own size, but the images' sizes vary: end it with a crop or a resize to one size`,
    );
  }
  return a!;
}

export interface EvalBatch {
  images: Float32Array;
  labels: Int32Array;
  n: number;
}

/** The split's samples [range.start, range.end) (default all), through the evaluation pipeline `pipeline`, in batches of `batchSize`. */
export async function* evalBatches(
  spec: DataSpec,
  split: DataSplit,
  pipeline: string,
  batchSize: number,
  range?: { start: number; end: number },
): AsyncGenerator<EvalBatch> {
  const loader = await BatchLoader.open(spec, split, pipeline, { threads: 0, seed: 0, skipCorrupt: false });
  try {
    const start = range?.start ?? 0;
    const end = range?.end ?? loader.size;
    if (!(start >= 0 && start <= end && end <= loader.size))
      throw new RangeError(`range [${start}, ${end}) is outside the ${split} split of ${loader.size}`);
    for (let from = start; from < end; from += batchSize) {
      const n = Math.min(batchSize, end - from);
      const images = new Float32Array(n * loader.sampleSize);
      const labels = new Int32Array(n);
      await loader.load({ indices: Uint32Array.from({ length: n }, (_, i) => from + i), repeats: null, epoch: 0 }, images, labels);
      yield { images, labels, n };
    }
  } finally {
    await loader.close();
  }
}

export async function splitSize(spec: DataSpec, split: DataSplit): Promise<number> {
  return (await openImageSource(spec, split)).size;
}
