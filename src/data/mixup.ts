// Batch-level mixing of one micro-batch, on normalized float images (NHWC) and integer labels,
// giving soft targets (n × numClasses, each row summing to 1) in place of the labels:
// - timm's Mixup in 'batch' mode (DeiT): per micro-batch, mixup (lambda ~ Beta(0.8, 0.8)) or CutMix
//   (lambda ~ Beta(1, 1), a box pasted from the partner, lambda corrected to the box's true area),
//   the partner of sample i being sample n-1-i (x.flip(0)), label smoothing folded into the targets;
// - big_vision's mixup (AugReg): lambda ~ Beta(p, p) taken as max(lambda, 1 - lambda) (big_vision
//   sorts its Dirichlet draw in decreasing order), the partner of sample i being sample i-1
//   (jnp.roll(x, 1, axis=0)).
// Arithmetic follows the references' float32 steps (each product rounded to float32, then the sum).
// Every draw comes from a generator seeded by (run seed, step, micro-batch index within the global
// batch), so a micro-batch mixes the same way whichever rank holds it.
import { Mulberry32, gaussian, mixSeed } from '../common/random.ts';
import type { RawImage } from './source.ts';

/** Salt that separates the mixing stream from other uses of the run seed. */
const MIX_STREAM = 0x6d1c;

export type ImageShape = Pick<RawImage, 'height' | 'width' | 'channels'>;

/**
 * Which mixing, without its label smoothing (a recipe keeps smoothing with the other regularizers).
 * Names follow the references: timm's `Mixup(mixup_alpha, cutmix_alpha, prob, switch_prob)` (mode
 * 'batch', correct_lam on, no cutmix_minmax) and big_vision's `mixup(p)`.
 */
export type MixSettings =
  | { kind: 'timm'; mixupAlpha: number; cutmixAlpha: number; prob: number; switchProb: number }
  | { kind: 'big_vision'; p: number };

/**
 * How a micro-batch is mixed. `labelSmoothing` uses timm's convention for both kinds: off = s / K,
 * on = 1 - s + off. DeiT uses timm's mixup 0.8, CutMix 1.0, prob 1, switch 0.5 with smoothing 0.1;
 * AugReg's light / medium / strong levels use big_vision's p = 0.2 / 0.5 / 0.8 (its light2 / medium2
 * / strong2) and no smoothing (its one-hot labels are plain).
 */
export type MixConfig = MixSettings & { labelSmoothing: number };
export type TimmMixConfig = Extract<MixConfig, { kind: 'timm' }>;
export type BigVisionMixConfig = Extract<MixConfig, { kind: 'big_vision' }>;

/** The config of `settings` with `labelSmoothing` folded into its targets. */
export function mixConfigOf(settings: MixSettings, labelSmoothing: number): MixConfig {
  return { ...settings, labelSmoothing };
}

export type MixMode = 'mixup' | 'cutmix' | 'none';

export interface MixResult {
  /** n × numClasses soft targets, row-major; each row sums to 1. */
  targets: Float32Array;
  /** Weight of each sample's own image and label (1 when nothing was mixed). */
  lam: number;
  mode: MixMode;
}

/** The generator of micro-batch `microBatchIndex` (counted over the global batch) of step `step`. */
export function mixRng(seed: number, step: number, microBatchIndex: number): Mulberry32 {
  return new Mulberry32(mixSeed(seed, MIX_STREAM, step, microBatchIndex));
}

/** Marsaglia and Tsang's squeeze constant: u < 1 - 0.0331 x^4 accepts without a logarithm. */
const GAMMA_SQUEEZE = 0.0331;

/**
 * The natural log of a Gamma(shape, 1) draw, by Marsaglia and Tsang's method (2000). For shape < 1
 * it draws Gamma(shape + 1) and multiplies by U^(1/shape); the log form keeps that product from
 * underflowing to 0 for small shapes.
 */
function logGammaDraw(rng: Mulberry32, shape: number): number {
  if (shape < 1) {
    const boosted = logGammaDraw(rng, shape + 1);
    return boosted + Math.log(1 - rng.next()) / shape;
  }
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    const x = gaussian(rng);
    const t = 1 + c * x;
    if (t <= 0) continue;
    const v = t * t * t;
    const u = 1 - rng.next();
    const x2 = x * x;
    // The squeeze accepts most draws cheaply; the log test decides the rest exactly.
    if (u < 1 - GAMMA_SQUEEZE * x2 * x2 || Math.log(u) < 0.5 * x2 + d * (1 - v + Math.log(v))) return Math.log(d * v);
  }
}

/** A Beta(a, b) draw: X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b). */
export function sampleBeta(rng: Mulberry32, a: number, b: number): number {
  if (!(a > 0 && Number.isFinite(a)) || !(b > 0 && Number.isFinite(b)))
    throw new RangeError(`Beta parameters must be positive and finite, got (${a}, ${b})`);
  const logX = logGammaDraw(rng, a);
  const logY = logGammaDraw(rng, b);
  return 1 / (1 + Math.exp(logY - logX));
}

function checkRange(kind: string, key: string, value: number, min: number, max: number, maxIncluded = true): void {
  const ok = Number.isFinite(value) && value >= min && (maxIncluded ? value <= max : value < max);
  if (!ok) throw new RangeError(`mix config (${kind}): ${key} must be in [${min}, ${max}${maxIncluded ? ']' : ')'}, got ${value}`);
}

/** Throws a RangeError naming the key when `config` cannot be used. */
function validateMixConfig(config: MixConfig): void {
  checkRange(config.kind, 'labelSmoothing', config.labelSmoothing, 0, 1, false);
  if (config.kind === 'big_vision') {
    checkRange(config.kind, 'p', config.p, 0, Infinity, false);
    return;
  }
  checkRange(config.kind, 'mixupAlpha', config.mixupAlpha, 0, Infinity, false);
  checkRange(config.kind, 'cutmixAlpha', config.cutmixAlpha, 0, Infinity, false);
  checkRange(config.kind, 'prob', config.prob, 0, 1);
  checkRange(config.kind, 'switchProb', config.switchProb, 0, 1);
  if (config.mixupAlpha === 0 && config.cutmixAlpha === 0) {
    throw new RangeError('mix config (timm): mixupAlpha and cutmixAlpha are both 0; leave mixing off instead');
  }
}

function checkBatch(images: Float32Array, labels: ArrayLike<number>, n: number, shape: ImageShape, numClasses: number): void {
  for (const [key, value] of [
    ['n', n],
    ['height', shape.height],
    ['width', shape.width],
    ['channels', shape.channels],
    ['numClasses', numClasses],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`${key} must be a positive integer, got ${value}`);
  }
  const expected = n * shape.height * shape.width * shape.channels;
  if (images.length !== expected) {
    throw new RangeError(
      `images hold ${images.length} floats, expected n × height × width × channels = ${n} × ${shape.height} × ${shape.width} × ${shape.channels} = ${expected}`,
    );
  }
  if (labels.length !== n) throw new RangeError(`labels hold ${labels.length} entries, expected n = ${n}`);
  for (let i = 0; i < n; i++) {
    const label = labels[i]!;
    if (!Number.isInteger(label) || label < 0 || label >= numClasses)
      throw new RangeError(`label ${label} of sample ${i} is outside the ${numClasses} classes`);
  }
}

/**
 * timm's mixup_target: lam × smoothed one-hot(label i) + (1 - lam) × smoothed one-hot(label of
 * i's partner), with off = s / K and on = 1 - s + off, in float32 as timm computes it.
 */
function softTargets(
  labels: ArrayLike<number>,
  n: number,
  numClasses: number,
  smoothing: number,
  lam: number,
  partner: (i: number) => number,
): Float32Array {
  const off = Math.fround(smoothing / numClasses);
  const on = Math.fround(1 - smoothing + smoothing / numClasses);
  const own = Math.fround(lam);
  const other = Math.fround(1 - lam);
  const cell = (a: number, b: number): number => Math.fround(a * own) + Math.fround(b * other);
  const targets = new Float32Array(n * numClasses);
  for (let i = 0; i < n; i++) {
    const row = targets.subarray(i * numClasses, (i + 1) * numClasses);
    const label = labels[i]!;
    const partnerLabel = labels[partner(i)]!;
    row.fill(cell(off, off));
    row[partnerLabel] = cell(off, on);
    row[label] = cell(on, label === partnerLabel ? on : off);
  }
  return targets;
}

/** Smoothed one-hot targets for a micro-batch that is not mixed, so the model takes one target format. */
export function plainTargets(labels: ArrayLike<number>, n: number, numClasses: number, labelSmoothing: number): Float32Array {
  return softTargets(labels, n, numClasses, labelSmoothing, 1, (i) => i);
}

/** A CutMix box: rows [top, bottom) and columns [left, right). */
export interface CutBox {
  top: number;
  bottom: number;
  left: number;
  right: number;
}

/**
 * timm's rand_bbox (no margin): a box of (1 - lam)'s square root times the image's sides, centred
 * on a uniform pixel and clipped to the image. Clipping makes its area smaller than 1 - lam, hence
 * the corrected lam.
 */
export function cutmixBox(height: number, width: number, lam: number, rng: Mulberry32): CutBox {
  const ratio = Math.sqrt(1 - lam);
  const halfH = Math.floor(Math.trunc(height * ratio) / 2);
  const halfW = Math.floor(Math.trunc(width * ratio) / 2);
  const cy = Math.floor(rng.next() * height);
  const cx = Math.floor(rng.next() * width);
  const clip = (v: number, max: number): number => Math.min(Math.max(v, 0), max);
  return { top: clip(cy - halfH, height), bottom: clip(cy + halfH, height), left: clip(cx - halfW, width), right: clip(cx + halfW, width) };
}

/** lam = 1 - box area / image area (timm's correct_lam). */
function boxLam(box: CutBox, height: number, width: number): number {
  return 1 - ((box.bottom - box.top) * (box.right - box.left)) / (height * width);
}

/**
 * images[i] = lam × images[i] + (1 - lam) × ORIGINAL images[n-1-i], in place. Each pair (i, n-1-i)
 * is computed from both originals at once, so no image is read after it was overwritten.
 */
function blendWithFlipped(images: Float32Array, n: number, imageSize: number, lam: number): void {
  const own = Math.fround(lam);
  const other = Math.fround(1 - lam);
  for (let i = 0; i <= (n - 1) >> 1; i++) {
    const a = i * imageSize;
    const b = (n - 1 - i) * imageSize;
    for (let k = 0; k < imageSize; k++) {
      const x = images[a + k]!;
      const y = images[b + k]!;
      images[a + k] = Math.fround(x * own) + Math.fround(y * other);
      images[b + k] = Math.fround(y * own) + Math.fround(x * other);
    }
  }
}

/**
 * images[i] = lam × images[i] + (1 - lam) × ORIGINAL images[i-1 mod n], in place: walking from the
 * last image down, images[i-1] is still original when images[i] reads it; images[0] takes its
 * partner from a copy of the last image made before the walk.
 */
function blendWithRolled(images: Float32Array, n: number, imageSize: number, lam: number): void {
  const own = Math.fround(lam);
  const other = Math.fround(1 - lam);
  const last = images.slice((n - 1) * imageSize, n * imageSize);
  for (let i = n - 1; i >= 0; i--) {
    const a = i * imageSize;
    const partner = i > 0 ? images.subarray(a - imageSize, a) : last;
    for (let k = 0; k < imageSize; k++) images[a + k] = Math.fround(images[a + k]! * own) + Math.fround(partner[k]! * other);
  }
}

/** Swaps the box between each pair (i, n-1-i): every image takes the box from its partner's original. */
function swapBoxWithFlipped(images: Float32Array, n: number, shape: ImageShape, box: CutBox): void {
  const { height, width, channels } = shape;
  const imageSize = height * width * channels;
  for (let i = 0; i < n >> 1; i++) {
    const a = i * imageSize;
    const b = (n - 1 - i) * imageSize;
    for (let row = box.top; row < box.bottom; row++) {
      const from = (row * width + box.left) * channels;
      const to = (row * width + box.right) * channels;
      for (let k = from; k < to; k++) {
        const t = images[a + k]!;
        images[a + k] = images[b + k]!;
        images[b + k] = t;
      }
    }
  }
}

/** timm's _params_per_batch: whether to mix, mixup or CutMix, and the drawn lam. */
function timmParams(config: TimmMixConfig, rng: Mulberry32): { lam: number; cutmix: boolean } {
  if (!(rng.next() < config.prob)) return { lam: 1, cutmix: false };
  const cutmix = config.mixupAlpha > 0 && config.cutmixAlpha > 0 ? rng.next() < config.switchProb : config.cutmixAlpha > 0;
  const alpha = cutmix ? config.cutmixAlpha : config.mixupAlpha;
  return { lam: sampleBeta(rng, alpha, alpha), cutmix };
}

function mixTimm(
  images: Float32Array,
  labels: ArrayLike<number>,
  n: number,
  shape: ImageShape,
  numClasses: number,
  config: TimmMixConfig,
  rng: Mulberry32,
): MixResult {
  const params = timmParams(config, rng);
  if (params.lam === 1) return { targets: plainTargets(labels, n, numClasses, config.labelSmoothing), lam: 1, mode: 'none' };
  let lam = params.lam;
  if (params.cutmix) {
    const box = cutmixBox(shape.height, shape.width, lam, rng);
    lam = boxLam(box, shape.height, shape.width);
    swapBoxWithFlipped(images, n, shape, box);
  } else {
    blendWithFlipped(images, n, shape.height * shape.width * shape.channels, lam);
  }
  const targets = softTargets(labels, n, numClasses, config.labelSmoothing, lam, (i) => n - 1 - i);
  return { targets, lam, mode: params.cutmix ? 'cutmix' : 'mixup' };
}

/**
 * big_vision with fold_in=None draws one lam per step for the whole global batch and rolls within
 * each device's batch; here the draw is per micro-batch (as its fold_in="device"), because the
 * micro-batch is the unit every worker count shares.
 */
function mixBigVision(
  images: Float32Array,
  labels: ArrayLike<number>,
  n: number,
  shape: ImageShape,
  numClasses: number,
  config: BigVisionMixConfig,
  rng: Mulberry32,
): MixResult {
  // big_vision skips mixup when p is 0.
  if (config.p === 0) return { targets: plainTargets(labels, n, numClasses, config.labelSmoothing), lam: 1, mode: 'none' };
  const draw = sampleBeta(rng, config.p, config.p);
  const lam = Math.max(draw, 1 - draw);
  blendWithRolled(images, n, shape.height * shape.width * shape.channels, lam);
  const targets = softTargets(labels, n, numClasses, config.labelSmoothing, lam, (i) => (i + n - 1) % n);
  return { targets, lam, mode: 'mixup' };
}

/**
 * Mixes micro-batch `images` (n × height × width × channels, NHWC) IN PLACE and returns the soft
 * targets. An odd n is allowed (timm asserts an even batch): with the flip partner the middle
 * sample pairs with itself, which leaves its image and target as they were (up to float32 rounding).
 */
export function mixBatch(
  images: Float32Array,
  labels: ArrayLike<number>,
  n: number,
  shape: ImageShape,
  numClasses: number,
  config: MixConfig,
  rng: Mulberry32,
): MixResult {
  checkBatch(images, labels, n, shape, numClasses);
  validateMixConfig(config);
  return config.kind === 'timm'
    ? mixTimm(images, labels, n, shape, numClasses, config, rng)
    : mixBigVision(images, labels, n, shape, numClasses, config, rng);
}
