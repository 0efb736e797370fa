import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Mulberry32 } from '../../src/common/random.ts';
import {
  cutmixBox,
  mixBatch,
  mixConfigOf,
  mixRng,
  plainTargets,
  sampleBeta,
  type ImageShape,
  type MixConfig,
  type MixResult,
} from '../../src/data/mixup.ts';

const SHAPE: ImageShape = { height: 6, width: 5, channels: 3 };
const IMAGE_SIZE = SHAPE.height * SHAPE.width * SHAPE.channels;
const TOLERANCE = 1e-6;
/** DeiT's mixing, and AugReg's light / medium / strong levels. */
const DEIT_MIX: MixConfig = { kind: 'timm', mixupAlpha: 0.8, cutmixAlpha: 1, prob: 1, switchProb: 0.5, labelSmoothing: 0.1 };
const AUGREG_P = { light: 0.2, medium: 0.5, strong: 0.8 };
const augRegMix = (level: keyof typeof AUGREG_P): MixConfig => ({ kind: 'big_vision', p: AUGREG_P[level], labelSmoothing: 0 });
const MIXUP_ONLY: MixConfig = { kind: 'timm', mixupAlpha: 0.8, cutmixAlpha: 0, prob: 1, switchProb: 0.5, labelSmoothing: 0 };
const CUTMIX_ONLY: MixConfig = { kind: 'timm', mixupAlpha: 0, cutmixAlpha: 1, prob: 1, switchProb: 0.5, labelSmoothing: 0 };

/** n images, image i filled with constants[i]. */
function constantImages(constants: number[]): Float32Array {
  const images = new Float32Array(constants.length * IMAGE_SIZE);
  constants.forEach((c, i) => {
    images.fill(c, i * IMAGE_SIZE, (i + 1) * IMAGE_SIZE);
  });
  return images;
}

/** n images whose every value says which sample, row, column and channel it is. */
function codedImages(n: number): Float32Array {
  const images = new Float32Array(n * IMAGE_SIZE);
  for (let i = 0; i < n; i++) {
    for (let y = 0; y < SHAPE.height; y++) {
      for (let x = 0; x < SHAPE.width; x++) {
        for (let c = 0; c < SHAPE.channels; c++)
          images[i * IMAGE_SIZE + (y * SHAPE.width + x) * SHAPE.channels + c] = i * 1000 + y * 100 + x * 10 + c;
      }
    }
  }
  return images;
}

function mixMany(config: MixConfig, n: number, numClasses: number, count: number): MixResult[] {
  const labels = Int32Array.from({ length: n }, (_, i) => (i * 7) % numClasses);
  return Array.from({ length: count }, (_, m) => mixBatch(codedImages(n), labels, n, SHAPE, numClasses, config, mixRng(1, 2, m)));
}

function rowSums(targets: Float32Array, numClasses: number): number[] {
  return Array.from({ length: targets.length / numClasses }, (_, i) =>
    targets.subarray(i * numClasses, (i + 1) * numClasses).reduce((a, b) => a + b, 0),
  );
}

test('targets are n × numClasses rows in [0, 1] that sum to 1, for every kind and mode', () => {
  const configs: MixConfig[] = [DEIT_MIX, augRegMix('light'), augRegMix('strong'), mixConfigOf({ kind: 'big_vision', p: 0.5 }, 0.2)];
  const modes = new Set<string>();
  for (const config of configs) {
    for (const n of [1, 4, 7]) {
      for (const result of mixMany(config, n, 10, 20)) {
        modes.add(result.mode);
        assert.equal(result.targets.length, n * 10);
        assert.ok(result.targets.every((v) => v >= 0 && v <= 1));
        for (const sum of rowSums(result.targets, 10)) assert.ok(Math.abs(sum - 1) < TOLERANCE, `${config.kind}: row sums to ${sum}`);
        assert.ok(result.lam > 0 && result.lam <= 1);
      }
    }
  }
  assert.deepEqual([...modes].sort(), ['cutmix', 'mixup'], 'both timm modes occurred');
});

test('no mixing (prob 0, p 0) leaves the images untouched and gives the plain smoothed targets', () => {
  const labels = Int32Array.of(0, 3, 1);
  for (const config of [{ ...DEIT_MIX, prob: 0 }, mixConfigOf({ kind: 'big_vision', p: 0 }, 0.1)]) {
    const images = codedImages(3);
    const result = mixBatch(images, labels, 3, SHAPE, 4, config, mixRng(5, 0, 0));
    assert.equal(result.mode, 'none');
    assert.equal(result.lam, 1);
    assert.deepEqual(images, codedImages(3));
    assert.deepEqual(result.targets, plainTargets(labels, 3, 4, 0.1));
  }
});

test('label smoothing folds in as timm does: off = s/K, on = 1 - s + s/K, target = lam y + (1 - lam) y_flipped', () => {
  // DeiT's numbers: smoothing 0.1 over 1000 classes gives 0.9001 and 0.0001.
  const deit = plainTargets(Int32Array.of(999), 1, 1000, 0.1);
  assert.equal(deit[999], Math.fround(0.9001));
  assert.equal(deit[0], Math.fround(0.0001));
  // K = 4, s = 0.2: off = 0.05, on = 0.85; labels (0, 2, 2, 1) with flip partners (1, 2, 2, 0).
  const labels = Int32Array.of(0, 2, 2, 1);
  const result = mixBatch(codedImages(4), labels, 4, SHAPE, 4, { ...MIXUP_ONLY, labelSmoothing: 0.2 }, mixRng(3, 1, 0));
  const lam = result.lam;
  const mixed = (own: number, other: number): number => lam * own + (1 - lam) * other;
  const expected = [
    [mixed(0.85, 0.05), mixed(0.05, 0.85), mixed(0.05, 0.05), mixed(0.05, 0.05)],
    [mixed(0.05, 0.05), mixed(0.05, 0.05), mixed(0.85, 0.85), mixed(0.05, 0.05)],
    [mixed(0.05, 0.05), mixed(0.05, 0.05), mixed(0.85, 0.85), mixed(0.05, 0.05)],
    [mixed(0.05, 0.85), mixed(0.85, 0.05), mixed(0.05, 0.05), mixed(0.05, 0.05)],
  ].flat();
  expected.forEach((v, k) => {
    assert.ok(Math.abs(result.targets[k]! - v) < TOLERANCE, `target ${k}: ${result.targets[k]} vs ${v}`);
  });
});

test("mixup of constant images gives the lam-weighted constants, with timm's flip partner and big_vision's roll partner", () => {
  const constants = [2, -1, 0.5, 4, -3];
  const cases: { config: MixConfig; partner: (i: number) => number }[] = [
    { config: MIXUP_ONLY, partner: (i) => constants.length - 1 - i },
    { config: augRegMix('medium'), partner: (i) => (i + constants.length - 1) % constants.length },
  ];
  for (const { config, partner } of cases) {
    for (let m = 0; m < 5; m++) {
      const images = constantImages(constants);
      const labels = Int32Array.from(constants, (_, i) => i);
      const { lam, mode, targets } = mixBatch(images, labels, constants.length, SHAPE, constants.length, config, mixRng(9, 4, m));
      assert.equal(mode, 'mixup');
      if (config.kind === 'big_vision') assert.ok(lam >= 0.5, 'big_vision keeps the larger weight on the own image');
      constants.forEach((c, i) => {
        const want = lam * c + (1 - lam) * constants[partner(i)]!;
        for (let k = 0; k < IMAGE_SIZE; k++) assert.ok(Math.abs(images[i * IMAGE_SIZE + k]! - want) < 1e-5, `${config.kind} image ${i}`);
        const row = targets.subarray(i * constants.length, (i + 1) * constants.length);
        const j = partner(i);
        if (j === i) assert.ok(Math.abs(row[i]! - 1) < TOLERANCE);
        else {
          assert.ok(
            Math.abs(row[i]! - lam) < TOLERANCE && Math.abs(row[j]! - (1 - lam)) < TOLERANCE,
            `${config.kind} target ${i} mixes with ${j}`,
          );
        }
      });
    }
  }
});

test("CutMix pastes one box from each image's flip partner and lam is 1 - box area / image area", () => {
  let nonEmpty = 0;
  for (const n of [4, 5]) {
    for (let m = 0; m < 30; m++) {
      const images = codedImages(n);
      const original = codedImages(n);
      const { lam, mode } = mixBatch(
        images,
        Int32Array.from({ length: n }, () => 0),
        n,
        SHAPE,
        2,
        CUTMIX_ONLY,
        mixRng(4, 8, m),
      );
      assert.equal(mode, 'cutmix');
      let box: { top: number; bottom: number; left: number; right: number } | null = null;
      const fromPartner = (i: number, y: number, x: number): boolean => {
        const p = (y * SHAPE.width + x) * SHAPE.channels;
        const j = n - 1 - i;
        for (let c = 0; c < SHAPE.channels; c++) {
          const value = images[i * IMAGE_SIZE + p + c]!;
          if (value === original[j * IMAGE_SIZE + p + c]!) continue;
          assert.equal(value, original[i * IMAGE_SIZE + p + c]!, `pixel (${i}, ${y}, ${x}) is its own or its partner's`);
          return false;
        }
        return true;
      };
      // The box found in the first image (whose partner differs from it), then checked on every image.
      for (let y = 0; y < SHAPE.height; y++) {
        for (let x = 0; x < SHAPE.width; x++) {
          if (!fromPartner(0, y, x)) continue;
          box = box
            ? {
                top: Math.min(box.top, y),
                bottom: Math.max(box.bottom, y + 1),
                left: Math.min(box.left, x),
                right: Math.max(box.right, x + 1),
              }
            : { top: y, bottom: y + 1, left: x, right: x + 1 };
        }
      }
      const area = box ? (box.bottom - box.top) * (box.right - box.left) : 0;
      if (area > 0) nonEmpty++;
      assert.ok(Math.abs(lam - (1 - area / (SHAPE.height * SHAPE.width))) < 1e-12, `lam ${lam} for a box of ${area} pixels`);
      for (let i = 0; i < n; i++) {
        if (n - 1 - i === i) continue; // the middle of an odd batch pairs with itself
        for (let y = 0; y < SHAPE.height; y++) {
          for (let x = 0; x < SHAPE.width; x++) {
            const inside = box !== null && y >= box.top && y < box.bottom && x >= box.left && x < box.right;
            assert.equal(fromPartner(i, y, x), inside, `image ${i} pixel (${y}, ${x})`);
          }
        }
      }
    }
  }
  assert.ok(nonEmpty > 10, `most draws cut a box (${nonEmpty})`);
});

test('cutmixBox follows rand_bbox: sqrt(1 - lam) of each side, centred on a uniform pixel, clipped', () => {
  const rng = new Mulberry32(17);
  for (let k = 0; k < 500; k++) {
    const lam = rng.next();
    const box = cutmixBox(100, 80, lam, rng);
    assert.ok(box.top >= 0 && box.top <= box.bottom && box.bottom <= 100 && box.left >= 0 && box.left <= box.right && box.right <= 80);
    const halfH = Math.floor(Math.trunc(100 * Math.sqrt(1 - lam)) / 2);
    const halfW = Math.floor(Math.trunc(80 * Math.sqrt(1 - lam)) / 2);
    assert.ok(box.bottom - box.top <= 2 * halfH && box.right - box.left <= 2 * halfW);
    const inside = box.top > 0 && box.bottom < 100 && box.left > 0 && box.right < 80;
    if (inside) assert.deepEqual([box.bottom - box.top, box.right - box.left], [2 * halfH, 2 * halfW]);
  }
});

test("Beta draws have the distribution's mean and variance within 6 standard errors", () => {
  const draws = 20_000;
  for (const [a, b] of [
    [0.2, 0.2],
    [0.5, 0.5],
    [0.8, 0.8],
    [1, 1],
    [2, 5],
    [0.3, 3],
  ] as const) {
    const rng = new Mulberry32(1234);
    const xs = Float64Array.from({ length: draws }, () => sampleBeta(rng, a, b));
    assert.ok(xs.every((x) => x >= 0 && x <= 1));
    const mean = xs.reduce((s, x) => s + x, 0) / draws;
    const variance = xs.reduce((s, x) => s + (x - mean) ** 2, 0) / (draws - 1);
    const wantMean = a / (a + b);
    const wantVariance = (a * b) / ((a + b) ** 2 * (a + b + 1));
    // On [0, 1], (x - mean)^4 <= (x - mean)^2, so the variance estimate's variance is at most wantVariance / draws.
    const standardError = Math.sqrt(wantVariance / draws);
    assert.ok(Math.abs(mean - wantMean) < 6 * standardError, `Beta(${a}, ${b}) mean ${mean} vs ${wantMean}`);
    assert.ok(Math.abs(variance - wantVariance) < 6 * standardError, `Beta(${a}, ${b}) variance ${variance} vs ${wantVariance}`);
  }
  assert.throws(() => sampleBeta(new Mulberry32(0), 0, 1), /Beta parameters must be positive/);
});

test('the same seed, step and micro-batch mix identically; another micro-batch mixes differently', () => {
  const labels = Int32Array.of(1, 0, 2, 2);
  const run = (config: MixConfig, seed: number, step: number, microBatch: number): [Float32Array, MixResult] => {
    const images = codedImages(4);
    return [images, mixBatch(images, labels, 4, SHAPE, 3, config, mixRng(seed, step, microBatch))];
  };
  for (let m = 0; m < 8; m++) {
    const [imagesA, a] = run(DEIT_MIX, 42, 10, m);
    const [imagesB, b] = run(DEIT_MIX, 42, 10, m);
    assert.deepEqual(imagesA, imagesB);
    assert.deepEqual(a, b);
  }
  // Mixup's lam is continuous, so another seed, step or micro-batch shows in it.
  const lam = run(MIXUP_ONLY, 42, 10, 3)[1].lam;
  const others = [run(MIXUP_ONLY, 42, 10, 2), run(MIXUP_ONLY, 42, 11, 3), run(MIXUP_ONLY, 43, 10, 3)].map(([, r]) => r.lam);
  assert.ok(
    others.every((other) => other !== lam),
    `lam ${lam} vs ${others}`,
  );
});

test('bad batches and configs are refused with the problem named', () => {
  const images = codedImages(2);
  const labels = Int32Array.of(0, 1);
  const rng = mixRng(0, 0, 0);
  assert.throws(() => mixBatch(images, labels, 3, SHAPE, 2, DEIT_MIX, rng), /images hold 180 floats, expected/);
  assert.throws(() => mixBatch(images, Int32Array.of(0), 2, SHAPE, 2, DEIT_MIX, rng), /labels hold 1 entries/);
  assert.throws(() => mixBatch(images, Int32Array.of(0, 2), 2, SHAPE, 2, DEIT_MIX, rng), /label 2 of sample 1/);
  assert.throws(() => mixBatch(images, labels, 2, SHAPE, 2, { ...DEIT_MIX, prob: 1.5 }, rng), /prob must be in \[0, 1\], got 1.5/);
  assert.throws(() => mixBatch(images, labels, 2, SHAPE, 2, { ...DEIT_MIX, mixupAlpha: 0, cutmixAlpha: 0 }, rng), /both 0/);
  assert.throws(() => mixBatch(images, labels, 2, SHAPE, 2, mixConfigOf({ kind: 'big_vision', p: -1 }, 0), rng), /p must be in/);
  assert.throws(() => mixBatch(images, labels, 2, SHAPE, 2, { ...DEIT_MIX, labelSmoothing: 1 }, rng), /labelSmoothing must be in \[0, 1\)/);
});
