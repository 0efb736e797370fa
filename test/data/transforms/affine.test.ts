import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  type AffineMatrix,
  fromIndexConvention,
  pilRotateMatrix,
  tfRotateMatrix,
  warpAffine,
} from '../../../src/data/transforms/affine.ts';
import { compare, decode, fixtureImage, texturedImage, vectors } from './helpers.ts';

test('affine warps and rotations match PIL (nearest, bilinear, bicubic, with fill)', () => {
  assert.ok(vectors.warp.length >= 30);
  for (const c of vectors.warp) {
    const img = fixtureImage(c.image);
    const fill = typeof c.fill === 'number' ? [c.fill] : c.fill;
    const matrix = c.rotate !== undefined ? pilRotateMatrix(img.height, img.width, c.rotate) : (c.matrix as unknown as AffineMatrix);
    const out = warpAffine(img, matrix, c.interpolation, fill);
    const { maxDiff, differing } = compare(out.data, decode(c.expected));
    assert.equal(
      differing,
      0,
      `${c.image} ${c.interpolation} ${c.rotate ?? JSON.stringify(c.matrix)}: ${differing} values differ, by up to ${maxDiff}`,
    );
  }
});

test('the identity warp returns the image for every interpolation', () => {
  const img = texturedImage(9, 12, 3);
  for (const interpolation of ['nearest', 'bilinear', 'bicubic'] as const) {
    assert.deepEqual(warpAffine(img, [1, 0, 0, 0, 1, 0], interpolation, [1, 2, 3]).data, img.data, interpolation);
  }
  assert.deepEqual(warpAffine(img, pilRotateMatrix(9, 12, 0), 'bicubic', [0, 0, 0]).data, img.data);
});

test('positions outside the image take the fill colour', () => {
  const img = texturedImage(8, 10, 3);
  const out = warpAffine(img, [1, 0, 4, 0, 1, 0], 'bicubic', [7, 8, 9]);
  for (let y = 0; y < 8; y++) {
    for (let x = 6; x < 10; x++) assert.deepEqual([...out.data.subarray((y * 10 + x) * 3, (y * 10 + x) * 3 + 3)], [7, 8, 9]);
    // Integer shifts move pixels exactly.
    assert.deepEqual([...out.data.subarray(y * 30, y * 30 + 3)], [...img.data.subarray(y * 30 + 12, y * 30 + 15)]);
  }
});

test('TF index-convention matrices: an integer translation and a rotation by 0 are exact; 180 degrees mirrors both axes', () => {
  const img = texturedImage(7, 9, 1);
  assert.deepEqual(warpAffine(img, fromIndexConvention(tfRotateMatrix(7, 9, 0)), 'nearest', [128]).data, img.data);
  const turned = warpAffine(img, fromIndexConvention(tfRotateMatrix(7, 9, 180)), 'nearest', [128]);
  for (let y = 0; y < 7; y++) for (let x = 0; x < 9; x++) assert.equal(turned.data[y * 9 + x], img.data[(6 - y) * 9 + (8 - x)]);
  const shifted = warpAffine(img, fromIndexConvention([1, 0, 2, 0, 1, 0]), 'nearest', [128]);
  assert.equal(shifted.data[0], img.data[2]);
  assert.equal(shifted.data[8], 128);
});

test('a fill of the wrong length is refused', () => {
  assert.throws(() => warpAffine(texturedImage(4, 4, 3), [1, 0, 0, 0, 1, 0], 'nearest', [0]), /fill has 1 values for a 3-channel image/);
});
