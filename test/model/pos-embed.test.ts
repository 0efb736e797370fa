import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { resamplePosEmbed } from '../../src/model/pos-embed.ts';

interface Case {
  fromGrid: [number, number];
  toGrid: [number, number];
  numPrefixTokens: 1 | 2;
  dim: number;
  posEmbed: number[];
  expected: number[];
}

// Made by test/fixtures/make_pos_embed_vectors.py with PyTorch's F.interpolate(mode='bicubic').
const fixture = JSON.parse(readFileSync(new URL('../fixtures/pos-embed-torch.json', import.meta.url), 'utf8')) as { cases: Case[] };

test('bicubic resampling matches PyTorch (upsampling, non-square, downsampling, identity)', () => {
  assert.equal(fixture.cases.length, 4);
  for (const c of fixture.cases) {
    const got = resamplePosEmbed(Float32Array.from(c.posEmbed), c.fromGrid, c.toGrid, c.numPrefixTokens, c.dim);
    const label = `${c.fromGrid} -> ${c.toGrid}`;
    assert.equal(got.length, c.expected.length, label);
    for (let i = 0; i < got.length; i++) {
      assert.ok(Math.abs(got[i]! - c.expected[i]!) < 1e-5, `${label} [${i}]: ${got[i]} vs ${c.expected[i]}`);
    }
  }
});

test('prefix tokens are kept bit for bit and an unchanged grid is the identity', () => {
  const dim = 3;
  const posEmbed = Float32Array.from({ length: (2 + 4 * 5) * dim }, (_, i) => Math.sin(i * 1.7) * 0.1);
  const same = resamplePosEmbed(posEmbed, [4, 5], [4, 5], 2, dim);
  assert.deepEqual(same, posEmbed);
  const bigger = resamplePosEmbed(posEmbed, [4, 5], [9, 3], 2, dim);
  assert.equal(bigger.length, (2 + 27) * dim);
  assert.deepEqual(bigger.subarray(0, 2 * dim), posEmbed.subarray(0, 2 * dim));
});

test('a constant grid stays constant (the cubic weights sum to 1, borders clamp)', () => {
  const posEmbed = new Float32Array((1 + 3 * 3) * 2).fill(0.25);
  for (const v of resamplePosEmbed(posEmbed, [3, 3], [8, 5], 1, 2)) assert.ok(Math.abs(v - 0.25) < 1e-7);
});

test('wrong sizes are rejected', () => {
  assert.throws(() => resamplePosEmbed(new Float32Array(10), [3, 3], [4, 4], 1, 2), /needs 20 values, got 10/);
  assert.throws(() => resamplePosEmbed(new Float32Array(20), [3, 3], [0, 4], 1, 2), /toGrid must hold positive integers/);
});
