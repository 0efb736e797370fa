// Stragglers (issue #14): one worker of a real 2-worker run is slowed from outside, by stopping and
// continuing its process (SIGSTOP/SIGCONT, stopped 90% of the time), and within 20 steps the
// coordinator names it on the console and the status page names it in Chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RunInfo } from '../../src/coordinator/run-status.ts';
import { logIn, needsChromium, openChromium } from './browser.ts';
import { TOKEN, needsData, start, startCoordinator, stepRecords, tempRunDir, waitUntil } from './cluster.ts';

const STEPS = 40;
/** Steps recorded before the slowdown starts: the straggler window must see both ranks at speed first. */
const STEPS_AT_SPEED = 8;
/** The part of each stop-and-continue period the slowed worker is stopped. */
const STOPPED_SHARE = 0.9;
const TIMEOUT_MS = 170_000;

/**
 * Stops and continues `pid` in a duty cycle of `periodMs` until the returned function is called
 * (which leaves it running).
 */
function dutyCycle(pid: number, periodMs: number): () => void {
  let timer: NodeJS.Timeout | null = null;
  let stopped = false;
  const flip = (): void => {
    stopped = !stopped;
    process.kill(pid, stopped ? 'SIGSTOP' : 'SIGCONT');
    timer = setTimeout(flip, periodMs * (stopped ? STOPPED_SHARE : 1 - STOPPED_SHARE));
  };
  flip();
  return () => {
    if (timer) clearTimeout(timer);
    process.kill(pid, 'SIGCONT');
  };
}

test('a worker slowed from outside is named a straggler on the console and the page', {
  skip: needsData || needsChromium,
  timeout: TIMEOUT_MS,
}, async (t) => {
  const runDir = tempRunDir('stragglers');
  // The main job's model and batch: a step's compute (about 100 ms a worker) spans several duty cycles.
  const { coordinator, url } = await startCoordinator(
    ['--workers', '2', '--recipe', 'fmnist-vit-tiny', '--steps', String(STEPS), '--out', runDir],
    TIMEOUT_MS,
  );
  const workers = [0, 1].map(() => start(['worker', '--coordinator', url, '--token', TOKEN, '--threads', '1'], { timeoutMs: TIMEOUT_MS }));
  const browser = await openChromium();
  let release: (() => void) | null = null;
  try {
    const metrics = join(runDir, 'metrics.jsonl');
    await waitUntil(() => existsSync(metrics) && stepRecords(runDir).length >= STEPS_AT_SPEED, 120_000, `${STEPS_AT_SPEED} steps`);
    const info = JSON.parse(readFileSync(join(runDir, 'run.json'), 'utf8')) as RunInfo;
    const slowed = info.generation!.members.find((m) => m.rank === 0)!;
    assert.ok(
      workers.some((w) => w.child.pid === slowed.pid),
      'run.json names the worker processes',
    );
    const atSpeed = stepRecords(runDir);
    const slowFrom = atSpeed.at(-1)!.step;
    // A period about as long as a step's compute: much shorter, and the scheduler of a loaded machine
    // makes up for the stopped time (a woken process runs first); much longer, and some steps fall
    // whole into a running stretch.
    const computeMs = atSpeed.map((r) => r.ranks[0]!.computeMs).sort((a, b) => a - b);
    const periodMs = Math.min(2000, Math.max(50, computeMs[computeMs.length >> 1]!));
    release = dutyCycle(slowed.pid, periodMs);

    const named = new RegExp(
      `straggler: rank 0 \\([^)]* pid ${slowed.pid}\\) computes at (0\\.\\d\\d) of the fastest rank's speed \\(median of the last 10 steps, step (\\d+)\\)`,
    );
    await coordinator.waitFor(named, 120_000);
    const [, score, step] = named.exec(coordinator.stdout())!;
    t.diagnostic(`slowed from step ${slowFrom} (period ${Math.round(periodMs)} ms), named at step ${step} with a median score of ${score}`);
    assert.ok(Number(step) - slowFrom <= 20, `named at step ${step}, ${Number(step) - slowFrom} steps after the slowdown began`);
    // Before the slowdown a loaded machine may make either rank look slow for a while; after it, rank 1 is the fastest.
    const namedWhileSlowed = [...coordinator.stdout().matchAll(/straggler: rank (\d+) .*, step (\d+)\)/g)].filter(
      (m) => Number(m[2]) > slowFrom,
    );
    assert.deepEqual(
      namedWhileSlowed.map((m) => m[1]),
      ['0'],
      'only the slowed worker is named',
    );

    await coordinator.waitFor(/status page: http/, 1000);
    const pageUrl = /status page: (http:\/\/\S+\/)/.exec(coordinator.stdout())![1]!;
    const page = await logIn(browser, pageUrl, TOKEN);
    const alert = await page.waitForSelector('#alerts .straggler-alert');
    assert.match((await alert.textContent())!, new RegExp(`Straggler: rank 0 \\([^)]* pid ${slowed.pid}\\)`));
    await page.waitForSelector('#workers tr[data-rank="0"].straggler');
    assert.equal(await page.$('#workers tr[data-rank="1"].straggler'), null);

    release();
    release = null;
    const finished = await coordinator.finished;
    assert.equal(finished.code, 0, finished.stderr);
  } finally {
    release?.();
    await browser.close();
    for (const child of [coordinator, ...workers]) child.child.kill('SIGKILL');
    await Promise.all([coordinator, ...workers].map((c) => c.finished));
  }
});
