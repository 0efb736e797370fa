// The sweep: grid expansion and run names, how a run directory's state is recognized, and the
// resume rule (finished runs skipped, unfinished ones continued, missing ones started), all on
// fabricated run directories with a stand-in for launch: no model is trained here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeCheckpoint } from '../../src/coordinator/checkpoint.ts';
import { resolveRecipe } from '../../src/cli/options.ts';
import {
  expandGrid,
  parseGrid,
  runStatus,
  runSweep,
  SWEEP_FILE,
  type Launch,
  type LaunchFlags,
  type SweepFlags,
  type SweepRecord,
} from '../../src/cli/sweep.ts';
import { applyOverrides, loadRecipe, type Recipe } from '../../src/train/recipe.ts';

const MICRO = fileURLToPath(new URL('../fixtures/fmnist-micro.json', import.meta.url));
const micro = loadRecipe(MICRO);
const STEPS = micro.steps!;
const tempDir = (): string => mkdtempSync(join(tmpdir(), 'vit-dist-sweep-'));

test('the grid expands to every combination, the first --grid varying slowest, each named from its values', () => {
  const axes = parseGrid(['lr=0.001,0.003', 'seed=0,1', 'optimizer.momentum=0.9']);
  assert.deepEqual(
    axes.map((a) => a.recipeKey),
    ['optimizer.lr', 'seed', 'optimizer.momentum'],
  );
  const points = expandGrid(axes);
  assert.deepEqual(
    points.map((p) => p.name),
    [
      'lr=0.001,seed=0,optimizer.momentum=0.9',
      'lr=0.001,seed=1,optimizer.momentum=0.9',
      'lr=0.003,seed=0,optimizer.momentum=0.9',
      'lr=0.003,seed=1,optimizer.momentum=0.9',
    ],
  );
  assert.deepEqual(points[2]!.overrides, { 'optimizer.lr': '0.003', seed: '0', 'optimizer.momentum': '0.9' });
  assert.deepEqual(
    parseGrid(['wd=0,1e-4', 'smoothing=0.1']).map((a) => a.recipeKey),
    ['optimizer.weightDecay', 'regularization.labelSmoothing'],
  );
});

test('a malformed grid is an error naming the flag', () => {
  assert.throws(() => parseGrid([]), /at least one --grid/);
  assert.throws(() => parseGrid(['lr']), /--grid lr: expected KEY=V1,V2/);
  assert.throws(() => parseGrid(['data.path=/a/b']), /value "\/a\/b" cannot name a run directory/);
  assert.throws(() => parseGrid(['lr=0.1,']), /value "" cannot name/);
  assert.throws(() => parseGrid(['seed=1,1']), /--grid seed=1,1: a value is repeated/);
  assert.throws(() => parseGrid(['lr=0.1', 'optimizer.lr=0.2']), /optimizer.lr is already swept by --grid lr/);
});

/** A run directory as a run leaves it: a checkpoint after `step` steps and the metrics up to it (the final evaluation when `ended`). */
function fabricateRun(dir: string, recipe: Recipe, step: number, options: { ended: boolean; digest?: string }): void {
  const digest = options.digest ?? `digest-${step}`;
  const params = new Float32Array(4);
  writeCheckpoint(
    join(dir, 'checkpoints'),
    {
      runId: 'fabricated',
      step,
      recipe,
      numParams: params.length,
      worldSize: 1,
      optimizerStep: step,
      sampler: { seed: recipe.seed, step },
      paramDigest: `digest-${step}`,
    },
    { params, optimizerState: {}, ema: null },
  );
  const lines = Array.from({ length: step }, (_, i) => ({
    kind: 'step',
    step: i + 1,
    paramDigest: i + 1 === step ? digest : `digest-${i + 1}`,
  }));
  if (options.ended) lines.push({ kind: 'eval', step, paramDigest: digest });
  writeFileSync(join(dir, 'metrics.jsonl'), lines.map((l) => `${JSON.stringify(l)}\n`).join(''));
}

test('a run is finished at its last step with metrics that agree, unfinished with a checkpoint before it, missing without one', async () => {
  const root = tempDir();
  const at = (name: string): string => join(root, name);
  fabricateRun(at('finished'), micro, STEPS, { ended: true });
  fabricateRun(at('unfinished'), micro, STEPS / 2, { ended: false });
  mkdirSync(at('missing'));
  writeFileSync(join(at('missing'), 'metrics.jsonl'), `${JSON.stringify({ kind: 'step', step: 1, paramDigest: 'x' })}\n`);
  assert.deepEqual(await runStatus(at('finished')), { status: 'finished', step: STEPS, totalSteps: STEPS });
  assert.deepEqual(await runStatus(at('unfinished')), { status: 'unfinished', step: STEPS / 2, totalSteps: STEPS });
  assert.deepEqual(await runStatus(at('missing')), { status: 'missing', step: 0, totalSteps: null });

  // A checkpoint at the end whose metrics do not record the end is not taken for finished.
  fabricateRun(at('no-final-eval'), micro, STEPS, { ended: false });
  await assert.rejects(
    runStatus(at('no-final-eval')),
    /no-final-eval: the checkpoint .* is at the run's last step \(20\), but metrics.jsonl does not record the end of the run .*final evaluation missing/,
  );
  fabricateRun(at('other-digest'), micro, STEPS, { ended: true, digest: 'another' });
  await assert.rejects(runStatus(at('other-digest')), /digest another against digest-20/);

  // A run length in epochs needs the training set's size: 640 images of batch 64 are 10 steps an epoch.
  const byEpochs = applyOverrides(micro, { steps: null, epochs: 2 });
  fabricateRun(at('epochs'), byEpochs, 10, { ended: false });
  assert.deepEqual(await runStatus(at('epochs'), async () => 640), { status: 'unfinished', step: 10, totalSteps: 20 });
});

function sweepFlags(out: string, grid: string[], extra: Partial<SweepFlags> = {}): SweepFlags {
  return {
    recipe: MICRO,
    set: {},
    out,
    grid,
    workers: 1,
    backend: 'wasm',
    dataThreads: 0,
    joinTimeout: 300,
    stepTimeout: 600,
    rejoinTimeout: 60,
    heartbeatTimeout: 30,
    maxRestarts: 3,
    logLevel: 'info',
    ...extra,
  };
}

/** A stand-in for launch that records its calls and leaves each run at `step` (the end by default). */
function fakeLaunch(step = STEPS): { launch: Launch; calls: LaunchFlags[] } {
  const calls: LaunchFlags[] = [];
  const launch: Launch = async (flags) => {
    calls.push(flags);
    fabricateRun(flags.out!, resolveRecipe(flags, null, flags.workers), step, { ended: step === STEPS });
  };
  return { launch, calls };
}

const readSweep = (out: string): SweepRecord => JSON.parse(readFileSync(join(out, SWEEP_FILE), 'utf8')) as SweepRecord;

test('a rerun sweep skips finished runs, continues unfinished ones and starts missing ones, in grid order', async () => {
  const out = tempDir();
  const flags = sweepFlags(out, ['seed=0,1,2', 'lr=0.001,0.002'], { init: 'pretrained.safetensors', set: { clipNorm: '0.5' } });
  const recipeOf = (seed: number, lr: number): Recipe => applyOverrides(micro, { seed, 'optimizer.lr': lr, clipNorm: 0.5 });
  fabricateRun(join(out, 'seed=0,lr=0.001'), recipeOf(0, 0.001), STEPS, { ended: true });
  fabricateRun(join(out, 'seed=1,lr=0.002'), recipeOf(1, 0.002), 10, { ended: false });

  const first = fakeLaunch();
  const record = await runSweep(flags, first.launch);
  assert.deepEqual(
    first.calls.map((c) => c.out),
    ['seed=0,lr=0.002', 'seed=1,lr=0.001', 'seed=1,lr=0.002', 'seed=2,lr=0.001', 'seed=2,lr=0.002'].map((n) => join(out, n)),
  );
  assert.deepEqual(first.calls[2]!.set, { clipNorm: '0.5', seed: '1', 'optimizer.lr': '0.002' });
  assert.equal(first.calls[2]!.init, 'pretrained.safetensors');
  assert.deepEqual(readSweep(out), JSON.parse(JSON.stringify(record)));
  assert.deepEqual(
    record.runs.map((r) => r.status),
    Array(6).fill('finished'),
  );
  assert.deepEqual(
    record.grid.map((a) => [a.key, a.recipeKey, a.values]),
    [
      ['seed', 'seed', ['0', '1', '2']],
      ['lr', 'optimizer.lr', ['0.001', '0.002']],
    ],
  );
  assert.equal(record.runs[3]!.dir, join(out, 'seed=1,lr=0.002'));

  const again = fakeLaunch();
  await runSweep(flags, again.launch);
  assert.deepEqual(again.calls, [], 'a finished sweep launches nothing');
});

test('a run stopped on request (SIGTERM) ends the sweep there; a failed one ends it with an error; sweep.json tells which', async () => {
  const out = tempDir();
  const stopped = fakeLaunch(5);
  const record = await runSweep(sweepFlags(out, ['seed=0,1']), stopped.launch);
  assert.equal(stopped.calls.length, 1, 'no run starts after a stop');
  assert.deepEqual(
    record.runs.map((r) => [r.status, r.step]),
    [
      ['unfinished', 5],
      ['missing', 0],
    ],
  );
  assert.deepEqual(readSweep(out), JSON.parse(JSON.stringify(record)));

  const failing: Launch = async () => {
    throw new Error('the workers could not start');
  };
  await assert.rejects(runSweep(sweepFlags(out, ['seed=0,1']), failing), /run 1\/2 seed=0 failed: the workers could not start/);
  assert.deepEqual(
    readSweep(out).runs.map((r) => [r.status, r.error]),
    [
      ['failed', 'the workers could not start'],
      ['missing', undefined],
    ],
  );
});

test('grid values another flag would override, bad recipe keys and --resume are refused before any run', async () => {
  const out = tempDir();
  const never: Launch = async () => assert.fail('nothing may be launched');
  await assert.rejects(
    runSweep(sweepFlags(out, ['seed=0,1'], { seed: 3 }), never),
    /--grid seed: run seed=0 would not get seed = 0 \(another flag sets seed/,
  );
  await assert.rejects(
    runSweep(sweepFlags(out, ['lr=0.1'], { set: { 'optimizer.lr': '0.2' } }), never),
    /--set optimizer.lr=... and --grid lr=... both set optimizer.lr/,
  );
  await assert.rejects(runSweep(sweepFlags(out, ['optimizer.nope=1']), never), /unknown key "optimizer.nope"/);
  await assert.rejects(runSweep(sweepFlags(out, ['seed=0'], { resume: out }), never), /--resume does not apply to a sweep/);
  await assert.rejects(runSweep(sweepFlags(out, ['seed=0'], { out: undefined }), never), /--out DIR is required/);
});
