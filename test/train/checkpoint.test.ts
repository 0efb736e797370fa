import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CHECKPOINT_FORMAT_VERSION,
  latestCheckpoint,
  listCheckpoints,
  readCheckpoint,
  type CheckpointMeta,
  type CheckpointState,
} from '../../src/train/checkpoint.ts';
import { writeCheckpoint } from '../../src/coordinator/checkpoint.ts';

function meta(step: number, numParams: number): CheckpointMeta {
  return {
    runId: 'r',
    step,
    recipe: { name: 'x' },
    numParams,
    worldSize: 2,
    optimizerStep: step,
    sampler: { seed: 3, step },
    paramDigest: 'abc',
  };
}

function state(n: number, fill: number): CheckpointState {
  return {
    params: new Float32Array(n).fill(fill),
    optimizerState: { m: new Float32Array(n).fill(fill + 1), v: new Float32Array(n).fill(fill + 2) },
    ema: null,
  };
}

const plain = (s: CheckpointState) => ({
  params: [...s.params],
  optimizerState: Object.fromEntries(Object.entries(s.optimizerState).map(([k, t]) => [k, [...t]])),
  ema: s.ema && [...s.ema],
});

test('round trip: what is written is read back exactly (Adam moments, no EMA)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const s: CheckpointState = {
    params: Float32Array.of(1.5, -2, Math.PI),
    optimizerState: { m: Float32Array.of(0.1, 0.2, 0.3), v: Float32Array.of(4, 5, 6) },
    ema: null,
  };
  const path = writeCheckpoint(dir, meta(40, 3), s);
  const loaded = readCheckpoint(path);
  assert.deepEqual(loaded.meta, meta(40, 3));
  assert.deepEqual(plain(loaded.state), plain(s));
  assert.deepEqual(
    readdirSync(dir).filter((f) => f.endsWith('.tmp')),
    [],
    'no temp file left behind',
  );
});

test('round trip: SGD momentum and an EMA, under self-describing tensor names', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const s: CheckpointState = {
    params: Float32Array.of(1, 2),
    optimizerState: { momentum: Float32Array.of(-1, 0.5) },
    ema: Float32Array.of(0.9, 1.9),
  };
  const path = writeCheckpoint(dir, meta(5, 2), s);
  assert.deepEqual(plain(readCheckpoint(path).state), plain(s));
  const bytes = readFileSync(path);
  assert.equal(bytes.readUInt32LE(8), CHECKPOINT_FORMAT_VERSION);
  const header = JSON.parse(bytes.subarray(16, 16 + bytes.readUInt32LE(12)).toString('utf8')) as { tensors: { name: string }[] };
  assert.deepEqual(
    header.tensors.map((t) => t.name),
    ['params', 'optimizer.momentum', 'ema'],
  );
});

/** Rewrites a checkpoint's header (and the payload checksum over `payload`), as a foreign or older writer might. */
function rewrite(path: string, edit: (header: Record<string, unknown>) => void, version = CHECKPOINT_FORMAT_VERSION): void {
  const bytes = readFileSync(path);
  const headerLength = bytes.readUInt32LE(12);
  const header = JSON.parse(bytes.subarray(16, 16 + headerLength).toString('utf8')) as Record<string, unknown>;
  const payload = bytes.subarray(16 + headerLength);
  edit(header);
  header.payloadSha256 = createHash('sha256').update(payload).digest('hex');
  const headerBytes = Buffer.from(JSON.stringify(header), 'utf8');
  const preamble = Buffer.from(bytes.subarray(0, 16));
  preamble.writeUInt32LE(version, 8);
  preamble.writeUInt32LE(headerBytes.length, 12);
  writeFileSync(path, Buffer.concat([preamble, headerBytes, payload]));
}

test('an older format, an unknown tensor or a tensor of the wrong size is refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const path = writeCheckpoint(dir, meta(1, 4), state(4, 1));
  rewrite(path, () => {}, 1);
  assert.throws(() => readCheckpoint(path), /format version 1, this build reads 2/);
  writeCheckpoint(dir, meta(1, 4), state(4, 1));
  rewrite(path, (h) => {
    (h.tensors as { name: string }[])[1]!.name = 'm';
  });
  assert.throws(() => readCheckpoint(path), /unknown tensor "m"/);
  writeCheckpoint(dir, meta(1, 4), state(4, 1));
  rewrite(path, (h) => {
    h.numParams = 5;
  });
  assert.throws(() => readCheckpoint(path), /tensor "params" has 4 elements, the model 5/);
  writeCheckpoint(dir, meta(1, 4), state(4, 1));
  rewrite(path, (h) => {
    (h.tensors as { name: string }[])[0]!.name = 'optimizer.x';
  });
  assert.throws(() => readCheckpoint(path), /missing tensor "params"/);
});

test('keeps the newest checkpoints and finds the latest in a run directory', () => {
  const run = mkdtempSync(join(tmpdir(), 'run-'));
  const dir = join(run, 'checkpoints');
  for (const step of [10, 20, 30, 40]) writeCheckpoint(dir, meta(step, 2), state(2, step), 3);
  assert.deepEqual(
    listCheckpoints(dir).map((c) => c.step),
    [20, 30, 40],
  );
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
