// Tables of the experiments of docs/experiments.md from their run directories: reads each finished
// run's metrics.jsonl (its last evaluation) and the soup's soup.json, writes RESULTS_DIR/NAME.json and
// RESULTS_DIR/NAME.md, NAME the OUT_DIR's folder name (runs/experiments/distillation -> distillation).
// Runs that have not finished (no .done marker) are listed as not run.
//   node bench/experiments/summarize.mjs distillation|soups|augreg OUT_DIR RESULTS_DIR
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';

const [experiment, outDir, resultsDir] = process.argv.slice(2);
if (!experiment || !outDir || !resultsDir) throw new Error('usage: summarize.mjs distillation|soups|augreg OUT_DIR RESULTS_DIR');

const readJson = (file) => JSON.parse(readFileSync(file, 'utf8'));
const pct = (x) => (x === undefined || x === null ? 'n/a' : `${(100 * x).toFixed(2)}`);

/** Wall seconds of each run as the scripts recorded them (the last record of a run wins). */
function wallTimes() {
  const file = join(resultsDir, 'walltimes.jsonl');
  const times = new Map();
  if (!existsSync(file)) return times;
  for (const line of readFileSync(file, 'utf8').trim().split('\n')) {
    const record = JSON.parse(line);
    times.set(record.run, record.wallSeconds);
  }
  return times;
}
const walls = wallTimes();

/** A finished run's last evaluation and its run length, or null when the run has not finished. */
function finalEval(dir) {
  if (!existsSync(join(dir, '.done'))) return null;
  const records = readFileSync(join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const evals = records.filter((r) => r.kind === 'eval');
  const last = evals.at(-1);
  return { ...last, curve: evals.map((e) => ({ step: e.step, testAccuracy: e.testAccuracy })), wallSeconds: walls.get(dir) ?? null };
}

/** Mean, sample standard deviation, min and max. */
function stats(values) {
  const n = values.length;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  const sd = n > 1 ? Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : 0;
  return { n, mean, sd, min: Math.min(...values), max: Math.max(...values) };
}
const showStats = (s) => (s ? `${pct(s.mean)} ± ${pct(s.sd)} (${pct(s.min)}–${pct(s.max)})` : 'not run');

function write(json, markdown) {
  const name = basename(outDir);
  writeFileSync(join(resultsDir, `${name}.json`), `${JSON.stringify(json, null, 2)}\n`);
  writeFileSync(join(resultsDir, `${name}.md`), `${markdown.join('\n')}\n`);
  console.log(markdown.join('\n'));
}

function distillation() {
  const teachers = { convnet: finalEval(join(outDir, 'teacher')), vit: finalEval(join(outDir, 'teacher-vit')) };
  // hard-vit: hard distillation from the ViT teacher (DeiT's Table 2); the others from the convnet.
  const labels = { none: 'none', soft: 'soft (convnet teacher)', hard: 'hard (convnet teacher)', 'hard-vit': 'hard (ViT teacher)' };
  const modes = {};
  const seedDirs = (mode) =>
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((s) => join(outDir, `${mode}-seed${s}`)).filter((d) => existsSync(join(d, '.done')));
  for (const mode of Object.keys(labels)) {
    const runs = seedDirs(mode).map((dir) => ({ run: basename(dir), ...finalEval(dir) }));
    if (mode === 'hard-vit' && runs.length === 0) continue;
    const pick = (key) => (runs.length ? stats(runs.map((r) => r[key])) : null);
    modes[mode] = { runs, joint: pick('testAccuracy'), classHead: pick('testAccuracyClassHead'), distHead: pick('testAccuracyDistHead') };
  }
  const md = [
    '| student objective | seeds | joint (mean ± sd, min–max) | class head | distillation head |',
    '|---|---|---|---|---|',
    ...Object.entries(modes).map(
      ([mode, m]) =>
        `| ${labels[mode]} | ${m.runs.map((r) => r.run.replace(`${mode}-seed`, '')).join(', ') || '-'} | ${showStats(m.joint)} | ${showStats(m.classHead)} | ${showStats(m.distHead)} |`,
    ),
    `| the convnet teacher alone | 0 | ${teachers.convnet ? pct(teachers.convnet.testAccuracy) : 'not run'} | | |`,
    ...(teachers.vit ? [`| the ViT teacher alone | 0 | ${pct(teachers.vit.testAccuracy)} | | |`] : []),
    '',
    'Per seed (test top-1 %, joint / class head / distillation head; wall s):',
    '',
    ...Object.values(modes).flatMap((m) =>
      m.runs.map(
        (r) =>
          `- ${r.run}: ${pct(r.testAccuracy)} / ${pct(r.testAccuracyClassHead)} / ${pct(r.testAccuracyDistHead)}; ${r.wallSeconds ?? '?'} s`,
      ),
    ),
    ...Object.entries(teachers)
      .filter(([, t]) => t)
      .map(([kind, t]) => `- ${kind} teacher: ${pct(t.testAccuracy)}; ${t.wallSeconds ?? '?'} s`),
  ];
  write({ teachers, modes }, md);
}

function soups() {
  const report = readJson(join(outDir, 'soup', 'soup.json'));
  const pretrain = Object.fromEntries(
    ['holdout', 'val']
      .filter((s) => existsSync(join(outDir, `pretrain-${s}.json`)))
      .map((s) => [s, readJson(join(outDir, `pretrain-${s}.json`))]),
  );
  const interpolation = existsSync(join(outDir, 'interpolation.json')) ? readJson(join(outDir, 'interpolation.json')) : null;
  const name = (path) => basename(path);
  const kept = new Set(report.greedy.ingredients);
  const bestHeld = [...report.ingredients].sort((a, b) => b.heldOut.top1 - a.heldOut.top1)[0];
  const bestTest = [...report.ingredients].sort((a, b) => b.test.top1 - a.test.top1)[0];
  const md = [
    '| model | held-out top-1 % | test top-1 % |',
    '|---|---|---|',
    ...report.ingredients.map(
      (i) => `| ${kept.has(i.name) ? '**greedy** ' : ''}${name(i.name)} | ${pct(i.heldOut.top1)} | ${pct(i.test.top1)} |`,
    ),
    `| uniform soup (${report.ingredients.length}) | ${pct(report.uniform.heldOut.top1)} | ${pct(report.uniform.test.top1)} |`,
    `| greedy soup (${report.greedy.ingredients.length}) | ${pct(report.greedy.heldOut.top1)} | ${pct(report.greedy.test.top1)} |`,
    `| best ingredient on held-out (${name(bestHeld.name)}) | ${pct(bestHeld.heldOut.top1)} | ${pct(bestHeld.test.top1)} |`,
    `| best ingredient on test (${name(bestTest.name)}, chosen with the test split: not a fair choice) | ${pct(bestTest.heldOut.top1)} | ${pct(bestTest.test.top1)} |`,
    ...(pretrain.val
      ? [`| the pre-trained model (5 classes), no fine-tuning | ${pct(pretrain.holdout?.top1)} | ${pct(pretrain.val.top1)} |`]
      : []),
    '',
    ...(interpolation
      ? [
          `Interpolation (1 - t) * ${name(interpolation.a)} + t * ${name(interpolation.b)}:`,
          '',
          '| t | held-out top-1 % | test top-1 % |',
          '|---|---|---|',
          ...interpolation.points.map((p) => `| ${p.t} | ${pct(p.heldOutTop1)} | ${pct(p.testTop1)} |`),
        ]
      : []),
  ];
  const peers = readdirSync(outDir)
    .filter((n) => n.startsWith('interpolation-peers-'))
    .map((n) => readJson(join(outDir, n)));
  for (const pair of peers) {
    const mid = pair.points.find((p) => p.t === 0.5);
    md.push(
      '',
      `Peers: the soup of ${name(pair.a)} and ${name(pair.b)} (t = 0.5): held-out ${pct(mid.heldOutTop1)}, test ${pct(mid.testTop1)}`,
    );
  }
  write({ report, pretrain, interpolation, peers, bestHeldOut: name(bestHeld.name), bestTest: name(bestTest.name) }, md);
}

/** AugReg's grid: one row per data size and schedule (epochs), one column per level, mean ± sd over seeds. */
function augreg() {
  const levelOrder = ['plain', 'padcrop', 'none', 'light1', 'medium1'];
  const runs = readdirSync(outDir)
    .map((n) => n.match(/^data(\d+)-epochs(\d+)-(\w+)-seed(\d+)$/))
    .filter(Boolean)
    .map(([name, data, epochs, level, seed]) => ({
      data: Number(data),
      epochs: Number(epochs),
      level,
      seed: Number(seed),
      ...(finalEval(join(outDir, name)) ?? { notFinished: true }),
    }));
  const levels = levelOrder.filter((l) => runs.some((r) => r.level === l));
  const rows = [...new Set(runs.map((r) => `${r.data}|${r.epochs}`))]
    .map((key) => key.split('|').map(Number))
    .sort(([d1, e1], [d2, e2]) => d1 - d2 || e1 - e2);
  const cell = (data, epochs, level) => {
    const done = runs.filter((r) => r.data === data && r.epochs === epochs && r.level === level && !r.notFinished);
    return done.length ? { ...stats(done.map((r) => r.testAccuracy)), seeds: done.map((r) => r.seed) } : null;
  };
  const table = rows.map(([data, epochs]) => ({ data, epochs, cells: Object.fromEntries(levels.map((l) => [l, cell(data, epochs, l)])) }));
  const md = [
    `| data | epochs (steps) | ${levels.join(' | ')} |`,
    `|---|---|${levels.map(() => '---').join('|')}|`,
    ...table.map(({ data, epochs, cells }) => {
      const steps = epochs * Math.floor((data === 10 ? 6000 : 60000) / 512);
      const best = Math.max(
        ...Object.values(cells)
          .filter(Boolean)
          .map((c) => c.mean),
      );
      const show = (c) =>
        (!c ? 'not run' : c.mean === best ? `**${showStats(c)}**` : showStats(c)) + (c && c.n < 3 ? ` [${c.n} seed]` : '');
      return `| ${data}% | ${epochs} (${steps}) | ${levels.map((l) => show(cells[l])).join(' | ')} |`;
    }),
    '',
    'Test top-1 %, mean ± sample standard deviation (min–max) over the seeds.',
    '',
    'Wall seconds per run: ' +
      runs
        .filter((r) => !r.notFinished)
        .map((r) => `${r.data}%/${r.epochs}ep/${r.level}/s${r.seed} ${r.wallSeconds ?? '?'}`)
        .join(', '),
  ];
  write({ runs, table }, md);
}

const experiments = { distillation, soups, augreg };
if (!(experiment in experiments)) throw new Error(`unknown experiment "${experiment}" (one of ${Object.keys(experiments).join(', ')})`);
experiments[experiment]();
