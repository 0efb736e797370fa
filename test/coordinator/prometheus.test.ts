import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import test from 'node:test';
import type { MetricsRecord, RankStepRecord, StepRecord } from '../../src/coordinator/metrics.ts';
import { PrometheusExporter } from '../../src/coordinator/prometheus.ts';

const GLOBAL_BATCH = 64;

function rank(rank: number, computeMs: number, bytes: number): RankStepRecord {
  return { rank, computeMs, copyMs: 1, commMs: 5, exposedCommMs: 2, dataWaitMs: 3, bytesSent: bytes, bytesReceived: bytes + 1 };
}

function step(n: number, loss: number, ranks: RankStepRecord[]): StepRecord {
  return {
    kind: 'step',
    step: n,
    epoch: 0,
    loss,
    accuracy: 0.5,
    lr: 0.001 * n,
    gradNorm: 2,
    paramDigest: 'd',
    workers: ranks.length,
    // 64 images in 0.25 s and in 3 s: two buckets of the step-time histogram.
    imagesPerSec: n === 1 ? 256 : GLOBAL_BATCH / 3,
    computeMs: 100,
    copyMs: 1,
    commMs: 5,
    exposedCommMs: 2,
    dataWaitMs: 3,
    ranks,
    time: '2026-01-01T00:00:00Z',
  };
}

/** The value of one sample line, e.g. `vit_dist_loss` or `vit_dist_straggler_score{rank="1"}`. */
function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  assert.ok(line, `${series} is exported:\n${text}`);
  return Number(line.slice(series.length + 1));
}

function exporterAfter(records: MetricsRecord[]): PrometheusExporter {
  const exporter = new PrometheusExporter({ runId: 'r1', recipe: 'fmnist-micro', model: 'vit_fmnist_tiny', globalBatch: GLOBAL_BATCH });
  for (const r of records) exporter.observe(r);
  return exporter;
}

test("counters add up steps, images and each rank's ring bytes; gauges hold the last step", async () => {
  const text = await exporterAfter([
    step(1, 2.5, [rank(0, 100, 1000), rank(1, 200, 2000)]),
    step(2, 2.0, [rank(0, 100, 10), rank(1, 125, 20)]),
  ]).registry.metrics();
  assert.equal(sample(text, 'vit_dist_steps_total'), 2);
  assert.equal(sample(text, 'vit_dist_images_total'), 2 * GLOBAL_BATCH);
  assert.equal(sample(text, 'vit_dist_ring_sent_bytes_total{rank="1"}'), 2020);
  assert.equal(sample(text, 'vit_dist_ring_received_bytes_total{rank="0"}'), 1012);
  assert.equal(sample(text, 'vit_dist_loss'), 2);
  assert.equal(sample(text, 'vit_dist_learning_rate'), 0.002);
  assert.equal(sample(text, 'vit_dist_workers'), 2);
  assert.equal(sample(text, 'vit_dist_straggler_score{rank="0"}'), 1);
  assert.equal(sample(text, 'vit_dist_straggler_score{rank="1"}'), 0.8);
  assert.equal(sample(text, 'vit_dist_rank_compute_seconds{rank="1"}'), 0.125);
  assert.equal(sample(text, 'vit_dist_step_duration_seconds_bucket{le="0.32"}'), 1);
  assert.equal(sample(text, 'vit_dist_step_duration_seconds_bucket{le="5.12"}'), 2);
  assert.equal(sample(text, 'vit_dist_step_duration_seconds_count'), 2);
  assert.equal(sample(text, 'vit_dist_run_info{run_id="r1",recipe="fmnist-micro",model="vit_fmnist_tiny"}'), 1);
});

test('restarts count recovered failures only; a smaller ring leaves no stale per-rank gauge', async () => {
  const text = await exporterAfter([
    step(1, 2.5, [rank(0, 100, 1), rank(1, 100, 1), rank(2, 100, 1)]),
    { kind: 'restart', step: 0, generation: 1, restarts: 1, cause: 'worker 2 lost', workers: 2, time: '' },
    { kind: 'restart', step: 0, generation: 2, restarts: 1, cause: 'workers joined', workers: 3, time: '' },
    step(1, 2.5, [rank(0, 100, 1), rank(1, 100, 1)]),
    { kind: 'eval', step: 1, epoch: 0, testAccuracy: 0.75, testLoss: 0.5, samples: 10, ms: 5, time: '' },
  ]).registry.metrics();
  assert.equal(sample(text, 'vit_dist_restarts_total'), 1);
  assert.equal(sample(text, 'vit_dist_generation'), 2);
  assert.equal(sample(text, 'vit_dist_steps_total'), 2);
  assert.equal(sample(text, 'vit_dist_step'), 1);
  assert.equal(sample(text, 'vit_dist_test_accuracy_ratio'), 0.75);
  assert.ok(!text.includes('vit_dist_straggler_score{rank="2"}'), text);
});

test('/metrics answers 401 without the token and the text format with it', async () => {
  const exporter = exporterAfter([step(1, 2.5, [rank(0, 100, 1)])]);
  const server = createServer(exporter.handler(['run-token', 'status-token']));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`;
  try {
    const anonymous = await fetch(url);
    assert.equal(anonymous.status, 401);
    assert.match(anonymous.headers.get('www-authenticate') ?? '', /^Bearer/);
    assert.equal((await fetch(url, { headers: { authorization: 'Bearer wrong' } })).status, 401);
    const scraped = await fetch(url, { headers: { authorization: 'Bearer status-token' } });
    assert.equal(scraped.status, 200);
    assert.match(scraped.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.equal(sample(await scraped.text(), 'vit_dist_steps_total'), 1);
  } finally {
    server.close();
  }
});
