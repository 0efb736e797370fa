import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeSafetensors, parseSafetensors, readSafetensors, writeSafetensors, type Tensor } from '../../src/model/safetensors.ts';

const FILE = 'weights.safetensors';

function sample(): Map<string, Tensor> {
  return new Map<string, Tensor>([
    ['a.weight', { shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0, 1e-8, -Infinity]) }],
    ['a.bias', { shape: [3], data: Float32Array.from([0.1, 0.2, 0.3]) }],
    ['scalar', { shape: [], data: Float32Array.from([42]) }],
  ]);
}

/** A file from a raw header object and data bytes, as another writer might produce it. */
function rawFile(header: object, data: Uint8Array, headerLength?: number): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(headerLength ?? json.length));
  return Buffer.concat([length, json, data]);
}

test('round trip through a file keeps names, order, shapes, values and metadata; no temp file is left', () => {
  const dir = mkdtempSync(join(tmpdir(), 'safetensors-'));
  const path = join(dir, FILE);
  writeSafetensors(path, sample(), { format: 'pt', step: '3' });
  const { tensors, metadata } = readSafetensors(path);
  assert.deepEqual(metadata, { format: 'pt', step: '3' });
  assert.deepEqual([...tensors.keys()], [...sample().keys()]);
  for (const [name, expected] of sample()) assert.deepEqual(tensors.get(name), expected, name);
  assert.deepEqual(readdirSync(dir), [FILE]);
});

test('the header is padded so the data starts 8-byte aligned, as the reference writer does', () => {
  const bytes = encodeSafetensors(sample());
  assert.equal(Number(bytes.readBigUInt64LE(0)) % 8, 0);
});

test('F16 and BF16 tensors are read as float32', () => {
  // 1.0, -2.0, 0.5 and the smallest subnormal in half precision; 1.0 and -3.0 in bfloat16.
  const half = Buffer.from(Uint16Array.from([0x3c00, 0xc000, 0x3800, 0x0001]).buffer);
  const bf16 = Buffer.from(Uint16Array.from([0x3f80, 0xc040]).buffer);
  const header = {
    h: { dtype: 'F16', shape: [4], data_offsets: [0, 8] },
    b: { dtype: 'BF16', shape: [2], data_offsets: [8, 12] },
  };
  const { tensors } = parseSafetensors(rawFile(header, Buffer.concat([half, bf16])), FILE);
  assert.deepEqual(Array.from(tensors.get('h')!.data), [1, -2, 0.5, Math.fround(2 ** -24)]);
  assert.deepEqual(Array.from(tensors.get('b')!.data), [1, -3]);
});

const f32 = (n: number): Uint8Array => new Uint8Array(4 * n);

const MALFORMED: [string, () => Buffer, RegExp][] = [
  ['shorter than the length field', () => Buffer.alloc(5), /weights\.safetensors: too short/],
  [
    'header length past the end',
    () => rawFile({ x: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32(1), 1000),
    /header length 1000 runs past the end/,
  ],
  ['header not JSON', () => Buffer.from([3, 0, 0, 0, 0, 0, 0, 0, ...Buffer.from('{x}')]), /not valid JSON/],
  ['header not an object', () => rawFile([1, 2], new Uint8Array(0)), /not a JSON object/],
  [
    'unknown dtype',
    () => rawFile({ w: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } }, f32(2)),
    /tensor "w": dtype "I64" is not supported/,
  ],
  ['bad shape', () => rawFile({ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, f32(1)), /tensor "w": shape \[-1\]/],
  ['bad offsets', () => rawFile({ w: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, f32(1)), /tensor "w": data_offsets \[4,0\]/],
  [
    'shape does not match the bytes',
    () => rawFile({ w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, f32(3)),
    /tensor "w": shape \[2, 2\] of F32 needs 16 bytes, data_offsets span 12/,
  ],
  [
    'a gap between tensors',
    () =>
      rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, f32(3)),
    /tensor "b" starts at data offset 8, expected 4/,
  ],
  [
    'overlapping tensors',
    () => rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, f32(2)),
    /tensor "b" starts at data offset 4, expected 8/,
  ],
  [
    'a tensor past the data',
    () => rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, f32(1)),
    /tensor "a" ends at data offset 8, past the 4 bytes/,
  ],
  [
    'trailing bytes',
    () => rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32(2)),
    /cover 4 bytes of data, the file holds 8/,
  ],
  ['metadata not strings', () => rawFile({ __metadata__: { step: 3 } }, new Uint8Array(0)), /__metadata__\.step is not a string/],
];

for (const [what, make, error] of MALFORMED) {
  test(`a malformed file is refused with a clear error: ${what}`, () => {
    assert.throws(
      () => parseSafetensors(make(), FILE),
      (err: Error) => {
        assert.match(err.message, /^safetensors file weights\.safetensors: /);
        assert.match(err.message, error);
        return true;
      },
    );
  });
}

test('a missing file is an error naming it', () => {
  const path = join(tmpdir(), 'no-such-dir-vit-dist', FILE);
  assert.throws(() => readSafetensors(path), new RegExp(`safetensors file ${path}: cannot read`));
});

test('writing refuses a tensor whose data does not match its shape', () => {
  assert.throws(
    () => encodeSafetensors(new Map([['w', { shape: [2, 2], data: new Float32Array(3) }]])),
    /tensor "w": shape \[2, 2\] needs 4 values, got 3/,
  );
});

test('a file written by our encoder parses back from bytes at any alignment', () => {
  const bytes = encodeSafetensors(sample());
  const shifted = Buffer.alloc(bytes.length + 1);
  bytes.copy(shifted, 1);
  const { tensors } = parseSafetensors(shifted.subarray(1), FILE);
  assert.deepEqual(tensors.get('a.weight'), sample().get('a.weight'));
});
