import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_FASHION_MNIST_DIR, readIdxSplit } from '../../src/data/fashion-mnist.ts';
import { idxFile } from './helpers.ts';
import { needsData } from '../e2e/cluster.ts';

test('reads the real test split as stored', { skip: needsData }, () => {
  const split = readIdxSplit(DEFAULT_FASHION_MNIST_DIR, 'test');
  assert.deepEqual([split.n, split.height, split.width], [10000, 28, 28]);
  assert.equal(split.images.length, 10000 * 28 * 28);
  // The first two test images of Fashion-MNIST are an ankle boot and a pullover.
  assert.deepEqual([...split.labels.subarray(0, 2)], [9, 2]);
});

test('a missing dataset directory is an error naming the path', () => {
  assert.throws(() => readIdxSplit('/nonexistent/fmnist', 'train'), /\/nonexistent\/fmnist\/train-images-idx3-ubyte.gz: file not found/);
});

test('images and labels that disagree in count are an error', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fmnist-'));
  writeFileSync(join(dir, 't10k-images-idx3-ubyte'), idxFile([2, 2, 2], new Uint8Array(8)));
  writeFileSync(join(dir, 't10k-labels-idx1-ubyte'), idxFile([3], new Uint8Array(3)));
  assert.throws(() => readIdxSplit(dir, 'test'), /holds 3 labels but .* holds 2 images/);
});
