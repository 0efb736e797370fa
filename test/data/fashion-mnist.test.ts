import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_FASHION_MNIST_DIR, readIdxSplit } from '../../src/data/fashion-mnist.ts';

const haveData = existsSync(join(DEFAULT_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'));
const skipReason = haveData ? false : `Fashion-MNIST is not installed at ${DEFAULT_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)`;

test('reads the real test split as stored', { skip: skipReason }, () => {
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
  const header = (shape: number[]): Buffer => {
    const b = Buffer.alloc(4 + 4 * shape.length);
    b.writeUInt8(8, 2);
    b.writeUInt8(shape.length, 3);
    shape.forEach((d, i) => b.writeUInt32BE(d, 4 + 4 * i));
    return b;
  };
  writeFileSync(join(dir, 't10k-images-idx3-ubyte'), Buffer.concat([header([2, 2, 2]), Buffer.alloc(8)]));
  writeFileSync(join(dir, 't10k-labels-idx1-ubyte'), Buffer.concat([header([3]), Buffer.alloc(3)]));
  assert.throws(() => readIdxSplit(dir, 'test'), /holds 3 labels but .* holds 2 images/);
});
