// MNIST-family directories (MNIST, Fashion-MNIST, KMNIST, ...) as image sources: the idx files of
// fashion-mnist.ts, one grayscale image per record. Two formats share this reader and differ only in
// their class names: `fashion-mnist` names the ten classes, `idx` numbers them "0".."K-1".
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readIdx } from './idx.ts';
import { FASHION_MNIST_CLASSES, IDX_FILES, readIdxSplit, resolveFile, type Split } from './fashion-mnist.ts';
import type { ImageSource, RawImage } from './source.ts';
import { checkSampleIndex } from './source.ts';
import { InputError } from '../common/errors.ts';

export type IdxFormat = 'fashion-mnist' | 'idx';

const IDX_HINT =
  'an idx data set holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte';

/** The files of a split: 'val' is the t10k ("test") files. */
const FILE_SPLIT: Record<'train' | 'val', Split> = { train: 'train', val: 'test' };

/** Whether `dir` holds the images file of `split`, plain or gzipped (whether it is valid is checked at open). */
export function idxSplitExists(dir: string, split: 'train' | 'val'): boolean {
  const name = IDX_FILES[FILE_SPLIT[split]].images;
  return existsSync(join(dir, name)) || existsSync(join(dir, `${name}.gz`));
}

/** "0".."K-1" with K = the largest training label + 1. */
function numberedClasses(trainLabels: Uint8Array, trainLabelsPath: string): string[] {
  if (trainLabels.length === 0)
    throw new InputError('DATA_FILE_INVALID', `${trainLabelsPath}: holds no labels, so the classes are unknown`);
  const maxLabel = trainLabels.reduce((a, b) => Math.max(a, b), 0);
  return Array.from({ length: maxLabel + 1 }, (_, k) => String(k));
}

export function openIdxSource(dir: string, split: 'train' | 'val', format: IdxFormat): ImageSource {
  const { n, height, width, images, labels, imagesPath, labelsPath } = readIdxSplit(dir, FILE_SPLIT[split], IDX_HINT);
  let classes: string[];
  if (format === 'fashion-mnist') {
    classes = [...FASHION_MNIST_CLASSES];
  } else {
    // Numbered from the training labels even for 'val', so both splits number the classes alike.
    const trainLabelsPath = split === 'train' ? labelsPath : resolveFile(dir, IDX_FILES.train.labels, IDX_HINT);
    classes = numberedClasses(split === 'train' ? labels : readIdx(trainLabelsPath).data, trainLabelsPath);
  }
  for (let i = 0; i < n; i++) {
    if (labels[i]! >= classes.length) {
      throw new InputError(
        'DATA_FILE_INVALID',
        `${labelsPath}: label ${labels[i]} at index ${i} is outside 0..${classes.length - 1} (the classes of ${format})`,
      );
    }
  }
  const pixels = height * width;
  return {
    size: n,
    classes,
    channels: 1,
    fixedSize: { height, width },
    label(index: number): number {
      checkSampleIndex(index, n, imagesPath);
      return labels[index]!;
    },
    async read(index: number): Promise<RawImage> {
      checkSampleIndex(index, n, imagesPath);
      // A copy (images may be a Buffer, whose slice() is a view): the caller may change the pixels in place.
      return { data: new Uint8Array(images.subarray(index * pixels, (index + 1) * pixels)), height, width, channels: 1 };
    },
    describe(index: number): string {
      return `${imagesPath} image ${index}`;
    },
  };
}
