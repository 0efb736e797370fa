import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createShardOptimizer, type OptimizerConfig } from '../../src/train/optimizer.ts';
import { clipFactor, sumOfSquares } from '../../src/train/clip.ts';
import { shardRange } from '../../src/common/shard.ts';
import { Mulberry32 } from '../../src/common/random.ts';

interface Fixture {
  params0: number[];
  mask: number[];
  grads: number[][];
  lrs: number[];
  gradScales: number[];
  cases: Record<string, { config: OptimizerConfig; reference: string; trajectory: number[][] }>;
}

// Generated once by test/fixtures/make_optimizer_vectors.py with Debian's python3-torch.
const fixture = JSON.parse(readFileSync(new URL('../fixtures/optimizer-torch.json', import.meta.url), 'utf8')) as Fixture;
/** float32 rounding of the two implementations' different operation orders. */
const TORCH_TOLERANCE = 1e-6;

for (const [name, { config, reference, trajectory }] of Object.entries(fixture.cases)) {
  test(`${name} matches ${reference} over five steps`, () => {
    const params = Float32Array.from(fixture.params0);
    const mask = Uint8Array.from(fixture.mask);
    const optimizer = createShardOptimizer(config, params.length);
    fixture.grads.forEach((g, k) => {
      optimizer.step(params, Float32Array.from(g), mask, fixture.gradScales[k]!, fixture.lrs[k]!);
      const expected = trajectory[k]!;
      for (let i = 0; i < params.length; i++) {
        assert.ok(
          Math.abs(params[i]! - expected[i]!) <= TORCH_TOLERANCE * Math.max(1, Math.abs(expected[i]!)),
          `step ${k} element ${i}: ${params[i]} vs torch ${expected[i]}`,
        );
      }
    });
    assert.equal(optimizer.steps, fixture.grads.length);
  });
}

const adam = (overrides: Partial<Extract<OptimizerConfig, { name: 'adam' | 'adamw' }>> = {}): OptimizerConfig => ({
  name: 'adamw',
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  weightDecay: 0.05,
  decayConvention: 'lr-scaled',
  peakLr: 1e-3,
  ...overrides,
});

test('decay conventions: lr-scaled removes lr x wd, absolute removes wd x lr / peak lr (zero gradient)', () => {
  const zero = new Float32Array(2);
  const mask = Uint8Array.of(1, 0);
  const scaled = Float32Array.of(1, 1);
  createShardOptimizer(adam({ weightDecay: 0.5 }), 2).step(scaled, zero, mask, 1, 0.1);
  assert.equal(scaled[0], Math.fround(1 - 0.1 * 0.5));
  assert.equal(scaled[1], 1, 'no decay where the mask is 0');
  const absolute = Float32Array.of(1, 1);
  createShardOptimizer(adam({ name: 'adam', weightDecay: 1e-4, decayConvention: 'absolute', peakLr: 0.4 }), 2).step(
    absolute,
    zero,
    mask,
    1,
    0.1,
  );
  assert.equal(absolute[0], Math.fround(1 - 1e-4 * (0.1 / 0.4)));
  assert.equal(absolute[1], 1);
});

test('SGD: the momentum buffer accumulates, weight decay is L2 on masked elements only', () => {
  const params = Float32Array.of(2, 2);
  const sgd = createShardOptimizer({ name: 'sgd', momentum: 0.9, weightDecay: 0.1 }, 2);
  const grad = Float32Array.of(1, 1);
  sgd.step(params, grad, Uint8Array.of(1, 0), 1, 0.5);
  // buf = g + wd x p = 1.2 (masked), 1; p -= 0.5 x buf.
  assert.deepEqual([...sgd.state().momentum!], [Math.fround(1.2), 1]);
  assert.deepEqual([...params], [Math.fround(2 - 0.6), 1.5]);
  sgd.step(params, grad, Uint8Array.of(1, 0), 1, 0.5);
  assert.equal(sgd.state().momentum![1], Math.fround(0.9 * 1 + 1));
});

function randomVector(n: number, seed: number, scale: number): Float32Array {
  const rng = new Mulberry32(seed);
  return Float32Array.from({ length: n }, () => (rng.next() - 0.5) * scale);
}

const SHARDING_CASES: OptimizerConfig[] = [
  adam(),
  adam({ name: 'adam', weightDecay: 1e-4, decayConvention: 'absolute', peakLr: 4e-3 }),
  { name: 'sgd', momentum: 0.9, weightDecay: 1e-4 },
];

for (const config of SHARDING_CASES) {
  const label = `${config.name}${'decayConvention' in config ? ` (${config.decayConvention})` : ''}`;
  test(`${label}: the sharded step (ZeRO-1, global-norm clip over shards) equals the unsharded reference`, () => {
    const n = 1003;
    const mask = Uint8Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 0 : 1));
    const maxNorm = 1;
    for (const worldSize of [1, 2, 3, 4, 8]) {
      const reference = randomVector(n, 1, 2);
      const sharded = reference.slice();
      const whole = createShardOptimizer(config, n);
      const ranks = Array.from({ length: worldSize }, (_, r) => {
        const { start, end } = shardRange(n, worldSize, r);
        return { start, end, optimizer: createShardOptimizer(config, end - start) };
      });
      for (let step = 0; step < 4; step++) {
        const grad = randomVector(n, 100 + step, 10);
        const lr = 1e-3 * (step + 1);
        const norm = Math.sqrt(sumOfSquares(grad));
        whole.step(reference, grad, mask, clipFactor(norm, maxNorm), lr);
        // Each rank's sum of squares, summed in rank order, then each rank updates its shard.
        const shardedNorm = Math.sqrt(ranks.reduce((total, { start, end }) => total + sumOfSquares(grad.subarray(start, end)), 0));
        assert.ok(Math.abs(shardedNorm - norm) < 1e-9 * norm, 'the norm from shards equals the whole norm');
        for (const { start, end, optimizer } of ranks) {
          optimizer.step(
            sharded.subarray(start, end),
            grad.subarray(start, end),
            mask.subarray(start, end),
            clipFactor(shardedNorm, maxNorm),
            lr,
          );
        }
        // The clip factor can differ in its last bit when the float64 sums associate differently;
        // the parameters must still agree to float32 rounding.
        for (let i = 0; i < n; i++)
          assert.ok(
            Math.abs(sharded[i]! - reference[i]!) <= 1e-7 * Math.max(1, Math.abs(reference[i]!)),
            `N=${worldSize} step ${step} element ${i}`,
          );
      }
      // The shards' state tensors laid end to end are the whole optimizer's state.
      for (const name of whole.stateNames) {
        const joined = new Float32Array(n);
        for (const { start, optimizer } of ranks) joined.set(optimizer.state()[name]!, start);
        for (let i = 0; i < n; i++)
          assert.ok(
            Math.abs(joined[i]! - whole.state()[name]![i]!) <= 1e-6 * Math.max(1e-3, Math.abs(whole.state()[name]![i]!)),
            `N=${worldSize} state ${name} element ${i}`,
          );
      }
    }
  });
}

test('restore continues a run exactly, and refuses state of another optimizer or shard size', () => {
  const n = 50;
  const mask = new Uint8Array(n).fill(1);
  const straight = randomVector(n, 7, 1);
  const resumed = straight.slice();
  const a = createShardOptimizer(adam(), n);
  for (let s = 0; s < 3; s++) a.step(straight, randomVector(n, 20 + s, 1), mask, 1, 1e-3);
  const b = createShardOptimizer(adam(), n);
  for (let s = 0; s < 2; s++) b.step(resumed, randomVector(n, 20 + s, 1), mask, 1, 1e-3);
  const saved = Object.fromEntries(Object.entries(b.state()).map(([k, t]) => [k, t.slice()]));
  const c = createShardOptimizer(adam(), n);
  c.restore(saved, b.steps);
  c.step(resumed, randomVector(n, 22, 1), mask, 1, 1e-3);
  assert.deepEqual([...resumed], [...straight], 'bit-identical after a restore');
  assert.equal(c.steps, 3);

  assert.deepEqual(createShardOptimizer({ name: 'sgd', momentum: 0.9, weightDecay: 0 }, n).stateNames, ['momentum']);
  assert.throws(
    () => createShardOptimizer({ name: 'sgd', momentum: 0.9, weightDecay: 0 }, n).restore(saved, 2),
    /holds tensors \[m, v\], this optimizer keeps \[momentum\]/,
  );
  assert.throws(() => createShardOptimizer(adam(), n + 1).restore(saved, 2), /"m" has 50 elements, the shard has 51/);
});

test('a shard of the wrong length is refused', () => {
  assert.throws(
    () => createShardOptimizer(adam(), 3).step(new Float32Array(4), new Float32Array(4), new Uint8Array(4), 1, 1),
    /length mismatch/,
  );
  assert.throws(
    () =>
      createShardOptimizer({ name: 'sgd', momentum: 0.9, weightDecay: 0 }, 3).step(
        new Float32Array(3),
        new Float32Array(2),
        new Uint8Array(3),
        1,
        1,
      ),
    /length mismatch/,
  );
});
