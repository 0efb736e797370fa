// Prometheus (issue #14): a real Prometheus server (Debian's `prometheus`) on loopback scrapes the
// coordinator of a real run with the run's token as its bearer credentials, and its HTTP API shows
// vit_dist_steps_total growing, with one ring-bytes series per worker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MICRO_RECIPE, TOKEN, killGroup, needsData, pickPort, start, tempRunDir } from './cluster.ts';

const PROMETHEUS = '/usr/bin/prometheus';
const needsPrometheus = existsSync(PROMETHEUS) ? false : `Prometheus is not installed at ${PROMETHEUS} (apt-get install prometheus)`;

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

/** An instant query's result vector, or [] while Prometheus is not answering yet. */
async function query(api: string, expr: string): Promise<Sample[]> {
  try {
    const response = await fetch(`${api}/api/v1/query?query=${encodeURIComponent(expr)}`, { signal: AbortSignal.timeout(2_000) });
    const body = (await response.json()) as { status: string; data?: { result: Sample[] } };
    return body.status === 'success' ? (body.data?.result ?? []) : [];
  } catch {
    return [];
  }
}

test('a real Prometheus scrapes /metrics with the token: vit_dist_steps_total grows', {
  skip: needsData || needsPrometheus,
  timeout: 240_000,
}, async () => {
  const out = tempRunDir('prometheus');
  // Far more steps than the test waits for; SIGTERM ends the run once Prometheus has seen it train.
  const launch = start(['launch', '--workers', '2', '--recipe', MICRO_RECIPE, '--steps', '5000', '--token', TOKEN, '--out', out], {
    timeoutMs: 230_000,
    detached: true,
  });
  const scratch = mkdtempSync(join(tmpdir(), 'vit-dist-prometheus-'));
  let prometheus: ReturnType<typeof spawn> | null = null;
  let prometheusLog = '';
  try {
    await launch.waitFor(/against ws:\/\/127\.0\.0\.1:\d+/, 60_000);
    const coordinatorPort = /against ws:\/\/127\.0\.0\.1:(\d+)/.exec(launch.stdout())![1];
    const config = join(scratch, 'prometheus.yml');
    writeFileSync(
      config,
      [
        'global:',
        '  scrape_interval: 1s',
        '  scrape_timeout: 1s',
        'scrape_configs:',
        '  - job_name: vit-dist',
        '    authorization:',
        '      type: Bearer',
        `      credentials: ${TOKEN}`,
        '    static_configs:',
        `      - targets: ['127.0.0.1:${coordinatorPort}']`,
        '',
      ].join('\n'),
    );
    const prometheusPort = pickPort();
    prometheus = spawn(
      PROMETHEUS,
      [`--config.file=${config}`, `--storage.tsdb.path=${join(scratch, 'data')}`, `--web.listen-address=127.0.0.1:${prometheusPort}`],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    prometheus.stdout!.on('data', (d: Buffer) => (prometheusLog += d));
    prometheus.stderr!.on('data', (d: Buffer) => (prometheusLog += d));
    const api = `http://127.0.0.1:${prometheusPort}`;

    // Two scrapes that saw different step counts, the later one higher.
    const seen: number[] = [];
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline && !(seen.length >= 2 && seen.at(-1)! > seen[0]!)) {
      assert.equal(prometheus.exitCode, null, `prometheus exited:\n${prometheusLog}`);
      const [steps] = await query(api, 'vit_dist_steps_total{job="vit-dist"}');
      const value = steps ? Number(steps.value[1]) : 0;
      if (value > 0 && value !== seen.at(-1)) seen.push(value);
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.ok(
      seen.length >= 2 && seen.at(-1)! > seen[0]!,
      `vit_dist_steps_total grew in Prometheus (saw ${seen.join(', ')}):\n${prometheusLog}`,
    );

    const [up] = await query(api, 'up{job="vit-dist"}');
    assert.equal(up?.value[1], '1', 'the scrape with the bearer token succeeds');
    const bytes = await query(api, 'vit_dist_ring_sent_bytes_total{job="vit-dist"}');
    assert.deepEqual(bytes.map((s) => s.metric.rank).sort(), ['0', '1'], 'one ring-bytes series per worker');

    launch.child.kill('SIGTERM');
    const finished = await launch.finished;
    assert.equal(finished.code, 0, finished.stdout + finished.stderr);
  } finally {
    killGroup(launch.child);
    prometheus?.kill('SIGKILL');
  }
});
