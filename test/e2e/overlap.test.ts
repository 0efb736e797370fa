// Issue 13: the overlapped step (buckets handed to the ring by the last micro-batch's backward
// pass) gives the plain step's bits, whatever the bucket size and worker count; `--wire bf16` runs
// are deterministic for a worker count, stay in lockstep (the coordinator compares every rank's
// digest after every step) and send about half the bytes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MICRO_RECIPE, needsData, run, stepRecords, tempRunDir } from './cluster.ts';

const STEPS = 3;

/** Per-step digests and ring bytes sent of a micro-recipe run (4 micro-batches per step on 1 worker, 2 on 2). */
async function digests(workers: number, extra: string[]): Promise<{ digests: string[]; bytesSent: number[] }> {
  const out = tempRunDir(`overlap${workers}`);
  const result = await run(
    ['launch', '--workers', String(workers), '--recipe', MICRO_RECIPE, '--steps', String(STEPS), '--out', out, ...extra],
    {
      timeoutMs: 120_000,
    },
  );
  assert.equal(result.code, 0, `launch ${extra.join(' ')} failed:\n${result.stdout}\n${result.stderr}`);
  const steps = stepRecords(out);
  assert.equal(steps.length, STEPS);
  return { digests: steps.map((s) => s.paramDigest), bytesSent: steps.map((s) => s.ranks.reduce((sum, r) => sum + r.bytesSent, 0)) };
}

/** The plain 3-worker run, the reference of both tests. */
let plainOnThree: { digests: string[]; bytesSent: number[] } | null = null;

test('overlapped steps give the plain step’s digests for any bucket size, on 2 and 3 workers', {
  skip: needsData,
  timeout: 300_000,
}, async () => {
  for (const workers of [2, 3]) {
    const plain = await digests(workers, ['--bucket-mb', '0']);
    if (workers === 3) plainOnThree = plain;
    // 0.001 MiB is 262 floats: the micro model's gradient goes in many buckets, most inside one shard.
    assert.deepEqual((await digests(workers, ['--bucket-mb', '0.001'])).digests, plain.digests, `${workers} workers`);
  }
});

test('--wire bf16 is deterministic, in lockstep, and halves the gradient bytes', { skip: needsData, timeout: 300_000 }, async () => {
  const fp32 = plainOnThree ?? (await digests(3, ['--bucket-mb', '0']));
  const first = await digests(3, ['--wire', 'bf16']);
  const second = await digests(3, ['--wire', 'bf16', '--bucket-mb', '0']);
  assert.deepEqual(second.digests, first.digests, 'bf16 runs (overlapped and plain) end every step alike');
  assert.notDeepEqual(first.digests, fp32.digests, 'bf16 changes the sums');
  // Reduce-scatter is half of the ring's gradient bytes; the all-gather stays float32.
  for (const [i, bytes] of first.bytesSent.entries()) {
    const ratio = bytes / fp32.bytesSent[i]!;
    assert.ok(ratio > 0.7 && ratio < 0.8, `step ${i + 1}: bf16 sent ${bytes} bytes, fp32 ${fp32.bytesSent[i]} (ratio ${ratio})`);
  }
});
