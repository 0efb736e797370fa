// Reader for the idx format used by MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/):
// a big-endian header (two zero bytes, a type code, the number of dimensions, then one u32 per
// dimension) followed by the raw values. Files may be gzip-compressed, as Debian ships them.
import { readFileSync, existsSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { InputError } from '../common/errors.ts';

/** The only element type the MNIST family uses. */
const IDX_TYPE_UBYTE = 0x08;
const GZIP_MAGIC = [0x1f, 0x8b];
/** Largest rank an idx file can declare that we accept (images are rank 3). */
const MAX_IDX_RANK = 4;

export interface IdxArray {
  /** Dimensions as declared in the header, e.g. [60000, 28, 28]. */
  shape: number[];
  /** The values, row-major, without the header. */
  data: Uint8Array;
}

/** Reads a whole idx file (plain or gzip) and checks its header against its length. */
export function readIdx(path: string): IdxArray {
  if (!existsSync(path)) throw new InputError('DATA_FILE_NOT_FOUND', `${path}: file not found`);
  let bytes: Uint8Array = readFileSync(path);
  if (bytes[0] === GZIP_MAGIC[0] && bytes[1] === GZIP_MAGIC[1]) {
    try {
      bytes = gunzipSync(bytes);
    } catch (err) {
      throw new InputError('DATA_FILE_INVALID', `${path}: not a valid gzip stream (${(err as Error).message})`, { cause: err });
    }
  }
  return parseIdx(bytes, path);
}

export function parseIdx(bytes: Uint8Array, path: string): IdxArray {
  if (bytes.length < 4) throw new InputError('DATA_FILE_INVALID', `${path}: too short for an idx header (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint16(0) !== 0) throw new InputError('DATA_FILE_INVALID', `${path}: not an idx file (the first two bytes must be zero)`);
  const type = view.getUint8(2);
  if (type !== IDX_TYPE_UBYTE)
    throw new InputError('DATA_FILE_INVALID', `${path}: unsupported idx element type 0x${type.toString(16)} (only unsigned bytes, 0x08)`);
  const rank = view.getUint8(3);
  if (rank < 1 || rank > MAX_IDX_RANK) throw new InputError('DATA_FILE_INVALID', `${path}: unsupported idx rank ${rank}`);
  const headerBytes = 4 + 4 * rank;
  if (bytes.length < headerBytes) throw new InputError('DATA_FILE_INVALID', `${path}: truncated idx header`);
  const shape: number[] = [];
  for (let i = 0; i < rank; i++) shape.push(view.getUint32(4 + 4 * i));
  const expected = shape.reduce((a, b) => a * b, 1);
  const actual = bytes.length - headerBytes;
  if (actual !== expected) {
    throw new InputError(
      'DATA_FILE_INVALID',
      `${path}: idx header declares ${shape.join('x')} = ${expected} values but the file holds ${actual}`,
    );
  }
  return { shape, data: bytes.subarray(headerBytes) };
}
