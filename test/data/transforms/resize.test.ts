import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crop, resize } from '../../../src/data/transforms/resize.ts';
import { compare, decode, fixtureImage, texturedImage, vectors } from './helpers.ts';

test('bilinear and bicubic resize match PIL within 1 level (down, up, mixed, one axis, of a crop)', () => {
  assert.ok(vectors.resize.length >= 20);
  let exact = 0;
  for (const c of vectors.resize) {
    const out = resize(fixtureImage(c.image), c.height, c.width, c.interpolation, c.box ?? undefined);
    assert.deepEqual([out.height, out.width, out.channels], [c.height, c.width, fixtureImage(c.image).channels]);
    const { maxDiff, differing } = compare(out.data, decode(c.expected));
    assert.ok(maxDiff <= 1, `${c.image} ${c.interpolation} -> ${c.height}x${c.width} box ${JSON.stringify(c.box)}: off by ${maxDiff}`);
    if (differing === 0) exact++;
  }
  // Pillow's fixed-point arithmetic is followed step by step, so in practice every case is exact.
  assert.equal(exact, vectors.resize.length, 'every case bit-exact');
});

test('a constant image stays constant whatever the size and filter', () => {
  for (const channels of [1, 3]) {
    const img = { height: 23, width: 31, channels, data: new Uint8Array(23 * 31 * channels).fill(173) };
    for (const interpolation of ['bilinear', 'bicubic'] as const) {
      for (const [h, w] of [
        [7, 5],
        [64, 80],
        [23, 9],
        [50, 31],
        [1, 1],
      ] as const) {
        const out = resize(img, h, w, interpolation);
        assert.ok(
          out.data.every((v) => v === 173),
          `${channels}ch ${interpolation} ${h}x${w}`,
        );
      }
    }
  }
});

test('the same size gives the image (or the box) back; a box equals crop then resize', () => {
  const img = texturedImage(20, 16, 3);
  assert.deepEqual(resize(img, 20, 16, 'bicubic').data, img.data);
  const box = { top: 3, left: 2, height: 11, width: 9 };
  assert.deepEqual(resize(img, 7, 13, 'bicubic', box).data, resize(crop(img, box), 7, 13, 'bicubic').data);
  assert.deepEqual(resize(img, 11, 9, 'bilinear', box).data, crop(img, box).data);
});

test('crop copies the box', () => {
  const img = texturedImage(6, 5, 1);
  const out = crop(img, { top: 1, left: 2, height: 3, width: 2 });
  assert.deepEqual([out.height, out.width, out.channels], [3, 2, 1]);
  assert.deepEqual([...out.data], [img.data[7], img.data[8], img.data[12], img.data[13], img.data[17], img.data[18]]);
});

test('bad sizes and boxes are refused', () => {
  const img = texturedImage(6, 5, 3);
  assert.throws(() => resize(img, 0, 4, 'bilinear'), /target size 0x4/);
  assert.throws(() => resize(img, 2.5, 4, 'bilinear'), /target size/);
  assert.throws(() => crop(img, { top: 4, left: 0, height: 3, width: 2 }), /not inside the 6x5 image/);
  assert.throws(() => resize({ ...img, data: new Uint8Array(7) }, 3, 3, 'bicubic'), /needs 90 bytes, got 7/);
});
