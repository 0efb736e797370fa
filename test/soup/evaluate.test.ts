// Evaluation metrics: top-1 (argmax, first on ties, as the model counts), top-5 and mean cross
// entropy, per head for a distilled model, and the same numbers to the bit whether the split is
// evaluated in one piece or cut into batch-aligned pieces for several threads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import type { EvalBatch } from '../../src/data/loader.ts';
import { Mulberry32 } from '../../src/common/random.ts';
import { selectBackend } from '../../src/model/backend.ts';
import { createModel, type ImageClassifier } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { batchAlignedRanges, evaluateModel, mergeTallies, summarize, TOP_K, type EvaluableModel } from '../../src/soup/evaluate.ts';
import { loadRecipe } from '../../src/train/recipe.ts';

await selectBackend({ requested: 'wasm' });

const recipe = loadRecipe(fileURLToPath(new URL('../fixtures/fmnist-micro.json', import.meta.url)));
const SAMPLES = 203; // not a multiple of the batch: the last batch is short
const BATCH = 16;

/** SAMPLES random images and labels for `model`, as in-memory batches of the split's [start, end). */
function dataset(
  model: ImageClassifier,
  seed: number,
): { batches: (start: number, end: number) => AsyncIterable<EvalBatch>; images: Float32Array; labels: Int32Array } {
  const { imageSize, inChannels, numClasses } = model.config;
  const size = imageSize * imageSize * inChannels;
  const rng = new Mulberry32(seed);
  const images = Float32Array.from({ length: SAMPLES * size }, () => rng.next() * 4 - 2);
  const labels = Int32Array.from({ length: SAMPLES }, () => Math.floor(rng.next() * numClasses));
  async function* batches(start: number, end: number): AsyncGenerator<EvalBatch> {
    for (let from = start; from < end; from += BATCH) {
      const n = Math.min(BATCH, end - from);
      yield { images: images.slice(from * size, (from + n) * size), labels: labels.slice(from, from + n), n };
    }
  }
  return { batches, images, labels };
}

function trainedLookingModel(distilled: boolean): ImageClassifier {
  const model = createModel(createModelConfig(distilled ? 'deit_fmnist_tiny_distilled' : recipe.model, recipe.modelArgs));
  // A larger init than the default spreads the logits, so that hits, misses and top-5 all occur.
  model.setParams(model.initParams(5).map((v) => v * 40));
  return model;
}

test("top-1 and the loss agree with the model's own evaluation; top-5 is at least top-1", async () => {
  for (const distilled of [false, true]) {
    const model = trainedLookingModel(distilled);
    const data = dataset(model, 1);
    const result = summarize(await evaluateModel(model, data.batches(0, SAMPLES)));
    const own = model.evaluate(data.images, data.labels, SAMPLES);
    assert.equal(result.samples, SAMPLES);
    assert.equal(result.top1, own.correct / SAMPLES);
    assert.ok(
      Math.abs(result.loss - own.lossSum / SAMPLES) < 1e-4 * result.loss,
      `loss ${result.loss} vs the model's ${own.lossSum / SAMPLES}`,
    );
    assert.ok(result.top5 >= result.top1 && result.top5 <= 1, `top-5 ${result.top5}, top-1 ${result.top1}`);
    assert.ok(result.top1 > 0 && result.top5 < 1, 'the test needs hits and misses');
    if (distilled) {
      assert.equal(result.classHeadTop1, own.correctClassHead! / SAMPLES);
      assert.equal(result.distHeadTop1, own.correctDistHead! / SAMPLES);
    } else {
      assert.equal(result.classHeadTop1, undefined);
    }
    model.disposeParams();
  }
});

test('the numbers do not depend on how many batch-aligned pieces the split is evaluated in', async () => {
  for (const distilled of [false, true]) {
    const model = trainedLookingModel(distilled);
    const data = dataset(model, 2);
    const whole = summarize(await evaluateModel(model, data.batches(0, SAMPLES)));
    for (const pieces of [2, 3, 5, 20]) {
      const ranges = batchAlignedRanges(SAMPLES, BATCH, pieces);
      const tallies = [];
      for (const { start, end } of ranges) tallies.push(await evaluateModel(model, data.batches(start, end)));
      assert.deepEqual(summarize(mergeTallies(tallies)), whole, `${pieces} pieces`);
    }
    model.disposeParams();
  }
});

test('batch-aligned ranges cover the split in order, each starting on a batch boundary', () => {
  for (const [size, batch, parts] of [
    [203, 16, 3],
    [10, 4, 5],
    [64, 16, 4],
    [1, 8, 2],
  ] as const) {
    const ranges = batchAlignedRanges(size, batch, parts);
    assert.equal(ranges.length, parts);
    let next = 0;
    for (const { start, end } of ranges) {
      assert.equal(start, next);
      assert.ok(start % batch === 0 || start === size, `start ${start}`);
      assert.ok(end >= start);
      next = end;
    }
    assert.equal(next, size);
  }
  assert.deepEqual(
    batchAlignedRanges(10, 4, 5).map((r) => r.end - r.start),
    [4, 4, 2, 0, 0],
  );
});

/** A model whose logits are given: for checking the ranking rule on exact values. */
function fixedLogits(rows: number[][]): EvaluableModel {
  return { config: { numClasses: rows[0]!.length }, logits: () => Float32Array.from(rows.flat()), evaluate: () => ({}) };
}

async function* one(labels: number[], classes: number): AsyncGenerator<EvalBatch> {
  yield { images: new Float32Array(labels.length * classes), labels: Int32Array.from(labels), n: labels.length };
}

test('top-k ranks by logit with ties broken as argmax breaks them; the loss is the cross entropy', async () => {
  const rows = [
    [0, 6, 5, 4, 3, 2, 1], // label 0 is 7th: a miss of top-5
    [0, 6, 5, 4, 3, 2, 1], // label 5 is 5th: top-5, not top-1
    [3, 3, 0, 0, 0, 0, 0], // label 1 ties with class 0, which argmax picks: top-5, not top-1
    [3, 3, 0, 0, 0, 0, 0], // label 0 wins the tie: top-1
  ];
  const tally = await evaluateModel(fixedLogits(rows), one([0, 5, 1, 0], 7));
  assert.equal(TOP_K, 5);
  assert.equal(tally.correctTop1, 1);
  assert.equal(tally.correctTop5, 3);
  const crossEntropy = (row: number[], label: number): number => Math.log(row.reduce((s, v) => s + Math.exp(v), 0)) - row[label]!;
  const expected = crossEntropy(rows[0]!, 0) + crossEntropy(rows[1]!, 5) + crossEntropy(rows[2]!, 1) + crossEntropy(rows[3]!, 0);
  assert.ok(Math.abs(tally.batchLossSums[0]! - expected) < 1e-12);
  await assert.rejects(evaluateModel(fixedLogits([[1, 2]]), one([2], 2)), /label 2 of sample 0 is not one of the model's 2 classes/);
});
