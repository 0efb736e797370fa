// The evaluation threads: the same result with any number of threads as one pass on this thread,
// and a failed evaluation is an error that leaves the pool usable.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_FASHION_MNIST_DIR } from '../../src/data/fashion-mnist.ts';
import { evalBatches } from '../../src/data/loader.ts';
import { selectBackend } from '../../src/model/backend.ts';
import { createModel } from '../../src/model/model.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { EvalPool, type EvalThreadSetup } from '../../src/soup/eval-pool.ts';
import { evaluateModel, summarize } from '../../src/soup/evaluate.ts';
import { loadRecipe } from '../../src/train/recipe.ts';

const dataMissing = existsSync(join(DEFAULT_FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz'))
  ? false
  : `Fashion-MNIST is not installed at ${DEFAULT_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)`;

const recipe = loadRecipe(fileURLToPath(new URL('../fixtures/fmnist-micro.json', import.meta.url)));
const config = createModelConfig(recipe.model, recipe.modelArgs);
// 2% held out: 1,200 images, 10 batches of 128, the last one short.
const setup: EvalThreadSetup = {
  spec: { format: recipe.data.format, path: recipe.data.path, holdout: 0.02, holdoutSeed: 0 },
  pipeline: recipe.data.evalPipeline,
  config,
  batchSize: 128,
  backend: 'wasm',
};

test('1 and 3 threads give exactly what one pass on this thread gives', { skip: dataMissing }, async () => {
  await selectBackend({ requested: 'wasm' });
  const model = createModel(config);
  // A larger init than the default spreads the logits, so that hits and misses both occur.
  const params = model.initParams(5).map((v) => v * 40);
  model.setParams(params);
  const inline = summarize(await evaluateModel(model, evalBatches(setup.spec, 'holdout', setup.pipeline, setup.batchSize)));
  model.disposeParams();
  assert.equal(inline.samples, 1200);
  for (const threads of [1, 3]) {
    const pool = await EvalPool.start(threads, setup);
    try {
      assert.deepEqual(await pool.evaluate(params, 'holdout'), inline, `${threads} threads`);
    } finally {
      await pool.close();
    }
  }
});

test("a failed evaluation rejects with the thread's error, and the pool goes on", { skip: dataMissing }, async () => {
  const pool = await EvalPool.start(2, setup);
  try {
    await assert.rejects(pool.evaluate(new Float32Array(3), 'holdout'), /expected \d+ parameters, got 3/);
    const params = createModel(config).initParams(1);
    assert.equal((await pool.evaluate(params, 'holdout')).samples, 1200);
  } finally {
    await pool.close();
  }
});
