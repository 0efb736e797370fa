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
  log.append({ kind: 'eval', step: 3, epoch: 0, testAccuracy: 0.5, testLoss: 1, samples: 10, time });
  log.append({ kind: 'eval', step: 5, epoch: 0, testAccuracy: 0.5, testLoss: 1, samples: 10, time });
  log.truncateAfter(3);
  assert.deepEqual(
    log.read().map((r) => `${r.kind}${r.step}`),
    ['step1', 'step2', 'step3', 'eval3'],
  );
});
