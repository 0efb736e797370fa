import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import type { MetricsRecord, StepRecord } from '../../src/coordinator/metrics.ts';
import {
  type MemberInfo,
  type RunInfo,
  RunStatus,
  readRunInfo,
  type StatusEvent,
  stragglerNote,
} from '../../src/coordinator/run-status.ts';
import { loadRecipe } from '../../src/train/recipe.ts';

const MEMBERS: MemberInfo[] = [
  { rank: 0, host: 'a', pid: 10, backend: 'tensorflow', gpu: null },
  { rank: 1, host: 'b', pid: 11, backend: 'webgpu', gpu: 3 },
];

function runInfo(): RunInfo {
  const outDir = mkdtempSync(join(tmpdir(), 'vit-dist-run-status-'));
  return {
    runId: 'run-1',
    recipe: loadRecipe('fmnist-vit-tiny'),
    outDir,
    startedAt: '2026-01-01T00:00:00.000Z',
    workers: 2,
    generation: null,
    ended: null,
  };
}

function stepRecord(step: number, computeMs: [number, number], time: string): StepRecord {
  const rank = (r: number) => ({
    rank: r,
    computeMs: computeMs[r]!,
    copyMs: 0,
    commMs: 5,
    exposedCommMs: 2,
    dataWaitMs: 1,
    bytesSent: 0,
    bytesReceived: 0,
  });
  return {
    kind: 'step',
    step,
    epoch: 0,
    loss: 2 - step / 100,
    accuracy: 0.1,
    lr: 0.001,
    gradNorm: 1,
    paramDigest: 'd',
    workers: 2,
    imagesPerSec: 1000,
    computeMs: Math.max(...computeMs),
    copyMs: 0,
    commMs: 5,
    exposedCommMs: 2,
    dataWaitMs: 1,
    ranks: [rank(0), rank(1)],
    time,
  };
}

test('the live status keeps run.json, the workers, the ETA and the stragglers, and tells its listeners', () => {
  const info = runInfo();
  const status = new RunStatus(info, true);
  assert.deepEqual(readRunInfo(info.outDir), info, 'run.json is written at once');
  const events: StatusEvent[] = [];
  status.subscribe((event) => events.push(event));
  const notes: string[] = [];
  status.onStragglerChange((change, member) => notes.push(stragglerNote(change, member)));

  status.generationStarted({ generation: 0, startStep: 0, totalSteps: 20, members: MEMBERS });
  const started = Date.parse(readRunInfo(info.outDir).generation!.time);
  assert.equal(readRunInfo(info.outDir).generation!.members[1]!.gpu, 3);
  for (let step = 1; step <= 10; step++) status.record(stepRecord(step, [100, 250], new Date(started + step * 1000).toISOString()));

  const view = status.view();
  assert.equal(view.phase, 'training');
  assert.equal(view.step, 10);
  assert.equal(view.etaSeconds, 10, 'one second a step, ten steps to go');
  assert.deepEqual(
    view.workers.map((w) => [w.rank, w.host, w.backend, w.gpu, w.computeMs, w.score, w.windowScore, w.straggler]),
    [
      [0, 'a', 'tensorflow', null, 100, 1, 1, false],
      [1, 'b', 'webgpu', 3, 250, 0.4, 0.4, true],
    ],
  );
  assert.deepEqual(notes, [
    "straggler: rank 1 (b pid 11) computes at 0.40 of the fastest rank's speed (median of the last 10 steps, step 10)",
  ]);
  assert.equal(events.length, 11);
  assert.equal(events.at(-1)!.type, 'update');

  status.end('finished');
  assert.equal(status.view().etaSeconds, 0);
  assert.equal(readRunInfo(info.outDir).ended!.phase, 'finished');
});

test('a restart drops the steps after its checkpoint, as metrics.jsonl does, and a new ring starts the window again', () => {
  const info = runInfo();
  const status = new RunStatus(info, true);
  status.generationStarted({ generation: 0, startStep: 0, totalSteps: 20, members: MEMBERS });
  for (let step = 1; step <= 10; step++) status.record(stepRecord(step, [100, 300], new Date().toISOString()));
  assert.equal(status.view().workers[1]!.straggler, true);
  const restart: MetricsRecord = {
    kind: 'restart',
    step: 5,
    generation: 1,
    restarts: 1,
    cause: 'rank 0 disconnected',
    workers: 2,
    time: new Date().toISOString(),
  };
  status.record(restart);
  status.generationStarted({ generation: 1, startStep: 5, totalSteps: 20, members: MEMBERS });
  const snapshot = status.snapshot();
  assert.equal(snapshot.type, 'snapshot');
  assert.deepEqual(snapshot.type === 'snapshot' && snapshot.records.map((r) => `${r.kind} ${r.step}`), [
    'step 1',
    'step 2',
    'step 3',
    'step 4',
    'step 5',
    'restart 5',
  ]);
  const view = status.view();
  assert.deepEqual(view.restarts, [restart]);
  assert.equal(view.workers[1]!.straggler, false, 'a new ring is judged afresh');
  assert.equal(view.etaSeconds, null, 'no step of the new ring yet');
});

test('a run read back shows how it ended, or that it is not running', () => {
  const info = runInfo();
  const records = [stepRecord(1, [100, 100], '2026-01-01T00:00:01.000Z')];
  const killed = new RunStatus(
    { ...info, generation: { generation: 0, startStep: 0, totalSteps: 2, members: MEMBERS, time: info.startedAt } },
    false,
    records,
  );
  assert.equal(killed.view().phase, 'stopped');
  const failed = new RunStatus({ ...info, ended: { phase: 'failed', failure: 'desync', time: info.startedAt } }, false, records);
  assert.deepEqual([failed.view().phase, failed.view().failure], ['failed', 'desync']);
  assert.throws(() => readRunInfo(join(info.outDir, 'nowhere')), /run\.json not found: is .*nowhere a run directory\?/);
});
