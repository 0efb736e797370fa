import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BIG_VISION_RANDAUG_OPS,
  BIG_VISION_RANDAUG_TRANSFORMS,
  TIMM_RAND_AUGMENT_OPS,
  TIMM_RAND_INCREASING_TRANSFORMS,
  TIMM_RAND_TRANSFORMS,
  type RandAugmentOp,
  bigVisionRandAugment,
  parseTimmRandAugmentConfig,
  tfContrastMean,
  timmFill,
  timmRandAugment,
} from '../../../src/data/transforms/rand-augment.ts';
import { adjustBrightness, adjustSaturation } from '../../../src/data/transforms/color.ts';
import { solarize } from '../../../src/data/transforms/tone.ts';
import { Mulberry32 } from '../../../src/common/random.ts';
import type { RawImage } from '../../../src/data/source.ts';
import { ScriptedRng, texturedImage } from './helpers.ts';

const DEIT = 'rand-m9-mstd0.5-inc1';
const IMAGENET_FILL = [124, 116, 104];

function assertChanges(name: string, op: RandAugmentOp, img: RawImage, magnitude: number, fill: number[]): void {
  // A sign draw of 0.7 (negative) and position draws for cutout.
  const out = op(img, magnitude, new ScriptedRng([0.7, 0.5, 0.5]), fill);
  assert.ok(out.data instanceof Uint8Array, `${name}: uint8 output`);
  assert.deepEqual([out.height, out.width, out.channels], [img.height, img.width, img.channels], `${name}: same shape`);
  assert.notDeepEqual(out.data, img.data, `${name} at magnitude ${magnitude} changes a textured ${img.channels}-channel image`);
}

test("timm's config strings parse as timm reads them", () => {
  assert.deepEqual(parseTimmRandAugmentConfig(DEIT), { magnitude: 9, numLayers: 2, magnitudeStd: 0.5, magnitudeMax: 10, increasing: true });
  assert.deepEqual(parseTimmRandAugmentConfig('rand-m15-n3-mmax20-inc0'), {
    magnitude: 15,
    numLayers: 3,
    magnitudeStd: 0,
    magnitudeMax: 20,
    increasing: false,
  });
  assert.equal(parseTimmRandAugmentConfig('rand-mstd101').magnitudeStd, Infinity, 'mstd above 100 means uniform');
  assert.equal(parseTimmRandAugmentConfig('rand').magnitude, 10);
  assert.throws(() => parseTimmRandAugmentConfig('augmix-m9'), /must start with "rand"/);
  assert.throws(() => parseTimmRandAugmentConfig('rand-x9'), /unknown section "x9"/);
  assert.throws(() => parseTimmRandAugmentConfig('rand-m9.5'), /section "m9.5" needs an integer/);
  assert.throws(() => parseTimmRandAugmentConfig('rand-inc2'), /inc0 or inc1/);
  assert.throws(() => parseTimmRandAugmentConfig('rand-w0'), /not supported/);
  assert.throws(() => parseTimmRandAugmentConfig('rand-m'), /not a key followed by a number/);
});

test("timm's op sets: the increasing set of inc1 and the plain one, 15 ops each", () => {
  assert.equal(TIMM_RAND_INCREASING_TRANSFORMS.length, 15);
  assert.equal(TIMM_RAND_TRANSFORMS.length, 15);
  assert.ok(TIMM_RAND_INCREASING_TRANSFORMS.includes('SolarizeIncreasing') && !TIMM_RAND_INCREASING_TRANSFORMS.includes('Solarize'));
  assert.deepEqual(timmFill([0.485, 0.456, 0.406]), IMAGENET_FILL, "timm's img_mean for ImageNet");
  assert.equal(BIG_VISION_RANDAUG_TRANSFORMS.length, 16);
});

test('every timm op changes a textured image and keeps its shape (RGB and grayscale)', () => {
  for (const channels of [3, 1]) {
    const img = texturedImage(24, 20, channels);
    const fill = channels === 3 ? IMAGENET_FILL : [73];
    for (const [name, op] of Object.entries(TIMM_RAND_AUGMENT_OPS)) {
      if (channels === 1 && name.startsWith('Color')) {
        assert.deepEqual(op(img, 9, new ScriptedRng([0.7]), fill).data, img.data, 'saturation is a no-op on grayscale');
        continue;
      }
      // Plain Solarize at 9 only inverts levels >= 230, which this image hardly has; 5 inverts >= 128.
      assertChanges(name, op, img, name === 'Solarize' ? 5 : 9, fill);
    }
  }
});

test('every big_vision op changes a textured image at magnitudes 10 and 15 and keeps its shape', () => {
  for (const channels of [3, 1]) {
    const img = texturedImage(24, 20, channels);
    const fill = new Array<number>(channels).fill(128);
    for (const [name, op] of Object.entries(BIG_VISION_RANDAUG_OPS)) {
      for (const magnitude of [10, 15]) {
        if (channels === 1 && name === 'Color') continue;
        // Solarize's threshold int(M / 10 * 256) is 256 or more from M = 10 on: a no-op, as in TF.
        if (name === 'Solarize') {
          assert.deepEqual(op(img, magnitude, new ScriptedRng([]), fill).data, img.data);
          assertChanges(name, op, img, 5, fill);
          continue;
        }
        assertChanges(name, op, img, magnitude, fill);
      }
    }
  }
});

test("timm's level functions: DeiT magnitudes give timm's arguments", () => {
  const img = texturedImage(10, 10, 3);
  // SolarizeIncreasing at 9: threshold 256 - int(0.9 * 256) = 26.
  assert.deepEqual(TIMM_RAND_AUGMENT_OPS.SolarizeIncreasing(img, 9, new ScriptedRng([]), IMAGENET_FILL).data, solarize(img, 26).data);
  // BrightnessIncreasing at 5: 1 + 0.45, or 1 - 0.45 when negated (a draw above 0.5 negates in timm).
  assert.deepEqual(
    TIMM_RAND_AUGMENT_OPS.BrightnessIncreasing(img, 5, new ScriptedRng([0.2]), IMAGENET_FILL).data,
    adjustBrightness(img, 1.45).data,
  );
  assert.deepEqual(
    TIMM_RAND_AUGMENT_OPS.BrightnessIncreasing(img, 5, new ScriptedRng([0.8]), IMAGENET_FILL).data,
    adjustBrightness(img, 0.55).data,
  );
  // Plain Color at 9: 0.9 * 1.8 + 0.1 = 1.72.
  assert.deepEqual(TIMM_RAND_AUGMENT_OPS.Color(img, 9, new ScriptedRng([]), IMAGENET_FILL).data, adjustSaturation(img, 1.72).data);
});

test("timm's RandAugment draws: op choices first, then per op the 0.5 probability, the magnitude noise and the sign", () => {
  const img = texturedImage(16, 16, 3);
  const config = parseTimmRandAugmentConfig('rand-m9-n2-inc1');
  // Ops 2 (Invert) and 0 (AutoContrast) chosen; Invert skipped (0.9 > 0.5), AutoContrast applied.
  const rng = new ScriptedRng([2 / 15 + 0.01, 0.01, 0.9, 0.3]);
  const out = timmRandAugment(img, rng, config, IMAGENET_FILL);
  assert.equal(rng.used, 4);
  assert.deepEqual(out.data, TIMM_RAND_AUGMENT_OPS.AutoContrast(img, 9, rng, IMAGENET_FILL).data);
  // With mstd, an applied op draws 2 uniforms for the Gaussian; Rotate then draws its sign.
  const noisy = new ScriptedRng([3 / 15 + 0.01, 0.01, 0.3, 0.5, 0.5, 0.7, 0.9]);
  timmRandAugment(img, noisy, parseTimmRandAugmentConfig('rand-m9-n2-mstd0.5-inc1'), IMAGENET_FILL);
  assert.equal(noisy.used, 7, '2 choices + (probability, 2 noise, sign) + skipped probability');
});

test('RandAugment is deterministic by seed and differs across seeds (timm and big_vision)', () => {
  const img = texturedImage(32, 32, 3);
  const config = parseTimmRandAugmentConfig(DEIT);
  let differing = 0;
  for (let seed = 0; seed < 20; seed++) {
    const a = timmRandAugment(img, new Mulberry32(seed), config, IMAGENET_FILL);
    assert.deepEqual(timmRandAugment(img, new Mulberry32(seed), config, IMAGENET_FILL).data, a.data);
    const b = bigVisionRandAugment(img, new Mulberry32(seed), 2, 15);
    assert.deepEqual(bigVisionRandAugment(img, new Mulberry32(seed), 2, 15).data, b.data);
    if (compareBytes(a.data, timmRandAugment(img, new Mulberry32(seed + 1000), config, IMAGENET_FILL).data)) differing++;
  }
  assert.ok(differing >= 15, `different seeds give different images (${differing} of 20)`);
});

function compareBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.some((v, i) => v !== b[i]);
}

test("big_vision's randaug: one op per layer, always applied; TF's contrast degenerate is pixel count / 256", () => {
  const img = texturedImage(16, 16, 3);
  // Layer 1 picks Invert (index 2), layer 2 Invert again: the image comes back.
  const rng = new ScriptedRng([2 / 16 + 0.01, 2 / 16 + 0.01]);
  assert.deepEqual(bigVisionRandAugment(img, rng, 2, 15).data, img.data);
  assert.equal(rng.used, 2);
  assert.equal(tfContrastMean(texturedImage(16, 16, 3)), 1);
  assert.equal(tfContrastMean({ height: 224, width: 224, channels: 3, data: new Uint8Array(0) }), 196);
  assert.equal(tfContrastMean({ height: 512, width: 512, channels: 3, data: new Uint8Array(0) }), 255);
});
