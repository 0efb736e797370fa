// One training pass (forward and backward) of every model a shipped recipe trains, at the recipe's
// own micro-batch and regularization, on every engine this machine has: wasm always, native
// TensorFlow when @tensorflow/tfjs-node loads. It fails on a crash or a non-finite result, never
// on speed. Where the wasm heap cannot hold a pass (src/model/memory.ts), the check that refuses it
// before the first step is what is tested. Issue 19: ViT-Ti/16 at micro-batch 16 exhausted the
// wasm heap and crashed with "memory access out of bounds".
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { selectBackend } from '../../src/model/backend.ts';
import { checkMicroBatchFits, wasmPassBytes } from '../../src/model/memory.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import { listRecipes, loadRecipe, type Recipe } from '../../src/train/recipe.ts';
import { onePass, type Pass, type PassResult } from './one-pass.ts';

/**
 * Memory a new allocation can get: Linux's MemAvailable (free memory plus the page cache the kernel
 * can drop). os.freemem() is MemFree alone here, which a warm page cache makes look small.
 */
function availableMemory(): number {
  const meminfo = /MemAvailable:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'));
  return meminfo ? Number(meminfo[1]) * 1024 : freemem();
}

const ONE_PASS = join(import.meta.dirname, 'one-pass.ts');

/** Recipes that train the same model the same way need one pass between them. */
function distinctPasses(recipes: Recipe[]): Map<string, Recipe[]> {
  const passes = new Map<string, Recipe[]>();
  for (const recipe of recipes) {
    const key = JSON.stringify([recipe.model, recipe.modelArgs, recipe.microBatch, recipe.regularization]);
    passes.set(key, [...(passes.get(key) ?? []), recipe]);
  }
  return passes;
}

/** Why an engine cannot run here, or null when it can. */
async function unavailable(engine: 'wasm' | 'tensorflow'): Promise<string | null> {
  try {
    await selectBackend({ requested: engine });
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

const passes = distinctPasses(listRecipes().map(loadRecipe));

/**
 * Native TensorFlow holds the same float32 tensors as the wasm heap, and more: ViT-Ti/16 at 64
 * images peaked at 4.7 GB of resident memory on it against the wasm model's 3.1 GB (README, "Memory
 * per worker" and the model benchmark), its library and Node itself about 0.6 GB of that.
 */
const tensorflowBytes = (wasmBytes: number): number => 1.3 * wasmBytes + 2 ** 30;

for (const engine of ['wasm', 'tensorflow'] as const) {
  const skip = await unavailable(engine);
  for (const recipes of passes.values()) {
    const { model: name, modelArgs, microBatch: n, regularization } = recipes[0]!;
    const title = `${name} at micro-batch ${n} (${recipes.map((r) => r.name).join(', ')}) on ${engine}: one training pass, or refused before it`;
    test(title, { skip: skip ?? false }, async (t) => {
      await selectBackend({ requested: engine });
      // The plan names the engine the pass runs on (onePass selects it again): in a process that has
      // loaded both engines, tf.getBackend() was once seen to read 'tensorflow' right after wasm was
      // selected, which let a pass the wasm heap cannot hold through to abort the wasm module.
      const backend = engine;
      const config = createModelConfig(name, modelArgs);
      const plan = { model: name, config, microBatch: n, backend, regularization };
      let refusal: Error | null = null;
      try {
        checkMicroBatchFits(plan);
      } catch (err) {
        refusal = err as Error;
      }
      if (refusal) {
        assert.equal(backend, 'wasm', 'only the wasm heap has a ceiling');
        const largest = /use micro-batch (\d+) or less/.exec(refusal.message);
        assert.match(refusal.message, new RegExp(`^model ${name} at micro-batch ${n} needs about [\\d.]+ GiB of wasm heap`));
        assert.ok(largest && Number(largest[1]) >= 1 && Number(largest[1]) < n, refusal.message);
        assert.match(refusal.message, /or run the worker on the tensorflow backend/);
        return;
      }
      // Native TensorFlow's only ceiling is the machine's memory. Its use is not modelled; the wasm
      // heap's figure (the same tensors, in float32), scaled as measured, stands in for it, so that
      // a pass this machine cannot hold is skipped rather than swapped or killed.
      const needed = tensorflowBytes(wasmPassBytes(config, n, regularization));
      const available = availableMemory();
      if (backend !== 'wasm' && needed > available) {
        t.skip(`needs about ${(needed / 2 ** 30).toFixed(1)} GiB, this machine has ${(available / 2 ** 30).toFixed(1)} GiB available`);
        return;
      }
      // TensorFlow keeps the memory of a pass once allocated: each native pass runs in a process of its own.
      const pass: Pass = { engine, model: name, modelArgs, microBatch: n, regularization };
      const result: PassResult =
        engine === 'wasm'
          ? await onePass(pass)
          : JSON.parse(
              execFileSync(process.execPath, ['--import', 'tsx', ONE_PASS, JSON.stringify(pass)], { encoding: 'utf8' })
                .trim()
                .split('\n')
                .at(-1)!,
            );
      assert.ok(Number.isFinite(result.lossSum) && result.lossSum > 0, `loss ${result.lossSum}`);
      assert.ok(result.allFinite, 'every gradient entry is finite');
      assert.ok(result.anyNonZero, 'the gradient is not all zero');
    });
  }
}
