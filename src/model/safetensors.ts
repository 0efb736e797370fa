// The safetensors format (https://github.com/huggingface/safetensors), as timm and Hugging Face
// publish weights: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor
// name to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the data section) plus an
// optional "__metadata__" string map, then the tensors' raw little-endian bytes, back to back.
//
// We write F32 only (the parameters are float32) and read F32, F16 and BF16, converting to float32:
// released checkpoints are often stored in half precision. Everything the header claims is checked
// against the file before a byte of data is used, and each problem names the file and the tensor.
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { InputError } from '../common/errors.ts';

const HEADER_LENGTH_BYTES = 8;
const METADATA_KEY = '__metadata__';
/** The reference implementation pads the JSON header with spaces so the data starts 8-byte aligned. */
const HEADER_ALIGNMENT = 8;
/** Bytes per element of the dtypes we read. */
const DTYPE_BYTES = { F32: 4, F16: 2, BF16: 2 } as const;
type Dtype = keyof typeof DTYPE_BYTES;

export interface Tensor {
  shape: number[];
  data: Float32Array;
}

export interface SafetensorsContents {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

function elementCount(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** The whole file as one buffer: header then F32 data, tensors in the map's order. */
export function encodeSafetensors(tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header[METADATA_KEY] = metadata;
  let offset = 0;
  for (const [name, { shape, data }] of tensors) {
    if (name === METADATA_KEY) throw new Error(`a tensor cannot be named ${METADATA_KEY}`);
    if (elementCount(shape) !== data.length)
      throw new Error(`tensor "${name}": shape [${shape.join(', ')}] needs ${elementCount(shape)} values, got ${data.length}`);
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((HEADER_ALIGNMENT - (Buffer.byteLength(json) % HEADER_ALIGNMENT)) % HEADER_ALIGNMENT);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(HEADER_LENGTH_BYTES + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, HEADER_LENGTH_BYTES);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let at = HEADER_LENGTH_BYTES + headerBytes.length;
  for (const { data } of tensors.values()) {
    for (let i = 0; i < data.length; i++, at += 4) view.setFloat32(at, data[i]!, true);
  }
  return out;
}

/** Writes atomically (temp file, fsync, rename, fsync of the directory): a crash never leaves a torn file. */
export function writeSafetensors(path: string, tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): void {
  const bytes = encodeSafetensors(tensors, metadata);
  const dir = dirname(path);
  const tempPath = join(dir, `.${basename(path)}.${process.pid}.tmp`);
  const fd = openSync(tempPath, 'w');
  try {
    let written = 0;
    while (written < bytes.length) written += writeSync(fd, bytes, written, bytes.length - written);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tempPath, { force: true });
    throw err;
  }
  closeSync(fd);
  renameSync(tempPath, path);
  const dirFd = openSync(dir, 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

export function readSafetensors(path: string): SafetensorsContents {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new InputError('SAFETENSORS_INVALID', `safetensors file ${path}: cannot read (${(err as Error).message})`, { cause: err });
  }
  return parseSafetensors(bytes, path);
}

interface Entry {
  name: string;
  dtype: Dtype;
  shape: number[];
  begin: number;
  end: number;
}

/** Parses and validates a whole file; `path` only names it in errors. */
export function parseSafetensors(bytes: Uint8Array, path: string): SafetensorsContents {
  const fail = (problem: string, options?: ErrorOptions): never => {
    throw new InputError('SAFETENSORS_INVALID', `safetensors file ${path}: ${problem}`, options);
  };
  if (bytes.length < HEADER_LENGTH_BYTES) fail(`too short (${bytes.length} bytes) for the 8-byte header length`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(bytes.length - HEADER_LENGTH_BYTES))
    fail(`header length ${headerLength} runs past the end of the file (${bytes.length} bytes)`);
  const dataStart = HEADER_LENGTH_BYTES + Number(headerLength);
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset + HEADER_LENGTH_BYTES, Number(headerLength)).toString('utf8'));
  } catch (err) {
    fail(`the header is not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('the header is not a JSON object');

  let metadata: Record<string, string> = {};
  const entries: Entry[] = [];
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === METADATA_KEY) {
      metadata = parseMetadata(value, fail);
      continue;
    }
    entries.push(parseEntry(name, value, fail));
  }

  // The data section is exactly the tensors, back to back, with no gap, overlap or trailing bytes.
  const dataLength = bytes.length - dataStart;
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  for (const e of byOffset) {
    if (e.begin !== expected)
      fail(`tensor "${e.name}" starts at data offset ${e.begin}, expected ${expected} (offsets must be contiguous)`);
    if (e.end > dataLength) fail(`tensor "${e.name}" ends at data offset ${e.end}, past the ${dataLength} bytes of data`);
    expected = e.end;
  }
  if (expected !== dataLength) fail(`the tensors cover ${expected} bytes of data, the file holds ${dataLength}`);

  const tensors = new Map<string, Tensor>();
  for (const e of entries) tensors.set(e.name, { shape: e.shape, data: decode(view, dataStart + e.begin, e) });
  return { tensors, metadata };
}

function parseMetadata(value: unknown, fail: (problem: string) => never): Record<string, string> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(`${METADATA_KEY} is not a JSON object`);
  for (const [key, v] of Object.entries(value as object)) {
    if (typeof v !== 'string') fail(`${METADATA_KEY}.${key} is not a string`);
  }
  return value as Record<string, string>;
}

function parseEntry(name: string, value: unknown, fail: (problem: string) => never): Entry {
  const where = `tensor "${name}"`;
  if (typeof value !== 'object' || value === null) fail(`${where}: the entry is not a JSON object`);
  const { dtype, shape, data_offsets: offsets } = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, dtype)) {
    fail(`${where}: dtype ${JSON.stringify(dtype)} is not supported (readable: ${Object.keys(DTYPE_BYTES).join(', ')})`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
    fail(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  ) {
    fail(`${where}: data_offsets ${JSON.stringify(offsets)} is not a pair [begin, end] with 0 <= begin <= end`);
  }
  const [begin, end] = offsets as [number, number];
  const bytesNeeded = elementCount(shape as number[]) * DTYPE_BYTES[dtype as Dtype];
  if (end - begin !== bytesNeeded)
    fail(`${where}: shape [${(shape as number[]).join(', ')}] of ${dtype} needs ${bytesNeeded} bytes, data_offsets span ${end - begin}`);
  return { name, dtype: dtype as Dtype, shape: shape as number[], begin, end };
}

/** The entry's values as float32; reads through a DataView, so neither alignment nor host byte order matters. */
function decode(view: DataView, start: number, entry: Entry): Float32Array {
  const n = (entry.end - entry.begin) / DTYPE_BYTES[entry.dtype];
  const out = new Float32Array(n);
  switch (entry.dtype) {
    case 'F32':
      for (let i = 0; i < n; i++) out[i] = view.getFloat32(start + 4 * i, true);
      break;
    case 'F16':
      for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(start + 2 * i, true));
      break;
    case 'BF16': {
      // bfloat16 is the upper half of a float32.
      const word = new DataView(new ArrayBuffer(4));
      for (let i = 0; i < n; i++) {
        word.setUint32(0, view.getUint16(start + 2 * i, true) << 16);
        out[i] = word.getFloat32(0);
      }
      break;
    }
  }
  return out;
}

/** IEEE 754 binary16 -> number: sign, 5 exponent bits (bias 15), 10 fraction bits. */
function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // subnormal (or zero)
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}
