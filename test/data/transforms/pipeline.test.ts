import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PIPELINE_OPS, parsePipeline } from '../../../src/data/transforms/pipeline.ts';
import { Mulberry32, mixSeed } from '../../../src/common/random.ts';
import { crop, resize } from '../../../src/data/transforms/resize.ts';
import { texturedImage } from './helpers.ts';

const DEIT_TRAIN = 'random_resized_crop(224)|flip_lr|rand_augment(rand-m9-mstd0.5-inc1)|normalize(imagenet)|random_erasing(0.25)';
const AUGREG_TRAIN = 'inception_crop(224)|flip_lr|randaug(2,15)|normalize(imagenet)';
const EVAL = 'resize_short_center_crop(224,0.875)|normalize(imagenet)';

function run(text: string, channels: number, height: number, width: number, seed: number): Float32Array {
  const pipeline = parsePipeline(text, { channels });
  const shape = pipeline.outputShape(height, width);
  const out = new Float32Array(shape.height * shape.width * shape.channels);
  pipeline.apply(texturedImage(height, width, channels, 3), new Mulberry32(seed), out, 0);
  return out;
}

test('the DeiT, AugReg, evaluation and Fashion-MNIST pipelines give their shapes and finite values', () => {
  for (const text of [DEIT_TRAIN, AUGREG_TRAIN, EVAL]) {
    const pipeline = parsePipeline(text, { channels: 3 });
    assert.equal(pipeline.text, text);
    assert.deepEqual(pipeline.outputShape(300, 400), { height: 224, width: 224, channels: 3 });
    const out = run(text, 3, 300, 400, 1);
    assert.ok(out.every(Number.isFinite), text);
    // ImageNet normalization maps [0, 255] to about [-2.12, 2.64]; erased pixels are standard normal.
    assert.ok(
      out.every((v) => v > -8 && v < 8),
      text,
    );
  }
  const fm = parsePipeline('normalize(fashion-mnist)', { channels: 1 });
  assert.deepEqual(fm.outputShape(28, 28), { height: 28, width: 28, channels: 1 });
  const cifar = parsePipeline('pad_random_crop(32,4)|flip_lr|color_jitter(0.4,0.4,0.4)|normalize(inception)', { channels: 3 });
  assert.deepEqual(cifar.outputShape(32, 32), { height: 32, width: 32, channels: 3 });
  const out = run('pad_random_crop(32,4)|flip_lr|color_jitter(0.4,0.4,0.4)|normalize(inception)', 3, 32, 32, 2);
  assert.ok(out.every((v) => v >= -1 && v <= 1));
  assert.deepEqual(parsePipeline('resize(20, 30, bicubic)|center_crop(16)|normalize(imagenet)', { channels: 3 }).outputShape(50, 50), {
    height: 16,
    width: 16,
    channels: 3,
  });
});

test('same seed, same pixels; another seed, other pixels (every random pipeline)', () => {
  const texts = [DEIT_TRAIN, AUGREG_TRAIN, 'pad_random_crop(28,4)|flip_lr|randaug(2,10)|normalize(fashion-mnist)|random_erasing(1)'];
  for (const text of texts) {
    const channels = text.includes('fashion') ? 1 : 3;
    const [h, w] = channels === 1 ? [28, 28] : [120, 160];
    const seed = mixSeed(1, 2, 3, 0);
    const a = run(text, channels, h, w, seed);
    assert.deepEqual(run(text, channels, h, w, seed), a, text);
    assert.notDeepEqual(run(text, channels, h, w, mixSeed(1, 2, 4, 0)), a, text);
  }
  // The evaluation pipeline draws nothing.
  assert.deepEqual(run(EVAL, 3, 120, 160, 1), run(EVAL, 3, 120, 160, 2));
});

test('apply writes at the offset and checks the input', () => {
  const pipeline = parsePipeline('center_crop(4)|normalize(fashion-mnist)', { channels: 1 });
  const out = new Float32Array(40).fill(9);
  pipeline.apply(texturedImage(6, 6, 1), new Mulberry32(1), out, 20);
  assert.ok(out.subarray(0, 20).every((v) => v === 9) && out.subarray(36).every((v) => v === 9));
  assert.ok(out.subarray(20, 36).every((v) => v !== 9));
  assert.throws(() => pipeline.apply(texturedImage(6, 6, 3), new Mulberry32(1), out, 0), /built for 1-channel images, got 3/);
  assert.throws(() => pipeline.apply(texturedImage(6, 6, 1), new Mulberry32(1), out, 30), /do not fit an output of 40/);
});

test('a leading crop or resize is the head: region() then rest() draw and make what apply() does', () => {
  const heads = [
    DEIT_TRAIN,
    AUGREG_TRAIN,
    EVAL,
    'resize(40, 30, bicubic)|flip_lr|normalize(imagenet)|random_erasing(1)',
    'center_crop(48)|randaug(2, 9)|normalize(inception)',
  ];
  for (const text of heads) {
    const pipeline = parsePipeline(text, { channels: 3 });
    const head = pipeline.head;
    assert.ok(head, text);
    const shape = pipeline.outputShape(120, 160);
    const size = shape.height * shape.width * shape.channels;
    for (let seed = 0; seed < 6; seed++) {
      const img = texturedImage(120, 160, 3, seed);
      const whole = new Float32Array(size);
      pipeline.apply(img, new Mulberry32(seed), whole, 0);
      // The region taken as the transforms would take it, then the rest: the very same floats.
      const rng = new Mulberry32(seed);
      const region = head.region(img.height, img.width, rng);
      assert.ok(region, text);
      const resized = resize(img, region.height, region.width, region.interpolation, region.box);
      const split = new Float32Array(size);
      head.rest(region.crop ? crop(resized, region.crop) : resized, rng, split, 0);
      assert.deepEqual(split, whole, `${text} seed ${seed}`);
    }
  }
  // A centre crop larger than the image is the op's own (it pads): no region, and nothing drawn.
  const rng = new Mulberry32(3);
  assert.equal(parsePipeline('center_crop(48)|normalize(imagenet)', { channels: 3 }).head!.region(40, 60, rng), null);
  assert.equal(rng.next(), new Mulberry32(3).next());
  for (const text of [
    'flip_lr|random_resized_crop(32)|normalize(imagenet)',
    'pad_random_crop(32,4)|normalize(inception)',
    'normalize(imagenet)',
  ]) {
    assert.equal(parsePipeline(text, { channels: 3 }).head, null, text);
  }
});

test('parse errors name the op and the argument', () => {
  const bad: [string, number, RegExp][] = [
    ['random_rotate(10)|normalize(imagenet)', 3, /op 1: unknown op "random_rotate" \(known: random_resized_crop,/],
    ['resize(224)|normalize(imagenet)', 3, /op 1 \(resize\): takes 2 to 3 argument\(s\) \(height, width, interpolation=bilinear\), got 1/],
    ['flip_lr(1)|normalize(imagenet)', 3, /op 1 \(flip_lr\): takes 0 argument\(s\) \(no arguments\), got 1/],
    ['random_resized_crop(22.5)|normalize(imagenet)', 3, /op 1 \(random_resized_crop\): argument size must be an integer, got "22.5"/],
    ['random_resized_crop(224, 0, 1)|normalize(imagenet)', 3, /argument scale_min must be > 0 and <= 1, got 0/],
    ['random_resized_crop(224, 0.5, 0.2)|normalize(imagenet)', 3, /op 1 \(random_resized_crop\): scale_min 0.5 is above scale_max 0.2/],
    [
      'random_resized_crop(224, 0.1, 1, lanczos)|normalize(imagenet)',
      3,
      /argument interpolation must be one of bilinear, bicubic, got "lanczos"/,
    ],
    ['randaug(two, 15)|normalize(imagenet)', 3, /op 1 \(randaug\): argument num_layers must be an integer, got "two"/],
    ['color_jitter(0.4, -1, 0)|normalize(imagenet)', 3, /op 1 \(color_jitter\): argument contrast must be >= 0, got -1/],
    ['normalize(imagenet)|random_erasing(1.5)', 3, /op 2 \(random_erasing\): argument probability must be >= 0 and <= 1, got 1.5/],
    [
      'flip_lr|rand_augment(rand-m9-foo)|normalize(imagenet)',
      3,
      /op 2 \(rand_augment\): RandAugment config "rand-m9-foo": section "foo" is not a key/,
    ],
    [
      'normalize(cifar)',
      3,
      /op 1 \(normalize\): argument stats must be one of imagenet, inception, fashion-mnist or a mean followed by a std, got "cifar"/,
    ],
    ['normalize(half, 0.5)', 3, /op 1 \(normalize\): argument stats must be a number when a std follows, got "half"/],
    ['normalize(0.5, 0)', 3, /op 1 \(normalize\): argument std must be > 0, got 0/],
    ['normalize(0.5, 0.5, 1)', 3, /takes 1 to 2 argument\(s\) \(stats, \[std\]\), got 3/],
    ['randaug(2, 15, -1)|normalize(imagenet)', 3, /op 1 \(randaug\): argument translate_const must be >= 0, got -1/],
    ['normalize(imagenet)', 1, /op 1 \(normalize\): argument stats "imagenet" is for 3-channel images, the input has 1/],
    ['flip_lr|center_crop(8)', 3, /no normalize op/],
    ['normalize(imagenet)|normalize(imagenet)', 3, /normalize appears 2 times \(ops 1, 2\)/],
    ['normalize(imagenet)|flip_lr', 3, /op 2 \(flip_lr\) works on uint8 pixels and must come before normalize/],
    [
      'random_erasing(0.25)|normalize(imagenet)',
      3,
      /op 1 \(random_erasing\) works on normalized float pixels and must come after normalize/,
    ],
    ['flip_lr||normalize(imagenet)', 3, /op 2 is empty/],
    ['flip_lr|resize(3,4|normalize(imagenet)', 3, /op 2 "resize\(3,4" is not NAME or NAME\(ARG, \.\.\.\)/],
    ['normalize(imagenet)', 2, /input images have 1 or 3 channels, got 2/],
  ];
  for (const [text, channels, pattern] of bad) {
    assert.throws(() => parsePipeline(text, { channels }), pattern, text);
  }
});

test('normalize(MEAN, STD) applies one mean and std to every channel', () => {
  const out = new Float32Array(2 * 2 * 3);
  const img = { height: 2, width: 2, channels: 3, data: Uint8Array.from([0, 255, 51, 0, 255, 51, 0, 255, 51, 0, 255, 51]) };
  parsePipeline('normalize(0.5, 0.5)', { channels: 3 }).apply(img, new Mulberry32(1), out, 0);
  assert.deepEqual(
    [...out.subarray(0, 3)].map((v) => Math.round(v * 1e4) / 1e4),
    [-1, 1, -0.6],
  );
});

test("randaug's optional translate and cutout sizes shrink the geometric ops for small images", () => {
  const img = texturedImage(28, 28, 1, 4);
  const blank = (text: string): number => {
    const pipeline = parsePipeline(text, { channels: 1 });
    const out = new Float32Array(28 * 28);
    let count = 0;
    for (let s = 0; s < 300; s++) {
      pipeline.apply(img, new Mulberry32(mixSeed(9, s)), out, 0);
      if (out.every((v) => v === out[0])) count++;
    }
    return count;
  };
  // At 224-px constants, translate (150 px) and cutout (120 px squares) blank a 28-px image.
  assert.ok(blank('randaug(1, 15)|normalize(fashion-mnist)') > 30);
  assert.equal(blank('randaug(1, 15, 12.5, 5)|normalize(fashion-mnist)'), 0);
});

test('arguments: quoted strings, spaces and defaults are accepted; every op is in the table', () => {
  const p = parsePipeline(
    ' inception_crop( 224 , 8 ) | flip_lr() | rand_augment(\'rand-m9-mstd0.5-inc1\') | normalize("imagenet") | random_erasing ',
    { channels: 3 },
  );
  assert.deepEqual(p.outputShape(10, 10), { height: 224, width: 224, channels: 3 });
  assert.deepEqual(Object.keys(PIPELINE_OPS).sort(), [
    'center_crop',
    'color_jitter',
    'flip_lr',
    'inception_crop',
    'normalize',
    'pad_random_crop',
    'rand_augment',
    'randaug',
    'random_erasing',
    'random_resized_crop',
    'resize',
    'resize_short_center_crop',
  ]);
});
