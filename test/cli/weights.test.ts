// Weights in and out (issue #3), end to end through the CLI: train a micro model, export it as
// safetensors, predict on a .npy and on the Fashion-MNIST test split, cross-check the logits against
// a PyTorch reference ViT with timm's names (also a distilled DeiT), and start a run from the
// exported weights (--init, also from another patch grid).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { latestCheckpoint, readCheckpoint } from '../../src/train/checkpoint.ts';
import { readIdx } from '../../src/data/idx.ts';
import { DEFAULT_FASHION_MNIST_DIR } from '../../src/data/fashion-mnist.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { readSafetensors, writeSafetensors } from '../../src/model/safetensors.ts';
import { paramSpecs, VisionTransformer, type VitConfig } from '../../src/model/vit.ts';
import { exportTimmState, exportedData, importTimmState } from '../../src/model/weights.ts';
import { paramDigest } from '../../src/train/digest.ts';
import { validateRecipe } from '../../src/train/recipe.ts';
import { readNpyFloat32, writeNpyFloat32 } from '../../src/cli/weights-commands.ts';
import { MICRO_RECIPE, evalRecords, needsData, run, stepRecords, tempRunDir } from '../e2e/cluster.ts';
import { tensorflowUnavailable } from '../model/helpers.ts';

const PYTHON = '/usr/bin/python3';
const REFERENCE = fileURLToPath(new URL('../fixtures/reference_vit.py', import.meta.url));
/** float32 forward passes of the same weights in TF.js and PyTorch agree to well within this. */
const LOGIT_TOLERANCE = 1e-4;
const NPY_IMAGES = 6;
const TRAIN_STEPS = 3;
const TIMEOUT_MS = 120_000;

const torchMissing = ((): string | false => {
  const probe = spawnSync(PYTHON, ['-c', 'import torch, numpy'], { encoding: 'utf8' });
  return probe.status === 0
    ? false
    : `PyTorch is not importable by ${PYTHON} (apt-get install python3-torch): ${(probe.stderr || probe.error?.message || '').trim().split('\n').at(-1)}`;
})();

const recipe = validateRecipe(JSON.parse(readFileSync(MICRO_RECIPE, 'utf8')), MICRO_RECIPE);
// The micro recipe's model is a ViT, the family of the PyTorch reference (reference_vit.py).
const config = createModelConfig(recipe.model, recipe.modelArgs) as VitConfig;
const launch = ['launch', '--workers', '1', '--recipe', MICRO_RECIPE, '--backend', 'wasm'];

async function cli(args: string[]): Promise<string> {
  const result = await run(args, { timeoutMs: TIMEOUT_MS });
  assert.equal(result.code, 0, `vit-dist ${args.join(' ')}:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

function maxAbsDifference(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  return a.reduce((max, v, i) => Math.max(max, Math.abs(v - b[i]!)), 0);
}

/** Random NHWC images for `config`, given to the model as they are (no normalization). */
function writeImages(path: string, config: VitConfig): void {
  const pixels = config.imageSize * config.imageSize * config.inChannels;
  writeNpyFloat32(
    path,
    [NPY_IMAGES, config.imageSize, config.imageSize, config.inChannels],
    Float32Array.from({ length: NPY_IMAGES * pixels }, (_, i) => Math.sin(i * 0.37) * 1.5),
  );
}

/** The reference's logits for the same weights and images, which must equal vit-dist's `logits`. */
function assertReferenceAgrees(weights: string, config: VitConfig, images: string, logits: { shape: number[]; data: Float32Array }): void {
  const referencePath = join(dirname(images), 'reference.npy');
  const ref = spawnSync(PYTHON, [REFERENCE, weights, JSON.stringify(config), images, referencePath], {
    encoding: 'utf8',
    timeout: TIMEOUT_MS,
  });
  assert.equal(ref.status, 0, ref.stderr);
  const reference = readNpyFloat32(referencePath);
  assert.deepEqual(reference.shape, logits.shape);
  const difference = maxAbsDifference(logits.data, reference.data);
  assert.ok(difference < LOGIT_TOLERANCE, `max |vit-dist - torch| = ${difference}`);
  assert.ok(Math.max(...reference.data.map(Math.abs)) > 10 * LOGIT_TOLERANCE, 'the logits are not all near zero');
}

test('export, predict, the PyTorch cross-check and --init', { skip: needsData, timeout: 600_000 }, async (t) => {
  const trained = tempRunDir('weights');
  const dir = dirname(trained);
  await cli([...launch, '--steps', String(TRAIN_STEPS), '--out', trained]);
  const checkpoint = readCheckpoint(latestCheckpoint(trained)!);
  const weights = join(dir, 'model.safetensors');
  await cli(['export', '--checkpoint', trained, '--out', weights]);

  await t.test('the file holds timm tensors and the metadata', () => {
    const { tensors, metadata } = readSafetensors(weights);
    assert.deepEqual(metadata, {
      format: 'pt',
      model: recipe.model,
      model_args: JSON.stringify(recipe.modelArgs),
      data: JSON.stringify(exportedData(recipe.data, config.numClasses)),
      step: String(TRAIN_STEPS),
    });
    assert.deepEqual(tensors.get('blocks.0.attn.qkv.weight')!.shape, [3 * config.embedDim, config.embedDim]);
    assert.deepEqual(tensors.get('patch_embed.proj.weight')!.shape, [
      config.embedDim,
      config.inChannels,
      config.patchSize,
      config.patchSize,
    ]);
  });

  await t.test('--use-ema on a checkpoint without an EMA is refused', async () => {
    const result = await run(['export', '--checkpoint', trained, '--out', join(dir, 'ema.safetensors'), '--use-ema'], {
      timeoutMs: TIMEOUT_MS,
    });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /--use-ema: checkpoint .*step-000000003\.ckpt holds no EMA/);
  });

  const images = join(dir, 'images.npy');
  writeImages(images, config);
  const logitsPath = join(dir, 'logits.npy');
  await cli(['predict', '--model', recipe.model, '--weights', weights, '--input', images, '--out', logitsPath, '--backend', 'wasm']);
  const logits = readNpyFloat32(logitsPath);
  assert.deepEqual(logits.shape, [NPY_IMAGES, config.numClasses]);

  await t.test('a PyTorch ViT with timm names loads the export and gives the same logits', { skip: torchMissing }, () => {
    assertReferenceAgrees(weights, config, images, logits);
  });

  await t.test(
    "on the tensorflow engine too, predict gives the PyTorch ViT's logits",
    { skip: torchMissing || tensorflowUnavailable },
    async () => {
      const tensorflowLogits = join(dir, 'logits-tensorflow.npy');
      await cli([
        'predict',
        '--model',
        recipe.model,
        '--weights',
        weights,
        '--input',
        images,
        '--out',
        tensorflowLogits,
        '--backend',
        'tensorflow',
      ]);
      assertReferenceAgrees(weights, config, images, readNpyFloat32(tensorflowLogits));
    },
  );

  await t.test(
    "predict on the Fashion-MNIST test idx, the model and pipeline from the export's metadata: the accuracy equals the run's evaluation",
    async () => {
      const idx = join(DEFAULT_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz');
      const out = join(dir, 't10k.npy');
      await cli(['predict', '--weights', weights, '--input', idx, '--out', out, '--backend', 'wasm']);
      const { shape, data } = readNpyFloat32(out);
      const labels = readIdx(join(DEFAULT_FASHION_MNIST_DIR, 't10k-labels-idx1-ubyte.gz')).data;
      assert.deepEqual(shape, [labels.length, config.numClasses]);
      let correct = 0;
      for (let i = 0; i < labels.length; i++) {
        const row = data.subarray(i * config.numClasses, (i + 1) * config.numClasses);
        if (row.indexOf(Math.max(...row)) === labels[i]) correct++;
      }
      // The same weights and inputs; only summation order (batch size) differs, which may flip a near-tie.
      assert.ok(
        Math.abs(correct / labels.length - evalRecords(trained).at(-1)!.testAccuracy) <= 2 / labels.length,
        `predict: ${correct} correct`,
      );
    },
  );

  await t.test(
    'predict on a folder of images: file-name order, gray for a one-channel model, the same logits as the idx file',
    async () => {
      const folder = join(dir, 'pngs');
      mkdirSync(folder);
      const test = readIdx(join(DEFAULT_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz')).data;
      const pixels = 28 * 28;
      // Written as RGB PNGs, in an order their names sort back into: predict must convert them to gray.
      for (const [i, name] of ['b.png', 'a.png', 'c.png'].entries()) {
        const gray = test.subarray(i * pixels, (i + 1) * pixels);
        const rgb = Buffer.alloc(3 * pixels).map((_, k) => gray[Math.floor(k / 3)]!);
        await sharp(rgb, { raw: { width: 28, height: 28, channels: 3 } })
          .png()
          .toFile(join(folder, name));
      }
      const out = join(dir, 'pngs.npy');
      await cli(['predict', '--model', recipe.model, '--weights', weights, '--input', folder, '--out', out, '--backend', 'wasm']);
      assert.equal(readFileSync(`${out}.files.txt`, 'utf8'), 'a.png\nb.png\nc.png\n');
      const fromFolder = readNpyFloat32(out);
      assert.deepEqual(fromFolder.shape, [3, config.numClasses]);
      const fromIdx = readNpyFloat32(join(dir, 't10k.npy')).data;
      const K = config.numClasses;
      // a.png is test image 1, b.png image 0, c.png image 2.
      for (const [row, image] of [
        [0, 1],
        [1, 0],
        [2, 2],
      ] as const) {
        const difference = maxAbsDifference(fromFolder.data.subarray(row * K, (row + 1) * K), fromIdx.subarray(image * K, (image + 1) * K));
        assert.ok(difference < 1e-4, `row ${row}: ${difference}`);
      }
      const empty = join(dir, 'empty');
      mkdirSync(empty);
      const refused = await run(['predict', '--model', recipe.model, '--weights', weights, '--input', empty, '--out', join(dir, 'x.npy')], {
        timeoutMs: TIMEOUT_MS,
      });
      assert.equal(refused.code, 1);
      assert.ok(refused.stderr.includes(`--input ${empty}: no .jpg/.jpeg/.png/.webp files in the folder`), refused.stderr);
    },
  );

  // lr is 0 at step 0 of the warmup (and AdamW's decay is scaled by it), so a one-step run ends
  // with exactly the parameters it started from: its digest is the digest of the initial weights.
  const frozen = ['--steps', '1', '--set', 'optimizer.lr=0'];
  const fresh = new VisionTransformer(config).initParams(recipe.seed);

  await t.test('--init starts from the exported weights', async () => {
    const out = tempRunDir('init');
    await cli([...launch, ...frozen, '--init', weights, '--out', out]);
    assert.equal(stepRecords(out).at(-1)!.paramDigest, checkpoint.meta.paramDigest);
    assert.notEqual(checkpoint.meta.paramDigest, paramDigest(fresh), 'the trained weights differ from a fresh start');
  });

  await t.test('--init with another class count keeps the fresh head (fine-tuning)', async () => {
    const { tensors } = readSafetensors(weights);
    const otherClasses = config.numClasses + 3;
    tensors.set('head.weight', { shape: [otherClasses, config.embedDim], data: new Float32Array(otherClasses * config.embedDim).fill(1) });
    tensors.set('head.bias', { shape: [otherClasses], data: new Float32Array(otherClasses).fill(1) });
    const pretrained = join(dir, 'pretrained.safetensors');
    writeSafetensors(pretrained, tensors);
    const model = new VisionTransformer(config);
    const expected = importTimmState(model.params, tensors, { allowHeadMismatch: true, init: fresh }).params;
    const out = tempRunDir('finetune');
    const stdout = await cli([...launch, ...frozen, '--init', pretrained, '--out', out]);
    const D = config.embedDim;
    assert.ok(
      stdout.includes(
        `--init: head.weight is [${otherClasses}, ${D}] in ${pretrained}, the model's is [${config.numClasses}, ${D}]: freshly initialized`,
      ),
      stdout,
    );
    assert.equal(stepRecords(out).at(-1)!.paramDigest, paramDigest(expected));
  });

  await t.test('--init from another patch grid resamples pos_embed and says so', async () => {
    const { tensors } = readSafetensors(weights);
    // An 8x8 grid (56 px at patch 7) for the model's 4x4 one.
    const tokens = 1 + 8 * 8;
    tensors.set('pos_embed', {
      shape: [1, tokens, config.embedDim],
      data: Float32Array.from({ length: tokens * config.embedDim }, (_, i) => Math.cos(i)),
    });
    const otherGrid = join(dir, 'other-grid.safetensors');
    writeSafetensors(otherGrid, tensors);
    const model = new VisionTransformer(config);
    const expected = importTimmState(model.params, tensors, { allowHeadMismatch: true, init: fresh }).params;
    const out = tempRunDir('resample');
    const stdout = await cli([...launch, ...frozen, '--init', otherGrid, '--out', out]);
    const D = config.embedDim;
    assert.ok(
      stdout.includes(
        `--init: pos_embed is [1, ${tokens}, ${D}] in ${otherGrid}, the model's is [1, 17, ${D}]: its 8x8 patch grid resampled bicubically to 4x4, the prefix tokens kept`,
      ),
      stdout,
    );
    assert.equal(stepRecords(out).at(-1)!.paramDigest, paramDigest(expected));
  });

  await t.test('a checkpoint to resume from takes precedence over --init', async () => {
    writeFileSync(join(dir, 'not-weights.safetensors'), 'garbage: never read when resuming');
    const stdout = await cli([
      'launch',
      '--workers',
      '1',
      '--backend',
      'wasm',
      '--resume',
      trained,
      '--steps',
      String(TRAIN_STEPS + 1),
      '--init',
      join(dir, 'not-weights.safetensors'),
    ]);
    assert.match(stdout, /resuming from .*step-000000003\.ckpt \(step 3\); --init .* is ignored/);
  });
});

test('a distilled DeiT: predict and the PyTorch reference (VisionTransformerDistilled, eval) give the same logits', {
  skip: torchMissing,
  timeout: 300_000,
}, async () => {
  const model = 'deit_fmnist_tiny_distilled';
  const modelArgs = { embedDim: 16, depth: 1, numHeads: 2 };
  const distilled = createModelConfig(model, modelArgs);
  // Every value perturbed, so that no zero bias or unit LayerNorm weight hides a misplaced tensor
  // (head and head_dist, cls_token and dist_token must each land where the reference reads them).
  const params = new VisionTransformer(distilled).initParams(1).map((v, i) => v + 0.05 * Math.sin(i * 0.7));
  const dir = mkdtempSync(join(tmpdir(), 'vit-dist-distilled-'));
  const weights = join(dir, 'deit.safetensors');
  // The metadata export writes, so that predict rebuilds the shrunken architecture.
  writeSafetensors(weights, exportTimmState(paramSpecs(distilled), params), { format: 'pt', model, model_args: JSON.stringify(modelArgs) });
  const images = join(dir, 'images.npy');
  writeImages(images, distilled);
  const logitsPath = join(dir, 'logits.npy');
  await cli(['predict', '--model', model, '--weights', weights, '--input', images, '--out', logitsPath, '--backend', 'wasm']);
  const logits = readNpyFloat32(logitsPath);
  assert.deepEqual(logits.shape, [NPY_IMAGES, distilled.numClasses]);
  assertReferenceAgrees(weights, distilled, images, logits);
});
