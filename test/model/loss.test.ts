// The training objective on head logits: soft targets (Mixup/CutMix) beside one-hot and
// label-smoothed labels, and a distilled model's second head.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/model/backend.ts';
import { trainingObjective, type HeadLogits } from '../../src/model/loss.ts';
import type { TrainContext } from '../../src/model/model.ts';

await selectBackend({ requested: 'cpu' });

const [N, K] = [4, 5];
const LABELS = Int32Array.of(0, 3, 4, 3);

function logits(seed: number): Float32Array {
  return Float32Array.from({ length: N * K }, (_, i) => 2 * Math.sin(seed + i * 1.3));
}

/** Mixup-like targets: each row mixes two classes (and a little of every class), summing to 1. */
function mixedTargets(): Float32Array {
  const t = new Float32Array(N * K).fill(0.02);
  for (let i = 0; i < N; i++) {
    t[i * K + LABELS[i]!]! += 0.6;
    t[i * K + ((LABELS[i]! + 1) % K)]! += 0.3;
  }
  return t;
}

function oneHot(labels: Int32Array): Float32Array {
  const t = new Float32Array(N * K);
  labels.forEach((label, i) => {
    t[i * K + label] = 1;
  });
  return t;
}

function context(extra: Partial<TrainContext>): TrainContext {
  return { step: 0, seed: 0, sampleIndices: Uint32Array.from({ length: N }, (_, i) => i), ...extra };
}

interface Evaluated {
  lossSum: number;
  cls: Float32Array;
  dist: Float32Array | null;
  distillationLossSum: number | null;
}

/** trainingObjective on the given head logits (a second head when `dist` is given), downloaded. */
function objective(cls: Float32Array, dist: Float32Array | null, ctx: TrainContext | undefined, labels = LABELS): Evaluated {
  let out!: Evaluated;
  tf.tidy(() => {
    const heads: HeadLogits = { cls: tf.tensor2d(cls, [N, K]), dist: dist && tf.tensor2d(dist, [N, K]) };
    const o = trainingObjective(heads, labels, N, K, ctx);
    out = {
      lossSum: o.lossSum.dataSync()[0]!,
      cls: o.dLogits.cls.dataSync() as Float32Array,
      dist: o.dLogits.dist && (o.dLogits.dist.dataSync() as Float32Array),
      distillationLossSum: o.distillationLossSum && o.distillationLossSum.dataSync()[0]!,
    };
  });
  return out;
}

/** Central differences of lossSum w.r.t. every logit of both heads, in float64 steps on float32 logits. */
function checkGradient(cls: Float32Array, dist: Float32Array | null, ctx: TrainContext): void {
  const analytic = objective(cls, dist, ctx);
  const h = 1e-2;
  for (const [name, head, grad] of [
    ['cls', cls, analytic.cls],
    ['dist', dist, analytic.dist],
  ] as const) {
    if (!head || !grad) continue;
    for (let i = 0; i < head.length; i++) {
      const shifted = (step: number) => {
        const moved = head.slice();
        moved[i]! += step;
        const loss = name === 'cls' ? objective(moved, dist, ctx).lossSum : objective(cls, moved, ctx).lossSum;
        return { loss, step: moved[i]! - head[i]! };
      };
      const [plus, minus] = [shifted(h), shifted(-h)];
      const numeric = (plus.loss - minus.loss) / (plus.step - minus.step);
      assert.ok(Math.abs(grad[i]! - numeric) < 2e-3, `${name}[${i}]: analytic ${grad[i]} numeric ${numeric}`);
    }
  }
}

test('soft targets: the gradient is softmax - target, matching finite differences, for one head and two', () => {
  const soft = mixedTargets();
  checkGradient(logits(1), null, context({ softTargets: soft }));
  checkGradient(logits(2), logits(3), context({ softTargets: soft, distillationAlpha: 0.3 }));
  // The loss is cross entropy against the soft rows.
  const cls = logits(4);
  let want = 0;
  for (let i = 0; i < N; i++) {
    const row = Array.from(cls.subarray(i * K, (i + 1) * K));
    const max = Math.max(...row);
    const logZ = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
    row.forEach((v, k) => {
      want -= soft[i * K + k]! * (v - logZ);
    });
  }
  const got = objective(cls, null, context({ softTargets: soft })).lossSum;
  assert.ok(Math.abs(got - want) < 1e-5 * want, `${got} vs ${want}`);
});

test('one-hot soft targets give the bits of the integer labels, for one head and two', () => {
  for (const dist of [null, logits(6)]) {
    const ctx = context({ distillationAlpha: 0.3 });
    const fromLabels = objective(logits(5), dist, ctx);
    const fromSoft = objective(logits(5), dist, { ...ctx, softTargets: oneHot(LABELS) });
    assert.deepEqual(fromSoft, fromLabels);
  }
});

test('smoothed one-hot soft targets equal the labelSmoothing path; soft targets are never smoothed again', () => {
  const eps = 0.1;
  const smoothedTargets = Float32Array.from(oneHot(LABELS), (v) => (1 - eps) * v + eps / K);
  const smoothing = { dropout: 0, dropPath: 0, labelSmoothing: eps };
  for (const dist of [null, logits(8)]) {
    const bySmoothing = objective(logits(7), dist, context({ regularization: smoothing }));
    const bySoft = objective(logits(7), dist, context({ softTargets: smoothedTargets }));
    // The class head's part; a distillation head learns other targets in the two (below).
    bySoft.cls.forEach((g, i) => {
      assert.ok(Math.abs(g - bySmoothing.cls[i]!) < 1e-6, `cls[${i}]: ${g} vs ${bySmoothing.cls[i]}`);
    });
    if (!dist)
      assert.ok(Math.abs(bySoft.lossSum - bySmoothing.lossSum) < 1e-6 * bySmoothing.lossSum, `${bySoft.lossSum} vs ${bySmoothing.lossSum}`);
    // The recipe's smoothing is folded into the soft targets already: it does not apply on top.
    assert.deepEqual(objective(logits(7), dist, context({ softTargets: smoothedTargets, regularization: smoothing })), bySoft);
  }
  // Without a teacher the distillation head learns the soft targets; with integer labels, the unsmoothed labels.
  const distHead = logits(9);
  const soft = objective(logits(7), distHead, context({ softTargets: smoothedTargets }));
  const plain = objective(logits(7), distHead, context({}));
  assert.notDeepEqual(soft.dist, plain.dist);
  assert.deepEqual(objective(logits(7), distHead, context({ regularization: smoothing })).dist, plain.dist);
});

test('with a teacher the distillation head follows the teacher whatever the soft targets; the class head learns them', () => {
  const teacherLogits = logits(10);
  for (const mode of ['hard', 'soft'] as const) {
    const ctx = context({ distillation: { mode, tau: 2, teacherLogits }, distillationAlpha: 0.5 });
    const withLabels = objective(logits(11), logits(12), ctx);
    const withSoft = objective(logits(11), logits(12), { ...ctx, softTargets: mixedTargets() });
    assert.deepEqual(withSoft.dist, withLabels.dist, mode);
    assert.equal(withSoft.distillationLossSum, withLabels.distillationLossSum, mode);
    assert.notDeepEqual(withSoft.cls, withLabels.cls, mode);
  }
});

test('soft targets that are not n distributions are refused, naming the problem', () => {
  const cls = logits(13);
  assert.throws(
    () => objective(cls, null, context({ softTargets: new Float32Array(N * K - 1) })),
    /softTargets holds 19 values, 4 images of 5 classes need 20/,
  );
  const unnormalized = mixedTargets();
  unnormalized[2 * K]! += 0.5;
  assert.throws(() => objective(cls, null, context({ softTargets: unnormalized })), /softTargets row 2 sums to 1\.\d+, not 1/);
  const negative = mixedTargets();
  negative[K + 1] = -0.02;
  negative[K + 2]! += 0.02;
  assert.throws(
    () => objective(cls, null, context({ softTargets: negative })),
    /softTargets row 1 holds -0\.0\d+ at class 1: targets are probabilities/,
  );
  const nan = mixedTargets();
  nan[0] = NaN;
  assert.throws(() => objective(cls, null, context({ softTargets: nan })), /softTargets row 0 holds NaN at class 0/);
});

interface SigmoidCase {
  logits: number[];
  targets: number[];
  lossSum: number;
  dLogits: number[];
}
// Generated by test/fixtures/make_sigmoid_xent_vectors.py with PyTorch 2.13 (binary_cross_entropy_with_logits, summed).
const sigmoidVectors = JSON.parse(readFileSync(new URL('../fixtures/sigmoid-xent-torch.json', import.meta.url), 'utf8')) as Record<
  string,
  SigmoidCase
>;

test("sigmoid_xent: loss and gradient match PyTorch's binary_cross_entropy_with_logits, also far out where log(sigmoid) overflows", () => {
  for (const name of ['one_hot', 'smoothed', 'mixed', 'far_out']) {
    const { logits: z, targets, lossSum, dLogits } = sigmoidVectors[name]!;
    const got = objective(Float32Array.from(z), null, context({ loss: 'sigmoid_xent', softTargets: Float32Array.from(targets) }));
    assert.ok(Math.abs(got.lossSum - lossSum) < 1e-5 * Math.max(1, Math.abs(lossSum)), `${name}: loss ${got.lossSum} vs torch ${lossSum}`);
    got.cls.forEach((g, i) => {
      assert.ok(Math.abs(g - dLogits[i]!) < 1e-6, `${name}[${i}]: ${g} vs torch ${dLogits[i]}`);
    });
  }
});

test('sigmoid_xent: the gradient matches finite differences; labels smoothed equal the smoothed targets', () => {
  checkGradient(logits(20), null, context({ loss: 'sigmoid_xent', softTargets: mixedTargets() }));
  checkGradient(
    logits(21),
    logits(22),
    context({ loss: 'sigmoid_xent', regularization: { dropout: 0, dropPath: 0, labelSmoothing: 0.1 } }),
  );
  const smoothed = sigmoidVectors.smoothed!;
  const viaLabels = objective(
    Float32Array.from(smoothed.logits),
    null,
    context({ loss: 'sigmoid_xent', regularization: { dropout: 0, dropPath: 0, labelSmoothing: 0.1 } }),
  );
  assert.ok(Math.abs(viaLabels.lossSum - smoothed.lossSum) < 1e-5 * smoothed.lossSum, `${viaLabels.lossSum} vs torch ${smoothed.lossSum}`);
  // The softmax loss is a different function of the same logits.
  assert.notEqual(
    objective(logits(20), null, context({ softTargets: mixedTargets() })).lossSum,
    objective(logits(20), null, context({ loss: 'sigmoid_xent', softTargets: mixedTargets() })).lossSum,
  );
});
