import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { OuterOptimizer, pseudoGradient } from '../../src/train/outer-optimizer.ts';
import { shardRange } from '../../src/common/shard.ts';

interface Fixture {
  reference: string;
  outerLr: number;
  outerMomentum: number;
  outer0: number[];
  /** locals[round][worker]: each worker's weights at the round's end. */
  locals: number[][][];
  trajectory: number[][];
}

// Generated once by test/fixtures/make_diloco_outer_vectors.py with Debian's python3-torch.
const fixture = JSON.parse(readFileSync(new URL('../fixtures/diloco-outer-torch.json', import.meta.url), 'utf8')) as Fixture;
const TORCH_TOLERANCE = 1e-6;

/** Five rounds of the outer step with the state sharded over `shards` ranks, as the ring leaves it: each rank steps its own shard of the summed pseudo-gradients. */
function outerTrajectory(shards: number): Float32Array[] {
  const outer = Float32Array.from(fixture.outer0);
  const ranges = Array.from({ length: shards }, (_, rank) => shardRange(outer.length, shards, rank));
  const optimizers = ranges.map(({ start, end }) => new OuterOptimizer(fixture, end - start));
  return fixture.locals.map((workers) => {
    const sum = new Float32Array(outer.length);
    const pseudo = new Float32Array(outer.length);
    for (const local of workers) {
      pseudoGradient(outer, Float32Array.from(local), null, pseudo);
      for (let i = 0; i < sum.length; i++) sum[i]! += pseudo[i]!;
    }
    ranges.forEach(({ start, end }, rank) => {
      optimizers[rank]!.step(outer.subarray(start, end), sum.subarray(start, end), workers.length);
    });
    return outer.slice();
  });
}

for (const shards of [1, 3]) {
  test(`the outer step over ${shards} shard${shards > 1 ? 's' : ''} matches ${fixture.reference} over five rounds`, () => {
    outerTrajectory(shards).forEach((outer, round) => {
      const expected = fixture.trajectory[round]!;
      for (let i = 0; i < outer.length; i++) {
        assert.ok(
          Math.abs(outer[i]! - expected[i]!) <= TORCH_TOLERANCE * Math.max(1, Math.abs(expected[i]!)),
          `round ${round} element ${i}: ${outer[i]} vs torch ${expected[i]}`,
        );
      }
    });
  });
}

test('outer lr 1 without momentum takes the workers to their mean: one worker ends where it trained to', () => {
  const outer = Float32Array.of(1, -2, 0.5);
  const local = Float32Array.of(0.75, -1.5, 0.5);
  const pseudo = new Float32Array(3);
  pseudoGradient(outer, local, null, pseudo);
  new OuterOptimizer({ outerLr: 1, outerMomentum: 0 }, 3).step(outer, pseudo, 1);
  assert.deepEqual(outer, local);
});

test('restored momentum continues the trajectory exactly', () => {
  const straight = outerTrajectory(1);
  const outer = Float32Array.from(fixture.outer0);
  const first = new OuterOptimizer(fixture, outer.length);
  const pseudo = new Float32Array(outer.length);
  const round = (optimizer: OuterOptimizer, workers: number[][]): void => {
    const sum = new Float32Array(outer.length);
    for (const local of workers) {
      pseudoGradient(outer, Float32Array.from(local), null, pseudo);
      for (let i = 0; i < sum.length; i++) sum[i]! += pseudo[i]!;
    }
    optimizer.step(outer, sum, workers.length);
  };
  round(first, fixture.locals[0]!);
  round(first, fixture.locals[1]!);
  const second = new OuterOptimizer(fixture, outer.length);
  second.restore(first.momentum.slice());
  for (const workers of fixture.locals.slice(2)) round(second, workers);
  assert.deepEqual(outer, straight.at(-1));
});
