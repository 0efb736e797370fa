// One loader thread: opens the split and parses the pipeline once, then makes the samples it is
// asked for, sending the floats back as a transferred buffer (no copy).
import { parentPort, workerData } from 'node:worker_threads';
import sharp from 'sharp';
import { openImageSource } from './open.ts';
import { makeSamples } from './samples.ts';
import { parsePipeline } from './transforms/pipeline.ts';
import type { ThreadSetup, ThreadRequest, ThreadReply } from './loader-pool.ts';

// Each loader thread is one unit of parallelism: libvips must not fan one decode out over every
// core, and a cache of decoded images only costs memory when every image is read once per epoch.
sharp.concurrency(1);
sharp.cache(false);

const setup = workerData as ThreadSetup;
const source = await openImageSource(setup.spec, setup.split);
const pipeline = parsePipeline(setup.pipeline, { channels: source.channels });
const port = parentPort!;

port.on('message', (request: ThreadRequest) => {
  const n = request.indices.length;
  const images = new Float32Array(n * setup.sampleSize);
  const labels = new Int32Array(n);
  makeSamples(source, pipeline, request, setup.options, images, labels, setup.sampleSize).then(
    (report) =>
      port.postMessage({ id: request.id, images, labels, skipped: report.skipped } satisfies ThreadReply, [images.buffer, labels.buffer]),
    (err: Error) => port.postMessage({ id: request.id, error: err.message } satisfies ThreadReply),
  );
});
port.postMessage({ ready: true });
