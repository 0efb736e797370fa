import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ERASING_MAX_AREA, randomErasing } from '../../../src/data/transforms/erasing.ts';
import { Mulberry32, mixSeed } from '../../../src/common/random.ts';
import { ScriptedRng } from './helpers.ts';

const H = 24;
const W = 20;
const C = 3;
/** A sentinel no normal draw produces exactly. */
const SENTINEL = 1000;

function erasedBox(data: Float32Array): { count: number; rows: number; cols: number } {
  let count = 0;
  const rows = new Set<number>();
  const cols = new Set<number>();
  for (let i = 0; i < H * W; i++) {
    if (data[i * C] !== SENTINEL) {
      count++;
      rows.add(Math.floor(i / W));
      cols.add(i % W);
    }
  }
  return { count, rows: rows.size, cols: cols.size };
}

test('random erasing fires with probability 0.25 over many seeds, erasing one box of 2% to 1/3 of the area', () => {
  const trials = 4000;
  let fired = 0;
  for (let s = 0; s < trials; s++) {
    const data = new Float32Array(H * W * C).fill(SENTINEL);
    randomErasing(data, 0, H, W, C, new Mulberry32(mixSeed(7, s)), { probability: 0.25 });
    const box = erasedBox(data);
    if (box.count === 0) continue;
    fired++;
    assert.equal(box.count, box.rows * box.cols, 'a rectangle');
    assert.ok(box.count <= Math.ceil(ERASING_MAX_AREA * H * W * 1.2), `area ${box.count}`);
  }
  // Fixed seeds make this deterministic; the bound is 5 standard deviations of a binomial(4000, 0.25).
  const sd = Math.sqrt(trials * 0.25 * 0.75);
  assert.ok(Math.abs(fired - trials * 0.25) < 5 * sd, `fired ${fired} of ${trials}`);
});

test("timm's draws: skip above the probability; a box that fits erases per-pixel normal values in every channel", () => {
  const data = new Float32Array(H * W * C).fill(SENTINEL);
  const skip = new ScriptedRng([0.3]);
  randomErasing(data, 0, H, W, C, skip, { probability: 0.25 });
  assert.equal(skip.used, 1);
  assert.ok(data.every((v) => v === SENTINEL));
  // Area (0.02 + 0.5 * (1/3 - 0.02)) * 480 = 84.8 at aspect exp(0) = 1: a 9x9 box (sqrt(84.8) = 9.2).
  const draws = [0.1, 0.5, 0.5, 0, 1 - 1e-9, ...new Array<number>(9 * 9 * 3 * 2).fill(0.3)];
  const hit = new ScriptedRng(draws);
  randomErasing(data, 0, H, W, C, hit, { probability: 0.25 });
  assert.equal(hit.used, draws.length);
  assert.deepEqual(erasedBox(data), { count: 81, rows: 9, cols: 9 });
  // top 0, left W - 9: the last columns of the first rows.
  assert.notEqual(data[(0 * W + W - 1) * C + 2], SENTINEL);
  assert.equal(data[(9 * W + W - 1) * C], SENTINEL);
});

test('erasing writes only inside its image at the offset, and refuses an image that does not fit', () => {
  const data = new Float32Array(10 + H * W * C + 10).fill(SENTINEL);
  for (let s = 0; s < 50; s++) randomErasing(data, 10, H, W, C, new Mulberry32(s), { probability: 1 });
  assert.ok(data.subarray(0, 10).every((v) => v === SENTINEL) && data.subarray(10 + H * W * C).every((v) => v === SENTINEL));
  assert.throws(() => randomErasing(new Float32Array(5), 0, H, W, C, new Mulberry32(1), { probability: 1 }), /does not fit 5 values/);
});
