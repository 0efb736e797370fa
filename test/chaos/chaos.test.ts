// The chaos runner's two-minute version (issue #15): 4 workers train for 120 s while every kind of
// fault hits them once or more (kill -9, SIGSTOP then SIGCONT, a cut ring link, a cut control
// link, a worker slowed to a fraction of a core, the coordinator killed with -9 and restarted);
// the run must end cleanly on the fault-free run's parameters, and leave no process behind.
// The 20-minute run with its throughput comparison is bench/chaos.sh.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MICRO_RECIPE, assertCompleteRun, needsData } from '../e2e/cluster.ts';
import { FAULT_KINDS, runChaos } from './chaos.ts';

test('chaos: 4 workers under every kind of fault for two minutes end on the fault-free digest, and every process is gone', {
  skip: needsData,
  timeout: 1_200_000,
}, async () => {
  const outDir = mkdtempSync(join(tmpdir(), 'vit-dist-chaos-'));
  const report = await runChaos({
    durationS: 120,
    seed: 15,
    meanIntervalS: 10,
    heartbeatTimeoutS: 5,
    workers: 4,
    spares: 1,
    backend: 'wasm',
    recipe: MICRO_RECIPE,
    checkpointEvery: 10,
    outDir,
    shortBaseline: true,
    print: (line) => console.log(line),
  });
  assert.equal(report.chaos.exitCode, 0, `the chaos run's coordinator exits 0 (${report.chaos.dir})`);
  assert.equal(report.faultFree.exitCode, 0);
  assert.deepEqual(
    FAULT_KINDS.filter((kind) => !report.faults.some((f) => f.kind === kind)),
    [],
    'every kind of fault was injected',
  );
  for (const fault of report.faults)
    if (fault.kind !== 'slow' && fault.note !== 'no open connection to cut')
      assert.notEqual(fault.detectionS, null, `${fault.kind} on ${fault.target} was detected`);
  assertCompleteRun(report.chaos.dir, report.chaos.steps, report.faultFreeDigestAtChaosStep);
  for (const pid of report.processes) assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `process ${pid} is gone`);
});
