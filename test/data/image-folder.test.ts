import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import sharp from 'sharp';
import {
  CorruptImageError,
  decodeImage,
  imageFolderClasses,
  imageFolderSplitExists,
  jpegRegionSize,
  openImageFolder,
  resizeRegion,
} from '../../src/data/image-folder.ts';
import type { ImageRegion, ImageSource, RawImage } from '../../src/data/source.ts';
import { centerCropRegion, resizeShortCenterCropRegion } from '../../src/data/transforms/geometry.ts';
import { resize } from '../../src/data/transforms/resize.ts';

/** Deterministic RGB pixels: a smooth gradient, so that a JPEG of it stays close to it. */
function gradient(height: number, width: number, seed: number): Uint8Array {
  const data = new Uint8Array(height * width * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = 3 * (y * width + x);
      data[p] = (seed + 8 * x) % 256;
      data[p + 1] = (seed + 8 * y) % 256;
      data[p + 2] = (seed * 3 + 4 * (x + y)) % 256;
    }
  }
  return data;
}

async function writeImage(
  path: string,
  data: Uint8Array,
  height: number,
  width: number,
  channels: 1 | 2 | 3 | 4,
  format: 'png' | 'jpeg' | 'webp',
): Promise<void> {
  mkdirSync(dirname(path), { recursive: true });
  const image = sharp(data, { raw: { height, width, channels } });
  const encoded = format === 'png' ? image.png() : format === 'jpeg' ? image.jpeg({ quality: 95 }) : image.webp({ lossless: true });
  writeFileSync(path, await encoded.toBuffer());
}

/**
 * ROOT/train/{cat,ant,dog}, ROOT/val/{dog,ant}: PNGs of known pixels (RGB, grayscale, RGBA), a
 * lossless WebP, a JPEG with an upper-case extension and a file in a nested folder; other files ignored.
 */
async function makeFolder(): Promise<string> {
  const root = mkdtempSync(join(tmpdir(), 'image-folder-'));
  await writeImage(join(root, 'train/cat/b.png'), gradient(4, 6, 1), 4, 6, 3, 'png');
  await writeImage(join(root, 'train/cat/a.png'), gradient(5, 3, 2), 5, 3, 3, 'png');
  await writeImage(join(root, 'train/cat/sub/c.webp'), gradient(2, 2, 3), 2, 2, 3, 'webp');
  await writeImage(join(root, 'train/ant/gray.png'), Uint8Array.of(0, 50, 100, 150, 200, 250), 2, 3, 1, 'png');
  await writeImage(join(root, 'train/ant/rgba.png'), Uint8Array.of(10, 20, 30, 0, 40, 50, 60, 255), 1, 2, 4, 'png');
  await writeImage(join(root, 'train/dog/n0001_1.JPEG'), gradient(16, 24, 4), 16, 24, 3, 'jpeg');
  writeFileSync(join(root, 'train/dog/notes.txt'), 'not an image');
  writeFileSync(join(root, 'train/README'), 'a top-level file is not a class');
  await writeImage(join(root, 'val/dog/v.png'), gradient(3, 3, 5), 3, 3, 3, 'png');
  await writeImage(join(root, 'val/ant/w.png'), gradient(2, 4, 6), 2, 4, 3, 'png');
  return root;
}

test('classes are the sorted train folders; files in sorted order; pixels exact for PNG and WebP', async () => {
  const root = await makeFolder();
  assert.deepEqual(imageFolderClasses(root), ['ant', 'cat', 'dog']);
  const train = openImageFolder(root, 'train');
  assert.equal(train.size, 6);
  assert.equal(train.channels, 3);
  assert.equal(train.fixedSize, null);
  const described = Array.from({ length: 6 }, (_, i) => train.describe(i).slice(root.length + 1));
  assert.deepEqual(described, [
    'train/ant/gray.png',
    'train/ant/rgba.png',
    'train/cat/a.png',
    'train/cat/b.png',
    'train/cat/sub/c.webp',
    'train/dog/n0001_1.JPEG',
  ]);
  assert.deepEqual(
    Array.from({ length: 6 }, (_, i) => train.label(i)),
    [0, 0, 1, 1, 1, 2],
  );

  const b = await train.read(3);
  assert.deepEqual({ height: b.height, width: b.width, channels: b.channels }, { height: 4, width: 6, channels: 3 });
  assert.deepEqual(b.data, gradient(4, 6, 1));
  assert.deepEqual((await train.read(4)).data, gradient(2, 2, 3));
  // Grayscale is replicated to three channels; alpha is dropped without compositing.
  assert.deepEqual([...(await train.read(0)).data], [0, 0, 0, 50, 50, 50, 100, 100, 100, 150, 150, 150, 200, 200, 200, 250, 250, 250]);
  assert.deepEqual([...(await train.read(1)).data], [10, 20, 30, 40, 50, 60]);
  // The JPEG decodes to its size and close to the pixels it was encoded from.
  const jpeg = await train.read(5);
  assert.deepEqual({ height: jpeg.height, width: jpeg.width }, { height: 16, width: 24 });
  const original = gradient(16, 24, 4);
  const meanError = jpeg.data.reduce((sum, v, i) => sum + Math.abs(v - original[i]!), 0) / original.length;
  assert.ok(meanError < 3, `mean JPEG error ${meanError}`);
  await assert.rejects(train.read(6), /sample index 6 is outside 0..5 of the train split/);
});

test('val numbers its classes as train does', async () => {
  const root = await makeFolder();
  const val = openImageFolder(root, 'val');
  assert.deepEqual(val.classes, ['ant', 'cat', 'dog']);
  assert.equal(val.size, 2);
  assert.deepEqual([val.label(0), val.label(1)], [0, 2]);
  assert.deepEqual((await val.read(1)).data, gradient(3, 3, 5));
  assert.ok(imageFolderSplitExists(root, 'val'));
  assert.ok(!imageFolderSplitExists(join(root, 'train'), 'val'));
});

test('CMYK is converted to RGB; the EXIF orientation is not applied', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'decode-'));
  const cmyk = join(dir, 'cmyk.jpg');
  writeFileSync(
    cmyk,
    await sharp(gradient(8, 8, 7), { raw: { height: 8, width: 8, channels: 3 } })
      .toColourspace('cmyk')
      .jpeg()
      .toBuffer(),
  );
  assert.equal((await sharp(cmyk).metadata()).channels, 4);
  const decoded = await decodeImage(cmyk);
  assert.deepEqual(
    { height: decoded.height, width: decoded.width, channels: decoded.channels, bytes: decoded.data.length },
    { height: 8, width: 8, channels: 3, bytes: 192 },
  );
  const rotated = join(dir, 'rotated.jpg');
  // Orientation 6 means "rotate 90 degrees clockwise to display"; the stored 4x10 pixels must stay 4x10.
  writeFileSync(
    rotated,
    await sharp(gradient(4, 10, 8), { raw: { height: 4, width: 10, channels: 3 } })
      .jpeg()
      .withMetadata({ orientation: 6 })
      .toBuffer(),
  );
  assert.equal((await sharp(rotated).metadata()).orientation, 6);
  const stored = await decodeImage(rotated);
  assert.deepEqual({ height: stored.height, width: stored.width }, { height: 4, width: 10 });
  const oriented = await sharp(rotated, { autoOrient: true }).raw().toBuffer({ resolveWithObject: true });
  assert.deepEqual(
    { height: oriented.info.height, width: oriented.info.width },
    { height: 10, width: 4 },
    'the file does carry a rotation',
  );
});

test('a corrupt or unreadable image rejects with CorruptImageError naming the file', async () => {
  const root = await makeFolder();
  const garbage = join(root, 'train/cat/garbage.jpg');
  writeFileSync(garbage, 'this is not a JPEG');
  const png = readFileSync(join(root, 'train/cat/b.png'));
  const truncated = join(root, 'train/dog/truncated.png');
  writeFileSync(truncated, png.subarray(0, png.length - 20));
  const train = openImageFolder(root, 'train');
  for (const path of [garbage, truncated]) {
    const index = Array.from({ length: train.size }, (_, i) => i).find((i) => train.describe(i) === path)!;
    await assert.rejects(train.read(index), (err: unknown) => {
      assert.ok(err instanceof CorruptImageError);
      assert.equal(err.path, path);
      assert.ok(err.message.startsWith(`${path}: corrupt or unreadable image (`), err.message);
      return true;
    });
  }
  await assert.rejects(decodeImage(join(root, 'train/cat/missing.png')), CorruptImageError);
});

/** Smooth RGB waves: resamplers agree closely on them. */
function waves(height: number, width: number): Uint8Array {
  const data = new Uint8Array(height * width * 3);
  for (let i = 0; i < height * width; i++) {
    const [y, x] = [Math.floor(i / width), i % width];
    data.set([128 + 100 * Math.sin(x / 9), 128 + 100 * Math.cos(y / 11), 128 + 60 * Math.sin((x + y) / 13)], 3 * i);
  }
  return data;
}

/** Waves with noise on top: resampling filters differ visibly on them. */
function noisyWaves(height: number, width: number): Uint8Array {
  const data = waves(height, width);
  let state = 7;
  for (let i = 0; i < data.length; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    data[i] = Math.max(0, Math.min(255, data[i]! + ((state >>> 24) - 128) / 4));
  }
  return data;
}

/** readRegion with a recording `choose`: the region given, the sizes it was asked about. */
async function readRegion(source: ImageSource, index: number, region: ImageRegion | null): Promise<{ image: RawImage; asked: number[][] }> {
  const asked: number[][] = [];
  const image = await source.readRegion!(index, (height, width) => {
    asked.push([height, width]);
    return region;
  });
  return { image, asked };
}

test("readRegion decodes a region: read()'s pixels cropped and resized (libvips shrinks, PIL's resize enlarges)", async () => {
  const root = mkdtempSync(join(tmpdir(), 'image-folder-'));
  // A JPEG, a grayscale JPEG, a PNG (decoded whole, then cropped and resized) and a CMYK JPEG, all 60x80.
  await writeImage(join(root, 'train/a/rgb.jpg'), waves(60, 80), 60, 80, 3, 'jpeg');
  await writeImage(
    join(root, 'train/a/gray.jpg'),
    waves(60, 80).filter((_, i) => i % 3 === 0),
    60,
    80,
    1,
    'jpeg',
  );
  await writeImage(join(root, 'train/b/c.png'), waves(60, 80), 60, 80, 3, 'png');
  writeFileSync(
    join(root, 'train/b/cmyk.jpg'),
    await sharp(waves(60, 80), { raw: { height: 60, width: 80, channels: 3 } })
      .toColourspace('cmyk')
      .jpeg()
      .toBuffer(),
  );
  const train = openImageFolder(root, 'train');
  const box = (top: number, left: number, height: number, width: number) => ({ top, left, height, width });
  const regions: ImageRegion[] = [
    { box: box(5, 7, 50, 70), height: 30, width: 40, interpolation: 'bicubic' },
    { box: box(30, 40, 20, 30), height: 50, width: 60, interpolation: 'bicubic' },
    { box: box(0, 10, 24, 17), height: 12, width: 40, interpolation: 'bilinear' },
    { box: box(3, 3, 20, 20), height: 20, width: 20, interpolation: 'bicubic' },
    { box: box(0, 0, 60, 80), height: 60, width: 80, interpolation: 'bilinear' },
    resizeShortCenterCropRegion(60, 80, 24, 0.875)!,
    centerCropRegion(60, 80, 24)!,
  ];
  for (let index = 0; index < train.size; index++) {
    const whole = await train.read(index);
    for (const region of regions) {
      const { image, asked } = await readRegion(train, index, region);
      assert.deepEqual(asked, [[whole.height, whole.width]], 'choose is asked once, with the stored size');
      const expected = await resizeRegion(whole, region);
      assert.deepEqual(
        { ...image, data: [...image.data] },
        { ...expected, data: [...expected.data] },
        `${train.describe(index)} ${JSON.stringify(region)}`,
      );
      assert.equal(image.channels, 3);
    }
    assert.deepEqual((await readRegion(train, index, null)).image.data, whole.data, 'no region: the whole image');
  }
  // libvips' shrinking stays close to PIL's (the transforms' resize), filter for filter, on textured pixels.
  const textured = { data: noisyWaves(60, 80), height: 60, width: 80, channels: 3 };
  for (const interpolation of ['bicubic', 'bilinear'] as const) {
    const shrink: ImageRegion = { box: box(5, 7, 50, 70), height: 30, width: 40, interpolation };
    const ours = (await resizeRegion(textured, shrink)).data;
    const pil = resize(textured, shrink.height, shrink.width, interpolation, shrink.box).data;
    const meanDiff = ours.reduce((sum, v, i) => sum + Math.abs(v - pil[i]!), 0) / ours.length;
    assert.ok(meanDiff < 0.6, `${interpolation}: mean difference from PIL's resize ${meanDiff}`);
  }
  await assert.rejects(
    readRegion(train, 0, { ...regions[0]!, box: box(50, 0, 20, 80) }),
    /region box top=50 left=0 height=20 width=80 is not inside the 60x80 image/,
  );
});

test('jpegRegionSize reads the frame header of a whole JPEG only; a truncated JPEG still fails by region', async () => {
  const root = mkdtempSync(join(tmpdir(), 'image-folder-'));
  const path = join(root, 'train/a/x.jpg');
  await writeImage(path, gradient(40, 60, 3), 40, 60, 3, 'jpeg');
  const bytes = readFileSync(path);
  assert.deepEqual(jpegRegionSize(bytes), { height: 40, width: 60 });
  const progressive = await sharp(gradient(40, 60, 3), { raw: { height: 40, width: 60, channels: 3 } })
    .jpeg({ progressive: true })
    .withMetadata()
    .toBuffer();
  assert.deepEqual(jpegRegionSize(progressive), { height: 40, width: 60 });
  assert.equal(
    jpegRegionSize(
      await sharp(gradient(4, 4, 1), { raw: { height: 4, width: 4, channels: 3 } })
        .png()
        .toBuffer(),
    ),
    null,
  );
  assert.equal(jpegRegionSize(bytes.subarray(0, bytes.length - 100)), null, 'no end-of-image marker');
  assert.equal(jpegRegionSize(Buffer.from('not a JPEG at all')), null);
  // Cut short: a decode that stopped at the region's last row would not notice; readRegion does.
  writeFileSync(path, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
  const train = openImageFolder(root, 'train');
  await assert.rejects(
    readRegion(train, 0, { box: { top: 0, left: 0, height: 4, width: 4 }, height: 2, width: 2, interpolation: 'bicubic' }),
    (err: unknown) => {
      assert.ok(err instanceof CorruptImageError);
      assert.equal(err.path, path);
      return true;
    },
  );
  writeFileSync(path, 'garbage');
  await assert.rejects(readRegion(train, 0, null), CorruptImageError);
});

test('bad layouts are errors naming the folder', async () => {
  const root = await makeFolder();
  assert.throws(
    () => openImageFolder(join(root, 'train'), 'train'),
    (err: Error) => err.message.startsWith(`${join(root, 'train', 'train')}: no train/ folder`),
  );

  mkdirSync(join(root, 'val/zebra'));
  writeFileSync(join(root, 'val/zebra/z.png'), '');
  assert.throws(
    () => openImageFolder(root, 'val'),
    (err: Error) => err.message.startsWith(`${join(root, 'val', 'zebra')}: class "zebra" is in val/ but not in train/`),
  );

  mkdirSync(join(root, 'train/empty/sub'), { recursive: true });
  writeFileSync(join(root, 'train/empty/readme.txt'), 'no images here');
  assert.throws(
    () => openImageFolder(root, 'train'),
    (err: Error) => err.message.startsWith(`${join(root, 'train', 'empty')}: empty class folder`),
  );

  const noVal = mkdtempSync(join(tmpdir(), 'image-folder-'));
  await writeImage(join(noVal, 'train/a/x.png'), gradient(1, 1, 0), 1, 1, 3, 'png');
  assert.throws(
    () => openImageFolder(noVal, 'val'),
    (err: Error) => err.message.startsWith(`${join(noVal, 'val')}: no val/ folder`),
  );
  mkdirSync(join(noVal, 'val'));
  assert.throws(
    () => openImageFolder(noVal, 'val'),
    (err: Error) => err.message.startsWith(`${join(noVal, 'val')}: holds no class folders`),
  );
});
