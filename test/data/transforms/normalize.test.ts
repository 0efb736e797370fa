import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  IMAGENET_DEFAULT_MEAN,
  IMAGENET_DEFAULT_STD,
  NORMALIZATIONS,
  normalizationTable,
  normalizeInto,
} from '../../../src/data/transforms/normalize.ts';
import { FASHION_MNIST_MEAN, FASHION_MNIST_STD } from '../../../src/data/fashion-mnist.ts';
import { texturedImage } from './helpers.ts';

test("timm's ImageNet statistics and Fashion-MNIST's", () => {
  assert.deepEqual([...IMAGENET_DEFAULT_MEAN], [0.485, 0.456, 0.406]);
  assert.deepEqual([...IMAGENET_DEFAULT_STD], [0.229, 0.224, 0.225]);
  assert.deepEqual(NORMALIZATIONS['fashion-mnist'], { mean: [FASHION_MNIST_MEAN], std: [FASHION_MNIST_STD] });
});

test('normalizeInto writes (x / 255 - mean[c]) / std[c] per channel at the offset and nothing else', () => {
  const img = texturedImage(5, 4, 3);
  const out = new Float32Array(100).fill(-99);
  normalizeInto(img, normalizationTable(NORMALIZATIONS.imagenet!), out, 17);
  for (let i = 0; i < img.data.length; i++) {
    const c = i % 3;
    const expected = (img.data[i]! / 255 - IMAGENET_DEFAULT_MEAN[c]!) / IMAGENET_DEFAULT_STD[c]!;
    assert.ok(Math.abs(out[17 + i]! - expected) < 1e-6, `value ${i}`);
  }
  assert.ok(out.subarray(0, 17).every((v) => v === -99) && out.subarray(17 + 60).every((v) => v === -99));
  const gray = texturedImage(3, 3, 1);
  const fm = new Float32Array(9);
  normalizeInto(gray, normalizationTable(NORMALIZATIONS['fashion-mnist']!), fm, 0);
  assert.ok(Math.abs(fm[4]! - (gray.data[4]! / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD) < 1e-6);
});

test('an output too small, a channel mismatch and bad statistics are refused', () => {
  const img = texturedImage(5, 4, 3);
  const table = normalizationTable(NORMALIZATIONS.imagenet!);
  assert.throws(() => normalizeInto(img, table, new Float32Array(60), 1), /60 values at offset 1 do not fit an output of 60/);
  assert.throws(() => normalizeInto(texturedImage(2, 2, 1), table, new Float32Array(4), 0), /statistics for 3 channels, image has 1/);
  assert.throws(() => normalizationTable({ mean: [0.5], std: [0] }), /not positive/);
});
