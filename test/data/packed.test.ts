import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import sharp from 'sharp';
import { CorruptImageError, openImageFolder, resizeRegion } from '../../src/data/image-folder.ts';
import { openPacked, packedImageSize, packedSplitExists, packSplit, PACK_FORMAT_VERSION } from '../../src/data/packed.ts';
import type { ImageRegion, ImageSource } from '../../src/data/source.ts';

function noise(length: number, seed: number): Uint8Array {
  const data = new Uint8Array(length);
  let s = seed;
  for (let i = 0; i < length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    data[i] = s >>> 24;
  }
  return data;
}

/** Image folder: train/a (40x60 and 10x30 PNGs), train/b (50x20 PNG), val/b (a 16x16 JPEG). */
async function makeFolder(): Promise<{ root: string; files: string[] }> {
  const root = mkdtempSync(join(tmpdir(), 'packed-src-'));
  const specs = [
    ['train/a/1.png', 40, 60],
    ['train/a/2.png', 10, 30],
    ['train/b/3.png', 50, 20],
    ['val/b/4.jpg', 16, 16],
  ] as const;
  for (const [name, height, width] of specs) {
    const path = join(root, name);
    mkdirSync(dirname(path), { recursive: true });
    const image = sharp(noise(height * width * 3, height * width), { raw: { height, width, channels: 3 } });
    writeFileSync(path, await (name.endsWith('.png') ? image.png() : image.jpeg()).toBuffer());
  }
  return { root, files: specs.map(([name]) => join(root, name)) };
}

/** An in-memory source of grayscale images of the given sizes, labels i % 2. */
function graySource(sizes: [number, number][]): ImageSource {
  return {
    size: sizes.length,
    classes: ['even', 'odd'],
    channels: 1,
    fixedSize: null,
    label: (i) => i % 2,
    read: async (i) => ({ data: noise(sizes[i]![0] * sizes[i]![1], i + 1), height: sizes[i]![0], width: sizes[i]![1], channels: 1 }),
    describe: (i) => `gray ${i}`,
  };
}

test('the stored size: shorter side brought down to size, longer side truncated as torchvision, never upscaled', () => {
  assert.deepEqual(packedImageSize(375, 500, 256), { height: 256, width: 341 });
  assert.deepEqual(packedImageSize(500, 375, 256), { height: 341, width: 256 });
  assert.deepEqual(packedImageSize(300, 300, 256), { height: 256, width: 256 });
  assert.deepEqual(packedImageSize(200, 900, 256), { height: 200, width: 900 });
  assert.deepEqual(packedImageSize(256, 1000, 256), { height: 256, width: 1000 });
});

test('folder -> packed keeps classes and labels and stores the pixels sharp resizes to', async () => {
  const { root, files } = await makeFolder();
  const out = join(mkdtempSync(join(tmpdir(), 'packed-')), 'shards');
  const train = openImageFolder(root, 'train');
  const progress: number[] = [];
  const summary = await packSplit(train, out, 'train', { size: 16, onProgress: (done) => progress.push(done) });
  assert.deepEqual(progress, [1, 2, 3]);
  // 16x24, 10x30 (kept: its shorter side is below 16) and 40x16 RGB.
  assert.deepEqual(
    { ...summary, shards: [...summary.shards] },
    { split: 'train', images: 3, skipped: 0, bytes: 3 * (16 * 24 + 10 * 30 + 40 * 16), shards: ['train-00000.bin'] },
  );
  const packed = openPacked(out, 'train');
  assert.equal(packed.size, 3);
  assert.deepEqual(packed.classes, ['a', 'b']);
  assert.equal(packed.channels, 3);
  assert.equal(packed.fixedSize, null);
  assert.deepEqual(
    [0, 1, 2].map((i) => packed.label(i)),
    [0, 0, 1],
  );
  const expectedSizes = [
    [16, 24],
    [10, 30],
    [40, 16],
  ];
  for (let i = 0; i < 3; i++) {
    const [height, width] = expectedSizes[i]!;
    const image = await packed.read(i);
    assert.deepEqual({ height: image.height, width: image.width, channels: image.channels }, { height, width, channels: 3 });
    // Reference: sharp straight from the file, Lanczos-3 to the same size.
    const reference = await sharp(files[i]!).resize({ height, width, fit: 'fill', kernel: 'lanczos3' }).raw().toBuffer();
    assert.deepEqual(image.data, new Uint8Array(reference), `image ${i}`);
  }
  assert.match(packed.describe(2), /shards\/train-00000\.bin record 2 at byte 2052$/);
  await assert.rejects(packed.read(3), /sample index 3 is outside 0..2 of the packed train split/);
  packed.close();

  // The val split goes next to it; the JPEG is stored as decoded (16x16 is not above the size).
  await packSplit(openImageFolder(root, 'val'), out, 'val', { size: 16 });
  const val = openPacked(out, 'val');
  assert.deepEqual(val.fixedSize, { height: 16, width: 16 });
  assert.equal(val.label(0), 1);
  assert.deepEqual((await val.read(0)).data, (await openImageFolder(root, 'val').read(0)).data);
  assert.deepEqual(readdirSync(out).sort(), ['train-00000.bin', 'train.index', 'val-00000.bin', 'val.index']);
  val.close();
});

test('grayscale stays one channel; shards roll over at the limit', async () => {
  const out = mkdtempSync(join(tmpdir(), 'packed-'));
  const sizes: [number, number][] = [
    [28, 28],
    [28, 28],
    [56, 42],
    [28, 28],
  ];
  const source = graySource(sizes);
  const summary = await packSplit(source, out, 'train', { size: 28, shardBytes: 1600, concurrency: 2 });
  // 784, 784 (1568 <= 1600), then 1176 (would pass the limit: new shard), then 784 (new shard).
  assert.deepEqual(summary.shards, ['train-00000.bin', 'train-00001.bin', 'train-00002.bin']);
  const packed = openPacked(out, 'train');
  assert.equal(packed.channels, 1);
  assert.equal(packed.fixedSize, null, 'one image is 37x28');
  for (const i of [0, 1, 3]) assert.deepEqual((await packed.read(i)).data, await source.read(i).then((r) => r.data));
  const resized = await packed.read(2);
  assert.deepEqual({ height: resized.height, width: resized.width, channels: resized.channels }, { height: 37, width: 28, channels: 1 });
  const reference = await sharp(noise(56 * 42, 3), { raw: { height: 56, width: 42, channels: 1 } })
    .resize({ height: 37, width: 28, fit: 'fill', kernel: 'lanczos3' })
    .toColourspace('b-w')
    .raw()
    .toBuffer();
  assert.deepEqual(resized.data, new Uint8Array(reference));
  assert.deepEqual(
    [0, 1, 2, 3].map((i) => packed.label(i)),
    [0, 1, 0, 1],
  );
  packed.close();
  // Packing again replaces the whole split: no shard of the earlier pack is left.
  await packSplit(source, out, 'train', { size: 28 });
  assert.deepEqual(readdirSync(out).sort(), ['train-00000.bin', 'train.index']);
});

test("readRegion: the record cropped and resized as an image folder's region; a pack of unresized images gives the folder's pixels", async () => {
  const { root } = await makeFolder();
  const out = mkdtempSync(join(tmpdir(), 'packed-'));
  await packSplit(openImageFolder(root, 'train'), out, 'train', { size: 64 });
  const packed = openPacked(out, 'train');
  const folder = openImageFolder(root, 'train');
  // Shrinking, enlarging, mixed, and the evaluation resize with its crop, inside 10x20 (the smallest image is 10x30).
  const regions: ImageRegion[] = [
    { box: { top: 1, left: 2, height: 9, width: 18 }, height: 5, width: 7, interpolation: 'bicubic' },
    { box: { top: 0, left: 0, height: 4, width: 6 }, height: 9, width: 13, interpolation: 'bilinear' },
    { box: { top: 2, left: 3, height: 8, width: 4 }, height: 5, width: 9, interpolation: 'bicubic' },
    {
      box: { top: 0, left: 0, height: 10, width: 20 },
      height: 8,
      width: 16,
      interpolation: 'bicubic',
      crop: { top: 1, left: 4, height: 6, width: 6 },
    },
  ];
  for (let i = 0; i < packed.size; i++) {
    for (const region of regions) {
      const image = await packed.readRegion!(i, () => region);
      assert.deepEqual(image, await resizeRegion(await packed.read(i), region));
      assert.deepEqual(image, await folder.readRegion!(i, () => region), `image ${i}: the folder's region`);
    }
    assert.deepEqual(await packed.readRegion!(i, () => null), await packed.read(i));
  }
  packed.close();
  const gray = mkdtempSync(join(tmpdir(), 'packed-'));
  await packSplit(
    graySource([
      [28, 28],
      [56, 42],
    ]),
    gray,
    'train',
    { size: 64 },
  );
  const grayPacked = openPacked(gray, 'train');
  for (const region of regions) {
    const image = await grayPacked.readRegion!(1, () => region);
    const expected = region.crop ?? region;
    assert.deepEqual([image.height, image.width, image.channels], [expected.height, expected.width, 1], 'grayscale stays one channel');
  }
  grayPacked.close();
});

test('a truncated shard is an error naming the file and both sizes', async () => {
  const out = mkdtempSync(join(tmpdir(), 'packed-'));
  await packSplit(
    graySource([
      [4, 4],
      [4, 4],
    ]),
    out,
    'val',
    { size: 8 },
  );
  const shard = join(out, 'val-00000.bin');
  truncateSync(shard, 20);
  assert.throws(
    () => openPacked(out, 'val'),
    (err: Error) => err.message === `${shard}: truncated shard: 20 bytes, the index ${join(out, 'val.index')} expects 32`,
  );
  writeFileSync(shard, Buffer.alloc(40));
  assert.throws(() => openPacked(out, 'val'), /shard of the wrong size: 40 bytes, the index .* expects 32/);
});

test('a damaged index is an error naming it', async () => {
  const out = mkdtempSync(join(tmpdir(), 'packed-'));
  await packSplit(graySource([[4, 4]]), out, 'train', { size: 8 });
  const index = join(out, 'train.index');
  const bytes = readFileSync(index);
  writeFileSync(index, bytes.subarray(0, bytes.length - 1));
  assert.throws(
    () => openPacked(out, 'train'),
    (err: Error) => err.message.startsWith(`${index}: is ${bytes.length - 1} bytes, its header of 1 records needs ${bytes.length}`),
  );
  const future = Buffer.from(bytes);
  future.writeUInt32LE(PACK_FORMAT_VERSION + 1, 8);
  writeFileSync(index, future);
  assert.throws(() => openPacked(out, 'train'), /packed format version 2, this version of vit-dist reads 1/);
  writeFileSync(index, 'not an index');
  assert.throws(() => openPacked(out, 'train'), /train\.index: not a packed index \(bad magic bytes\)/);
  assert.throws(() => openPacked(out, 'val'), /val\.index: no packed val split here/);
});

test('a corrupt image fails the pack and leaves no index; --skip-corrupt skips and counts it', async () => {
  const { root } = await makeFolder();
  const corrupt = join(root, 'train/a/15-corrupt.png');
  writeFileSync(corrupt, 'not a PNG');
  const out = mkdtempSync(join(tmpdir(), 'packed-'));
  // A whole earlier pack of the split is replaced: if the new one fails, none is left.
  await packSplit(graySource([[4, 4]]), out, 'train', { size: 8 });
  assert.ok(packedSplitExists(out, 'train'));
  await assert.rejects(
    packSplit(openImageFolder(root, 'train'), out, 'train', { size: 16 }),
    (err: unknown) => err instanceof CorruptImageError && err.path === corrupt,
  );
  assert.ok(!packedSplitExists(out, 'train'));
  assert.deepEqual(readdirSync(out), [], 'no shard or partial file is left behind');

  const skippedPaths: string[] = [];
  const summary = await packSplit(openImageFolder(root, 'train'), out, 'train', {
    size: 16,
    skipCorrupt: true,
    onSkip: (err) => skippedPaths.push(err.path),
  });
  assert.deepEqual(skippedPaths, [corrupt]);
  assert.equal(summary.skipped, 1);
  assert.equal(summary.images, 3);
  const packed = openPacked(out, 'train');
  assert.deepEqual(
    [0, 1, 2].map((i) => packed.label(i)),
    [0, 0, 1],
  );
  assert.equal((await packed.read(1)).width, 30);
  packed.close();
  assert.ok(!existsSync(join(out, 'train.index.partial')));
});
