// The status page in the browser: one EventSource brings the whole run once ('snapshot') and then
// each new record with the derived view ('update'); uPlot draws the curves. Everything shown is
// set through textContent, never as HTML.
/* global uPlot */

/** Step curves: [chart id, title, value of a step record]. */
const STEP_CHARTS = [
  ['loss', 'training loss', (r) => r.loss],
  ['accuracy', 'training accuracy (%)', (r) => r.accuracy * 100],
  ['lr', 'learning rate', (r) => r.lr],
  ['gradNorm', 'gradient norm (before clipping)', (r) => r.gradNorm],
  ['imagesPerSec', 'images/s', (r) => r.imagesPerSec],
];
const COLORS = ['#2c6fbb', '#c0392b', '#27ae60', '#8e44ad', '#d68910', '#16a085', '#7f8c8d', '#2c3e50'];

/** The charts by id, for people at the console and for the end-to-end test. */
const charts = {};
window.vitDistCharts = charts;
let records = [];
let info = null;
let view = null;
let ranksCharted = 0;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes ?? {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function duration(seconds) {
  if (seconds === null || !Number.isFinite(seconds)) return '?';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(s % 60).padStart(2, '0')}s`;
}

const ms = (value) => (value === null ? '' : value.toFixed(1));

/** Axis labels that stay distinct for a learning rate of 1e-5 as for 3,000 images/s. */
function tick(value) {
  const size = Math.abs(value);
  return size !== 0 && (size < 0.01 || size >= 1e6) ? value.toExponential(1) : String(Number(value.toPrecision(4)));
}

function chartWidth() {
  const grid = document.getElementById('charts');
  const columns = Math.max(1, Math.floor(grid.clientWidth / 440));
  return Math.floor(grid.clientWidth / columns) - 16;
}

/** `lastStep`: draw the x axis to it (evaluations are few: their axis spans the run, not just them). */
function makeChart(id, title, seriesLabels, data, points, lastStep = null) {
  charts[id]?.destroy();
  let holder = document.getElementById(`chart-${id}`);
  if (!holder) {
    holder = el('div', { id: `chart-${id}`, class: 'chart' });
    document.getElementById('charts').append(holder);
  }
  const series = seriesLabels.map((label, i) => ({
    label,
    stroke: COLORS[i % COLORS.length],
    width: 1.5,
    spanGaps: true,
    points: points ? { show: true, size: 6 } : {},
  }));
  charts[id] = new uPlot(
    {
      title,
      width: chartWidth(),
      height: 220,
      scales: { x: lastStep ? { time: false, range: [0, lastStep] } : { time: false } },
      series: [{ label: 'step' }, ...series],
      axes: [{}, { size: 60, values: (_, splits) => splits.map(tick) }],
    },
    data,
    holder,
  );
}

const steps = () => records.filter((r) => r.kind === 'step');
const evals = () => records.filter((r) => r.kind === 'eval');

/** Draws every chart again from the records (a snapshot, a replay after a restart, more workers). */
function redraw() {
  const stepRecords = steps();
  const x = stepRecords.map((r) => r.step);
  for (const [id, title, value] of STEP_CHARTS) makeChart(id, title, [title], [x, stepRecords.map(value)], false);
  const evalRecords = evals();
  makeChart(
    'testAccuracy',
    'test accuracy per evaluation (%)',
    ['test accuracy'],
    [evalRecords.map((r) => r.step), evalRecords.map((r) => r.testAccuracy * 100)],
    true,
    view.totalSteps,
  );
  ranksCharted = stepRecords.reduce((most, r) => Math.max(most, r.ranks.length), 0);
  const ranks = Array.from({ length: ranksCharted }, (_, rank) => rank);
  makeChart(
    'compute',
    'compute time per worker (ms)',
    ranks.map((rank) => `rank ${rank}`),
    [x, ...ranks.map((rank) => stepRecords.map((r) => r.ranks[rank]?.computeMs ?? null))],
    false,
  );
}

/** Adds one record to the charts; anything but a new step or evaluation at the end draws everything again. */
function addRecord(record) {
  const last = records.at(-1);
  const appends = last === undefined || record.step > last.step || (record.kind === 'eval' && record.step === last.step);
  if (record.kind === 'restart') records = records.filter((r) => r.step <= record.step);
  else if (!appends) records = records.filter((r) => r.step < record.step || (r.step === record.step && r.kind !== record.kind));
  records.push(record);
  if (!appends || record.kind === 'restart' || (record.kind === 'step' && record.ranks.length > ranksCharted)) return redraw();
  if (record.kind === 'step') {
    for (const [id, , value] of STEP_CHARTS) {
      const [xs, ys] = charts[id].data;
      charts[id].setData([
        [...xs, record.step],
        [...ys, value(record)],
      ]);
    }
    const [xs, ...perRank] = charts.compute.data;
    charts.compute.setData([[...xs, record.step], ...perRank.map((ys, rank) => [...ys, record.ranks[rank]?.computeMs ?? null])]);
  } else {
    const [xs, ys] = charts.testAccuracy.data;
    charts.testAccuracy.setData([
      [...xs, record.step],
      [...ys, record.testAccuracy * 100],
    ]);
  }
}

function showRun() {
  const recipe = info.recipe;
  document.getElementById('run-name').textContent = `${recipe.name} · run ${info.runId.slice(0, 8)}`;
  document.title = `vit-dist: ${recipe.name} step ${view.step}`;
  const rows = [
    ['recipe', `${recipe.name}: ${recipe.description}`],
    ['model', recipe.model],
    ['global batch', `${recipe.globalBatch} (micro-batch ${recipe.microBatch})`],
    ['optimizer', `${recipe.optimizer.name}, lr ${recipe.optimizer.lr}, weight decay ${recipe.optimizer.weightDecay}`],
    ['data', `${recipe.data.format} at ${recipe.data.path}`],
    ['workers asked', info.workers],
    ['started', new Date(info.startedAt).toLocaleString()],
    ['run directory', info.outDir],
  ];
  document.getElementById('run').replaceChildren(...rows.flatMap(([key, value]) => [el('dt', {}, key), el('dd', {}, value)]));
}

function showProgress() {
  const total = view.totalSteps ?? '?';
  const state = {
    waiting: 'waiting for workers',
    training: `ETA ${duration(view.etaSeconds)}`,
    finished: 'finished',
    stopped: 'not running',
    failed: 'failed',
  }[view.phase];
  const lastEval = evals().at(-1);
  const accuracy = lastEval ? ` · test accuracy ${(lastEval.testAccuracy * 100).toFixed(2)}%` : '';
  const progress = document.getElementById('progress');
  progress.textContent = `step ${view.step}/${total}${accuracy} · ${state}`;
  progress.dataset.phase = view.phase;
  progress.dataset.step = String(view.step);
}

function showGeneration() {
  const generation = info.generation;
  // A restart record counts the failures recovered so far; taking in new workers restarts the ring without one.
  const failures = view.restarts.at(-1)?.restarts ?? 0;
  document.getElementById('generation').textContent = generation
    ? `${generation.generation} (from step ${generation.startStep}, ${generation.members.length} workers, ${failures === 0 ? 'no' : failures} failure${failures === 1 ? '' : 's'} recovered)`
    : '(no ring yet)';
  const rows = view.restarts.map((r, i) =>
    el(
      'tr',
      {},
      el('td', {}, i + 1),
      el('td', {}, r.generation),
      el('td', {}, r.step),
      el('td', {}, r.workers),
      el('td', {}, new Date(r.time).toLocaleTimeString()),
      el('td', {}, r.cause),
    ),
  );
  if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: 6 }, 'none')));
  document.querySelector('#restarts tbody').replaceChildren(...rows);
}

function showWorkers() {
  const rows = view.workers.map((w) => {
    const score = w.score === null ? '' : `${w.score.toFixed(2)} / ${w.windowScore.toFixed(2)}`;
    const comm = w.commMs === null ? '' : `${ms(w.commMs)} (${ms(w.exposedCommMs)})`;
    const flag = w.straggler ? el('span', { class: 'badge' }, 'straggler') : '';
    const attributes = { 'data-rank': w.rank, class: w.straggler ? 'straggler' : '' };
    return el(
      'tr',
      attributes,
      el('td', {}, w.rank),
      el('td', {}, w.host),
      el('td', {}, w.pid),
      el('td', {}, w.backend),
      el('td', {}, w.gpu ?? '-'),
      el('td', {}, ms(w.computeMs)),
      el('td', {}, ms(w.dataWaitMs)),
      el('td', {}, comm),
      el('td', {}, score),
      el('td', {}, flag),
    );
  });
  document.querySelector('#workers tbody').replaceChildren(...rows);
  const alerts = view.workers
    .filter((w) => w.straggler)
    .map((w) =>
      el(
        'p',
        { class: 'straggler-alert' },
        `Straggler: rank ${w.rank} (${w.host} pid ${w.pid}) computes at ${w.windowScore.toFixed(2)} of the fastest rank's speed.`,
      ),
    );
  if (view.failure) alerts.unshift(el('p', {}, `The run failed: ${view.failure}`));
  document.getElementById('alerts').replaceChildren(...alerts);
}

function show() {
  showRun();
  showProgress();
  showGeneration();
  showWorkers();
}

const events = new EventSource('/status/events');
events.addEventListener('snapshot', (message) => {
  ({ info, records, view } = JSON.parse(message.data));
  show();
  redraw();
});
events.addEventListener('update', (message) => {
  const update = JSON.parse(message.data);
  ({ info, view } = update);
  if (update.record) addRecord(update.record);
  show();
});
events.addEventListener('error', () => {
  if (view?.phase !== 'training') events.close();
});
window.addEventListener('resize', () => {
  if (info) redraw();
});
