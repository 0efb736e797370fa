// Test inputs shared by the model tests: deterministic batches and parameters far from the init.
import assert from 'node:assert/strict';
import { selectBackend } from '../../src/model/backend.ts';
import type { ImageClassifier, ModelConfig, TrainContext } from '../../src/model/model.ts';

/** Why the tensorflow engine cannot be tested here (it did not build or load), or false. */
export const tensorflowUnavailable: string | false = await selectBackend({ requested: 'tensorflow' }).then(
  () => false,
  (err: Error) => `the tensorflow engine is unavailable (see npm ci's "vit-dist engine" lines): ${err.message}`,
);

/** The engines workers train on, each with its skip reason where it does not load. */
export const ENGINES = [
  { name: 'wasm', skip: false },
  { name: 'tensorflow', skip: tensorflowUnavailable },
] as const;
export type EngineName = (typeof ENGINES)[number]['name'];

/** Deterministic pseudo-random numbers for test inputs (not the model's init PRNG). */
export function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

export function randomBatch(config: ModelConfig, n: number, seed: number): { images: Float32Array; labels: Int32Array } {
  const rand = lcg(seed);
  const images = new Float32Array(n * config.imageSize ** 2 * config.inChannels).map(() => 2 * rand() - 1);
  const labels = new Int32Array(n).map(() => Math.floor(rand() * config.numClasses));
  return { images, labels };
}

/** erf in float64 to ~1e-15, for checking kernels' approximations: Maclaurin series for |x| < 3, the continued fraction of erfc beyond (where erf is 1 to 2e-5). */
export function erf(x: number): number {
  if (Math.abs(x) >= 3) {
    let fraction = 0;
    for (let n = 60; n >= 1; n--) fraction = n / 2 / (Math.abs(x) + fraction);
    const erfc = Math.exp(-x * x) / Math.sqrt(Math.PI) / (Math.abs(x) + fraction);
    return Math.sign(x) * (1 - erfc);
  }
  let term = x;
  let sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (-x * x) / n;
    sum += term / (2 * n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

/** Parameters far from the init so every term of the gradient matters (norm affine, biases). */
export function scrambledParams(model: ImageClassifier, seed: number): Float32Array {
  const rand = lcg(seed);
  const flat = new Float32Array(model.numParams);
  for (const p of model.params) {
    for (let i = p.offset; i < p.offset + p.size; i++) {
      const r = 2 * rand() - 1;
      flat[i] = p.init === 'ones' ? 1 + 0.3 * r : p.init === 'zeros' ? 0.2 * r : 0.5 * r;
    }
  }
  return flat;
}

/** The model's loss and a fresh gradient buffer filled by it. */
export function lossAndGrad(model: ImageClassifier, images: Float32Array, labels: Int32Array, n: number, ctx?: TrainContext) {
  const grad = new Float32Array(model.numParams);
  return { ...model.lossAndGrad(images, labels, n, grad, ctx), grad };
}

/**
 * Checks lossAndGrad's gradient at `params` against central finite differences of its own lossSum
 * (so of the whole training loss: both heads of a distilled model, the context's masks and label
 * smoothing), at 3 random entries of every parameter tensor; disposes the model's parameters.
 */
export function checkGradients(model: ImageClassifier, params: Float32Array, seed: number, ctx?: TrainContext): void {
  const n = 3;
  const { images, labels } = randomBatch(model.config, n, seed + 1);
  model.setParams(params);
  const { grad } = lossAndGrad(model, images, labels, n, ctx);
  const rand = lcg(seed + 2);
  const h = 1e-2;
  const loss = (flat: Float32Array) => {
    model.setParams(flat);
    return lossAndGrad(model, images, labels, n, ctx).lossSum;
  };
  for (const p of model.params) {
    for (let s = 0; s < 3; s++) {
      const i = p.offset + Math.floor(rand() * p.size);
      // Richardson extrapolation of two central differences cancels the h^2 error term, so the
      // comparison is limited by float32 rounding in the loss, not by the step size.
      const central = (step: number) => {
        const plus = params.slice();
        const minus = params.slice();
        plus[i]! += step;
        minus[i]! -= step;
        return (loss(plus) - loss(minus)) / (plus[i]! - minus[i]!);
      };
      const numeric = (4 * central(h / 2) - central(h)) / 3;
      const error = Math.abs(grad[i]! - numeric) / Math.max(1, Math.abs(numeric));
      assert.ok(error < 1e-3, `${p.name}[${i - p.offset}]: analytic ${grad[i]} numeric ${numeric}`);
    }
  }
  model.disposeParams();
}

export function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what = ''): void {
  assert.equal(got.length, want.length);
  for (let i = 0; i < got.length; i++)
    assert.ok(Math.abs(got[i]! - want[i]!) <= tol, `${what}[${i}]: ${got[i]} vs ${want[i]} (tol ${tol})`);
}

/** `engine` and the plain-JS cpu backend give one loss, one count and one gradient (to float32 rounding) for `model` at `params`. */
export async function assertBackendsAgree(
  model: ImageClassifier,
  params: Float32Array,
  seed: number,
  engine: EngineName = 'wasm',
): Promise<void> {
  const { images, labels } = randomBatch(model.config, 4, seed);
  const run = async (backend: 'cpu' | EngineName) => {
    await selectBackend({ requested: backend });
    model.setParams(params);
    const out = lossAndGrad(model, images, labels, 4);
    model.disposeParams();
    return out;
  };
  const other = await run(engine);
  const cpu = await run('cpu');
  assert.ok(Math.abs(other.lossSum - cpu.lossSum) < 1e-4 * Math.abs(cpu.lossSum), `${engine} loss ${other.lossSum} vs cpu ${cpu.lossSum}`);
  assert.equal(other.correct, cpu.correct);
  assertClose(other.grad, cpu.grad, 1e-4 * Math.max(...cpu.grad.map(Math.abs)), engine);
}
