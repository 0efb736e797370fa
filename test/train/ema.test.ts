import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ShardEma } from '../../src/train/ema.ts';
import { shardRange } from '../../src/common/shard.ts';

test('ema = decay x ema + (1 - decay) x p after each update, starting from the initial weights', () => {
  const initial = Float32Array.of(1, -2);
  const ema = new ShardEma(0.9, initial);
  initial[0] = 100;
  assert.deepEqual([...ema.values], [1, -2], 'the average keeps its own copy of the initial weights');
  ema.update(Float32Array.of(3, 0));
  assert.deepEqual([...ema.values], [Math.fround(0.9 * 1 + 0.1 * 3), Math.fround(0.9 * -2)]);
});

test('held weights converge geometrically: ema_k = p + (ema_0 - p) x decay^k', () => {
  const decay = 0.99;
  const ema = new ShardEma(decay, Float32Array.of(0));
  const p = Float32Array.of(1);
  for (let k = 0; k < 200; k++) ema.update(p);
  assert.ok(Math.abs(ema.values[0]! - (1 - decay ** 200)) < 1e-5);
});

test('decay 1 freezes the average; decay 0 follows the weights', () => {
  const frozen = new ShardEma(1, Float32Array.of(5));
  frozen.update(Float32Array.of(7));
  assert.equal(frozen.values[0], 5);
  const follows = new ShardEma(0, Float32Array.of(5));
  follows.update(Float32Array.of(7));
  assert.equal(follows.values[0], 7);
});

test('per-shard averages laid end to end equal the average of the whole vector', () => {
  const n = 101;
  const weights = (step: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i + step));
  const whole = new ShardEma(0.99996, weights(0));
  const shards = [0, 1, 2]
    .map((r) => shardRange(n, 3, r))
    .map(({ start, end }) => ({ start, end, ema: new ShardEma(0.99996, weights(0).subarray(start, end)) }));
  for (let step = 1; step <= 5; step++) {
    const w = weights(step);
    whole.update(w);
    for (const s of shards) s.ema.update(w.subarray(s.start, s.end));
  }
  const joined = new Float32Array(n);
  for (const s of shards) joined.set(s.ema.values, s.start);
  assert.deepEqual([...joined], [...whole.values]);
});

test('a bad decay or shard length is refused', () => {
  assert.throws(() => new ShardEma(1.5, new Float32Array(1)), /decay must be in \[0, 1\]/);
  assert.throws(() => new ShardEma(Number.NaN, new Float32Array(1)), /decay must be in \[0, 1\]/);
  assert.throws(() => new ShardEma(0.9, new Float32Array(2)).update(new Float32Array(3)), /length mismatch/);
});
