// `bench/chaos.sh`'s entry: runs the chaos runner with flags and prints its report; exits 1 when
// the run failed or ended on another digest than the fault-free run.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { MICRO_RECIPE } from '../e2e/cluster.ts';
import { runChaos } from './chaos.ts';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '1200' },
    seed: { type: 'string', default: '1' },
    interval: { type: 'string', default: '30' },
    'heartbeat-timeout': { type: 'string', default: '5' },
    workers: { type: 'string', default: '4' },
    spares: { type: 'string', default: '1' },
    backend: { type: 'string', default: 'wasm' },
    recipe: { type: 'string', default: MICRO_RECIPE },
    'checkpoint-every': { type: 'string', default: '10' },
    out: { type: 'string' },
    json: { type: 'string' },
  },
});

function positive(name: keyof typeof values): number {
  const n = Number(values[name]);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name}: expected a positive number, got "${values[name]}"`);
  return n;
}

const outDir = values.out ?? mkdtempSync(join(tmpdir(), 'vit-dist-chaos-'));
const report = await runChaos({
  durationS: positive('duration'),
  seed: Number(values.seed),
  meanIntervalS: positive('interval'),
  heartbeatTimeoutS: positive('heartbeat-timeout'),
  workers: positive('workers'),
  spares: Number(values.spares),
  backend: values.backend!,
  recipe: values.recipe!,
  checkpointEvery: positive('checkpoint-every'),
  outDir,
  shortBaseline: false,
  print: (line) => console.log(line),
});
console.log(`run directories: ${outDir}`);
if (values.json) writeFileSync(values.json, `${JSON.stringify(report, null, 2)}\n`);
const ok = report.chaos.exitCode === 0 && report.chaos.digest === report.faultFreeDigestAtChaosStep;
process.exit(ok ? 0 : 1);
