import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_MEAN, FASHION_MNIST_STD, loadFashionMnist } from '../../src/data/fashion-mnist.ts';

const haveData = existsSync(join(DEFAULT_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'));
const skipReason = haveData ? false : `Fashion-MNIST is not installed at ${DEFAULT_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)`;

test('loads the real test split and normalizes the requested samples', { skip: skipReason }, () => {
  const test = loadFashionMnist(DEFAULT_FASHION_MNIST_DIR, 'test');
  assert.equal(test.size, 10000);
  assert.equal(test.height, 28);
  assert.equal(test.numClasses, 10);
  const out = new Float32Array(2 * 28 * 28);
  const labels = new Int32Array(2);
  test.gather([0, 1], out, labels);
  // The first two test images of Fashion-MNIST are an ankle boot and a pullover.
  assert.deepEqual([...labels], [9, 2]);
  const min = Math.min(...out);
  assert.ok(Math.abs(min - -FASHION_MNIST_MEAN / FASHION_MNIST_STD) < 1e-6, 'background pixels map to -mean/std');
  assert.throws(() => test.gather([10000], out, labels), /sample index 10000 outside/);
});

test('a missing dataset directory is an error naming the path', () => {
  assert.throws(() => loadFashionMnist('/nonexistent/fmnist', 'train'), /\/nonexistent\/fmnist\/train-images-idx3-ubyte.gz: file not found/);
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
  assert.throws(() => loadFashionMnist(dir, 'test'), /holds 3 labels but .* holds 2 images/);
});
