// One entry point for every data format: a data spec (format, path, held-out fraction and seed) and
// a split name give an ImageSource. 'train' is the training files minus the held-out part,
// 'holdout' that part, 'val' the evaluation files.
import { cifarSplitExists, openCifarSource } from './cifar.ts';
import { idxSplitExists, openIdxSource } from './idx-source.ts';
import { complementIndices, holdoutIndices, subsetSource } from './holdout.ts';
import { imageFolderSplitExists, openImageFolder } from './image-folder.ts';
import { openPacked, packedSplitExists } from './packed.ts';
import { DATA_FORMATS, type DataFormat, type DataSplit, type ImageSource } from './source.ts';
import { InputError } from '../common/errors.ts';

export interface DataSpec {
  format: DataFormat;
  /** The data set's directory. */
  path: string;
  /** Fraction of the training files held out, in [0, 1); 0 holds out none. */
  holdout: number;
  /** Chooses the held-out images; separate from the run seed, so runs of a sweep hold out the same images. */
  holdoutSeed: number;
}

/** The files of a split as stored: the training files or the evaluation files. */
function openStoredSplit(format: DataFormat, path: string, split: 'train' | 'val'): ImageSource {
  switch (format) {
    case 'fashion-mnist':
    case 'idx':
      return openIdxSource(path, split, format);
    case 'cifar10':
    case 'cifar100':
      return openCifarSource(path, split, format);
    case 'imagefolder':
      return openImageFolder(path, split);
    case 'packed':
      return openPacked(path, split);
    default:
      throw new InputError('DATA_FILE_INVALID', `${path}: unknown data format "${format as string}" (one of ${DATA_FORMATS.join(', ')})`);
  }
}

/** Whether the data set at `path` has the files of `split` (whether they are valid is checked when opened). */
export function storedSplitExists(format: DataFormat, path: string, split: 'train' | 'val'): boolean {
  switch (format) {
    case 'fashion-mnist':
    case 'idx':
      return idxSplitExists(path, split);
    case 'cifar10':
    case 'cifar100':
      return cifarSplitExists(path, split, format);
    case 'imagefolder':
      return imageFolderSplitExists(path, split);
    case 'packed':
      return packedSplitExists(path, split);
    default:
      throw new InputError('DATA_FILE_INVALID', `${path}: unknown data format "${format as string}" (one of ${DATA_FORMATS.join(', ')})`);
  }
}

export async function openImageSource(spec: DataSpec, split: DataSplit): Promise<ImageSource> {
  const { format, path, holdout, holdoutSeed } = spec;
  if (split === 'val') return openStoredSplit(format, path, 'val');
  if (split === 'holdout' && holdout === 0)
    throw new InputError(
      'DATA_FILE_INVALID',
      `${path}: the holdout split is empty: the data spec holds out no training images (holdout 0)`,
    );
  const train = openStoredSplit(format, path, 'train');
  let held: Uint32Array;
  try {
    held = holdoutIndices(train.size, holdout, holdoutSeed);
  } catch (err) {
    throw new InputError('DATA_FILE_INVALID', `${path}: ${(err as Error).message}`, { cause: err });
  }
  if (split === 'holdout') return subsetSource(train, held);
  return held.length === 0 ? train : subsetSource(train, complementIndices(train.size, held));
}
