// Issue #4's determinism: every random draw of a sample's augmentation comes from (seed, epoch,
// index, repeat) and every batch-level mix from (seed, step, micro-batch within the global batch),
// so the AugReg-medium recipe (RandAugment, Mixup) gives the same loss at every step on 1 and 2
// workers, whether loader threads or the main thread make the samples.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { DEFAULT_FASHION_MNIST_DIR } from '../../src/data/fashion-mnist.ts';
import { readIdx } from '../../src/data/idx.ts';
import sharp from 'sharp';
import { needsData, run, stepRecords, tempRunDir } from './cluster.ts';

const RECIPE = 'fmnist-vit-tiny-augreg-medium';
const STEPS = 4;
/** Only the order of the ranks' gradient sums differs between worker counts. */
const MAX_RELATIVE_DIFFERENCE = 1e-4;

async function losses(workers: number, dataThreads: number, extra: string[] = []): Promise<number[]> {
  const out = tempRunDir(`augment${workers}-${dataThreads}`);
  const result = await run(
    [
      'launch',
      '--workers',
      String(workers),
      '--recipe',
      RECIPE,
      '--steps',
      String(STEPS),
      '--backend',
      'wasm',
      '--data-threads',
      String(dataThreads),
      ...extra,
      '--out',
      out,
    ],
    { timeoutMs: 240_000 },
  );
  assert.equal(result.code, 0, `launch --workers ${workers} failed:\n${result.stdout}\n${result.stderr}`);
  const steps = stepRecords(out);
  assert.equal(steps.length, STEPS);
  return steps.map((s) => s.loss);
}

function assertSameLosses(actual: number[], reference: number[], what: string): void {
  actual.forEach((loss, i) => {
    const relative = Math.abs(loss - reference[i]!) / Math.abs(reference[i]!);
    assert.ok(relative < MAX_RELATIVE_DIFFERENCE, `step ${i + 1}: ${what} ${loss} vs 1 worker ${reference[i]} (relative ${relative})`);
  });
}

test('AugReg medium augmentation: 1 and 2 workers, threads or none, give the same loss at every step', {
  skip: needsData,
  timeout: 600_000,
}, async () => {
  const one = await losses(1, 0);
  assertSameLosses(await losses(2, 1), one, '2 workers with a loader thread each');
  assertSameLosses(await losses(1, 2), one, '1 worker with 2 loader threads');
  // The augmentation is in effect: without it the same steps give other losses.
  const plain = await losses(1, 0, ['--set', 'data.trainPipeline=normalize(fashion-mnist)', '--set', 'data.mixup=null']);
  assert.notEqual(plain[0], one[0]);
});

test('repeated augmentation: 3 repeats per image on 1 and 3 workers give the same loss at every step', {
  skip: needsData,
  timeout: 600_000,
}, async () => {
  const repeats = ['--set', 'data.repeats=3', '--global-batch', '384', '--micro-batch', '128'];
  const one = await losses(1, 0, repeats);
  assertSameLosses(await losses(3, 0, repeats), one, '3 workers');
});

/**
 * A CIFAR-10 binary directory (cifar-10-batches-bin layout) made from Fashion-MNIST: each 28x28
 * image padded to 32x32 and repeated over three planes, `perFile` records per training file.
 */
function fakeCifar10(perFile: number): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'vit-dist-cifar-')), 'cifar-10-batches-bin');
  mkdirSync(dir);
  const images = readIdx(join(DEFAULT_FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz')).data;
  const labels = readIdx(join(DEFAULT_FASHION_MNIST_DIR, 'train-labels-idx1-ubyte.gz')).data;
  let next = 0;
  const file = (name: string) => {
    const records = Buffer.alloc(perFile * 3073);
    for (let r = 0; r < perFile; r++, next++) {
      const record = records.subarray(r * 3073);
      record[0] = labels[next]!;
      for (let plane = 0; plane < 3; plane++) {
        for (let y = 0; y < 28; y++)
          record.set(images.subarray(next * 784 + y * 28, next * 784 + (y + 1) * 28), 1 + plane * 1024 + (y + 2) * 32 + 2);
      }
    }
    writeFileSync(join(dir, name), records);
  };
  for (let b = 1; b <= 5; b++) file(`data_batch_${b}.bin`);
  file('test_batch.bin');
  writeFileSync(join(dir, 'batches.meta.txt'), 'airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n');
  return dir;
}

test('the CIFAR-style recipe trains on CIFAR-10 binary files on 2 workers', { skip: needsData, timeout: 300_000 }, async () => {
  const data = fakeCifar10(100);
  try {
    const out = tempRunDir('cifar');
    const result = await run(
      [
        'launch',
        '--workers',
        '2',
        '--recipe',
        'cifar10-vit-tiny-augreg-medium',
        '--data',
        data,
        '--steps',
        '3',
        '--global-batch',
        '64',
        '--micro-batch',
        '32',
        '--backend',
        'wasm',
        '--out',
        out,
      ],
      { timeoutMs: 240_000 },
    );
    assert.equal(result.code, 0, `${result.stdout}\n${result.stderr}`);
    const steps = stepRecords(out);
    assert.equal(steps.length, 3);
    assert.ok(steps.every((s) => Number.isFinite(s.loss) && s.workers === 2));
    assert.match(result.stdout, /final test accuracy/);
  } finally {
    rmSync(dirname(data), { recursive: true, force: true });
  }
});

test("an ImageNet recipe (deit-tiny: DeiT's pipeline, Mixup/CutMix, 3 repeats) trains on a JPEG image folder and on its packed shards", {
  timeout: 300_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'vit-dist-imagenet-'));
  try {
    // Two classes of ImageNet-sized JPEGs; the recipe's model cut to one block and two classes so one step is quick.
    for (const split of ['train', 'val']) {
      for (const [c, name] of ['n01440764', 'n01443537'].entries()) {
        mkdirSync(join(root, split, name), { recursive: true });
        for (let i = 0; i < 4; i++) {
          const [width, height] = [300 + 40 * i, 260 + 30 * c];
          const pixels = Buffer.alloc(width * height * 3).map((_, k) => (k * (7 + c) + i * 31) % 251);
          await sharp(pixels, { raw: { width, height, channels: 3 } })
            .jpeg()
            .toFile(join(root, split, name, `img_${i}.JPEG`));
        }
      }
    }
    const small = [
      '--set',
      'modelArgs.depth=1',
      '--set',
      'modelArgs.numClasses=2',
      '--global-batch',
      '6',
      '--micro-batch',
      '3',
      '--steps',
      '2',
    ];
    // The folder as it is, and packed into shards.
    const packed = join(root, 'packed');
    const pack = await run(['pack', '--data', root, '--format', 'imagefolder', '--out', packed, '--size', '256'], { timeoutMs: 120_000 });
    assert.equal(pack.code, 0, `${pack.stdout}\n${pack.stderr}`);
    for (const [format, data] of [
      ['imagefolder', root],
      ['packed', packed],
    ]) {
      const out = tempRunDir(`deit-tiny-${format}`);
      const result = await run(
        [
          'launch',
          '--workers',
          '2',
          '--recipe',
          'deit-tiny',
          '--data',
          data!,
          '--set',
          `data.format=${format}`,
          ...small,
          '--backend',
          'wasm',
          '--out',
          out,
        ],
        { timeoutMs: 240_000 },
      );
      assert.equal(result.code, 0, `${format}: ${result.stdout}\n${result.stderr}`);
      assert.equal(stepRecords(out).length, 2);
      assert.match(result.stdout, /final test accuracy/);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
