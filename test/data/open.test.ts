import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import sharp from 'sharp';
import { DEFAULT_FASHION_MNIST_DIR } from '../../src/data/fashion-mnist.ts';
import { openImageSource, storedSplitExists, type DataSpec } from '../../src/data/open.ts';
import type { DataFormat } from '../../src/data/source.ts';
import { packSplit } from '../../src/data/packed.ts';
import type { ImageSource } from '../../src/data/source.ts';
import { idxFile } from './helpers.ts';
import { needsData } from '../e2e/cluster.ts';

function spec(format: DataFormat, path: string, holdout = 0, holdoutSeed = 0): DataSpec {
  return { format, path, holdout, holdoutSeed };
}

/** An idx directory of `n` 2x2 training images (image i all pixels i, label i % 4) and 2 test images. */
function makeIdxDir(n: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'open-idx-'));
  writeFileSync(
    join(dir, 'train-images-idx3-ubyte'),
    idxFile(
      [n, 2, 2],
      Array.from({ length: 4 * n }, (_, k) => Math.floor(k / 4)),
    ),
  );
  writeFileSync(
    join(dir, 'train-labels-idx1-ubyte'),
    idxFile(
      [n],
      Array.from({ length: n }, (_, i) => i % 4),
    ),
  );
  writeFileSync(join(dir, 't10k-images-idx3-ubyte'), idxFile([2, 2, 2], [7, 7, 7, 7, 8, 8, 8, 8]));
  writeFileSync(join(dir, 't10k-labels-idx1-ubyte'), idxFile([2], [3, 1]));
  return dir;
}

async function firstPixels(source: ImageSource): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < source.size; i++) out.push((await source.read(i)).data[0]!);
  return out;
}

test('real Fashion-MNIST: train and holdout split the training files; val is the t10k files', { skip: needsData }, async () => {
  const fmnist = spec('fashion-mnist', DEFAULT_FASHION_MNIST_DIR, 0.01, 5);
  const train = await openImageSource(fmnist, 'train');
  const holdout = await openImageSource(fmnist, 'holdout');
  assert.equal(holdout.size, 600);
  assert.equal(train.size, 59400);
  const held = new Set(Array.from({ length: holdout.size }, (_, i) => holdout.describe(i)));
  assert.equal(held.size, 600);
  for (let i = 0; i < train.size; i++) assert.ok(!held.has(train.describe(i)), `${train.describe(i)} is both trained on and held out`);
  assert.equal((await openImageSource(fmnist, 'val')).size, 10000);
  assert.equal((await openImageSource({ ...fmnist, holdout: 0 }, 'train')).size, 60000);
});

test('the holdout is fixed by the holdout seed: the same images from any copy of the data', async () => {
  const dir = makeIdxDir(200);
  const packedDir = mkdtempSync(join(tmpdir(), 'open-packed-'));
  await packSplit(await openImageSource(spec('idx', dir), 'train'), packedDir, 'train', { size: 8 });
  const fromIdx = await firstPixels(await openImageSource(spec('idx', dir, 0.05, 11), 'holdout'));
  const fromPack = await firstPixels(await openImageSource(spec('packed', packedDir, 0.05, 11), 'holdout'));
  assert.equal(fromIdx.length, 10);
  assert.deepEqual(fromPack, fromIdx);
  assert.notDeepEqual(
    await firstPixels(await openImageSource(spec('idx', dir, 0.05, 12), 'holdout')),
    fromIdx,
    'another holdout seed holds out other images',
  );
  const train = await firstPixels(await openImageSource(spec('idx', dir, 0.05, 11), 'train'));
  assert.equal(train.length, 190);
  assert.deepEqual(
    [...train, ...fromIdx].sort((a, b) => a - b),
    Array.from({ length: 200 }, (_, i) => i),
    'train and holdout partition the training files',
  );
  const val = await openImageSource(spec('idx', dir, 0.05, 11), 'val');
  assert.deepEqual(await firstPixels(val), [7, 8], 'val is the t10k files, untouched by the holdout');
});

test('every format opens through the same entry point', async () => {
  const root = mkdtempSync(join(tmpdir(), 'open-formats-'));
  // CIFAR-10: one record per batch, label = batch number - 1.
  const cifar = join(root, 'cifar', 'cifar-10-batches-bin');
  mkdirSync(cifar, { recursive: true });
  for (let b = 1; b <= 5; b++) writeFileSync(join(cifar, `data_batch_${b}.bin`), Buffer.concat([Buffer.of(b - 1), Buffer.alloc(3072, b)]));
  writeFileSync(join(cifar, 'test_batch.bin'), Buffer.concat([Buffer.of(9), Buffer.alloc(3072, 9)]));
  writeFileSync(join(cifar, 'batches.meta.txt'), 'c0\nc1\nc2\nc3\nc4\nc5\nc6\nc7\nc8\nc9\n');
  const cifarTrain = await openImageSource(spec('cifar10', join(root, 'cifar'), 0.2, 1), 'train');
  assert.equal(cifarTrain.size, 4);
  assert.equal((await openImageSource(spec('cifar10', join(root, 'cifar'), 0.2, 1), 'holdout')).size, 1);
  assert.equal((await openImageSource(spec('cifar10', join(root, 'cifar')), 'val')).label(0), 9);
  // CIFAR-100 and image folders.
  const c100 = join(root, 'c100');
  mkdirSync(c100);
  writeFileSync(join(c100, 'train.bin'), Buffer.concat([Buffer.of(1, 2), Buffer.alloc(3072)]));
  writeFileSync(join(c100, 'fine_label_names.txt'), Array.from({ length: 100 }, (_, k) => `f${k}`).join('\n'));
  assert.equal((await openImageSource(spec('cifar100', c100), 'train')).label(0), 2);
  const folder = join(root, 'folder');
  for (const name of ['train/x/1.png', 'train/y/2.png', 'val/y/3.png']) {
    mkdirSync(dirname(join(folder, name)), { recursive: true });
    writeFileSync(
      join(folder, name),
      await sharp({ create: { width: 3, height: 2, channels: 3, background: '#102030' } })
        .png()
        .toBuffer(),
    );
  }
  const folderVal = await openImageSource(spec('imagefolder', folder), 'val');
  assert.deepEqual([folderVal.classes, folderVal.label(0)], [['x', 'y'], 1]);
  assert.deepEqual([...(await folderVal.read(0)).data.subarray(0, 3)], [0x10, 0x20, 0x30]);

  assert.ok(storedSplitExists('cifar10', join(root, 'cifar'), 'val'));
  assert.ok(!storedSplitExists('cifar100', c100, 'val'), 'no test.bin');
  assert.ok(storedSplitExists('imagefolder', folder, 'val'));
  assert.ok(!storedSplitExists('packed', folder, 'train'));
});

test('errors name the path', async () => {
  const dir = makeIdxDir(10);
  await assert.rejects(openImageSource(spec('idx', dir), 'holdout'), (err: Error) =>
    err.message.startsWith(`${dir}: the holdout split is empty`),
  );
  await assert.rejects(openImageSource(spec('idx', dir, 1), 'train'), (err: Error) =>
    err.message.startsWith(`${dir}: holdout fraction must be in [0, 1), got 1`),
  );
  await assert.rejects(openImageSource(spec('idx', dir, 0.95), 'train'), (err: Error) =>
    err.message.startsWith(`${dir}: holdout fraction 0.95 of 10 training images leaves none to train on`),
  );
  await assert.rejects(
    openImageSource(spec('imagefolder', '/nonexistent/imagenet'), 'val'),
    /^InputError: \/nonexistent\/imagenet\/train: no train\/ folder/,
  );
  await assert.rejects(
    openImageSource(spec('packed', '/nonexistent/shards'), 'train'),
    /\/nonexistent\/shards\/train\.index: no packed train split here/,
  );
  await assert.rejects(openImageSource(spec('cifar100', dir), 'train'), new RegExp(`^InputError: ${dir}: not a cifar100 binary data set`));
  await assert.rejects(
    openImageSource({ ...spec('idx', dir), format: 'jpeg-zip' as DataFormat }, 'val'),
    new RegExp(`^InputError: ${dir}: unknown data format "jpeg-zip"`),
  );
});
