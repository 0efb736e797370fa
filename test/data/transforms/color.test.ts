import { test } from 'node:test';
import assert from 'node:assert/strict';
import { adjustBrightness, adjustContrast, adjustSaturation, adjustSharpness, colorJitter } from '../../../src/data/transforms/color.ts';
import { Mulberry32 } from '../../../src/common/random.ts';
import type { RawImage } from '../../../src/data/source.ts';
import { ScriptedRng, compare, decode, fixtureImage, texturedImage, vectors } from './helpers.ts';

const ENHANCE: Record<string, (img: RawImage, factor: number) => RawImage> = {
  color: adjustSaturation,
  contrast: (img, f) => adjustContrast(img, f),
  brightness: adjustBrightness,
  sharpness: adjustSharpness,
};

test('brightness, contrast, saturation and sharpness match PIL ImageEnhance exactly (blend and extrapolation)', () => {
  assert.equal(vectors.enhance.length, 32);
  for (const c of vectors.enhance) {
    const out = ENHANCE[c.op]!(fixtureImage(c.image), c.factor);
    const { differing, maxDiff } = compare(out.data, decode(c.expected));
    assert.equal(differing, 0, `${c.op} ${c.factor} on ${c.image}: ${differing} values differ by up to ${maxDiff}`);
  }
});

test('factor 1 is the identity, factor 0 the degenerate image; saturation does nothing to grayscale', () => {
  const img = texturedImage(12, 10, 3);
  for (const op of Object.values(ENHANCE)) assert.deepEqual(op(img, 1).data, img.data);
  assert.ok(adjustBrightness(img, 0).data.every((v) => v === 0));
  const gray = adjustSaturation(img, 0);
  for (let i = 0; i < gray.data.length; i += 3) assert.ok(gray.data[i] === gray.data[i + 1] && gray.data[i] === gray.data[i + 2]);
  const mono = texturedImage(12, 10, 1);
  assert.deepEqual(adjustSaturation(mono, 0.2).data, mono.data);
});

test('color jitter: torchvision order of draws (a permutation, then each enabled factor), deterministic by seed', () => {
  const img = texturedImage(16, 16, 3);
  // Permutation of 3 takes 2 draws, then brightness and saturation factors (contrast disabled).
  const rng = new ScriptedRng([0.1, 0.9, 0.5, 0.99]);
  const out = colorJitter(img, rng, { brightness: 0.4, contrast: 0, saturation: 0.4 });
  assert.equal(rng.used, 4);
  // Factor draws: brightness 0.6 + 0.8 * 0.5 = 1.0 (identity), saturation 0.6 + 0.8 * 0.99.
  assert.deepEqual(out.data, adjustSaturation(img, 0.6 + 0.8 * 0.99).data);
  const a = colorJitter(img, new Mulberry32(3), { brightness: 0.4, contrast: 0.4, saturation: 0.4 });
  const b = colorJitter(img, new Mulberry32(3), { brightness: 0.4, contrast: 0.4, saturation: 0.4 });
  const c = colorJitter(img, new Mulberry32(4), { brightness: 0.4, contrast: 0.4, saturation: 0.4 });
  assert.deepEqual(a.data, b.data);
  assert.notDeepEqual(a.data, c.data);
  assert.throws(() => colorJitter(img, new Mulberry32(1), { brightness: -1, contrast: 0, saturation: 0 }), /finite and >= 0/);
});
