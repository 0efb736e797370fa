// DeiT distillation end to end (issue #3): a teacher trained by vit-dist, then a distilled student
// taught by it. The student's step records carry the distillation head's loss, which falls; its
// evaluations report the joint classifier and each head; and since the teacher's output for an
// image does not depend on which worker or micro-batch it lands in, 1 and 2 workers agree.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { StepRecord } from '../../src/coordinator/metrics.ts';
import { MICRO_RECIPE, evalRecords, needsData, run, stepRecords, tempRunDir } from './cluster.ts';

const STEPS = 30;
const MAX_RELATIVE_DIFFERENCE = 1e-4;
/** The micro recipe with the distillation token; alpha 0.5 (the micro recipe's 0 would leave the distillation head untrained). */
const STUDENT = [
  '--recipe',
  MICRO_RECIPE,
  '--set',
  'model=deit_fmnist_tiny_distilled',
  '--set',
  'distillation.alpha=0.5',
  '--steps',
  String(STEPS),
  '--backend',
  'wasm',
];

let teacher: Promise<string> | null = null;
/** A run directory of the micro recipe's plain ViT, trained once per file. */
function trainedTeacher(): Promise<string> {
  teacher ??= (async () => {
    const out = tempRunDir('teacher');
    const result = await run(
      ['launch', '--workers', '1', '--recipe', MICRO_RECIPE, '--steps', String(STEPS), '--backend', 'wasm', '--out', out],
      { timeoutMs: 240_000 },
    );
    assert.equal(result.code, 0, `training the teacher failed:\n${result.stdout}\n${result.stderr}`);
    // A plain model's records are as they were before distillation existed.
    assert.ok(stepRecords(out).every((s) => !('distillationLoss' in s)));
    assert.ok(evalRecords(out).every((e) => !('testAccuracyClassHead' in e) && !('testAccuracyDistHead' in e)));
    return out;
  })();
  return teacher;
}

/** Runs a distilled student and checks what every distilled run must show; returns its step records. */
async function distilledRun(mode: 'none' | 'soft' | 'hard', workers: number): Promise<StepRecord[]> {
  const out = tempRunDir(`student-${mode}-${workers}`);
  // Mode none: the distillation head learns the labels, and the recipe must name no teacher.
  const teacherFlags = mode === 'none' ? [] : ['--teacher', await trainedTeacher()];
  const result = await run(['launch', '--workers', String(workers), ...STUDENT, '--distillation', mode, ...teacherFlags, '--out', out], {
    timeoutMs: 240_000,
  });
  assert.equal(result.code, 0, `${mode} distillation on ${workers} workers failed:\n${result.stdout}\n${result.stderr}`);
  const steps = stepRecords(out);
  assert.equal(steps.length, STEPS);
  const distillationLosses = steps.map((s) => s.distillationLoss);
  assert.ok(
    distillationLosses.every((l) => typeof l === 'number' && Number.isFinite(l) && l >= 0),
    `every step records its distillation loss: ${distillationLosses}`,
  );
  const mean = (values: (number | undefined)[]) => values.reduce((a: number, v) => a + v!, 0) / values.length;
  const [first, last] = [mean(distillationLosses.slice(0, 10)), mean(distillationLosses.slice(-10))];
  assert.ok(last < first, `${mode}: the distillation loss falls (first 10 steps ${first}, last 10 ${last})`);
  const final = evalRecords(out).at(-1)!;
  assert.equal(final.step, STEPS);
  for (const accuracy of [final.testAccuracy, final.testAccuracyClassHead, final.testAccuracyDistHead]) {
    assert.ok(
      typeof accuracy === 'number' && accuracy >= 0 && accuracy <= 1,
      `accuracies of the joint classifier and both heads: ${JSON.stringify(final)}`,
    );
  }
  assert.match(result.stdout, /test accuracy joint [\d.]+%, class head [\d.]+%, distillation head [\d.]+%/);
  return steps;
}

test('hard distillation from a vit-dist teacher: the distillation loss falls, 1 and 2 workers agree, and the teacher is in effect', {
  skip: needsData,
  timeout: 600_000,
}, async () => {
  const [one, two] = [await distilledRun('hard', 1), await distilledRun('hard', 2)];
  one.forEach((s, i) => {
    for (const key of ['loss', 'distillationLoss'] as const) {
      const relative = Math.abs(two[i]![key]! - s[key]!) / Math.abs(s[key]!);
      assert.ok(
        relative < MAX_RELATIVE_DIFFERENCE,
        `step ${s.step} ${key}: 2 workers ${two[i]![key]} vs 1 worker ${s[key]} (relative ${relative})`,
      );
    }
  });
  // The same student without a teacher learns the labels with its distillation head: another loss from step 1 on.
  const [untaught] = await distilledRun('none', 1);
  const relative = Math.abs(untaught!.distillationLoss! - one[0]!.distillationLoss!) / one[0]!.distillationLoss!;
  assert.ok(
    relative > 1e-3,
    `the teacher is in effect: step 1 distillation loss ${one[0]!.distillationLoss} with it, ${untaught!.distillationLoss} without`,
  );
});

test('soft distillation from a vit-dist teacher: the distillation loss falls', { skip: needsData, timeout: 600_000 }, async () => {
  await distilledRun('soft', 2);
});

test('a teacher that is not there stops the run with an error naming its path', { skip: needsData, timeout: 300_000 }, async () => {
  const missing = `${tempRunDir('no-teacher')}/nothing-here`;
  const result = await run(
    [
      'launch',
      '--workers',
      '1',
      ...STUDENT,
      '--distillation',
      'hard',
      '--teacher',
      missing,
      '--max-restarts',
      '0',
      '--out',
      tempRunDir('orphan'),
    ],
    { timeoutMs: 240_000 },
  );
  assert.notEqual(result.code, 0);
  assert.ok((result.stdout + result.stderr).includes(`teacher ${missing}: no such file or directory`), result.stdout + result.stderr);
});
