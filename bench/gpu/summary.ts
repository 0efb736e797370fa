// bench/gpu-check.sh's summary: reads the JSON lines its parts left in OUT and prints the figures
// side by side. A part that produced nothing shows as "not measured".
//   node --import tsx bench/gpu/summary.ts --out OUT --models deit_tiny_patch16_224,...
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { out: { type: 'string' }, models: { type: 'string', default: '' } } });
if (!values.out) throw new Error("--out DIR (the check's output folder) is required");
const out = values.out;

type Json = Record<string, any>;

/** The JSON objects among a file's lines (the parts print readable lines too). */
function jsonLines(file: string): Json[] {
  const path = join(out, file);
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .flatMap((line) => {
      try {
        return [JSON.parse(line) as Json];
      } catch {
        return []; // a line cut off by a time limit
      }
    });
}

const fixed = (x: number | undefined, digits: number) => (x === undefined ? 'not measured' : x.toFixed(digits));

const adapter = jsonLines('adapter.txt').find((j) => 'adapter' in j);
console.log(
  `adapter: ${adapter ? `${adapter.adapter}${adapter.software ? ' [software]' : ''}; features: ${adapter.features.join(', ') || 'none'}; row kernels reduce in ${adapter.rowReduction}` : 'not found'}`,
);

const kernels = jsonLines('kernels.txt').find((j) => 'results' in j);
if (kernels) {
  console.log(
    `our matMul kernels, TFLOP/s (max rel error): ${kernels.results.map((r: Json) => `${r.name} ${r.tflops.toFixed(2)} (${r.maxRelError.toExponential(0)})`).join('; ')}`,
  );
  console.log(
    `one block's forward+backward products: ${kernels.blockTflops.toFixed(2)} TFLOP/s, ${kernels.blockMs.toFixed(2)} ms; the products alone allow ${kernels.imagesPerSecBound.toFixed(0)} images/s at batch ${kernels.dims.images}`,
  );
} else {
  console.log('our matMul kernels: not measured');
}

const attention = jsonLines('attention.txt').find((j) => 'attention' in j);
if (attention) {
  const cell = (r: Json) =>
    `${r.forwardBackwardMs.toFixed(2)} ms (${r.forwardBackwardTflops.toPrecision(3)} TFLOP/s), forward ${r.forwardTflops.toPrecision(3)}`;
  const { batch: images, heads, tokens, headDim } = attention.dims;
  console.log(
    `attention forward+backward at ${images} x ${heads} heads x ${tokens} tokens x ${headDim}: fused ${cell(attention.attention.fused)}; unfused ${cell(attention.attention.unfused)}; ${attention.speedup.toFixed(2)}x`,
  );
} else {
  console.log('attention: not measured');
}

const profile = jsonLines('profile.txt').find((j) => 'timestampQuery' in j);
if (!profile) console.log('per-kernel GPU times: not measured');
else if (!profile.timestampQuery) console.log(profile.message);
else
  console.log(
    `per-kernel GPU times, ${profile.model} at batch ${profile.batch} (${profile.totalMs.toFixed(1)} ms timed one by one): ${profile.kernels
      .slice(0, 8)
      .map((k: Json) => `${k.name} ${(100 * k.share).toFixed(1)}%`)
      .join(', ')}`,
  );

const models = jsonLines('models.txt');
const ours = (model: string) => models.find((j) => j.model === model && 'backend' in j);
const torch = (model: string, precision: string) => models.find((j) => j.model === model && j.precision === precision);
const batch = models.find((j) => j.batch !== undefined)?.batch ?? '?';
const device = models.find((j) => j.device)?.device ?? '?';
console.log(`forward+backward images/s at batch ${batch} (PyTorch ${models.find((j) => j.torch)?.torch ?? '?'} on ${device}):`);
console.log(
  `${'model'.padEnd(24)} ${'vit-dist webgpu'.padStart(15)} ${'torch fp32'.padStart(12)} ${'ratio'.padStart(6)} ${'torch tf32'.padStart(12)} ${'ratio'.padStart(6)} ${'grad download ms'.padStart(16)}`,
);
for (const model of values.models.split(',').filter(Boolean)) {
  const mine = ours(model)?.imagesPerSec as number | undefined;
  const cells = ['fp32', 'tf32'].map((precision) => {
    const theirs = torch(model, precision)?.imagesPerSec as number | undefined;
    const ratio = mine !== undefined && theirs !== undefined ? (mine / theirs).toFixed(3) : '-';
    return `${fixed(theirs, 1).padStart(12)} ${ratio.padStart(6)}`;
  });
  console.log(`${model.padEnd(24)} ${fixed(mine, 1).padStart(15)} ${cells.join(' ')} ${fixed(ours(model)?.copyMs, 1).padStart(16)}`);
}

const steps = jsonLines('ring-metrics.jsonl').filter((j) => j.kind === 'step');
if (steps.length === 0) console.log('ring step: not measured');
for (const s of steps) {
  console.log(
    `ring step ${s.step} (${s.workers} workers on one GPU): compute ${fixed(s.computeMs, 1)} ms, copy ${fixed(s.copyMs, 1)} ms, comm ${fixed(s.commMs, 1)} ms, ${fixed(s.imagesPerSec, 1)} images/s, loss ${fixed(s.loss, 4)}`,
  );
}
