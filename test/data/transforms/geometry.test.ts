import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  centerCrop,
  centerCropRegion,
  evalResizeSize,
  flipLeftRight,
  padRandomCrop,
  randomResizedCrop,
  randomResizedCropBox,
  randomResizedCropRegion,
  resizeShortCenterCrop,
  resizeShortCenterCropRegion,
} from '../../../src/data/transforms/geometry.ts';
import { crop, resize } from '../../../src/data/transforms/resize.ts';
import { Mulberry32 } from '../../../src/common/random.ts';
import type { ImageRegion, RawImage } from '../../../src/data/source.ts';
import { ScriptedRng, compare, decode, fixtureImage, texturedImage, vectors } from './helpers.ts';

test("randomResizedCropBox is torchvision's get_params: same draws, same box (fits, retries, and the three fallbacks)", () => {
  assert.equal(vectors.rrc.length, 7);
  for (const c of vectors.rrc) {
    const rng = new ScriptedRng(c.draws);
    const box = randomResizedCropBox(c.height, c.width, rng, c.scale, c.ratio);
    assert.deepEqual(box, c.box, `${c.height}x${c.width} draws ${c.draws.join(',')}`);
    assert.equal(rng.used, c.draws.length, 'same number of draws');
  }
});

test('randomResizedCrop gives size x size, deterministic by seed, boxes inside the image', () => {
  const img = texturedImage(60, 80, 3);
  const a = randomResizedCrop(img, new Mulberry32(9), { size: 32 });
  assert.deepEqual([a.height, a.width, a.channels], [32, 32, 3]);
  assert.deepEqual(randomResizedCrop(img, new Mulberry32(9), { size: 32 }).data, a.data);
  assert.notDeepEqual(randomResizedCrop(img, new Mulberry32(10), { size: 32 }).data, a.data);
  const rng = new Mulberry32(1);
  for (let i = 0; i < 500; i++) {
    const box = randomResizedCropBox(60, 80, rng);
    assert.ok(box.top >= 0 && box.left >= 0 && box.top + box.height <= 60 && box.left + box.width <= 80, JSON.stringify(box));
    const area = (box.height * box.width) / (60 * 80);
    assert.ok(area >= 0.06 && area <= 1, `area fraction ${area}`);
  }
});

/** A region as the transforms' own resize and crop would take it. */
function takeRegion(img: RawImage, region: ImageRegion): RawImage {
  const resized = resize(img, region.height, region.width, region.interpolation, region.box);
  return region.crop ? crop(resized, region.crop) : resized;
}

test('the crops as regions: the same draws and, taken with resize and crop, the same pixels as the ops', () => {
  const img = texturedImage(60, 80, 3);
  for (let seed = 0; seed < 20; seed++) {
    const options = { size: 32, interpolation: seed % 2 ? ('bilinear' as const) : ('bicubic' as const) };
    const a = new Mulberry32(seed);
    const b = new Mulberry32(seed);
    const region = randomResizedCropRegion(60, 80, a, options);
    assert.deepEqual(takeRegion(img, region).data, randomResizedCrop(img, b, options).data);
    assert.equal(a.next(), b.next(), 'as many draws');
  }
  for (const [height, width] of [
    [60, 80],
    [80, 60],
    [256, 300],
    [20, 30],
  ]) {
    const tall = texturedImage(height!, width!, 3);
    const region = resizeShortCenterCropRegion(height!, width!, 16, 0.875)!;
    assert.deepEqual(region.box, { top: 0, left: 0, height, width });
    assert.deepEqual(takeRegion(tall, region).data, resizeShortCenterCrop(tall, 16, 0.875).data, `${height}x${width}`);
  }
  const centered = centerCropRegion(60, 80, 32)!;
  assert.deepEqual(takeRegion(img, centered).data, centerCrop(img, 32).data);
  assert.equal(centerCropRegion(20, 80, 32), null, 'a crop larger than the image pads: no region');
  assert.equal(resizeShortCenterCropRegion(60, 80, 32, 1.5), null, 'a crop larger than the resized image pads: no region');
});

test('flipLeftRight mirrors columns and is its own inverse', () => {
  for (const channels of [1, 3]) {
    const img = texturedImage(7, 11, channels);
    const flipped = flipLeftRight(img);
    assert.notDeepEqual(flipped.data, img.data);
    for (let c = 0; c < channels; c++) assert.equal(flipped.data[c], img.data[10 * channels + c]);
    assert.deepEqual(flipLeftRight(flipped).data, img.data);
  }
});

test("resizeShortCenterCrop matches torchvision's Resize(floor(size / crop_pct), BICUBIC) + CenterCrop(size)", () => {
  assert.equal(evalResizeSize(224, 0.875), 256);
  for (const c of vectors.eval) {
    const out = resizeShortCenterCrop(fixtureImage(c.image), c.size, c.cropPct);
    assert.deepEqual([out.height, out.width], [c.size, c.size]);
    const { differing, maxDiff } = compare(out.data, decode(c.expected));
    assert.equal(differing, 0, `${c.image} size ${c.size} crop_pct ${c.cropPct}: ${differing} differ by up to ${maxDiff}`);
  }
});

test('centerCrop takes the middle, and pads a smaller image with zeros as torchvision does', () => {
  const img = texturedImage(5, 8, 1);
  const mid = centerCrop(img, 3);
  // top = round(2 / 2) = 1, left = round(5 / 2) = 2 (ties to even).
  assert.deepEqual([...mid.data.subarray(0, 3)], [...img.data.subarray(1 * 8 + 2, 1 * 8 + 5)]);
  const padded = centerCrop(img, 7);
  assert.deepEqual([padded.height, padded.width], [7, 7]);
  // Height 5 -> 7: one zero row above; width 8 -> 7: columns from round(1 / 2) = 0.
  assert.ok(padded.data.subarray(0, 7).every((v) => v === 0));
  assert.deepEqual([...padded.data.subarray(7, 14)], [...img.data.subarray(0, 7)]);
});

test('padRandomCrop: zero border of at most `pad` pixels, deterministic by seed, every offset reachable', () => {
  const img = { height: 8, width: 8, channels: 3, data: new Uint8Array(8 * 8 * 3).fill(200) };
  const offsets = new Set<string>();
  const rng = new Mulberry32(2);
  for (let i = 0; i < 400; i++) {
    const out = padRandomCrop(img, rng, 8, 2);
    assert.deepEqual([out.height, out.width, out.channels], [8, 8, 3]);
    let zeroRows = 0;
    for (let y = 0; y < 8; y++) if (out.data[(y * 8 + 4) * 3] === 0) zeroRows++;
    let zeroCols = 0;
    for (let x = 0; x < 8; x++) if (out.data[(4 * 8 + x) * 3] === 0) zeroCols++;
    assert.ok(zeroRows <= 2 && zeroCols <= 2);
    offsets.add(`${zeroRows},${zeroCols}`);
  }
  assert.equal(offsets.size, 9, 'row and column shifts of 0, 1 and 2 pixels all occur');
  const a = padRandomCrop(texturedImage(8, 8, 3), new Mulberry32(5), 8, 2);
  assert.deepEqual(padRandomCrop(texturedImage(8, 8, 3), new Mulberry32(5), 8, 2).data, a.data);
  const none = new ScriptedRng([]);
  assert.deepEqual(padRandomCrop(img, none, 12, 2).data.length, 12 * 12 * 3, 'no draws when the padded image is the crop');
  assert.throws(() => padRandomCrop(img, none, 13, 2), /crop 13 is larger than the padded 12x12 image/);
});
