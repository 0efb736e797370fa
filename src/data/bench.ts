// `vit-dist data bench`: how fast the training pipeline turns a data set into model input, per
// loader thread. Each thread does all of a sample's work (read, decode, augment, normalize), so
// images/s divided by the threads is the figure per core to set beside torchvision's. The process's
// CPU time gives the same figure in a way other processes on a shared machine disturb less.
import { BatchLoader } from './loader.ts';
import type { DataSpec } from './open.ts';
import type { DataSplit } from './source.ts';

/** Batches made and thrown away before timing: threads start, files reach the page cache. */
const WARMUP_BATCHES = 2;
const MICROSECONDS_PER_SECOND = 1e6;

export interface PipelineBenchOptions {
  split: DataSplit;
  pipeline: string;
  threads: number;
  batchSize: number;
  /** Images to time (after the warm-up), taken in order from the split, wrapping. */
  images: number;
  seed: number;
}

export interface PipelineBenchResult {
  images: number;
  seconds: number;
  imagesPerSec: number;
  /** imagesPerSec per loader thread (per core when each thread has one). */
  imagesPerSecPerThread: number;
  /** CPU time of the whole process (every thread: loader, libvips, main) while timing. */
  cpuSeconds: number;
  /** Images per second of CPU time: the cost per core, whatever else the machine runs. */
  imagesPerCpuSecond: number;
  shape: { height: number; width: number; channels: number };
}

export async function benchPipeline(spec: DataSpec, options: PipelineBenchOptions): Promise<PipelineBenchResult> {
  const loader = await BatchLoader.open(spec, options.split, options.pipeline, {
    threads: options.threads,
    seed: options.seed,
    skipCorrupt: false,
  });
  try {
    const { batchSize } = options;
    const images = new Float32Array(batchSize * loader.sampleSize);
    const labels = new Int32Array(batchSize);
    let next = 0;
    const batch = () => {
      const indices = Uint32Array.from({ length: batchSize }, () => next++ % loader.size);
      return loader.load({ indices, repeats: null, epoch: 0 }, images, labels);
    };
    for (let b = 0; b < WARMUP_BATCHES; b++) await batch();
    const batches = Math.max(1, Math.round(options.images / batchSize));
    const started = performance.now();
    const cpuStarted = process.cpuUsage();
    for (let b = 0; b < batches; b++) await batch();
    const cpu = process.cpuUsage(cpuStarted);
    const seconds = (performance.now() - started) / 1000;
    const cpuSeconds = (cpu.user + cpu.system) / MICROSECONDS_PER_SECOND;
    const timed = batches * batchSize;
    const imagesPerSec = timed / seconds;
    return {
      images: timed,
      seconds,
      imagesPerSec,
      imagesPerSecPerThread: imagesPerSec / Math.max(1, options.threads),
      cpuSeconds,
      imagesPerCpuSecond: timed / cpuSeconds,
      shape: loader.shape,
    };
  } finally {
    await loader.close();
  }
}
