// The packed shard format: images decoded and pre-resized once (shorter side at most `size`, aspect
// kept, as FFCV's max_resolution and timm's pre-resized ImageNet copies), stored as uint8 HWC records
// back to back in a few large files, so that training reads each image with one positional read and
// never decodes a JPEG again.
//
// On disk, for each split: `<split>-00000.bin`, `<split>-00001.bin`, ... (a new shard starts before a
// record would take a shard past the shard limit), and `<split>.index`:
//   8 bytes  magic "VITDPACK"
//   u32 LE   format version
//   u32 LE   byte length of the header
//   header   UTF-8 JSON: { split, count, channels, classes, size, kernel, shards: [{ file, bytes }] }
//   padding  zeros to a multiple of 8 bytes
//   tables   `count` entries each, little-endian: offset f64 (exact below 2^53), shard u32, height u32,
//            width u32, label u32, channels u8
// Writing is atomic: shards and the index are written under temporary names and renamed, the index
// last, and an existing index of the split is removed first, so a pack that was interrupted has no
// index and cannot be mistaken for a whole one.
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { CorruptImageError, resizeRegion } from './image-folder.ts';
import { checkSampleIndex, type ImageRegion, type ImageSource, type RawImage } from './source.ts';
import { InputError } from '../common/errors.ts';

export const PACK_FORMAT_VERSION = 1;
const PACK_MAGIC = Buffer.from('VITDPACK', 'latin1');
const PREAMBLE_BYTES = PACK_MAGIC.length + 8;
const TABLE_ALIGNMENT = 8;
/** Bytes per record in the index tables: offset f64, shard, height, width, label u32, channels u8. */
const INDEX_RECORD_BYTES = 8 + 4 * 4 + 1;
/** Shard size limit: a few large files, each small enough to copy and checksum comfortably. */
export const DEFAULT_SHARD_BYTES = 1024 ** 3;
/** sharp's (libvips') Lanczos-3: the high-quality kernel for downscaling. */
const RESIZE_KERNEL = 'lanczos3';
const PARTIAL_SUFFIX = '.partial';

type StoredSplit = 'train' | 'val';

export function shardFileName(split: StoredSplit, shard: number): string {
  return `${split}-${String(shard).padStart(5, '0')}.bin`;
}

function indexFileName(split: StoredSplit): string {
  return `${split}.index`;
}

export function packedSplitExists(dir: string, split: StoredSplit): boolean {
  return existsSync(join(dir, indexFileName(split)));
}

/**
 * The stored size of an image: its shorter side brought down to `size` and the longer side scaled
 * alike and truncated (as torchvision's Resize(size) computes it). Never upscales: an image whose
 * shorter side is already at most `size` keeps its size, since enlarging adds no information and
 * the training and evaluation transforms resize it anyway.
 */
export function packedImageSize(height: number, width: number, size: number): { height: number; width: number } {
  const short = Math.min(height, width);
  if (short <= size) return { height, width };
  const long = Math.floor((size * Math.max(height, width)) / short);
  return height <= width ? { height: size, width: long } : { height: long, width: size };
}

async function resizeForPack(image: RawImage, size: number): Promise<RawImage> {
  const target = packedImageSize(image.height, image.width, size);
  if (target.height === image.height && target.width === image.width) return image;
  const { height, width, channels } = image;
  let pipeline = sharp(image.data, { raw: { height, width, channels: channels as 1 | 3 } }).resize({
    height: target.height,
    width: target.width,
    fit: 'fill',
    kernel: RESIZE_KERNEL,
  });
  // sharp makes 3-channel sRGB of a 1-channel input unless told to keep it grayscale.
  if (channels === 1) pipeline = pipeline.toColourspace('b-w');
  const { data, info } = await pipeline.raw().toUint8Array();
  return {
    data: new Uint8Array(data.buffer, data.byteOffset, data.length),
    height: info.height,
    width: info.width,
    channels: info.channels,
  };
}

export interface PackOptions {
  /** The shorter side of the stored images (larger images are downscaled to it, smaller ones kept). */
  size: number;
  /** A new shard starts before a record would take the current one past this many bytes. */
  shardBytes?: number;
  /** Skip images that fail with CorruptImageError (reported through onSkip) instead of failing the pack. */
  skipCorrupt?: boolean;
  /** Images decoded and resized at once (sharp runs them on its thread pool). */
  concurrency?: number;
  onSkip?: (error: CorruptImageError, index: number) => void;
  /** Called after each image of the source, stored or skipped. */
  onProgress?: (done: number, total: number) => void;
}

export interface PackSummary {
  readonly split: StoredSplit;
  /** Images stored. */
  readonly images: number;
  /** Corrupt images skipped. */
  readonly skipped: number;
  /** Bytes of pixels written, over all shards. */
  readonly bytes: number;
  readonly shards: readonly string[];
}

interface PackedHeader {
  split: StoredSplit;
  count: number;
  channels: number;
  classes: string[];
  size: number;
  kernel: string;
  shards: { file: string; bytes: number }[];
}

type Prepared = { image: RawImage } | { corrupt: CorruptImageError };

/** Removes the split's index first (the old pack stops counting as whole), then its shards and leftovers. */
function removeSplitFiles(outDir: string, split: StoredSplit): void {
  const index = indexFileName(split);
  if (existsSync(join(outDir, index))) unlinkSync(join(outDir, index));
  const shardName = new RegExp(`^${split}-\\d{5}\\.bin$`);
  for (const name of readdirSync(outDir)) {
    const base = name.endsWith(PARTIAL_SUFFIX) ? name.slice(0, -PARTIAL_SUFFIX.length) : name;
    if (base === index || shardName.test(base)) unlinkSync(join(outDir, name));
  }
}

function writeFully(fd: number, data: Uint8Array, path: string): void {
  let written = 0;
  while (written < data.length) {
    const n = writeSync(fd, data, written, data.length - written);
    if (n <= 0) throw new InputError('DATA_FILE_INVALID', `${path}: write stopped after ${written} of ${data.length} bytes`);
    written += n;
  }
}

/** Writes `bytes` to `path` under a temporary name, flushes it and renames it into place. */
function writeFileAtomic(path: string, bytes: Uint8Array): void {
  const partial = path + PARTIAL_SUFFIX;
  const fd = openSync(partial, 'w');
  try {
    writeFully(fd, bytes, partial);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(partial, path);
}

/** The per-record tables of an index, one entry per stored image. */
interface IndexTables {
  offset: Float64Array;
  shard: Uint32Array;
  height: Uint32Array;
  width: Uint32Array;
  label: Uint32Array;
  channels: Uint8Array;
}

function allocateTables(count: number): IndexTables {
  return {
    offset: new Float64Array(count),
    shard: new Uint32Array(count),
    height: new Uint32Array(count),
    width: new Uint32Array(count),
    label: new Uint32Array(count),
    channels: new Uint8Array(count),
  };
}

function encodeIndex(header: PackedHeader, tables: IndexTables): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const tablesAt = Math.ceil((PREAMBLE_BYTES + json.length) / TABLE_ALIGNMENT) * TABLE_ALIGNMENT;
  const n = header.count;
  const out = Buffer.alloc(tablesAt + n * INDEX_RECORD_BYTES);
  PACK_MAGIC.copy(out, 0);
  out.writeUInt32LE(PACK_FORMAT_VERSION, PACK_MAGIC.length);
  out.writeUInt32LE(json.length, PACK_MAGIC.length + 4);
  json.copy(out, PREAMBLE_BYTES);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let at = tablesAt;
  for (let i = 0; i < n; i++, at += 8) view.setFloat64(at, tables.offset[i]!, true);
  for (const table of [tables.shard, tables.height, tables.width, tables.label]) {
    for (let i = 0; i < n; i++, at += 4) view.setUint32(at, table[i]!, true);
  }
  out.set(tables.channels.subarray(0, n), at);
  return out;
}

/**
 * Packs one split of `source` into `outDir` (created if needed), replacing an earlier pack of that
 * split. A CorruptImageError fails the pack unless `skipCorrupt`; any other error always does.
 */
export async function packSplit(source: ImageSource, outDir: string, split: StoredSplit, options: PackOptions): Promise<PackSummary> {
  const { size, shardBytes = DEFAULT_SHARD_BYTES, skipCorrupt = false, concurrency = availableParallelism() } = options;
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`pack size must be a positive integer, got ${size}`);
  if (!Number.isInteger(shardBytes) || shardBytes < 1)
    throw new RangeError(`shard limit must be a positive number of bytes, got ${shardBytes}`);
  if (!Number.isInteger(concurrency) || concurrency < 1)
    throw new RangeError(`pack concurrency must be a positive integer, got ${concurrency}`);
  mkdirSync(outDir, { recursive: true });
  removeSplitFiles(outDir, split);

  const n = source.size;
  const tables = allocateTables(n);
  const shards: { file: string; bytes: number }[] = [];
  let fd: number | null = null;
  let shardOffset = 0;
  const currentPartial = (): string => join(outDir, shardFileName(split, shards.length - 1) + PARTIAL_SUFFIX);
  const finishShard = (): void => {
    if (fd === null) return;
    fsyncSync(fd);
    closeSync(fd);
    fd = null;
    const shard = shards[shards.length - 1]!;
    shard.bytes = shardOffset;
    renameSync(currentPartial(), join(outDir, shard.file));
  };

  const prepare = async (index: number): Promise<Prepared> => {
    try {
      const image = await source.read(index);
      if (image.channels !== source.channels)
        throw new InputError(
          'DATA_FILE_INVALID',
          `${source.describe(index)}: has ${image.channels} channels, the data set ${source.channels}`,
        );
      return { image: await resizeForPack(image, size) };
    } catch (err) {
      if (err instanceof CorruptImageError) return { corrupt: err };
      throw err;
    }
  };
  const pending = new Map<number, Promise<Prepared>>();
  const start = (index: number): void => {
    const promise = prepare(index);
    promise.catch(() => {}); // awaited in order below; this only keeps an early failure from being "unhandled"
    pending.set(index, promise);
  };

  let count = 0;
  let skipped = 0;
  let totalBytes = 0;
  try {
    for (let i = 0; i < Math.min(concurrency, n); i++) start(i);
    for (let i = 0; i < n; i++) {
      const prepared = await pending.get(i)!;
      pending.delete(i);
      if (i + concurrency < n) start(i + concurrency);
      if ('corrupt' in prepared) {
        if (!skipCorrupt) throw prepared.corrupt;
        skipped++;
        options.onSkip?.(prepared.corrupt, i);
      } else {
        const { data, height, width, channels } = prepared.image;
        if (fd === null || (shardOffset > 0 && shardOffset + data.length > shardBytes)) {
          finishShard();
          shards.push({ file: shardFileName(split, shards.length), bytes: 0 });
          fd = openSync(currentPartial(), 'w');
          shardOffset = 0;
        }
        writeFully(fd, data, currentPartial());
        tables.offset[count] = shardOffset;
        tables.shard[count] = shards.length - 1;
        tables.height[count] = height;
        tables.width[count] = width;
        tables.label[count] = source.label(i);
        tables.channels[count] = channels;
        count++;
        shardOffset += data.length;
        totalBytes += data.length;
      }
      options.onProgress?.(i + 1, n);
    }
    finishShard();
  } catch (err) {
    if (fd !== null) closeSync(fd);
    removeSplitFiles(outDir, split);
    throw err;
  }
  const header: PackedHeader = {
    split,
    count,
    channels: source.channels,
    classes: [...source.classes],
    size,
    kernel: RESIZE_KERNEL,
    shards,
  };
  writeFileAtomic(join(outDir, indexFileName(split)), encodeIndex(header, tables));
  // Make the renames durable too (Linux allows fsync on a directory).
  const dirFd = openSync(outDir, 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
  return { split, images: count, skipped, bytes: totalBytes, shards: shards.map((s) => s.file) };
}

// ---------------------------------------------------------------------------------------------

/** A packed split; close() releases the shard files it has opened. */
export interface PackedSource extends ImageSource {
  close(): void;
}

function parseHeader(bytes: Buffer, indexPath: string): { header: PackedHeader; tablesAt: number } {
  const fail = (problem: string, options?: ErrorOptions): never => {
    throw new InputError('DATA_FILE_INVALID', `${indexPath}: ${problem}`, options);
  };
  if (bytes.length < PREAMBLE_BYTES || !bytes.subarray(0, PACK_MAGIC.length).equals(PACK_MAGIC))
    fail('not a packed index (bad magic bytes)');
  const version = bytes.readUInt32LE(PACK_MAGIC.length);
  if (version !== PACK_FORMAT_VERSION)
    fail(`packed format version ${version}, this version of vit-dist reads ${PACK_FORMAT_VERSION} (pack the data again)`);
  const jsonBytes = bytes.readUInt32LE(PACK_MAGIC.length + 4);
  if (PREAMBLE_BYTES + jsonBytes > bytes.length) fail('truncated header');
  let header: PackedHeader;
  try {
    header = JSON.parse(bytes.subarray(PREAMBLE_BYTES, PREAMBLE_BYTES + jsonBytes).toString('utf8')) as PackedHeader;
  } catch (err) {
    return fail(`unreadable header (${(err as Error).message})`, { cause: err });
  }
  const { count, channels, classes, shards } = header;
  if (!Number.isInteger(count) || count < 0) fail(`bad record count ${count}`);
  if (channels !== 1 && channels !== 3) fail(`bad channel count ${channels}`);
  if (!Array.isArray(classes) || classes.length === 0 || !classes.every((c) => typeof c === 'string')) fail('bad class names');
  if (!Array.isArray(shards) || !shards.every((s) => typeof s?.file === 'string' && Number.isInteger(s.bytes) && s.bytes >= 0))
    fail('bad shard list');
  const tablesAt = Math.ceil((PREAMBLE_BYTES + jsonBytes) / TABLE_ALIGNMENT) * TABLE_ALIGNMENT;
  const expected = tablesAt + count * INDEX_RECORD_BYTES;
  if (bytes.length !== expected) fail(`is ${bytes.length} bytes, its header of ${count} records needs ${expected}`);
  return { header, tablesAt };
}

function decodeTables(bytes: Buffer, tablesAt: number, count: number): IndexTables {
  const tables = allocateTables(count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = tablesAt;
  for (let i = 0; i < count; i++, at += 8) tables.offset[i] = view.getFloat64(at, true);
  for (const table of [tables.shard, tables.height, tables.width, tables.label]) {
    for (let i = 0; i < count; i++, at += 4) table[i] = view.getUint32(at, true);
  }
  tables.channels.set(bytes.subarray(at, at + count));
  return tables;
}

/**
 * Opens a packed split: reads the index, checks every record against it and every shard's length
 * on disk (a truncated shard is an error naming it). Shards are opened on first use and read with
 * positional reads; no shard is loaded whole.
 */
export function openPacked(dir: string, split: StoredSplit): PackedSource {
  const indexPath = join(dir, indexFileName(split));
  if (!existsSync(indexPath))
    throw new InputError('DATA_FILE_INVALID', `${indexPath}: no packed ${split} split here (write one with \`vit-dist pack\`)`);
  const bytes = readFileSync(indexPath);
  const { header, tablesAt } = parseHeader(bytes, indexPath);
  const { count, channels, classes } = header;
  for (const shard of header.shards) {
    const path = join(dir, shard.file);
    const actual = statSync(path, { throwIfNoEntry: false })?.size;
    if (actual === undefined) throw new InputError('DATA_FILE_NOT_FOUND', `${path}: shard file not found (listed in ${indexPath})`);
    if (actual !== shard.bytes)
      throw new InputError(
        'DATA_FILE_INVALID',
        `${path}: ${actual < shard.bytes ? 'truncated shard' : 'shard of the wrong size'}: ${actual} bytes, the index ${indexPath} expects ${shard.bytes}`,
      );
  }
  const { offset, shard, height, width, label, channels: recordChannels } = decodeTables(bytes, tablesAt, count);
  for (let i = 0; i < count; i++) {
    const s = header.shards[shard[i]!];
    const end = offset[i]! + height[i]! * width[i]! * channels;
    if (
      s === undefined ||
      recordChannels[i] !== channels ||
      label[i]! >= classes.length ||
      !(offset[i]! >= 0) ||
      end > s.bytes ||
      height[i] === 0 ||
      width[i] === 0
    ) {
      throw new InputError(
        'DATA_FILE_INVALID',
        `${indexPath}: record ${i} is inconsistent (shard ${shard[i]}, offset ${offset[i]}, ${height[i]}x${width[i]}x${recordChannels[i]}, label ${label[i]})`,
      );
    }
  }
  const uniform = count > 0 && height.every((h) => h === height[0]) && width.every((w) => w === width[0]);
  const fds: (number | undefined)[] = new Array(header.shards.length);
  const shardPath = (s: number): string => join(dir, header.shards[s]!.file);
  const what = `the packed ${split} split in ${dir}`;
  const readRecord = (index: number): RawImage => {
    checkSampleIndex(index, count, what);
    const s = shard[index]!;
    const path = shardPath(s);
    fds[s] ??= openSync(path, 'r');
    const data = new Uint8Array(height[index]! * width[index]! * channels);
    let got = 0;
    while (got < data.length) {
      const n = readSync(fds[s]!, data, got, data.length - got, offset[index]! + got);
      if (n === 0)
        throw new InputError(
          'DATA_FILE_INVALID',
          `${path}: ends inside record ${index} (at byte ${offset[index]! + got}): the shard changed after it was opened`,
        );
      got += n;
    }
    return { data, height: height[index]!, width: width[index]!, channels };
  };
  return {
    size: count,
    classes,
    channels,
    fixedSize: uniform ? { height: height[0]!, width: width[0]! } : null,
    label(index: number): number {
      checkSampleIndex(index, count, what);
      return label[index]!;
    },
    async read(index: number): Promise<RawImage> {
      return readRecord(index);
    },
    // The whole record is read (records are small and uncompressed); libvips shrinks the region,
    // as for image folders, so a packed copy of small images gives the folder's pixels.
    async readRegion(index: number, choose: (height: number, width: number) => ImageRegion | null): Promise<RawImage> {
      const image = readRecord(index);
      const region = choose(image.height, image.width);
      return region ? resizeRegion(image, region) : image;
    },
    describe(index: number): string {
      checkSampleIndex(index, count, what);
      return `${shardPath(shard[index]!)} record ${index} at byte ${offset[index]}`;
    },
    close(): void {
      for (let s = 0; s < fds.length; s++) {
        if (fds[s] !== undefined) closeSync(fds[s]!);
        fds[s] = undefined;
      }
    },
  };
}
