import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkImage, createImage } from '../../../src/data/transforms/image.ts';

test('createImage allocates a zeroed HWC image; checkImage names what is wrong', () => {
  const img = createImage(3, 4, 3);
  assert.equal(img.data.length, 36);
  assert.ok(img.data.every((v) => v === 0));
  checkImage(img, 'here');
  assert.throws(() => checkImage({ ...img, channels: 2 }, 'op'), /op: images have 1 or 3 channels, got 2/);
  assert.throws(() => checkImage({ ...img, height: 0 }, 'op'), /image size 0x4/);
  assert.throws(() => checkImage({ ...img, data: new Uint8Array(5) }, 'op'), /needs 36 bytes, got 5/);
});
