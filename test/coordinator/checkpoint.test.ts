import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { latestCheckpoint, listCheckpoints, readCheckpoint, writeCheckpoint, type CheckpointMeta } from '../../src/coordinator/checkpoint.ts';

function meta(step: number, numParams: number): CheckpointMeta {
  return { runId: 'r', step, recipe: { name: 'x' }, numParams, worldSize: 2, optimizerStep: step, sampler: { seed: 3, step }, paramDigest: 'abc' };
}

function state(n: number, fill: number) {
  return { params: new Float32Array(n).fill(fill), m: new Float32Array(n).fill(fill + 1), v: new Float32Array(n).fill(fill + 2) };
}

test('round trip: what is written is read back exactly', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const s = { params: Float32Array.of(1.5, -2, Math.PI), m: Float32Array.of(0.1, 0.2, 0.3), v: Float32Array.of(4, 5, 6) };
  const path = writeCheckpoint(dir, meta(40, 3), s);
  const loaded = readCheckpoint(path);
  assert.deepEqual(loaded.meta, meta(40, 3));
  assert.deepEqual([...loaded.state.params], [...s.params]);
  assert.deepEqual([...loaded.state.m], [...s.m]);
  assert.deepEqual([...loaded.state.v], [...s.v]);
  assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith('.tmp')), [], 'no temp file left behind');
});

test('keeps the newest checkpoints and finds the latest in a run directory', () => {
  const run = mkdtempSync(join(tmpdir(), 'run-'));
  const dir = join(run, 'checkpoints');
  for (const step of [10, 20, 30, 40]) writeCheckpoint(dir, meta(step, 2), state(2, step), 3);
  assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [20, 30, 40]);
  assert.equal(latestCheckpoint(run), join(dir, 'step-000000040.ckpt'));
  assert.equal(latestCheckpoint(dir), join(dir, 'step-000000040.ckpt'));
  assert.equal(latestCheckpoint(mkdtempSync(join(tmpdir(), 'empty-'))), null);
});

test('a truncated checkpoint is refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const path = writeCheckpoint(dir, meta(1, 100), state(100, 1));
  truncateSync(path, readFileSync(path).length - 4);
  assert.throws(() => readCheckpoint(path), /truncated or padded: payload is 1196 bytes, header says 1200/);
  truncateSync(path, 20);
  assert.throws(() => readCheckpoint(path), /truncated \(header runs past the end/);
});

test('a corrupted payload is refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const path = writeCheckpoint(dir, meta(1, 100), state(100, 1));
  const bytes = readFileSync(path);
  bytes[bytes.length - 10]! ^= 0xff;
  writeFileSync(path, bytes);
  assert.throws(() => readCheckpoint(path), /checksum mismatch/);
});

test('a foreign file is refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const path = join(dir, 'step-000000001.ckpt');
  writeFileSync(path, 'PK\u0003\u0004 this is a zip file, not a checkpoint');
  assert.throws(() => readCheckpoint(path), /not a vit-dist checkpoint/);
  assert.throws(() => readCheckpoint(join(dir, 'missing.ckpt')), /file not found/);
});
