// The live status page (issue #14) in Debian's headless Chromium: the coordinator serves it at / behind
// a login, it shows the run's steps live as they come (server-sent events into uPlot charts), the
// workers, a restart after a worker is killed (and the replayed steps once), and after the run `vit-dist status RUN_DIR` serves the same page from the run
// directory. Screenshots of both stay in the test's temporary directory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { chartData, logIn, needsChromium, openChromium } from './browser.ts';
import {
  MICRO_RECIPE,
  TOKEN,
  evalRecords,
  needsData,
  restartRecords,
  start,
  startCoordinator,
  stepRecords,
  tempRunDir,
} from './cluster.ts';

const STEPS = 60;
/** The worker is killed after this step (or soon after); the ring restarts from the checkpoint before it. */
const KILL_AFTER = 12;
const READ_ONLY_TOKEN = 'read-only-status-token';
const TIMEOUT_MS = 150_000;

const statusUrl = (output: string): string => {
  const match = /status page(?: of .*?\))?:? (?:at )?(http:\/\/[\d.]+:\d+\/)/.exec(output);
  assert.ok(match, `no status page address in:\n${output}`);
  return match[1]!;
};

test('the status page shows a live run in Chromium, and `vit-dist status` shows it finished', {
  skip: needsData || needsChromium,
  timeout: TIMEOUT_MS,
}, async (t) => {
  const runDir = tempRunDir('status-page');
  const artifacts = dirname(runDir);
  const browser = await openChromium();
  const { coordinator, url } = await startCoordinator(
    [
      '--workers',
      '2',
      '--recipe',
      MICRO_RECIPE,
      '--steps',
      String(STEPS),
      '--checkpoint-every',
      '10',
      '--out',
      runDir,
      '--status-token',
      READ_ONLY_TOKEN,
    ],
    TIMEOUT_MS,
  );
  const workers: ReturnType<typeof start>[] = [];
  let status: ReturnType<typeof start> | null = null;
  try {
    await coordinator.waitFor(/status page: http/, 10_000);
    const pageUrl = statusUrl(coordinator.stdout());
    assert.equal(pageUrl, `${url.replace('ws:', 'http:')}/`);

    // Without a login there is only the form; the events refuse.
    assert.equal((await fetch(`${pageUrl}status/events`)).status, 401);
    const anonymous = await (await fetch(pageUrl)).text();
    assert.match(anonymous, /<form method="post" action="\/login">/);
    const wrong = await fetch(`${pageUrl}login`, { method: 'POST', body: 'token=guess', redirect: 'manual' });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers.get('set-cookie'), null);

    const page = await logIn(browser, pageUrl, READ_ONLY_TOKEN);
    await page.waitForSelector('#progress[data-phase=waiting]');
    for (let i = 0; i < 2; i++)
      workers.push(start(['worker', '--coordinator', url, '--token', TOKEN, '--threads', '1'], { timeoutMs: TIMEOUT_MS }));

    // Live: the page follows the run while it trains, pushed, never reloaded.
    await page.waitForSelector('#progress[data-phase=training]', { timeout: 90_000 });
    await page.waitForFunction((step) => Number(document.querySelector<HTMLElement>('#progress')!.dataset.step) >= step, KILL_AFTER, {
      timeout: 90_000,
    });
    const killed = workers[1]!;
    killed.child.kill('SIGKILL');
    workers.push(start(['worker', '--coordinator', url, '--token', TOKEN, '--threads', '1'], { timeoutMs: TIMEOUT_MS }));
    const restart = await page.waitForSelector('#restarts tbody tr:has(td:nth-child(6):text-matches("rank"))', { timeout: 90_000 });
    const [count, generation, fromStep] = await restart.$$eval('td', (tds) => tds.map((td) => td.textContent));
    const [restartRecord] = restartRecords(runDir);
    assert.ok(restartRecord && restartRecord.step >= 10, 'the ring restarts from a checkpoint');
    assert.deepEqual(
      [count, generation, fromStep],
      ['1', '1', String(restartRecord.step)],
      'restart 1 starts generation 1 from its checkpoint',
    );
    await page.waitForSelector(`#progress[data-step="${STEPS}"]`, { timeout: 90_000 });
    const records = stepRecords(runDir);
    const [steps, losses] = await chartData(page, 'loss');
    assert.deepEqual(
      steps,
      records.map((r) => r.step),
      "the loss chart shows every step of the run once, the replayed ones with the new ring's figures",
    );
    assert.deepEqual(
      losses,
      records.map((r) => r.loss),
    );
    const [, ...computePerRank] = await chartData(page, 'compute');
    assert.equal(computePerRank.length, 2, 'one compute-time series per worker');

    const rows = await page.$$eval('#workers tbody tr', (trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)),
    );
    assert.equal(rows.length, 2);
    const pids = workers
      .filter((w) => w !== killed)
      .map((w) => String(w.child.pid))
      .sort();
    assert.deepEqual(rows.map((row) => row[2]).sort(), pids, 'the page lists the workers by pid');
    for (const [i, row] of rows.entries()) {
      assert.equal(row[0], String(i));
      assert.equal(row[1], hostname());
      assert.match(row[3]!, /^(tensorflow|wasm|cpu)$/);
      assert.match(row[8]!, /^\d\.\d\d \/ \d\.\d\d$/, 'a straggler score per worker');
    }
    const liveShot = join(artifacts, 'status-page-live.png');
    await page.screenshot({ path: liveShot, fullPage: true });
    t.diagnostic(`screenshot of the live page: ${liveShot}`);

    const finished = await coordinator.finished;
    assert.equal(finished.code, 0, finished.stderr);

    // The finished run, read back from its directory.
    status = start(['status', runDir, '--port', '0', '--token', TOKEN], { timeoutMs: 60_000 });
    await status.waitFor(/Ctrl-C stops it/, 30_000);
    const readBack = await logIn(browser, statusUrl(status.stdout()), TOKEN);
    await readBack.waitForSelector('#progress[data-phase=finished]');
    assert.deepEqual((await chartData(readBack, 'loss'))[0], steps);
    const evaluations = evalRecords(runDir);
    assert.deepEqual(await chartData(readBack, 'testAccuracy'), [
      evaluations.map((r) => r.step),
      evaluations.map((r) => r.testAccuracy * 100),
    ]);
    assert.match((await readBack.textContent('#progress'))!, new RegExp(`step ${STEPS}/${STEPS} · test accuracy [\\d.]+% · finished`));
    const finishedShot = join(artifacts, 'status-page-finished.png');
    await readBack.screenshot({ path: finishedShot, fullPage: true });
    t.diagnostic(`screenshot of the finished run's page: ${finishedShot}`);
  } finally {
    await browser.close();
    for (const child of [coordinator, ...workers, ...(status ? [status] : [])]) child.child.kill('SIGKILL');
    await Promise.all([coordinator, ...workers, ...(status ? [status] : [])].map((c) => c.finished));
  }
});
