// Seeded weight initialization in pure JS (tf.random* differs between backends and versions), so
// every worker starts from bit-identical weights on any machine.

import type { Recipe } from '../train/recipe.ts';
import type { ImageClassifier, ParamSpec } from './model.ts';

/** timm/DeiT (and ConvNeXt's convolutions): trunc_normal_(std=.02). */
const INIT_STD = 0.02;

/** xoshiro128** seeded through splitmix32: small, fast, and good enough for weight init. */
class Rng {
  private readonly s = new Uint32Array(4);
  private spare: number | null = null; // Box-Muller yields normals in pairs

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new Error(`seed must be a safe integer, got ${seed}`);
    let x = (seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32) | 0, 0x9e3779b9);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.s[i] = z ^ (z >>> 16);
    }
  }

  private nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    return ((this.nextU32() >>> 5) * 67108864 + (this.nextU32() >>> 6)) / 9007199254740992;
  }

  normal(): number {
    if (this.spare !== null) {
      const z = this.spare;
      this.spare = null;
      return z;
    }
    const r = Math.sqrt(-2 * Math.log(1 - this.uniform())); // 1 - u is in (0, 1]: log is finite
    const theta = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /**
   * N(0, std^2) truncated to [-2 std, 2 std] by rejection. Note timm's trunc_normal_(std=.02) has
   * absolute bounds a=-2, b=2, i.e. practically no truncation; we cut at 2 std as DeiT intended, so
   * the realized standard deviation is 0.8796 * std.
   */
  truncNormal(std: number): number {
    for (;;) {
      const z = this.normal();
      if (z >= -2 && z <= 2) return z * std;
    }
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * Fresh weights for a parameter table, in table order from one generator: truncated normal (std
 * 0.02, cut at 2 std) for 'trunc_normal' tensors, 1 for 'ones', 0 for 'zeros'.
 */
export function initFlatParams(specs: readonly ParamSpec[], numParams: number, seed: number): Float32Array {
  const flat = new Float32Array(numParams);
  const rng = new Rng(seed);
  for (const p of specs) {
    const view = flat.subarray(p.offset, p.offset + p.size);
    if (p.init === 'ones') view.fill(1);
    else if (p.init === 'trunc_normal') for (let i = 0; i < view.length; i++) view[i] = rng.truncNormal(INIT_STD);
  }
  return flat;
}

/** The bias of each classifier head: timm's head and head_dist, the convnet's head.fc. */
const HEAD_BIAS = /^head(_dist)?(\.fc)?\.bias$/;

/**
 * A run's starting weights: the model's seeded init, and big_vision's init_head_bias when the
 * recipe sets one (every head's bias at that value: with -6.9 each class's sigmoid starts near
 * 1/1000, so a sigmoid loss starts small).
 */
export function initialParams(model: ImageClassifier, recipe: Pick<Recipe, 'seed' | 'initHeadBias'>): Float32Array {
  const flat = model.initParams(recipe.seed);
  const bias = recipe.initHeadBias;
  if (bias !== undefined) for (const p of model.params) if (HEAD_BIAS.test(p.name)) flat.fill(bias, p.offset, p.offset + p.size);
  return flat;
}
