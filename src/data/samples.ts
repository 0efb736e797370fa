// Turning samples into model input: read each image from its source, run it through a pipeline
// with a generator seeded by the sample alone, and write floats NHWC. The same function runs in the
// loader's threads and inline, so a sample's pixels never depend on where they were made.
// When the pipeline starts with a crop or a resize and the source can decode regions (image
// folders, packed shards), the source does that first op while decoding (ImageSource.readRegion)
// and the pipeline's other ops follow: far less decoding and resampling for ImageNet-sized
// images. Which path a sample takes depends only on the source (its format) and the pipeline, so
// every worker, thread and thread count still makes the same pixels; the region path's pixels
// differ from the whole-image path's where libvips shrinks (by about a level), see image-folder.ts.
import { mixSeed, Mulberry32 } from '../common/random.ts';
import { checkSampleIndex, type ImageSource } from './source.ts';
import type { Pipeline } from './transforms/pipeline.ts';
import { CorruptImageError } from './image-folder.ts';

/** Salt that separates the augmentation stream from the run seed's other uses. */
const AUGMENT_STREAM = 0x61756721;
/** A corrupt image is replaced by the next readable one; this many unreadable in a row is a broken data set. */
const MAX_CONSECUTIVE_CORRUPT = 16;

/** Which samples to make: data-set indices, each one's repeat number (DeiT's repeated augmentation) and the epoch. */
export interface SampleRequest {
  indices: Uint32Array;
  /** Repeat number of each sample (0 when the recipe repeats nothing); null means all 0. */
  repeats: Uint8Array | null;
  epoch: number;
}

export interface SampleOptions {
  seed: number;
  /** Replace a corrupt image by the next readable one instead of failing. */
  skipCorrupt: boolean;
}

/** Corrupt images met while making a batch: replaced by their successors, named for the log. */
export interface SampleReport {
  skipped: string[];
}

/**
 * A sample's generator: seeded by (run seed, epoch, index, repeat) only, so that a sample gets the
 * same crop, flip and RandAugment ops whichever rank and thread make it.
 */
export function sampleRng(seed: number, epoch: number, index: number, repeat: number): Mulberry32 {
  return new Mulberry32(mixSeed(seed, AUGMENT_STREAM, epoch, index, repeat));
}

/** Writes the requested samples through `pipeline` into `out` (n x sampleSize floats) and their labels into `labels`. */
export async function makeSamples(
  source: ImageSource,
  pipeline: Pipeline,
  request: SampleRequest,
  options: SampleOptions,
  out: Float32Array,
  labels: Int32Array,
  sampleSize: number,
): Promise<SampleReport> {
  const skipped: string[] = [];
  for (let s = 0; s < request.indices.length; s++) {
    const index = request.indices[s]!;
    // Before any read: a substitute's index wraps around the split, which would hide a bad index.
    checkSampleIndex(index, source.size, 'the split');
    const newRng = () => sampleRng(options.seed, request.epoch, index, request.repeats?.[s] ?? 0);
    labels[s] = await makeOrSubstitute(source, index, options.skipCorrupt, skipped, (candidate) =>
      makeSample(source, candidate, pipeline, newRng(), out, s * sampleSize),
    );
  }
  return { skipped };
}

/** Writes sample `index` of `source` through `pipeline` to out[offset ...], the first op during decoding when both allow it. */
async function makeSample(
  source: ImageSource,
  index: number,
  pipeline: Pipeline,
  rng: Mulberry32,
  out: Float32Array,
  offset: number,
): Promise<void> {
  const head = pipeline.head;
  if (!head || !source.readRegion) return pipeline.apply(await source.read(index), rng, out, offset);
  let regional = false;
  const image = await source.readRegion(index, (height, width) => {
    const region = head.region(height, width, rng);
    regional = region !== null;
    return region;
  });
  if (regional) head.rest(image, rng, out, offset);
  else pipeline.apply(image, rng, out, offset);
}

/**
 * Makes the sample of `index` with `make`, or with skipCorrupt that of the first readable image
 * after it (wrapping, each attempt with a fresh generator of the requested sample), and returns
 * its label: the substitute depends only on the data, so every worker count trains on the same pixels.
 */
async function makeOrSubstitute(
  source: ImageSource,
  index: number,
  skipCorrupt: boolean,
  skipped: string[],
  make: (candidate: number) => Promise<void>,
): Promise<number> {
  for (let attempt = 0; attempt < MAX_CONSECUTIVE_CORRUPT; attempt++) {
    const candidate = (index + attempt) % source.size;
    try {
      await make(candidate);
      return source.label(candidate);
    } catch (err) {
      if (!(err instanceof CorruptImageError) || !skipCorrupt) throw err;
      skipped.push(source.describe(candidate));
    }
  }
  throw new Error(`${MAX_CONSECUTIVE_CORRUPT} unreadable images in a row from ${source.describe(index)}: the data set looks broken`);
}
