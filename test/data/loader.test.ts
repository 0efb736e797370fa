// The loader: a sample's floats depend only on (seed, epoch, index, repeat), not on its batch,
// the thread that made it, or how many threads there are; corrupt images fail or are replaced.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { openImageFolder } from '../../src/data/image-folder.ts';
import { BatchLoader, evalBatches, splitSize } from '../../src/data/loader.ts';
import type { DataSpec } from '../../src/data/open.ts';
import { sampleRng } from '../../src/data/samples.ts';
import { parsePipeline } from '../../src/data/transforms/pipeline.ts';
import { needsData } from '../e2e/cluster.ts';

const FMNIST: DataSpec = { format: 'fashion-mnist', path: '/usr/share/datasets/fashion-mnist', holdout: 0, holdoutSeed: 0 };
const AUGMENT = 'inception_crop(28)|flip_lr|randaug(2,15,12.5,5)|normalize(fashion-mnist)';
const request = (indices: number[], epoch = 0, repeats: number[] | null = null) => ({
  indices: Uint32Array.from(indices),
  repeats: repeats ? Uint8Array.from(repeats) : null,
  epoch,
});

async function load(
  loader: BatchLoader,
  indices: number[],
  epoch = 0,
  repeats: number[] | null = null,
): Promise<{ images: Float32Array; labels: Int32Array }> {
  const images = new Float32Array(indices.length * loader.sampleSize);
  const labels = new Int32Array(indices.length);
  await loader.load(request(indices, epoch, repeats), images, labels);
  return { images, labels };
}

test('a sample is the same whichever batch, thread or thread count makes it', { skip: needsData, timeout: 60_000 }, async () => {
  const inline = await BatchLoader.open(FMNIST, 'train', AUGMENT, { threads: 0, seed: 7, skipCorrupt: false });
  const pooled = await BatchLoader.open(FMNIST, 'train', AUGMENT, { threads: 2, seed: 7, skipCorrupt: false });
  try {
    assert.deepEqual(inline.shape, { height: 28, width: 28, channels: 1 });
    const batch = [3, 14, 15, 92, 65, 35];
    const a = await load(inline, batch);
    const b = await load(pooled, batch);
    assert.deepEqual(b.images, a.images);
    assert.deepEqual(b.labels, a.labels);
    const alone = await load(inline, [92]);
    assert.deepEqual(alone.images, a.images.subarray(3 * inline.sampleSize, 4 * inline.sampleSize));
    // Another epoch or another repeat of the same image draws other augmentations.
    assert.notDeepEqual((await load(inline, [92], 1)).images, alone.images);
    assert.notDeepEqual((await load(inline, [92], 0, [1])).images, alone.images);
  } finally {
    await Promise.all([inline.close(), pooled.close()]);
  }
});

test('evalBatches walks a range of a split in batches; splitSize counts the split', { skip: needsData }, async () => {
  assert.equal(await splitSize(FMNIST, 'val'), 10_000);
  const sizes: number[] = [];
  const labels: number[] = [];
  for await (const batch of evalBatches(FMNIST, 'val', 'normalize(fashion-mnist)', 4, { start: 10, end: 20 })) {
    sizes.push(batch.n);
    assert.equal(batch.images.length, batch.n * 28 * 28);
    labels.push(...batch.labels);
  }
  assert.deepEqual(sizes, [4, 4, 2]);
  const direct = await BatchLoader.open(FMNIST, 'val', 'normalize(fashion-mnist)', { threads: 0, seed: 0, skipCorrupt: false });
  assert.deepEqual(labels, [
    ...(
      await load(
        direct,
        Array.from({ length: 10 }, (_, i) => 10 + i),
      )
    ).labels,
  ]);
  await direct.close();
  await assert.rejects(async () => {
    for await (const _ of evalBatches(FMNIST, 'val', 'normalize(fashion-mnist)', 4, { start: 9_999, end: 10_001 })) void _;
  }, /range \[9999, 10001\) is outside the val split of 10000/);
});

/** An image folder with two classes of two PNGs each, of different sizes, and optionally a corrupt file. */
async function imageFolder(corrupt: boolean): Promise<string> {
  const root = mkdtempSync(join(tmpdir(), 'vit-dist-loader-'));
  for (const split of ['train', 'val']) {
    for (const [c, name] of ['ants', 'bees'].entries()) {
      const dir = join(root, split, name);
      mkdirSync(dir, { recursive: true });
      for (let i = 0; i < 2; i++) {
        const [width, height] = [20 + 7 * i, 16 + 5 * c];
        const pixels = Buffer.alloc(width * height * 3, 40 + 100 * c + 20 * i);
        await sharp(pixels, { raw: { width, height, channels: 3 } })
          .png()
          .toFile(join(dir, `img${i}.png`));
      }
    }
  }
  if (corrupt) writeFileSync(join(root, 'train', 'ants', 'img0.png'), 'not a png at all');
  return root;
}

const DEIT = 'random_resized_crop(224)|flip_lr|rand_augment(rand-m9-mstd0.5-inc1)|normalize(imagenet)|random_erasing(0.25)';

/** An image folder of textured JPEGs of varied sizes around ImageNet's (the DeiT crop both shrinks and enlarges boxes of them). */
async function jpegFolder(count: number): Promise<string> {
  const root = mkdtempSync(join(tmpdir(), 'vit-dist-loader-jpeg-'));
  for (let i = 0; i < count; i++) {
    const dir = join(root, 'train', `c${i % 2}`);
    mkdirSync(dir, { recursive: true });
    const [height, width] = [180 + 37 * i, 320 - 23 * i];
    const pixels = Buffer.alloc(height * width * 3);
    for (let p = 0; p < pixels.length; p++) pixels[p] = (Math.imul(p, 2654435761) >>> 27) + 60 * Math.sin(p / (3 * width)) + 100;
    await sharp(pixels, { raw: { width, height, channels: 3 } })
      .jpeg({ quality: 90 })
      .toFile(join(dir, `img${i}.jpg`));
  }
  return root;
}

test("DeiT's pipeline on a JPEG folder (the crop done while decoding): the same pixels inline and in any thread count", {
  timeout: 60_000,
}, async () => {
  const root = await jpegFolder(6);
  const spec: DataSpec = { format: 'imagefolder', path: root, holdout: 0, holdoutSeed: 0 };
  const loaders = await Promise.all(
    [0, 1, 3].map((threads) => BatchLoader.open(spec, 'train', DEIT, { threads, seed: 11, skipCorrupt: false })),
  );
  try {
    const [inline] = loaders;
    assert.deepEqual(inline!.shape, { height: 224, width: 224, channels: 3 });
    const batch = [5, 0, 3, 3, 1, 4, 2];
    const reference = await load(inline!, batch, 2, [0, 0, 0, 1, 0, 0, 2]);
    for (const loader of loaders.slice(1)) assert.deepEqual(await load(loader, batch, 2, [0, 0, 0, 1, 0, 0, 2]), reference);
    const size = inline!.sampleSize;
    const alone = await load(inline!, [4], 2);
    assert.deepEqual(alone.images, reference.images.subarray(5 * size, 6 * size), 'a sample does not depend on its batch');
    assert.notDeepEqual(
      reference.images.subarray(2 * size, 3 * size),
      reference.images.subarray(3 * size, 4 * size),
      'another repeat, another crop',
    );
    assert.ok(reference.images.every(Number.isFinite));
  } finally {
    await Promise.all(loaders.map((loader) => loader.close()));
    rmSync(root, { recursive: true, force: true });
  }
});

test('the crop done while decoding makes nearly the whole-image pixels: the same box, the same flip', async () => {
  const root = await jpegFolder(6);
  const text = 'random_resized_crop(224)|flip_lr|normalize(imagenet)';
  const loader = await BatchLoader.open({ format: 'imagefolder', path: root, holdout: 0, holdoutSeed: 0 }, 'train', text, {
    threads: 0,
    seed: 5,
    skipCorrupt: false,
  });
  try {
    const indices = [0, 1, 2, 3, 4, 5];
    const { images } = await load(loader, indices, 1);
    const folder = openImageFolder(root, 'train');
    const pipeline = parsePipeline(text, { channels: 3 });
    const whole = new Float32Array(loader.sampleSize);
    for (const index of indices) {
      pipeline.apply(await folder.read(index), sampleRng(5, 1, index, 0), whole, 0);
      const regional = images.subarray(index * loader.sampleSize, (index + 1) * loader.sampleSize);
      // libvips' shrinking rounds a little differently from PIL's: a level (0.017 here) on average at most.
      const meanDiff = regional.reduce((sum, v, i) => sum + Math.abs(v - whole[i]!), 0) / whole.length;
      assert.ok(meanDiff < 0.017, `sample ${index}: mean difference ${meanDiff}`);
    }
  } finally {
    await loader.close();
    rmSync(root, { recursive: true, force: true });
  }
});

test('images of varying size need a pipeline that makes one size', async () => {
  const root = await imageFolder(false);
  try {
    const spec: DataSpec = { format: 'imagefolder', path: root, holdout: 0, holdoutSeed: 0 };
    await assert.rejects(
      BatchLoader.open(spec, 'train', 'normalize(imagenet)', { threads: 0, seed: 0, skipCorrupt: false }),
      /keeps each image's own size, but the images' sizes vary/,
    );
    const loader = await BatchLoader.open(spec, 'train', 'resize(12,12)|normalize(imagenet)', { threads: 0, seed: 0, skipCorrupt: false });
    assert.deepEqual(loader.shape, { height: 12, width: 12, channels: 3 });
    assert.deepEqual([...(await load(loader, [0, 1, 2, 3])).labels], [0, 0, 1, 1]);
    await loader.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a corrupt image fails the batch, naming the file; with skipCorrupt its successor takes its place and it is reported', async () => {
  const root = await imageFolder(true);
  try {
    const spec: DataSpec = { format: 'imagefolder', path: root, holdout: 0, holdoutSeed: 0 };
    const strict = await BatchLoader.open(spec, 'train', 'resize(8,8)|normalize(imagenet)', { threads: 0, seed: 0, skipCorrupt: false });
    await assert.rejects(load(strict, [0]), /ants[/\\]img0\.png/);
    await strict.close();
    const lenient = await BatchLoader.open(spec, 'train', 'resize(8,8)|normalize(imagenet)', { threads: 1, seed: 0, skipCorrupt: true });
    const images = new Float32Array(2 * lenient.sampleSize);
    const labels = new Int32Array(2);
    const report = await lenient.load(request([0, 1]), images, labels);
    assert.equal(report.skipped.length, 1);
    assert.match(report.skipped[0]!, /ants[/\\]img0\.png/);
    assert.deepEqual(images.subarray(0, lenient.sampleSize), images.subarray(lenient.sampleSize));
    await lenient.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
