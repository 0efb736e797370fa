import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { adamwStep, createAdamWState } from '../../src/train/adamw.ts';
import { clipFactor, sumOfSquares } from '../../src/train/clip.ts';
import { shardRange } from '../../src/comm/shard.ts';
import { Mulberry32 } from '../../src/data/random.ts';

const fixture = JSON.parse(readFileSync(new URL('../fixtures/adamw-torch.json', import.meta.url), 'utf8')) as {
  config: { beta1: number; beta2: number; eps: number; weightDecay: number };
  params0: number[]; grads: number[][]; lrs: number[]; trajectory: number[][];
};

test('AdamW matches torch.optim.AdamW over five steps (vectors from test/fixtures/make_adamw_vectors.py)', () => {
  const params = Float32Array.from(fixture.params0);
  const state = createAdamWState(params.length);
  const mask = new Uint8Array(params.length).fill(1);
  fixture.grads.forEach((g, k) => {
    adamwStep(fixture.config, state, { params, grad: Float32Array.from(g), decayMask: mask, gradScale: 1, lr: fixture.lrs[k]! });
    const expected = fixture.trajectory[k]!;
    for (let i = 0; i < params.length; i++) {
      assert.ok(Math.abs(params[i]! - expected[i]!) <= 1e-6 * Math.max(1, Math.abs(expected[i]!)), `step ${k} element ${i}: ${params[i]} vs torch ${expected[i]}`);
    }
  });
});

test('weight decay applies only where the mask says so', () => {
  const config = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.5 };
  const params = Float32Array.of(1, 1);
  adamwStep(config, createAdamWState(2), { params, grad: new Float32Array(2), decayMask: Uint8Array.of(1, 0), gradScale: 1, lr: 0.1 });
  assert.equal(params[0], Math.fround(1 - 0.1 * 0.5));
  assert.equal(params[1], 1);
});

function randomVector(n: number, seed: number, scale: number): Float32Array {
  const rng = new Mulberry32(seed);
  return Float32Array.from({ length: n }, () => (rng.next() - 0.5) * scale);
}

test('the sharded step (ZeRO-1, global-norm clip over shards) equals the unsharded reference bit for bit', () => {
  const n = 1003;
  const config = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.05 };
  const mask = Uint8Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 0 : 1));
  const maxNorm = 1;
  for (const worldSize of [1, 2, 3, 4, 8]) {
    const reference = randomVector(n, 1, 2);
    const sharded = reference.slice();
    const referenceState = createAdamWState(n);
    const shardStates = Array.from({ length: worldSize }, (_, r) => {
      const { start, end } = shardRange(n, worldSize, r);
      return createAdamWState(end - start);
    });
    for (let step = 0; step < 4; step++) {
      const grad = randomVector(n, 100 + step, 10);
      const lr = 1e-3 * (step + 1);
      // Reference: one optimizer over the whole vector.
      const norm = Math.sqrt(sumOfSquares(grad));
      adamwStep(config, referenceState, { params: reference, grad, decayMask: mask, gradScale: clipFactor(norm, maxNorm), lr });
      // Sharded: each rank's sum of squares, summed in rank order, then each rank updates its shard.
      let total = 0;
      for (let r = 0; r < worldSize; r++) {
        const { start, end } = shardRange(n, worldSize, r);
        total += sumOfSquares(grad.subarray(start, end));
      }
      const shardedNorm = Math.sqrt(total);
      assert.ok(Math.abs(shardedNorm - norm) < 1e-9 * norm, 'the norm from shards equals the whole norm');
      for (let r = 0; r < worldSize; r++) {
        const { start, end } = shardRange(n, worldSize, r);
        adamwStep(config, shardStates[r]!, { params: sharded.subarray(start, end), grad: grad.subarray(start, end), decayMask: mask.subarray(start, end), gradScale: clipFactor(shardedNorm, maxNorm), lr });
      }
      // The factor can differ in its last bit when the float64 sums associate differently; the
      // parameters must still agree to float32 rounding.
      for (let i = 0; i < n; i++) assert.ok(Math.abs(sharded[i]! - reference[i]!) <= 1e-7 * Math.max(1, Math.abs(reference[i]!)), `N=${worldSize} step ${step} element ${i}`);
    }
  }
});

test('a shard of the wrong length is refused', () => {
  assert.throws(() => adamwStep({ beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 }, createAdamWState(3), {
    params: new Float32Array(4), grad: new Float32Array(4), decayMask: new Uint8Array(4), gradScale: 1, lr: 1,
  }), /length mismatch/);
});
