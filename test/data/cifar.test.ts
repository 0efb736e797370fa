import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cifarSplitExists, openCifarSource } from '../../src/data/cifar.ts';

const SIDE = 32;
const PLANE = SIDE * SIDE;
const CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'];

/** The stored value of channel c at pixel p of image `seed`: distinct per plane, so a planar/interleaved mix-up shows. */
function pixel(seed: number, c: number, p: number): number {
  return (seed * 7 + c * 85 + p * 3) % 256;
}

/** One record as the binary CIFAR files store it: label byte(s), then the red, green and blue planes. */
function record(labels: number[], seed: number): Buffer {
  const out = Buffer.alloc(labels.length + 3 * PLANE);
  labels.forEach((l, i) => {
    out[i] = l;
  });
  for (let c = 0; c < 3; c++) for (let p = 0; p < PLANE; p++) out[labels.length + c * PLANE + p] = pixel(seed, c, p);
  return out;
}

/** CIFAR-10 as extracted from cifar-10-binary.tar.gz: batch b holds two images, labels b and b + 5 (seeds 10b, 10b+1). */
function makeCifar10(): string {
  const root = mkdtempSync(join(tmpdir(), 'cifar10-'));
  const dir = join(root, 'cifar-10-batches-bin');
  mkdirSync(dir);
  for (let b = 1; b <= 5; b++)
    writeFileSync(join(dir, `data_batch_${b}.bin`), Buffer.concat([record([b - 1], 10 * b), record([b + 4], 10 * b + 1)]));
  writeFileSync(join(dir, 'test_batch.bin'), Buffer.concat([record([3], 100), record([9], 101), record([0], 102)]));
  writeFileSync(join(dir, 'batches.meta.txt'), `${CIFAR10_CLASSES.join('\n')}\n\n`);
  return root;
}

/** CIFAR-100 as extracted from cifar-100-binary.tar.gz; each record's coarse label differs from its fine one. */
function makeCifar100(): string {
  const root = mkdtempSync(join(tmpdir(), 'cifar100-'));
  const dir = join(root, 'cifar-100-binary');
  mkdirSync(dir);
  writeFileSync(join(dir, 'train.bin'), Buffer.concat([record([4, 99], 1), record([19, 0], 2)]));
  writeFileSync(join(dir, 'test.bin'), record([7, 42], 3));
  writeFileSync(join(dir, 'fine_label_names.txt'), `${Array.from({ length: 100 }, (_, k) => `fine${k}`).join('\n')}\n`);
  writeFileSync(join(dir, 'coarse_label_names.txt'), `${Array.from({ length: 20 }, (_, k) => `coarse${k}`).join('\n')}\n`);
  return root;
}

function assertImage(data: Uint8Array, seed: number): void {
  assert.equal(data.length, 3 * PLANE);
  for (let p = 0; p < PLANE; p++) {
    for (let c = 0; c < 3; c++) {
      if (data[3 * p + c] !== pixel(seed, c, p)) assert.fail(`pixel ${p} channel ${c}: ${data[3 * p + c]}, expected ${pixel(seed, c, p)}`);
    }
  }
}

test('CIFAR-10: labels in batch order, class names, and the planar records read as HWC', async () => {
  const root = makeCifar10();
  const train = openCifarSource(root, 'train', 'cifar10');
  assert.equal(train.size, 10);
  assert.deepEqual(train.classes, CIFAR10_CLASSES);
  assert.deepEqual(train.fixedSize, { height: 32, width: 32 });
  assert.equal(train.channels, 3);
  assert.deepEqual(
    Array.from({ length: 10 }, (_, i) => train.label(i)),
    [0, 5, 1, 6, 2, 7, 3, 8, 4, 9],
  );
  const image = await train.read(5); // data_batch_3.bin, record 1
  assert.deepEqual({ height: image.height, width: image.width, channels: image.channels }, { height: 32, width: 32, channels: 3 });
  assertImage(image.data, 31);
  assert.match(train.describe(5), /cifar-10-batches-bin\/data_batch_3\.bin record 1$/);
  // Top-left pixel spelled out: red, green and blue of pixel 0 come from the three planes.
  assert.deepEqual([...(await train.read(0)).data.subarray(0, 3)], [pixel(10, 0, 0), pixel(10, 1, 0), pixel(10, 2, 0)]);

  // The extracted folder itself is accepted as well as its parent.
  const val = openCifarSource(join(root, 'cifar-10-batches-bin'), 'val', 'cifar10');
  assert.equal(val.size, 3);
  assert.deepEqual(
    [0, 1, 2].map((i) => val.label(i)),
    [3, 9, 0],
  );
  assertImage((await val.read(2)).data, 102);
  await assert.rejects(val.read(3), /sample index 3 is outside 0..2 of the val split/);
  assert.ok(cifarSplitExists(root, 'val', 'cifar10'));
  assert.ok(!cifarSplitExists(root, 'val', 'cifar100'));
});

test('CIFAR-100: the fine label, the fine class names', async () => {
  const root = makeCifar100();
  const train = openCifarSource(root, 'train', 'cifar100');
  assert.equal(train.size, 2);
  assert.equal(train.classes.length, 100);
  assert.equal(train.classes[99], 'fine99');
  assert.deepEqual([train.label(0), train.label(1)], [99, 0]);
  assertImage((await train.read(1)).data, 2);
  const val = openCifarSource(root, 'val', 'cifar100');
  assert.equal(val.label(0), 42);
  assertImage((await val.read(0)).data, 3);
});

test('a file that is not a whole number of records is an error naming it', () => {
  const root = makeCifar10();
  const bad = join(root, 'cifar-10-batches-bin', 'data_batch_4.bin');
  writeFileSync(bad, Buffer.concat([record([1], 0), Buffer.alloc(100)]));
  assert.throws(
    () => openCifarSource(root, 'train', 'cifar10'),
    (err: Error) => err.message.startsWith(`${bad}: is 3173 bytes, not a whole, non-zero number of cifar10 records of 3073 bytes`),
  );
  // CIFAR-10 files read as CIFAR-100 (records one byte shorter) are caught the same way.
  const mixed = makeCifar100();
  writeFileSync(join(mixed, 'cifar-100-binary', 'test.bin'), Buffer.concat([record([1], 0), record([2], 0)]));
  assert.throws(
    () => openCifarSource(mixed, 'val', 'cifar100'),
    /test\.bin: is 6146 bytes, not a whole, non-zero number of cifar100 records of 3074 bytes/,
  );
  writeFileSync(join(mixed, 'cifar-100-binary', 'test.bin'), '');
  assert.throws(() => openCifarSource(mixed, 'val', 'cifar100'), /test\.bin: is 0 bytes/);
});

test('other bad inputs: not a CIFAR folder, a missing batch, wrong class names, a label out of range', () => {
  assert.throws(
    () => openCifarSource('/nonexistent/cifar', 'train', 'cifar10'),
    /\/nonexistent\/cifar: not a cifar10 binary data set: neither it nor \/nonexistent\/cifar\/cifar-10-batches-bin holds batches\.meta\.txt/,
  );
  const root = makeCifar10();
  const dir = join(root, 'cifar-10-batches-bin');
  unlinkSync(join(dir, 'data_batch_2.bin'));
  assert.throws(() => openCifarSource(root, 'train', 'cifar10'), /data_batch_2\.bin: file not found/);
  writeFileSync(join(dir, 'data_batch_2.bin'), record([0], 0));
  writeFileSync(join(dir, 'data_batch_5.bin'), record([12], 0));
  assert.throws(() => openCifarSource(root, 'train', 'cifar10'), /data_batch_5\.bin: record 0 has label 12, outside 0..9/);
  writeFileSync(join(dir, 'batches.meta.txt'), 'cat\ndog\n');
  assert.throws(() => openCifarSource(root, 'val', 'cifar10'), /batches\.meta\.txt: holds 2 class names, expected 10/);
  const other = makeCifar100();
  writeFileSync(join(other, 'cifar-100-binary', 'train.bin'), '');
  assert.throws(() => openCifarSource(other, 'train', 'cifar100'), /train\.bin: is 0 bytes/);
});
