// CIFAR-10 and CIFAR-100 in their binary versions (https://www.cs.toronto.edu/~kriz/cifar.html), as
// extracted from cifar-10-binary.tar.gz (cifar-10-batches-bin/) and cifar-100-binary.tar.gz
// (cifar-100-binary/). A record is the label byte(s) followed by a 32x32 RGB image stored as three
// planes (all red, then all green, then all blue); read() turns it into row-major HWC. The files are
// small (180 MB), so they are kept in memory as torchvision's CIFAR10 does.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkSampleIndex, type ImageSource, type RawImage } from './source.ts';
import { InputError } from '../common/errors.ts';

export type CifarFormat = 'cifar10' | 'cifar100';

const CIFAR_SIDE = 32;
const CIFAR_CHANNELS = 3;
const PLANE_BYTES = CIFAR_SIDE * CIFAR_SIDE;
const IMAGE_BYTES = CIFAR_CHANNELS * PLANE_BYTES;

interface CifarLayout {
  /** The folder the official tarball extracts to. */
  readonly folder: string;
  readonly files: Record<'train' | 'val', readonly string[]>;
  /** Label bytes before each image: CIFAR-100 stores the coarse (superclass) label, then the fine one. */
  readonly labelBytes: number;
  /** Which label byte is the label used here: the only one of CIFAR-10, the fine one of CIFAR-100. */
  readonly labelByte: number;
  /** One class name a line, index = label. */
  readonly classesFile: string;
  readonly numClasses: number;
}

const LAYOUTS: Record<CifarFormat, CifarLayout> = {
  cifar10: {
    folder: 'cifar-10-batches-bin',
    files: {
      train: ['data_batch_1.bin', 'data_batch_2.bin', 'data_batch_3.bin', 'data_batch_4.bin', 'data_batch_5.bin'],
      val: ['test_batch.bin'],
    },
    labelBytes: 1,
    labelByte: 0,
    classesFile: 'batches.meta.txt',
    numClasses: 10,
  },
  cifar100: {
    folder: 'cifar-100-binary',
    files: { train: ['train.bin'], val: ['test.bin'] },
    labelBytes: 2,
    labelByte: 1,
    classesFile: 'fine_label_names.txt',
    numClasses: 100,
  },
};

/** Bytes of one record of `format`. */
export function cifarRecordBytes(format: CifarFormat): number {
  return LAYOUTS[format].labelBytes + IMAGE_BYTES;
}

/** The folder holding the files: `path` itself, or the tarball's folder inside it; null when neither does. */
function findCifarDir(path: string, format: CifarFormat): string | null {
  const layout = LAYOUTS[format];
  for (const dir of [path, join(path, layout.folder)]) {
    if (existsSync(join(dir, layout.classesFile))) return dir;
  }
  return null;
}

function resolveCifarDir(path: string, format: CifarFormat): string {
  const dir = findCifarDir(path, format);
  if (dir !== null) return dir;
  const { folder, classesFile } = LAYOUTS[format];
  throw new InputError(
    'DATA_FILE_INVALID',
    `${path}: not a ${format} binary data set: neither it nor ${join(path, folder)} holds ${classesFile} (expected the folder extracted from the official binary tarball)`,
  );
}

export function cifarSplitExists(path: string, split: 'train' | 'val', format: CifarFormat): boolean {
  const dir = findCifarDir(path, format);
  return dir !== null && existsSync(join(dir, LAYOUTS[format].files[split][0]!));
}

function readClassNames(path: string, expected: number): string[] {
  const names = readFileSync(path, 'utf8')
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== '');
  if (names.length !== expected)
    throw new InputError('DATA_FILE_INVALID', `${path}: holds ${names.length} class names, expected ${expected}`);
  return names;
}

/** One batch file: its records, checked to be a whole, non-zero number. */
interface CifarFile {
  readonly path: string;
  readonly bytes: Buffer;
  readonly records: number;
  /** Index of its first record in the split. */
  readonly start: number;
}

function readCifarFile(path: string, format: CifarFormat, start: number): CifarFile {
  if (!existsSync(path)) throw new InputError('DATA_FILE_NOT_FOUND', `${path}: file not found`);
  const bytes = readFileSync(path);
  const recordBytes = cifarRecordBytes(format);
  if (bytes.length === 0 || bytes.length % recordBytes !== 0) {
    throw new InputError(
      'DATA_FILE_INVALID',
      `${path}: is ${bytes.length} bytes, not a whole, non-zero number of ${format} records of ${recordBytes} bytes (truncated or not ${format}?)`,
    );
  }
  return { path, bytes, records: bytes.length / recordBytes, start };
}

export function openCifarSource(path: string, split: 'train' | 'val', format: CifarFormat): ImageSource {
  const layout = LAYOUTS[format];
  const dir = resolveCifarDir(path, format);
  const classes = readClassNames(join(dir, layout.classesFile), layout.numClasses);
  const files: CifarFile[] = [];
  let size = 0;
  for (const name of layout.files[split]) {
    const file = readCifarFile(join(dir, name), format, size);
    files.push(file);
    size += file.records;
  }
  const recordBytes = cifarRecordBytes(format);
  const labels = new Uint8Array(size);
  for (const file of files) {
    for (let r = 0; r < file.records; r++) {
      const label = file.bytes[r * recordBytes + layout.labelByte]!;
      if (label >= layout.numClasses)
        throw new InputError('DATA_FILE_INVALID', `${file.path}: record ${r} has label ${label}, outside 0..${layout.numClasses - 1}`);
      labels[file.start + r] = label;
    }
  }
  const what = `the ${split} split of ${dir}`;
  /** The file holding sample `index` and the record's number in that file. */
  const locate = (index: number): { file: CifarFile; record: number } => {
    checkSampleIndex(index, size, what);
    let f = files.length - 1;
    while (files[f]!.start > index) f--;
    return { file: files[f]!, record: index - files[f]!.start };
  };
  return {
    size,
    classes,
    channels: CIFAR_CHANNELS,
    fixedSize: { height: CIFAR_SIDE, width: CIFAR_SIDE },
    label(index: number): number {
      checkSampleIndex(index, size, what);
      return labels[index]!;
    },
    async read(index: number): Promise<RawImage> {
      const { file, record } = locate(index);
      const planes = record * recordBytes + layout.labelBytes;
      const data = new Uint8Array(IMAGE_BYTES);
      for (let p = 0; p < PLANE_BYTES; p++) {
        for (let c = 0; c < CIFAR_CHANNELS; c++) data[p * CIFAR_CHANNELS + c] = file.bytes[planes + c * PLANE_BYTES + p]!;
      }
      return { data, height: CIFAR_SIDE, width: CIFAR_SIDE, channels: CIFAR_CHANNELS };
    },
    describe(index: number): string {
      const { file, record } = locate(index);
      return `${file.path} record ${record}`;
    },
  };
}
