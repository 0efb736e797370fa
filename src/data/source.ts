// The data layer's common currency: an image source reads one decoded image at a time, in its
// stored size, as uint8 pixels; the transforms (src/data/transforms) turn it into the model's
// float input. Every format (idx, CIFAR binary, image folders, packed shards) is an ImageSource.

/** One decoded image: uint8 pixels, row-major HWC. */
export interface RawImage {
  readonly data: Uint8Array;
  readonly height: number;
  readonly width: number;
  /** 1 (grayscale) or 3 (RGB). */
  readonly channels: number;
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
}
