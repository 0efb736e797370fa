// Figures of finished vit-dist runs, for bench/diloco-vs-lockstep.sh and bench/wan.sh.
//   node bench/run-summary.mjs RUN_DIR NAME WALL_SECONDS   one JSON line: bytes every rank's ring
//       sockets sent (metrics.jsonl, all steps), wall time, and compute utilisation: each rank's
//       compute time over the training loop's wall time from the end of step 1 to the end of the
//       last step, the mean over ranks. A step's compute is the rank's own work on it: forward and
//       backward passes without the waits for data, the optimizer step with the gradient's scaling
//       and norm (the step's ring time less its waits on the ring), and the weights' copies to and
//       from the model; waits on the ring, the data loader, other workers and the coordinator are
//       not. Also: the same without the evaluations' time, which both modes spend alike; with the
//       evaluations' forward passes counted as compute; forward and backward passes alone. And the
//       final and per-evaluation test accuracy.
//       With STEPS after WALL_SECONDS: the same over the first STEPS steps and the evaluations up
//       to them, for a run still going or cut short (WALL_SECONDS then 0: not known)
//   node bench/run-summary.mjs --table RESULTS.jsonl       a Markdown table of such lines, the first one
//       (lockstep) the reference for the byte ratio and the accuracy difference
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const lines = (file) =>
  readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line));

if (process.argv[2] === '--table') {
  const rows = lines(process.argv[3]);
  const reference = rows[0];
  console.log(
    '| run | bytes sent | lockstep / run | wall s | compute utilisation | without evaluations | evaluations as compute | forward and backward only | test accuracy | vs lockstep (points) |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const ratio = (reference.bytesSent / r.bytesSent).toFixed(1);
    const points = (100 * (r.testAccuracy - reference.testAccuracy)).toFixed(2);
    console.log(
      `| ${r.name} | ${r.bytesSent} | ${ratio} | ${r.wallSeconds} | ${(100 * r.computeUtilisation).toFixed(1)}% | ${(100 * r.trainingUtilisation).toFixed(1)}% | ${(100 * r.evalAsComputeUtilisation).toFixed(1)}% | ${(100 * r.passesUtilisation).toFixed(1)}% | ${(100 * r.testAccuracy).toFixed(2)}% | ${points} |`,
    );
  }
} else {
  const [runDir, name, seconds, limit] = process.argv.slice(2);
  const last = limit ? Number(limit) : Number.POSITIVE_INFINITY;
  const records = lines(join(runDir, 'metrics.jsonl')).filter((r) => r.step <= last);
  const steps = records.filter((r) => r.kind === 'step');
  const evals = records.filter((r) => r.kind === 'eval');
  const ranks = steps[0].ranks.length;
  const loopSeconds = (Date.parse(steps.at(-1).time) - Date.parse(steps[0].time)) / 1000;
  // An evaluation's time: how long the ranks evaluated (the mean over ranks); in runs from before
  // that was recorded, from the record before it (its round's or step's end) to its own.
  const evalSeconds =
    records.reduce((a, r, i) => (r.kind === 'eval' && i > 0 ? a + (r.ms ?? Date.parse(r.time) - Date.parse(records[i - 1].time)) : a), 0) /
    1000;
  const perRank = (figure) => steps.slice(1).reduce((a, s) => a + s.ranks.reduce((b, r) => b + figure(r), 0), 0) / ranks / 1000;
  const passesSeconds = perRank((r) => r.computeMs - r.dataWaitMs);
  const computeSeconds = passesSeconds + perRank((r) => r.commMs - r.exposedCommMs + r.copyMs);
  console.log(
    JSON.stringify({
      name,
      steps: steps.length,
      bytesSent: steps.reduce((a, s) => a + s.ranks.reduce((b, r) => b + r.bytesSent, 0), 0),
      wallSeconds: Number(Number(seconds).toFixed(1)),
      loopSeconds: Number(loopSeconds.toFixed(1)),
      computeUtilisation: computeSeconds / loopSeconds,
      evalSeconds: Number(evalSeconds.toFixed(1)),
      trainingUtilisation: computeSeconds / (loopSeconds - evalSeconds),
      evalAsComputeUtilisation: (computeSeconds + evalSeconds) / loopSeconds,
      passesUtilisation: passesSeconds / loopSeconds,
      testAccuracy: evals.at(-1)?.testAccuracy ?? null,
      perEpoch: evals.map((e) => e.testAccuracy),
    }),
  );
}
