// `vit-dist plot`: runs' curves in one PNG, each run in its colour; bad input is named.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { CURVES_HEIGHT, CURVES_WIDTH, RUN_COLORS, niceTicks } from '../../src/cli/curves.ts';
import { plotRuns } from '../../src/cli/plot-command.ts';

const BIN = fileURLToPath(new URL('../../bin/vit-dist.js', import.meta.url));

/** A run directory whose metrics.jsonl holds `steps` step records and an evaluation every 10 steps. */
function fakeRun(root: string, name: string, steps: number, lossScale: number): string {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  const lines: object[] = [];
  for (let step = 1; step <= steps; step++) {
    lines.push({
      kind: 'step',
      step,
      epoch: 0,
      loss: lossScale / step,
      accuracy: 1 - 1 / (step + 1),
      lr: 1e-3 * Math.min(1, step / 5),
      imagesPerSec: 1000 + step,
      ranks: [],
    });
    if (step % 10 === 0) lines.push({ kind: 'eval', step, epoch: 0, testAccuracy: 0.5 + step / 100, testLoss: 1, samples: 100 });
  }
  writeFileSync(join(dir, 'metrics.jsonl'), lines.map((l) => `${JSON.stringify(l)}\n`).join(''));
  return dir;
}

/** How many pixels are within a few levels of `hex`. */
async function pixelsOf(png: string, hex: string): Promise<number> {
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  const [r, g, b] = [1, 3, 5].map((i) => Number.parseInt(hex.slice(i, i + 2), 16));
  let count = 0;
  for (let p = 0; p < data.length; p += info.channels)
    if (Math.abs(data[p]! - r!) < 8 && Math.abs(data[p + 1]! - g!) < 8 && Math.abs(data[p + 2]! - b!) < 8) count++;
  return count;
}

test("two runs overlaid: a PNG of the drawing size with both runs' colours in it", async () => {
  const root = mkdtempSync(join(tmpdir(), 'vit-dist-plot-'));
  const a = fakeRun(root, 'run-a', 40, 2);
  const b = fakeRun(root, 'run-b', 30, 3);
  const out = join(root, 'pictures', 'curves.png');
  assert.deepEqual(plotRuns([a, b], out), { width: CURVES_WIDTH, height: CURVES_HEIGHT });
  const meta = await sharp(out).metadata();
  assert.equal(meta.format, 'png');
  assert.deepEqual([meta.width, meta.height], [CURVES_WIDTH, CURVES_HEIGHT]);
  // Five panels of lines, dots and a legend swatch each: hundreds of pixels per run; a third colour, none.
  for (const color of RUN_COLORS.slice(0, 2)) assert.ok((await pixelsOf(out, color)) > 500, `run colour ${color} is drawn`);
  assert.equal(await pixelsOf(out, RUN_COLORS[2]!), 0, 'no third run');
});

test('bad input is an error naming the problem', () => {
  const root = mkdtempSync(join(tmpdir(), 'vit-dist-plot-bad-'));
  const out = join(root, 'curves.png');
  assert.throws(() => plotRuns([join(root, 'missing')], out), /missing: no such run directory/);
  mkdirSync(join(root, 'not-started'));
  assert.throws(() => plotRuns([join(root, 'not-started')], out), /not-started has no metrics\.jsonl/);
  const empty = join(root, 'empty');
  mkdirSync(empty);
  writeFileSync(join(empty, 'metrics.jsonl'), '');
  assert.throws(() => plotRuns([empty], out), /empty\/metrics\.jsonl has no step records/);
  const broken = fakeRun(root, 'broken', 3, 1);
  writeFileSync(join(broken, 'metrics.jsonl'), '{"kind":"step"}\n{oops\n');
  assert.throws(() => plotRuns([broken], out), /broken\/metrics\.jsonl line 2 is not a JSON record/);
  assert.throws(() => plotRuns([fakeRun(root, 'ok', 3, 1)], join(root, 'curves.svg')), /--out must name a \.png file/);
});

test('the command line says what is wrong and exits 1', () => {
  const result = spawnSync(process.execPath, [BIN, 'plot', '/nonexistent/run', '--out', join(tmpdir(), 'never.png')], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(result.status, 1);
  assert.match(result.stderr, /^vit-dist: error: \/nonexistent\/run: no such run directory$/m);
});

test('axis ticks are round numbers covering the range', () => {
  assert.deepEqual(niceTicks(0, 702), [0, 200, 400, 600]);
  assert.deepEqual(niceTicks(0.25, 2.31), [0.5, 1, 1.5, 2]);
  assert.deepEqual(niceTicks(1e-5, 4e-3), [0.001, 0.002, 0.003, 0.004]);
  assert.deepEqual(niceTicks(3, 3), [3]);
});
