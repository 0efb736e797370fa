import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { parseIdx, readIdx } from '../../src/data/idx.ts';
import { idxFile } from './helpers.ts';

test('parses plain and gzip idx files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'idx-'));
  const bytes = idxFile([2, 2, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  writeFileSync(join(dir, 'a'), bytes);
  writeFileSync(join(dir, 'a.gz'), gzipSync(bytes));
  for (const name of ['a', 'a.gz']) {
    const parsed = readIdx(join(dir, name));
    assert.deepEqual(parsed.shape, [2, 2, 3]);
    assert.deepEqual([...parsed.data], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  }
});

test('malformed files are errors naming the path and the problem', () => {
  assert.throws(() => parseIdx(idxFile([2, 3], [1, 2, 3]), '/d/x'), /\/d\/x: idx header declares 2x3 = 6 values but the file holds 3/);
  const wrongType = idxFile([1], [1]);
  wrongType.writeUInt8(0x0d, 2);
  assert.throws(() => parseIdx(wrongType, '/d/y'), /\/d\/y: unsupported idx element type 0xd/);
  assert.throws(() => parseIdx(Buffer.from([1, 2, 3, 4, 5]), '/d/z'), /\/d\/z: not an idx file/);
  assert.throws(() => parseIdx(Buffer.from([0, 0]), '/d/w'), /too short/);
  assert.throws(() => readIdx('/nonexistent/file.gz'), /\/nonexistent\/file.gz: file not found/);
  const dir = mkdtempSync(join(tmpdir(), 'idx-'));
  writeFileSync(join(dir, 'bad.gz'), Buffer.from([0x1f, 0x8b, 1, 2, 3]));
  assert.throws(() => readIdx(join(dir, 'bad.gz')), /bad.gz: not a valid gzip stream/);
});
