import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetricsLog } from '../../src/coordinator/metrics.ts';

test('truncateAfter keeps the history up to the resumed checkpoint', () => {
  const log = new MetricsLog(join(mkdtempSync(join(tmpdir(), 'metrics-')), 'metrics.jsonl'));
  const time = new Date().toISOString();
  for (let step = 1; step <= 5; step++) {
    log.append({
      kind: 'step',
      step,
      epoch: 0,
      loss: 1,
      accuracy: 0,
      lr: 1,
      gradNorm: 1,
      paramDigest: 'd',
      workers: 2,
      imagesPerSec: 1,
      computeMs: 1,
      copyMs: 0,
      commMs: 1,
      exposedCommMs: 1,
      dataWaitMs: 0,
      ranks: [],
      time,
    });
  }
  log.append({ kind: 'eval', step: 3, epoch: 0, testAccuracy: 0.5, testLoss: 1, samples: 10, ms: 5, time });
  log.append({ kind: 'eval', step: 5, epoch: 0, testAccuracy: 0.5, testLoss: 1, samples: 10, ms: 5, time });
  log.truncateAfter(3);
  assert.deepEqual(
    log.read().map((r) => `${r.kind}${r.step}`),
    ['step1', 'step2', 'step3', 'eval3'],
  );
});

test('truncateAfter on a history logged in step order cuts its end, and appending goes on after the cut', () => {
  const path = join(mkdtempSync(join(tmpdir(), 'metrics-')), 'metrics.jsonl');
  const time = new Date().toISOString();
  const restart = (log: MetricsLog, step: number) =>
    log.append({ kind: 'restart', step, generation: 1, restarts: 1, cause: 'a test', workers: 2, time });
  const evaluation = (log: MetricsLog, step: number) =>
    log.append({ kind: 'eval', step, epoch: 0, testAccuracy: 0.5, testLoss: 1, samples: 10, ms: 5, time });
  const history = (log: MetricsLog) => log.read().map((r) => `${r.kind}${r.step}`);

  const first = new MetricsLog(path);
  for (let step = 1; step <= 6; step++) evaluation(first, step);
  first.truncateAfter(6);
  assert.deepEqual(history(first), ['eval1', 'eval2', 'eval3', 'eval4', 'eval5', 'eval6'], 'nothing after step 6: all kept');
  first.truncateAfter(4);
  restart(first, 4);
  evaluation(first, 5);
  evaluation(first, 6);
  first.truncateAfter(5);
  assert.deepEqual(history(first), ['eval1', 'eval2', 'eval3', 'eval4', 'restart4', 'eval5']);

  // A restarted coordinator reads the file it finds.
  const second = new MetricsLog(path);
  evaluation(second, 6);
  second.truncateAfter(4);
  assert.deepEqual(history(second), ['eval1', 'eval2', 'eval3', 'eval4', 'restart4']);
  second.truncateAfter(0);
  assert.deepEqual(history(second), []);
  evaluation(second, 1);
  assert.deepEqual(history(new MetricsLog(path)), ['eval1']);
});
