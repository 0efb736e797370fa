// The data layer's common currency: an image source reads one decoded image at a time, in its
// stored size, as uint8 pixels; the transforms (src/data/transforms) turn it into the model's
// float input. Every format (idx, CIFAR binary, image folders, packed shards) is an ImageSource.
import type { Box, Interpolation } from './transforms/resize.ts';

/** The file layouts vit-dist reads (src/data/open.ts opens each). */
export const DATA_FORMATS = ['fashion-mnist', 'idx', 'cifar10', 'cifar100', 'imagefolder', 'packed'] as const;
export type DataFormat = (typeof DATA_FORMATS)[number];

/** Throws a RangeError naming `what` unless `index` is an integer in [0, size). */
export function checkSampleIndex(index: number, size: number, what: string): void {
  if (!(Number.isInteger(index) && index >= 0 && index < size)) {
    throw new RangeError(`sample index ${index} is outside 0..${size - 1} of ${what}`);
  }
}

/** One decoded image: uint8 pixels, row-major HWC. */
export interface RawImage {
  readonly data: Uint8Array;
  readonly height: number;
  readonly width: number;
  /** 1 (grayscale) or 3 (RGB). */
  readonly channels: number;
}

/**
 * A part of an image at a given size, as a pipeline's leading crop or resize asks a source for it
 * (ImageSource.readRegion): the `box` of the stored image resized to `height` x `width`, then, if
 * given, the `crop` of that resized image (an evaluation resize followed by its centre crop).
 */
export interface ImageRegion {
  readonly box: Box;
  readonly height: number;
  readonly width: number;
  readonly interpolation: Interpolation;
  readonly crop?: Box;
}

/** Which part of a data set: the training files, the evaluation files (idx/CIFAR "test", image folders' "val"), or the held-out part of the training files. */
export type DataSplit = 'train' | 'val' | 'holdout';

/** One split of a labelled image data set, read image by image. */
export interface ImageSource {
  readonly size: number;
  /** Class names, index = label. */
  readonly classes: readonly string[];
  /** Channels of every image (1 or 3). */
  readonly channels: number;
  /** The size every image has, or null when sizes vary (image folders). */
  readonly fixedSize: { height: number; width: number } | null;
  /** Label of sample `index` (0-based, < size). */
  label(index: number): number;
  /** Decoded pixels of sample `index`. */
  read(index: number): Promise<RawImage>;
  /** A name for sample `index` in error messages and logs: a file path, or file and record. */
  describe(index: number): string;
  /**
   * Optional, for sources of large images: sample `index` decoded only as far as `choose` needs.
   * The source reads the image's stored size (from the file's header or its own index), calls
   * `choose` with it exactly once, and returns the region chosen, or the whole image, as read()
   * does, when `choose` returns null. The region's pixels are read()'s pixels cropped and resized
   * by the source's own resampler, so they may differ slightly from the transforms' resize.
   */
  readRegion?(index: number, choose: (height: number, width: number) => ImageRegion | null): Promise<RawImage>;
}
