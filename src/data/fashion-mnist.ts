// Fashion-MNIST (Xiao et al., 2017) as Debian's dataset-fashion-mnist package installs it.
// Each worker keeps the raw uint8 pixels and turns into floats only the samples of its own slice.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DataFileError, readIdx } from './idx.ts';

export const DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';
export const FASHION_MNIST_CLASSES = [
  'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
] as const;
/** Mean and std of the training pixels scaled to [0, 1], the usual Fashion-MNIST normalization. */
export const FASHION_MNIST_MEAN = 0.286;
export const FASHION_MNIST_STD = 0.353;

export type Split = 'train' | 'test';

const FILES: Record<Split, { images: string; labels: string }> = {
  train: { images: 'train-images-idx3-ubyte', labels: 'train-labels-idx1-ubyte' },
  test: { images: 't10k-images-idx3-ubyte', labels: 't10k-labels-idx1-ubyte' },
};

/** An in-memory image classification split: uint8 pixels (NHWC) and integer labels. */
export interface ImageDataset {
  readonly size: number;
  readonly height: number;
  readonly width: number;
  readonly channels: number;
  readonly numClasses: number;
  /** Writes normalized float pixels of the given samples, NHWC, into `out` and their labels into `labels`. */
  gather(indices: ArrayLike<number>, out: Float32Array, labels: Int32Array): void;
}

/** Finds `name` or `name.gz` in `dir`. */
function resolveFile(dir: string, name: string): string {
  for (const candidate of [join(dir, name), join(dir, `${name}.gz`)]) {
    if (existsSync(candidate)) return candidate;
  }
  throw new DataFileError(join(dir, `${name}.gz`), `file not found (looked for ${name} and ${name}.gz in ${dir}; on Debian: apt-get install dataset-fashion-mnist)`);
}

export function loadFashionMnist(dir: string, split: Split): ImageDataset {
  const imagesPath = resolveFile(dir, FILES[split].images);
  const labelsPath = resolveFile(dir, FILES[split].labels);
  const images = readIdx(imagesPath);
  const labels = readIdx(labelsPath);
  if (images.shape.length !== 3) throw new DataFileError(imagesPath, `expected rank-3 images [n, height, width], got shape ${images.shape.join('x')}`);
  if (labels.shape.length !== 1) throw new DataFileError(labelsPath, `expected rank-1 labels, got shape ${labels.shape.join('x')}`);
  const [n, height, width] = images.shape as [number, number, number];
  if (labels.shape[0] !== n) throw new DataFileError(labelsPath, `holds ${labels.shape[0]} labels but ${imagesPath} holds ${n} images`);
  const numClasses = FASHION_MNIST_CLASSES.length;
  for (let i = 0; i < n; i++) {
    if (labels.data[i]! >= numClasses) throw new DataFileError(labelsPath, `label ${labels.data[i]} at index ${i} is outside 0..${numClasses - 1}`);
  }
  const pixels = height * width;
  const scale = 1 / (255 * FASHION_MNIST_STD);
  const shift = FASHION_MNIST_MEAN / FASHION_MNIST_STD;
  return {
    size: n, height, width, channels: 1, numClasses,
    gather(indices, out, outLabels) {
      for (let s = 0; s < indices.length; s++) {
        const index = indices[s]!;
        if (!(index >= 0 && index < n)) throw new RangeError(`sample index ${index} outside the ${split} split of ${n}`);
        const src = index * pixels;
        const dst = s * pixels;
        for (let p = 0; p < pixels; p++) out[dst + p] = images.data[src + p]! * scale - shift;
        outLabels[s] = labels.data[index]!;
      }
    },
  };
}
