// Writes a smaller MNIST-family data set (idx files, format fashion-mnist or idx) for the experiments
// of docs/experiments.md: a class subset (pre-training on 5 of Fashion-MNIST's classes, for the soups)
// and/or a fraction of the training images (AugReg's 10% data), drawn per class so that the subset
// keeps the class balance. The test files are filtered by the same classes and otherwise kept whole.
// --exclude-holdout F [--holdout-seed S] leaves out the training images that a run on the full
// files with data.holdout F (and data.holdoutSeed S) holds out, so that a model pre-trained on the
// subset never saw the held-out images its fine-tunes' soup is chosen on.
//   node --import tsx bench/experiments/make-subset.ts --from DIR --out DIR [--classes 0,1,2] [--fraction 0.1] [--seed 0]
//       [--exclude-holdout 0.1 --holdout-seed 0]
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Mulberry32 } from '../../src/common/random.ts';
import { holdoutIndices } from '../../src/data/holdout.ts';
import { IDX_FILES, readIdxSplit, type IdxSplit, type Split } from '../../src/data/fashion-mnist.ts';

const { values } = parseArgs({
  options: {
    from: { type: 'string' },
    out: { type: 'string' },
    classes: { type: 'string' },
    fraction: { type: 'string', default: '1' },
    seed: { type: 'string', default: '0' },
    'exclude-holdout': { type: 'string', default: '0' },
    'holdout-seed': { type: 'string', default: '0' },
  },
});
if (!values.from || !values.out) throw new Error('--from DIR and --out DIR are required');
const fraction = Number(values.fraction);
if (!(fraction > 0 && fraction <= 1)) throw new Error(`--fraction must be in (0, 1], got "${values.fraction}"`);
const seed = Number(values.seed);
if (!Number.isInteger(seed) || seed < 0) throw new Error(`--seed must be a non-negative integer, got "${values.seed}"`);
const excludeHoldout = Number(values['exclude-holdout']);
const holdoutSeed = Number(values['holdout-seed']);
if (!Number.isInteger(holdoutSeed) || holdoutSeed < 0)
  throw new Error(`--holdout-seed must be a non-negative integer, got "${values['holdout-seed']}"`);
const train = readIdxSplit(values.from, 'train');
const test = readIdxSplit(values.from, 'test');
const classCount = Math.max(...train.labels) + 1;
const classes = values.classes === undefined ? [...Array(classCount).keys()] : values.classes.split(',').map(Number);
for (const c of classes) {
  if (!Number.isInteger(c) || c < 0 || c >= classCount)
    throw new Error(`--classes: "${values.classes}" names a class outside 0..${classCount - 1}`);
}

/** The indices of `split` whose label is in `classes`, less `excluded`; of each class, the first ceil(fraction * count) of a seeded shuffle, in file order. */
function choose(split: IdxSplit, keep: number, excluded: ReadonlySet<number>): Uint32Array {
  const rng = new Mulberry32(seed);
  const chosen: number[] = [];
  for (const c of classes) {
    const members = [...split.labels.keys()].filter((i) => split.labels[i] === c && !excluded.has(i));
    for (let i = members.length - 1; i > 0; i--) {
      const j = Math.floor(rng.next() * (i + 1));
      [members[i], members[j]] = [members[j]!, members[i]!];
    }
    chosen.push(...members.slice(0, Math.ceil(keep * members.length)));
  }
  return Uint32Array.from(chosen.sort((a, b) => a - b));
}

function idxFile(shape: number[], data: Uint8Array): Uint8Array {
  const header = new DataView(new ArrayBuffer(4 + 4 * shape.length));
  header.setUint8(2, 0x08);
  header.setUint8(3, shape.length);
  for (const [i, d] of shape.entries()) header.setUint32(4 + 4 * i, d);
  return Buffer.concat([new Uint8Array(header.buffer), data]);
}

function write(split: Split, source: IdxSplit, indices: Uint32Array): void {
  const pixels = source.height * source.width;
  const images = new Uint8Array(indices.length * pixels);
  const labels = new Uint8Array(indices.length);
  for (const [k, index] of indices.entries()) {
    images.set(source.images.subarray(index * pixels, (index + 1) * pixels), k * pixels);
    labels[k] = source.labels[index]!;
  }
  writeFileSync(join(values.out!, IDX_FILES[split].images), idxFile([indices.length, source.height, source.width], images));
  writeFileSync(join(values.out!, IDX_FILES[split].labels), idxFile([indices.length], labels));
  console.log(`${split}: ${indices.length} of ${source.n} images (classes ${classes.join(',')})`);
}

mkdirSync(values.out, { recursive: true });
// holdoutIndices refuses a fraction outside [0, 1) with a message naming it.
write('train', train, choose(train, fraction, new Set(holdoutIndices(train.n, excludeHoldout, holdoutSeed))));
write('test', test, choose(test, 1, new Set()));
