// Resume exactness (issue #2): 40 steps straight, and 20 steps, a kill -9 of the whole local
// cluster and a resume to 40, end with the same parameter digest; the metrics tell one history.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  MICRO_RECIPE,
  checkpointAt,
  killGroup,
  needsData,
  run,
  start,
  stepRecords,
  tempRunDir,
  uninterruptedDigest,
  waitUntil,
} from './cluster.ts';

const STEPS = 40;
const common = ['--workers', '2', '--recipe', MICRO_RECIPE, '--steps', String(STEPS), '--checkpoint-every', '10', '--backend', 'auto'];

test('kill -9 after a checkpoint and resume: the same final digest as a straight run', { skip: needsData, timeout: 400_000 }, async () => {
  const expected = await uninterruptedDigest(common, 180_000);

  const crashed = tempRunDir('crashed');
  const b = start(['launch', ...common, '--out', crashed], { timeoutMs: 180_000, detached: true });
  await waitUntil(checkpointAt(crashed, 20), 170_000, 'the checkpoint at step 20');
  killGroup(b.child);
  await b.finished;
  assert.ok(stepRecords(crashed).at(-1)!.step < STEPS, 'the run was killed before its end');

  const resumed = await run(['launch', '--workers', '2', '--backend', 'auto', '--resume', crashed], { timeoutMs: 180_000 });
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
  const steps = stepRecords(crashed);
  assert.deepEqual(
    steps.map((s) => s.step),
    Array.from({ length: STEPS }, (_, i) => i + 1),
    'each step recorded once',
  );
  assert.equal(steps.at(-1)!.paramDigest, expected);
});

test('a corrupt checkpoint is refused with a clear error', { skip: needsData, timeout: 60_000 }, async () => {
  const dir = tempRunDir('corrupt');
  const checkpoints = join(dir, 'checkpoints');
  await run(['launch', '--workers', '1', '--recipe', MICRO_RECIPE, '--steps', '1', '--backend', 'auto', '--out', dir], {
    timeoutMs: 60_000,
  });
  const path = join(checkpoints, 'step-000000001.ckpt');
  assert.ok(existsSync(path));
  writeFileSync(path, 'not a checkpoint');
  const result = await run(['launch', '--workers', '1', '--resume', dir], { timeoutMs: 30_000 });
  assert.equal(result.code, 1);
  assert.match(result.stderr, /vit-dist: error: checkpoint .*step-000000001.ckpt: not a vit-dist checkpoint/);
});

test('SIGTERM stops the coordinator after a checkpoint (exit 0); --resume finishes with the straight run digest', {
  skip: needsData,
  timeout: 400_000,
}, async () => {
  const expected = await uninterruptedDigest(common, 180_000);

  const out = tempRunDir('sigterm');
  const b = start(['launch', ...common, '--out', out], { timeoutMs: 180_000 });
  await waitUntil(checkpointAt(out, 10), 170_000, 'the checkpoint at step 10');
  b.child.kill('SIGTERM');
  const stopped = await b.finished;
  assert.equal(stopped.code, 0, stopped.stdout + stopped.stderr);
  const match = /stopped at step (\d+) of 40/.exec(stopped.stdout);
  assert.ok(match, stopped.stdout);
  assert.ok(existsSync(join(out, 'checkpoints', `step-${match[1]!.padStart(9, '0')}.ckpt`)), 'a checkpoint at the step it stopped');

  const resumed = await run(['launch', '--workers', '2', '--backend', 'auto', '--resume', out], { timeoutMs: 180_000 });
  assert.equal(resumed.code, 0, resumed.stdout + resumed.stderr);
  assert.equal(stepRecords(out).at(-1)!.paramDigest, expected);
});
