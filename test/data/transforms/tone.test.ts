import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TF_EQUALIZE_DIVISOR,
  autocontrast,
  equalize,
  invert,
  posterize,
  solarize,
  solarizeAdd,
} from '../../../src/data/transforms/tone.ts';
import type { RawImage } from '../../../src/data/source.ts';
import { compare, decode, fixtureImage, vectors } from './helpers.ts';

const OPS: Record<string, (img: RawImage) => RawImage> = {
  autocontrast,
  equalize: (img) => equalize(img),
  invert,
  posterize2: (img) => posterize(img, 2),
  solarize100: (img) => solarize(img, 100),
};

test('autocontrast, equalize, invert, posterize and solarize match PIL ImageOps exactly', () => {
  assert.equal(vectors.tone.length, 10);
  for (const c of vectors.tone) {
    const out = OPS[c.op]!(fixtureImage(c.image));
    const { differing, maxDiff } = compare(out.data, decode(c.expected));
    assert.equal(differing, 0, `${c.op} on ${c.image}: ${differing} values differ by up to ${maxDiff}`);
  }
});

test('posterize, solarize and solarizeAdd edge values', () => {
  const img = { height: 1, width: 4, channels: 1, data: Uint8Array.from([0, 100, 128, 255]) };
  assert.deepEqual([...posterize(img, 0).data], [0, 0, 0, 0]);
  assert.deepEqual([...posterize(img, 8).data], [0, 100, 128, 255]);
  assert.deepEqual([...posterize(img, 1).data], [0, 0, 128, 128]);
  assert.deepEqual([...solarize(img, 256).data], [0, 100, 128, 255], 'threshold 256 changes nothing');
  assert.deepEqual([...solarize(img, 0).data], [255, 155, 127, 0], 'threshold 0 inverts all');
  assert.deepEqual([...solarizeAdd(img, 110).data], [110, 210, 128, 255], 'only values below 128 move');
  assert.deepEqual([...solarizeAdd({ ...img, data: Uint8Array.from([127]), width: 1 }, 200).data], [255], 'clipped at 255');
  assert.deepEqual([...invert(img).data], [255, 155, 127, 0]);
});

test("TF's equalize divides by 255 where PIL's divides by 256; a flat channel is left alone", () => {
  // 210 zeros, 300 of 100, 100 of 200: the count without the last bin is 510, so TF's step is 2, PIL's 1.
  const data = new Uint8Array(610);
  data.fill(100, 210, 510);
  data.fill(200, 510);
  const img = { height: 1, width: 610, channels: 1, data };
  const levels = (out: RawImage) => [out.data[0], out.data[300], out.data[600]];
  assert.deepEqual(levels(equalize(img, TF_EQUALIZE_DIVISOR)), [0, 105, 255]);
  assert.deepEqual(levels(equalize(img)), [0, 210, 255]);
  const flat = { height: 3, width: 3, channels: 1, data: new Uint8Array(9).fill(77) };
  assert.deepEqual(equalize(flat).data, flat.data);
  assert.deepEqual(autocontrast(flat).data, flat.data);
});
