// Dataset dispatch: the recipe's `data` section names a dataset and where its files are.
import { loadFashionMnist, type ImageDataset, type Split } from './fashion-mnist.ts';

export interface DataSpec {
  dataset: 'fashion-mnist';
  path: string;
}

export function loadDataset(spec: DataSpec, split: Split): ImageDataset {
  switch (spec.dataset) {
    case 'fashion-mnist':
      return loadFashionMnist(spec.path, split);
  }
}
