// Issue #4's determinism: every random draw of a sample's augmentation comes from (seed, epoch,
// index, repeat) and every batch-level mix from (seed, step, micro-batch within the global batch),
// so the AugReg-medium recipe (RandAugment, Mixup) gives the same loss at every step on 1 and 2
// workers, whether loader threads or the main thread make the samples.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { needsData, run, stepRecords, tempRunDir } from './cluster.ts';

const RECIPE = 'fmnist-vit-tiny-augreg-medium';
const STEPS = 4;
/** Only the order of the ranks' gradient sums differs between worker counts. */
const MAX_RELATIVE_DIFFERENCE = 1e-4;

async function losses(workers: number, dataThreads: number, extra: string[] = []): Promise<number[]> {
  const out = tempRunDir(`augment${workers}-${dataThreads}`);
  const result = await run(['launch', '--workers', String(workers), '--recipe', RECIPE, '--steps', String(STEPS), '--backend', 'wasm', '--data-threads', String(dataThreads), ...extra, '--out', out], { timeoutMs: 240_000 });
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

test('AugReg medium augmentation: 1 and 2 workers, threads or none, give the same loss at every step', { skip: needsData, timeout: 600_000 }, async () => {
  const one = await losses(1, 0);
  assertSameLosses(await losses(2, 1), one, '2 workers with a loader thread each');
  assertSameLosses(await losses(1, 2), one, '1 worker with 2 loader threads');
  // The augmentation is in effect: without it the same steps give other losses.
  const plain = await losses(1, 0, ['--set', 'data.trainPipeline=normalize(fashion-mnist)', '--set', 'data.mixup=null']);
  assert.notEqual(plain[0], one[0]);
});

test('repeated augmentation: 3 repeats per image on 1 and 3 workers give the same loss at every step', { skip: needsData, timeout: 600_000 }, async () => {
  const repeats = ['--set', 'data.repeats=3', '--global-batch', '384', '--micro-batch', '128'];
  const one = await losses(1, 0, repeats);
  assertSameLosses(await losses(3, 0, repeats), one, '3 workers');
});
