// Fashion-MNIST (Xiao et al., 2017) as Debian's dataset-fashion-mnist package installs it, and the
// MNIST-family file layout it shares with MNIST (src/data/idx-source.ts makes it an ImageSource).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readIdx } from './idx.ts';
import { InputError } from '../common/errors.ts';

export const DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';
export const FASHION_MNIST_CLASSES = [
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
] as const;
/** Mean and std of the training pixels scaled to [0, 1], the usual Fashion-MNIST normalization. */
export const FASHION_MNIST_MEAN = 0.286;
export const FASHION_MNIST_STD = 0.353;

export type Split = 'train' | 'test';

/** The file names of each split of an MNIST-family directory (each may also be gzipped). */
export const IDX_FILES: Record<Split, { images: string; labels: string }> = {
  train: { images: 'train-images-idx3-ubyte', labels: 'train-labels-idx1-ubyte' },
  test: { images: 't10k-images-idx3-ubyte', labels: 't10k-labels-idx1-ubyte' },
};

const FASHION_MNIST_INSTALL_HINT = 'on Debian: apt-get install dataset-fashion-mnist';

/** Finds `name` or `name.gz` in `dir`; `hint` ends the not-found message (how to get the files). */
export function resolveFile(dir: string, name: string, hint: string = FASHION_MNIST_INSTALL_HINT): string {
  for (const candidate of [join(dir, name), join(dir, `${name}.gz`)]) {
    if (existsSync(candidate)) return candidate;
  }
  throw new InputError(
    'DATA_FILE_NOT_FOUND',
    `${join(dir, `${name}.gz`)}: file not found (looked for ${name} and ${name}.gz in ${dir}; ${hint})`,
  );
}

/** One split of an MNIST-family directory: rank-3 images [n, height, width] and as many labels. */
export interface IdxSplit {
  readonly imagesPath: string;
  readonly labelsPath: string;
  readonly n: number;
  readonly height: number;
  readonly width: number;
  /** n * height * width pixels, row-major. */
  readonly images: Uint8Array;
  readonly labels: Uint8Array;
}

/** Reads and cross-checks the images and labels of one split; `hint` as in resolveFile. */
export function readIdxSplit(dir: string, split: Split, hint?: string): IdxSplit {
  const imagesPath = resolveFile(dir, IDX_FILES[split].images, hint);
  const labelsPath = resolveFile(dir, IDX_FILES[split].labels, hint);
  const images = readIdx(imagesPath);
  const labels = readIdx(labelsPath);
  if (images.shape.length !== 3)
    throw new InputError(
      'DATA_FILE_INVALID',
      `${imagesPath}: expected rank-3 images [n, height, width], got shape ${images.shape.join('x')}`,
    );
  if (labels.shape.length !== 1)
    throw new InputError('DATA_FILE_INVALID', `${labelsPath}: expected rank-1 labels, got shape ${labels.shape.join('x')}`);
  const [n, height, width] = images.shape as [number, number, number];
  if (labels.shape[0] !== n)
    throw new InputError('DATA_FILE_INVALID', `${labelsPath}: holds ${labels.shape[0]} labels but ${imagesPath} holds ${n} images`);
  return { imagesPath, labelsPath, n, height, width, images: images.data, labels: labels.data };
}
