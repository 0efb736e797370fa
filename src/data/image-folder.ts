// The ImageFolder layout, as ImageNet is usually unpacked: ROOT/train/<class>/*.jpg and
// ROOT/val/<class>/*.jpg. As torchvision's ImageFolder: the classes are the sorted names of the
// train/ folders, a class's images are the image files anywhere below its folder (the folders sorted
// by path, the files by name), other files are ignored. Listing reads each folder once with its
// entries' types (no stat per file), so 1.28M ImageNet files list in seconds.
// Images decode with sharp (libvips); a pipeline that starts with a crop or a resize has sharp
// decode only that region (readRegion), see decodeRegion.
import { readdirSync, readFileSync, statSync, type Dirent } from 'node:fs';
import { extname, join } from 'node:path';
import sharp, { type KernelEnum, type OutputInfo, type Sharp } from 'sharp';
import { checkSampleIndex } from './source.ts';
import type { ImageRegion, ImageSource, RawImage } from './source.ts';
import { type Box, type Interpolation, crop, resize } from './transforms/resize.ts';
import { InputError } from '../common/errors.ts';

/** File extensions read as images, compared lower-cased (ImageNet's files end in .JPEG). */
export const IMAGE_EXTENSIONS: ReadonlySet<string> = new Set(['.jpg', '.jpeg', '.png', '.webp']);
const RGB_CHANNELS = 3;
/**
 * libvips' strictness: 'error' rejects truncated and undecodable files but accepts files that only
 * raise warnings (e.g. libjpeg's "extraneous bytes before marker", which some ImageNet JPEGs have and
 * PIL accepts); sharp's default, 'warning', would reject those.
 */
const DECODE_FAIL_ON = 'error';

/** An image file that cannot be decoded; the caller decides whether to skip it (--skip-corrupt). */
export class CorruptImageError extends InputError {
  override name = 'CorruptImageError';
  constructor(
    readonly path: string,
    problem: string,
    options?: ErrorOptions,
  ) {
    super('CORRUPT_IMAGE', `${path}: corrupt or unreadable image (${problem})`, options);
  }
}

/**
 * Decodes an image file to 3-channel sRGB uint8, HWC: grayscale is replicated to three channels,
 * an alpha channel is dropped (as PIL's convert('RGB'), without compositing), CMYK and files with
 * an embedded ICC profile are converted to sRGB by the profile (PIL's convert('RGB') ignores the
 * profile, so such files differ slightly from torchvision's pixels). The EXIF orientation is NOT
 * applied: torchvision's loader (PIL's Image.open + convert) does not apply it either, and models
 * and reference numbers are trained on the pixels as stored.
 */
export async function decodeImage(path: string): Promise<RawImage> {
  return decodeRgb(path, (image) => image, path);
}

/** Runs sharp's decode of `input` (a path or the file's bytes) through `shape` to 3-channel sRGB raw pixels. */
async function decodeRgb(input: string | Uint8Array, shape: (image: Sharp) => Sharp, path: string): Promise<RawImage> {
  let decoded: { data: Buffer; info: OutputInfo };
  try {
    // toBuffer rather than toUint8Array: sharp hands over its output without another copy.
    decoded = await shape(sharp(input, { failOn: DECODE_FAIL_ON }))
      .removeAlpha()
      .toColourspace('srgb')
      .raw()
      .toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new CorruptImageError(path, (err as Error).message, { cause: err });
  }
  const { data, info } = decoded;
  if (info.channels !== RGB_CHANNELS || data.length !== info.width * info.height * RGB_CHANNELS) {
    throw new CorruptImageError(path, `decoded to ${info.channels} channels of ${info.width}x${info.height}, not 3-channel RGB`);
  }
  // A plain Uint8Array over sharp's buffer (a Buffer, whose slice() would be a view, not a copy).
  return {
    data: new Uint8Array(data.buffer, data.byteOffset, data.length),
    height: info.height,
    width: info.width,
    channels: RGB_CHANNELS,
  };
}

// ---- Regions: a pipeline's leading crop or resize done while decoding --------------------------

/** libvips' kernels for the transforms' filters; its reduce (downscaling) with these follows PIL's to about a level. */
const REGION_KERNELS: Readonly<Record<Interpolation, keyof KernelEnum>> = { bilinear: 'linear', bicubic: 'cubic' };

function isWholeImage(box: Box, height: number, width: number): boolean {
  return box.top === 0 && box.left === 0 && box.height === height && box.width === width;
}

/** Throws unless `region`'s box lies inside a height x width image. */
function checkRegion(region: ImageRegion, height: number, width: number): void {
  const { top, left, height: h, width: w } = region.box;
  const fits =
    [top, left, h, w].every(Number.isInteger) && top >= 0 && left >= 0 && h > 0 && w > 0 && top + h <= height && left + w <= width;
  if (!fits) throw new RangeError(`region box top=${top} left=${left} height=${h} width=${w} is not inside the ${height}x${width} image`);
}

/**
 * The pixels of `region` of an image of the stored size height x width; `decode(shape)` decodes
 * the image with sharp, `shape` added to its pipeline. sharp crops the box (a JPEG then decodes
 * only down to the box's last row) and shrinks each side that shrinks, with libvips' reduce
 * (several times faster than the TypeScript resize, and like PIL's); a side that grows is
 * resized by the TypeScript resize (PIL's algorithm) afterwards: libvips enlarges with an affine
 * warp that is slower here and sits a fraction of a pixel off PIL's pixel centres. The resized
 * image's crop, if any, comes last.
 */
async function decodeRegion(
  region: ImageRegion,
  height: number,
  width: number,
  decode: (shape: (image: Sharp) => Sharp) => Promise<RawImage>,
): Promise<RawImage> {
  checkRegion(region, height, width);
  const { box, crop: after, interpolation } = region;
  const nativeHeight = Math.min(region.height, box.height);
  const nativeWidth = Math.min(region.width, box.width);
  const nativeResize = nativeHeight !== box.height || nativeWidth !== box.width;
  const finished = nativeHeight === region.height && nativeWidth === region.width;
  const decoded = await decode((image) => {
    // sharp: an extract() before resize() crops its input, one after it crops its output.
    let shaped = isWholeImage(box, height, width) ? image : image.extract(box);
    if (nativeResize) {
      // fastShrinkOnLoad false: a JPEG much larger than the output may decode at 1/2, 1/4 or 1/8
      // scale (only a whole image: an extract before the resize rules it out), always leaving
      // libvips' reduce a factor of two or more to antialias with.
      shaped = shaped.resize({
        width: nativeWidth,
        height: nativeHeight,
        fit: 'fill',
        kernel: REGION_KERNELS[interpolation],
        fastShrinkOnLoad: false,
      });
      if (after && finished) shaped = shaped.extract(after);
    }
    return shaped;
  });
  if (after && finished && nativeResize) return decoded;
  const resized = finished ? decoded : resize(decoded, region.height, region.width, interpolation);
  return after ? crop(resized, after) : resized;
}

/** `region` of decoded pixels (a packed record, or an image that had to be decoded whole). */
export async function resizeRegion(img: RawImage, region: ImageRegion): Promise<RawImage> {
  const { height, width, channels } = img;
  if (region.height >= region.box.height && region.width >= region.box.width) {
    // No side shrinks: libvips would only crop, so spare the call and resize the box directly.
    checkRegion(region, height, width);
    const resized = resize(img, region.height, region.width, region.interpolation, region.box);
    return region.crop ? crop(resized, region.crop) : resized;
  }
  return decodeRegion(region, height, width, async (shape) => {
    let pipeline = shape(sharp(img.data, { raw: { height, width, channels: channels as 1 | 3 } }));
    // sharp makes 3-channel sRGB of a 1-channel input unless told to keep it grayscale.
    if (channels === 1) pipeline = pipeline.toColourspace('b-w');
    const { data, info } = await pipeline.raw().toBuffer({ resolveWithObject: true });
    return {
      data: new Uint8Array(data.buffer, data.byteOffset, data.length),
      height: info.height,
      width: info.width,
      channels: info.channels,
    };
  });
}

const JPEG_MARKER = 0xff;
const JPEG_SOI = 0xd8;
const JPEG_EOI = 0xd9;
const JPEG_SOS = 0xda;
/** Markers without a length field: TEM and RST0-7 (SOI and EOI are handled on their own). */
const JPEG_STANDALONE = new Set([0x01, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7]);
/** Start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15): the frame header holds the image size. */
const JPEG_SOF = new Set([0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]);

/**
 * The stored size of a JPEG whose region sharp can decode directly, from its frame header; null
 * for anything else (another format, an unusual or damaged header, or a file that does not end
 * with the end-of-image marker), which is then decoded whole first. The last check matters: a
 * decode that stops at the region's last row would not notice a file cut short below it.
 */
export function jpegRegionSize(bytes: Uint8Array): { height: number; width: number } | null {
  const n = bytes.length;
  if (n < 4 || bytes[0] !== JPEG_MARKER || bytes[1] !== JPEG_SOI || bytes[n - 2] !== JPEG_MARKER || bytes[n - 1] !== JPEG_EOI) return null;
  let at = 2;
  while (at + 1 < n) {
    if (bytes[at] !== JPEG_MARKER) return null;
    let marker = bytes[at + 1]!;
    while (marker === JPEG_MARKER && at + 2 < n) marker = bytes[++at + 1]!; // fill bytes before a marker
    at += 2;
    if (JPEG_STANDALONE.has(marker)) continue;
    if (marker === JPEG_SOS || marker === JPEG_EOI || marker === JPEG_SOI || at + 2 > n) return null;
    const length = (bytes[at]! << 8) | bytes[at + 1]!;
    if (JPEG_SOF.has(marker)) {
      // length(2) precision(1) height(2) width(2): a height of 0 (set later by a DNL marker) is left to sharp.
      if (length < 7 || at + 7 > n) return null;
      const height = (bytes[at + 3]! << 8) | bytes[at + 4]!;
      const width = (bytes[at + 5]! << 8) | bytes[at + 6]!;
      return height > 0 && width > 0 ? { height, width } : null;
    }
    if (length < 2) return null;
    at += length;
  }
  return null;
}

/** A file's bytes; an unreadable file is a CorruptImageError, as a failed decode is. */
function readImageFile(path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new CorruptImageError(path, (err as NodeJS.ErrnoException).code ?? (err as Error).message, { cause: err });
  }
}

/**
 * ImageSource.readRegion of an image file: a JPEG decodes only the region `choose` picks (see
 * decodeRegion); other files decode whole, then resizeRegion takes the region. Either way the
 * region's pixels are those of decodeImage cropped and resized the same way (libvips decodes a
 * JPEG's rows the same whether or not it stops early), except that a JPEG far larger than the
 * output may shrink on load.
 */
async function readImageRegion(path: string, choose: (height: number, width: number) => ImageRegion | null): Promise<RawImage> {
  const bytes = readImageFile(path);
  const stored = jpegRegionSize(bytes);
  if (stored === null) {
    const image = await decodeRgb(bytes, (image) => image, path);
    const region = choose(image.height, image.width);
    return region ? resizeRegion(image, region) : image;
  }
  const region = choose(stored.height, stored.width);
  if (region === null) return decodeRgb(bytes, (image) => image, path);
  return decodeRegion(region, stored.height, stored.width, (shape) => decodeRgb(bytes, shape, path));
}

function isImageName(name: string): boolean {
  return IMAGE_EXTENSIONS.has(extname(name).toLowerCase());
}

function readEntries(dir: string): Dirent[] {
  try {
    return readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    throw new InputError(
      'DATA_FILE_INVALID',
      `${dir}: cannot list the folder (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      { cause: err },
    );
  }
}

/** Code-unit order, as Python's sorted() for the names in practice (localeCompare would differ). */
function byName(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** An entry that is a folder; only symbolic links need a stat (torchvision follows them too). */
function isFolder(dir: string, entry: Dirent): boolean {
  if (entry.isDirectory()) return true;
  return (
    entry.isSymbolicLink() && !isImageName(entry.name) && statSync(join(dir, entry.name), { throwIfNoEntry: false })?.isDirectory() === true
  );
}

/** The image files below `classDir`, relative to it: folders in path order, files in name order (as torchvision). */
function listClassImages(classDir: string): string[] {
  const folders: { relative: string; files: string[] }[] = [];
  const walk = (relative: string): void => {
    const dir = relative === '' ? classDir : join(classDir, relative);
    const files: string[] = [];
    for (const entry of readEntries(dir)) {
      if (isFolder(dir, entry)) walk(relative === '' ? entry.name : join(relative, entry.name));
      else if ((entry.isFile() || entry.isSymbolicLink()) && isImageName(entry.name)) files.push(entry.name);
    }
    folders.push({ relative, files: files.sort(byName) });
  };
  walk('');
  folders.sort((a, b) => byName(a.relative, b.relative));
  return folders.flatMap(({ relative, files }) => (relative === '' ? files : files.map((f) => join(relative, f))));
}

/** The class folders of `dir`, sorted. */
function listClassFolders(dir: string): string[] {
  return readEntries(dir)
    .filter((entry) => isFolder(dir, entry))
    .map((entry) => entry.name)
    .sort(byName);
}

function splitFolder(root: string, split: 'train' | 'val'): string {
  return join(root, split);
}

export function imageFolderSplitExists(root: string, split: 'train' | 'val'): boolean {
  return statSync(splitFolder(root, split), { throwIfNoEntry: false })?.isDirectory() === true;
}

/** The classes: the sorted folder names of ROOT/train (the val split numbers its classes the same way). */
export function imageFolderClasses(root: string): string[] {
  const trainDir = splitFolder(root, 'train');
  if (!imageFolderSplitExists(root, 'train'))
    throw new InputError(
      'DATA_FILE_INVALID',
      `${trainDir}: no train/ folder: an image folder data set holds train/<class>/*.jpg (and val/<class>/*.jpg)`,
    );
  const classes = listClassFolders(trainDir);
  if (classes.length === 0) throw new InputError('DATA_FILE_INVALID', `${trainDir}: holds no class folders`);
  return classes;
}

export function openImageFolder(root: string, split: 'train' | 'val'): ImageSource {
  const classes = imageFolderClasses(root);
  const dir = splitFolder(root, split);
  if (!imageFolderSplitExists(root, split)) throw new InputError('DATA_FILE_INVALID', `${dir}: no ${split}/ folder`);
  const labelOf = new Map(classes.map((name, label) => [name, label]));
  const folders = split === 'train' ? classes : listClassFolders(dir);
  if (folders.length === 0) throw new InputError('DATA_FILE_INVALID', `${dir}: holds no class folders`);
  const classDirs = classes.map((name) => join(dir, name));
  const names: string[] = [];
  const labelList: number[] = [];
  for (const name of folders) {
    const label = labelOf.get(name);
    if (label === undefined)
      throw new InputError(
        'DATA_FILE_INVALID',
        `${join(dir, name)}: class "${name}" is in ${split}/ but not in train/ (the model has no output for it)`,
      );
    const files = listClassImages(classDirs[label]!);
    if (files.length === 0)
      throw new InputError('DATA_FILE_INVALID', `${classDirs[label]!}: empty class folder: no ${[...IMAGE_EXTENSIONS].join('/')} files`);
    for (const file of files) {
      names.push(file);
      labelList.push(label);
    }
  }
  const size = names.length;
  const labels = Uint32Array.from(labelList);
  const what = `the ${split} split of ${root}`;
  const pathOf = (index: number): string => {
    checkSampleIndex(index, size, what);
    return join(classDirs[labels[index]!]!, names[index]!);
  };
  return {
    size,
    classes,
    channels: RGB_CHANNELS,
    fixedSize: null,
    label(index: number): number {
      checkSampleIndex(index, size, what);
      return labels[index]!;
    },
    async read(index: number): Promise<RawImage> {
      return decodeImage(pathOf(index));
    },
    readRegion(index: number, choose: (height: number, width: number) => ImageRegion | null): Promise<RawImage> {
      return readImageRegion(pathOf(index), choose);
    },
    describe: pathOf,
  };
}
