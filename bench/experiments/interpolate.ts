// Accuracy along the straight line between two models' weights, (1 - t) * A + t * B, on the
// held-out and the test split: the loss-barrier check of model soups (Wortsman et al. 2022,
// Section 3 / Figure 2). A soup of A and B is the point t = 0.5.
//   node --import tsx bench/experiments/interpolate.ts A B OUT.json [t1,t2,...]   (default 0,0.25,0.5,0.75,1)
import { writeFileSync } from 'node:fs';
import { TEST_SPLIT, SELECTION_SPLIT } from '../../src/soup/cook.ts';
import { resolveEvalData } from '../../src/soup/eval-data.ts';
import { EvalPool } from '../../src/soup/eval-pool.ts';
import { assertSameArchitecture, loadIngredient } from '../../src/soup/ingredients.ts';

const [pathA, pathB, out, ts = '0,0.25,0.5,0.75,1'] = process.argv.slice(2);
if (!pathA || !pathB || !out) throw new Error('usage: interpolate.ts A B OUT.json [t1,t2,...]');
const points = ts.split(',').map(Number);
if (points.some((t) => !Number.isFinite(t))) throw new Error(`the points must be numbers, got "${ts}"`);
const a = loadIngredient(pathA, { useEma: false });
const b = loadIngredient(pathB, { useEma: false });
assertSameArchitecture(a, b);
const data = resolveEvalData(
  [
    { name: pathA, data: a.data },
    { name: pathB, data: b.data },
  ],
  {},
  true,
);
const pool = await EvalPool.start(1, { ...data, config: a.config, batchSize: 256, backend: 'auto' });
const rows = [];
try {
  for (const t of points) {
    const mixed = new Float32Array(a.params.length);
    for (let i = 0; i < mixed.length; i++) mixed[i] = (1 - t) * a.params[i]! + t * b.params[i]!;
    const heldOut = await pool.evaluate(mixed, SELECTION_SPLIT);
    const test = await pool.evaluate(mixed, TEST_SPLIT);
    rows.push({ t, heldOutTop1: heldOut.top1, testTop1: test.top1, heldOutLoss: heldOut.loss, testLoss: test.loss });
    console.log(`t=${t}: held-out ${(100 * heldOut.top1).toFixed(2)}%, test ${(100 * test.top1).toFixed(2)}%`);
  }
} finally {
  await pool.close();
}
writeFileSync(out, `${JSON.stringify({ a: pathA, b: pathB, points: rows }, null, 2)}\n`);
