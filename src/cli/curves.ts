// Training curves as an SVG drawing: one panel per quantity (loss, accuracy, test accuracy, learning
// rate, images/s over steps), every run overlaid in its own colour, and a legend. Plain SVG keeps the
// drawing testable as text and lets `vit-dist plot` rasterize it without a browser.

/** One run's curves, each a list of [step, value] in step order. */
export interface RunCurves {
  name: string;
  loss: [number, number][];
  accuracy: [number, number][];
  testAccuracy: [number, number][];
  lr: [number, number][];
  imagesPerSec: [number, number][];
}

interface Panel {
  title: string;
  series: (run: RunCurves) => [number, number][];
  format: (value: number) => string;
  /** Evaluations are few: dots show where each one was taken. */
  markers: boolean;
}

const percent = (v: number): string => `${(v * 100).toFixed(Math.abs(v) < 0.1 && v !== 0 ? 1 : 0)}%`;
const plain = (v: number): string => (Math.abs(v) >= 1e4 ? `${(v / 1000).toFixed(0)}k` : String(Number(v.toPrecision(3))));
const scientific = (v: number): string => (v === 0 ? '0' : v.toExponential(1));

const PANELS: Panel[] = [
  { title: 'training loss', series: (r) => r.loss, format: plain, markers: false },
  { title: 'training accuracy', series: (r) => r.accuracy, format: percent, markers: false },
  { title: 'test accuracy', series: (r) => r.testAccuracy, format: percent, markers: true },
  { title: 'learning rate', series: (r) => r.lr, format: scientific, markers: false },
  { title: 'images/s', series: (r) => r.imagesPerSec, format: plain, markers: false },
];

/** Tableau's ten colours, distinct in print and for most colour-blind readers. */
export const RUN_COLORS = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];

const PANEL_WIDTH = 520;
const PANEL_HEIGHT = 340;
const COLUMNS = 3;
const MARGIN = { left: 70, right: 20, top: 36, bottom: 44 };
const FONT = "font-family='DejaVu Sans, Arial, sans-serif'";

export const CURVES_WIDTH = PANEL_WIDTH * COLUMNS;
export const CURVES_HEIGHT = PANEL_HEIGHT * Math.ceil((PANELS.length + 1) / COLUMNS);

/** About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]. */
export function niceTicks(low: number, high: number, count = 5): number[] {
  if (!(high > low)) return [low];
  const raw = (high - low) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].find((m) => m * power >= raw) ?? 10) * power;
  const ticks: number[] = [];
  for (let t = Math.ceil(low / step) * step; t <= high + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The finite values' range, widened a little so curves do not sit on the frame; a flat series gets a band around it. */
function valueRange(values: number[]): [number, number] {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return [0, 1];
  const low = Math.min(...finite);
  const high = Math.max(...finite);
  if (high === low) return low === 0 ? [-1, 1] : [low - Math.abs(low) * 0.1, high + Math.abs(high) * 0.1];
  const pad = (high - low) * 0.05;
  return [low - pad, high + pad];
}

function drawPanel(panel: Panel, runs: RunCurves[], x0: number, y0: number, maxStep: number): string {
  const width = PANEL_WIDTH - MARGIN.left - MARGIN.right;
  const height = PANEL_HEIGHT - MARGIN.top - MARGIN.bottom;
  const left = x0 + MARGIN.left;
  const top = y0 + MARGIN.top;
  const [low, high] = valueRange(runs.flatMap((r) => panel.series(r).map(([, v]) => v)));
  const xOf = (step: number): number => left + (step / maxStep) * width;
  const yOf = (v: number): number => top + height - ((v - low) / (high - low)) * height;
  const parts = [
    `<text x='${left + width / 2}' y='${y0 + 22}' text-anchor='middle' font-size='16' font-weight='bold' ${FONT}>${escapeXml(panel.title)}</text>`,
  ];
  for (const t of niceTicks(low, high)) {
    const y = yOf(t).toFixed(1);
    parts.push(`<line x1='${left}' x2='${left + width}' y1='${y}' y2='${y}' stroke='#e4e4e4'/>`);
    parts.push(`<text x='${left - 6}' y='${y}' dy='4' text-anchor='end' font-size='12' fill='#444' ${FONT}>${panel.format(t)}</text>`);
  }
  for (const t of niceTicks(0, maxStep)) {
    const x = xOf(t).toFixed(1);
    parts.push(`<line x1='${x}' x2='${x}' y1='${top}' y2='${top + height}' stroke='#f0f0f0'/>`);
    parts.push(`<text x='${x}' y='${top + height + 16}' text-anchor='middle' font-size='12' fill='#444' ${FONT}>${plain(t)}</text>`);
  }
  parts.push(`<text x='${left + width / 2}' y='${top + height + 34}' text-anchor='middle' font-size='12' fill='#444' ${FONT}>step</text>`);
  parts.push(`<rect x='${left}' y='${top}' width='${width}' height='${height}' fill='none' stroke='#888'/>`);
  runs.forEach((run, i) => {
    const color = RUN_COLORS[i % RUN_COLORS.length]!;
    // A non-finite value (a diverged loss) breaks the line instead of bending it to the frame.
    let path = '';
    let pen = 'M';
    const dots: string[] = [];
    for (const [step, value] of panel.series(run)) {
      if (!Number.isFinite(value)) {
        pen = 'M';
        continue;
      }
      const [x, y] = [xOf(step).toFixed(1), yOf(value).toFixed(1)];
      path += `${pen}${x},${y}`;
      pen = 'L';
      if (panel.markers) dots.push(`<circle cx='${x}' cy='${y}' r='4' fill='${color}'/>`);
    }
    if (path) parts.push(`<path d='${path}' fill='none' stroke='${color}' stroke-width='2' stroke-linejoin='round'/>`, ...dots);
  });
  return parts.join('\n');
}

function drawLegend(runs: RunCurves[], x0: number, y0: number): string {
  const parts = [`<text x='${x0 + MARGIN.left}' y='${y0 + 22}' font-size='16' font-weight='bold' ${FONT}>runs</text>`];
  runs.forEach((run, i) => {
    // Two lines a run (name, then its final test accuracy): a run directory's name fills the cell's width alone.
    const y = y0 + MARGIN.top + 14 + i * 40;
    const last = run.testAccuracy.at(-1);
    parts.push(
      `<rect x='${x0 + MARGIN.left}' y='${y - 10}' width='24' height='12' fill='${RUN_COLORS[i % RUN_COLORS.length]}'/>`,
      `<text x='${x0 + MARGIN.left + 32}' y='${y}' font-size='13' ${FONT}>${escapeXml(run.name)}</text>`,
    );
    if (last)
      parts.push(
        `<text x='${x0 + MARGIN.left + 32}' y='${y + 16}' font-size='12' fill='#444' ${FONT}>test accuracy ${(last[1] * 100).toFixed(2)}% at step ${last[0]}</text>`,
      );
  });
  return parts.join('\n');
}

/** The SVG document of `runs`' curves, CURVES_WIDTH x CURVES_HEIGHT pixels. */
export function curvesSvg(runs: RunCurves[]): string {
  const maxStep = Math.max(1, ...runs.flatMap((r) => r.loss.map(([s]) => s)));
  const cells = PANELS.map((panel, i) =>
    drawPanel(panel, runs, (i % COLUMNS) * PANEL_WIDTH, Math.floor(i / COLUMNS) * PANEL_HEIGHT, maxStep),
  );
  const legendCell = PANELS.length;
  cells.push(drawLegend(runs, (legendCell % COLUMNS) * PANEL_WIDTH, Math.floor(legendCell / COLUMNS) * PANEL_HEIGHT));
  return [
    `<svg xmlns='http://www.w3.org/2000/svg' width='${CURVES_WIDTH}' height='${CURVES_HEIGHT}' viewBox='0 0 ${CURVES_WIDTH} ${CURVES_HEIGHT}'>`,
    `<rect width='100%' height='100%' fill='white'/>`,
    ...cells,
    '</svg>',
  ].join('\n');
}
