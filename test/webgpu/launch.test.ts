// A 2-worker training run on the webgpu engine (llvmpipe here and in CI) follows the wasm run:
// the loss at each of 10 steps within 1e-3 relative, and the workers stay bit-identical (the
// coordinator checks their digests after every step).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MICRO_RECIPE, needsData, run, stepRecords, tempRunDir } from '../e2e/cluster.ts';
import { skipWithoutWebGPU } from './helpers.ts';

const STEPS = 10;
const skip = needsData || (await skipWithoutWebGPU());

async function losses(backend: 'wasm' | 'webgpu'): Promise<number[]> {
  const out = tempRunDir(`launch-${backend}`);
  const result = await run(
    ['launch', '--workers', '2', '--recipe', MICRO_RECIPE, '--steps', String(STEPS), '--backend', backend, '--out', out],
    { timeoutMs: 240_000 },
  );
  assert.equal(result.code, 0, `launch --backend ${backend} failed:\n${result.stdout}\n${result.stderr}`);
  const steps = stepRecords(out);
  assert.equal(steps.length, STEPS);
  assert.ok(
    steps.every((s) => s.copyMs >= 0 && s.computeMs > 0),
    'steps report compute and copy times',
  );
  return steps.map((s) => s.loss);
}

test("2 workers on webgpu give the wasm run's loss at each of 10 steps within 1e-3", { skip, timeout: 600_000 }, async () => {
  const wasm = await losses('wasm');
  const webgpu = await losses('webgpu');
  webgpu.forEach((loss, i) => {
    const relative = Math.abs(loss - wasm[i]!) / Math.abs(wasm[i]!);
    assert.ok(relative < 1e-3, `step ${i + 1}: webgpu ${loss} vs wasm ${wasm[i]} (relative ${relative})`);
  });
});
