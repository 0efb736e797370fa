import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES } from '../../src/data/fashion-mnist.ts';
import { readIdx } from '../../src/data/idx.ts';
import { idxSplitExists, openIdxSource } from '../../src/data/idx-source.ts';
import { idxFile } from './helpers.ts';
import { needsData } from '../e2e/cluster.ts';

/** An MNIST-family directory of 3x2 images: train has labels `trainLabels`, t10k `valLabels`; pixel p of image i is 10 * i + p. */
function makeIdxDir(trainLabels: number[], valLabels: number[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'idx-source-'));
  const images = (n: number): number[] => Array.from({ length: n * 6 }, (_, k) => 10 * Math.floor(k / 6) + (k % 6));
  writeFileSync(join(dir, 'train-images-idx3-ubyte.gz'), gzipSync(idxFile([trainLabels.length, 3, 2], images(trainLabels.length))));
  writeFileSync(join(dir, 'train-labels-idx1-ubyte'), idxFile([trainLabels.length], trainLabels));
  writeFileSync(join(dir, 't10k-images-idx3-ubyte'), idxFile([valLabels.length, 3, 2], images(valLabels.length)));
  writeFileSync(join(dir, 't10k-labels-idx1-ubyte.gz'), gzipSync(idxFile([valLabels.length], valLabels)));
  return dir;
}

test('real Fashion-MNIST: both splits, the class names, and pixels exactly as stored', { skip: needsData }, async () => {
  const train = openIdxSource(DEFAULT_FASHION_MNIST_DIR, 'train', 'fashion-mnist');
  const val = openIdxSource(DEFAULT_FASHION_MNIST_DIR, 'val', 'fashion-mnist');
  assert.equal(train.size, 60000);
  assert.equal(val.size, 10000);
  assert.deepEqual(val.classes, [...FASHION_MNIST_CLASSES]);
  assert.deepEqual(val.fixedSize, { height: 28, width: 28 });
  assert.equal(val.channels, 1);
  // The first two test images of Fashion-MNIST are an ankle boot and a pullover.
  assert.deepEqual([val.label(0), val.label(1)], [9, 2]);
  const raw = readIdx(join(DEFAULT_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz')).data;
  const image = await val.read(1);
  assert.deepEqual({ height: image.height, width: image.width, channels: image.channels }, { height: 28, width: 28, channels: 1 });
  assert.deepEqual(image.data, new Uint8Array(raw.subarray(784, 2 * 784)));
  assert.match(val.describe(1), /t10k-images-idx3-ubyte\.gz image 1$/);
  // As generic idx, the same files number their classes from the training labels.
  assert.deepEqual(openIdxSource(DEFAULT_FASHION_MNIST_DIR, 'val', 'idx').classes, ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
});

test('generic idx: pixels, labels and class names "0".."K-1" from the training labels', async () => {
  const dir = makeIdxDir([0, 3, 1], [2, 0]);
  const train = openIdxSource(dir, 'train', 'idx');
  assert.deepEqual(train.classes, ['0', '1', '2', '3']);
  assert.deepEqual(
    [0, 1, 2].map((i) => train.label(i)),
    [0, 3, 1],
  );
  const image = await train.read(2);
  assert.deepEqual([...image.data], [20, 21, 22, 23, 24, 25]);
  assert.deepEqual({ height: image.height, width: image.width }, { height: 3, width: 2 });
  image.data[0] = 99;
  assert.equal((await train.read(2)).data[0], 20, 'read returns a copy');
  const val = openIdxSource(dir, 'val', 'idx');
  assert.deepEqual(val.classes, train.classes);
  assert.deepEqual([val.label(0), val.label(1)], [2, 0]);
  assert.deepEqual([...(await val.read(1)).data], [10, 11, 12, 13, 14, 15]);
  assert.throws(() => val.label(2), /sample index 2 is outside 0..1 of .*t10k-images-idx3-ubyte/);
  await assert.rejects(val.read(5), /sample index 5 is outside/);
  assert.ok(idxSplitExists(dir, 'train') && idxSplitExists(dir, 'val'));
  assert.ok(!idxSplitExists(join(dir, 'nothing'), 'val'));
});

test('a label outside the classes is an error naming the labels file', () => {
  const dir = makeIdxDir([0, 1], [2]);
  assert.throws(
    () => openIdxSource(dir, 'val', 'idx'),
    /t10k-labels-idx1-ubyte\.gz: label 2 at index 0 is outside 0..1 \(the classes of idx\)/,
  );
  const fashion = makeIdxDir([0, 10], [0]);
  assert.throws(() => openIdxSource(fashion, 'train', 'fashion-mnist'), /train-labels-idx1-ubyte: label 10 at index 1 is outside 0..9/);
});

test('missing files are errors naming the path', () => {
  assert.throws(
    () => openIdxSource('/nonexistent/mnist', 'train', 'idx'),
    /\/nonexistent\/mnist\/train-images-idx3-ubyte\.gz: file not found .*an idx data set holds/,
  );
  const dir = makeIdxDir([0], [0]);
  writeFileSync(join(dir, 'train-labels-idx1-ubyte'), idxFile([2], [0, 1]));
  assert.throws(() => openIdxSource(dir, 'train', 'idx'), /holds 2 labels but .* holds 1 images/);
});
