// The training objective on a classifier's head logits, shared by every model family: softmax cross
// entropy (or big_vision's per-class sigmoid cross entropy) against one-hot, label-smoothed or soft
// (Mixup/CutMix) targets, and DeiT's distillation
// term for a distilled model's second head. Each comes as its sum over the micro-batch and its
// gradient w.r.t. the logits, where the models' hand-written backward passes start.

import * as tf from '@tensorflow/tfjs-core';
import type { TeacherGuidance, TrainContext } from './model.ts';
import { fusedSoftmaxCrossEntropy } from './webgpu/loss.ts';

/** How far a soft-target row may sum from 1: float32 rounding of the mixing arithmetic, no more. */
const TARGET_SUM_TOLERANCE = 1e-4;

/** Each head's logits [B, numClasses]: the class head, and the distillation head of a distilled model. */
export interface HeadLogits {
  cls: tf.Tensor2D;
  dist: tf.Tensor2D | null;
}

/** A head's loss summed over the batch and d(that sum)/d(its logits). */
interface LossTerm {
  lossSum: tf.Scalar;
  dLogits: tf.Tensor2D;
}

/** Sum over the batch of -sum_k target[k] log softmax(logits)[k]; one-hot, smoothed or soft targets. */
export function crossEntropySum(logits: tf.Tensor2D, target: tf.Tensor2D): tf.Scalar {
  return tf.neg(tf.sum(tf.mul(target, tf.logSoftmax(logits))));
}

/** (1 - eps) target + eps / K, timm's LabelSmoothingCrossEntropy's target; the target itself when eps is 0. */
function smoothed(target: tf.Tensor2D, eps: number): tf.Tensor2D {
  return eps > 0 ? tf.add(tf.mul(target, 1 - eps), eps / target.shape[1]) : target;
}

/**
 * Cross entropy against the target label-smoothed by `smoothing`, and its gradient:
 * d(sum of cross-entropies)/d(logits) = softmax(logits) - target, per sample. One row kernel on
 * webgpu (webgpu/loss.ts).
 */
function crossEntropyTerm(logits: tf.Tensor2D, target: tf.Tensor2D, smoothing = 0): LossTerm {
  if (tf.getBackend() === 'webgpu') return fusedSoftmaxCrossEntropy(logits, target, smoothing);
  const t = smoothed(target, smoothing);
  return { lossSum: crossEntropySum(logits, t), dLogits: tf.sub(tf.softmax(logits), t) };
}

/**
 * Sum over the batch and the classes of each class's binary cross entropy against its target, as
 * big_vision's sigmoid_xent (summed over classes, here over the batch too):
 * -t log sigmoid(z) - (1 - t) log sigmoid(-z) = softplus(z) - t z, which stays finite for any z.
 */
export function sigmoidCrossEntropySum(logits: tf.Tensor2D, target: tf.Tensor2D): tf.Scalar {
  return tf.sum(tf.sub(tf.softplus(logits), tf.mul(target, logits)));
}

/** Sigmoid cross entropy and its gradient: d/d(logit) of softplus(z) - t z = sigmoid(z) - t, per class. */
function sigmoidCrossEntropyTerm(logits: tf.Tensor2D, target: tf.Tensor2D): LossTerm {
  return { lossSum: sigmoidCrossEntropySum(logits, target), dLogits: tf.sub(tf.sigmoid(logits), target) };
}

/** Throws unless `labels` holds n class indices in [0, numClasses). */
export function checkLabels(labels: Int32Array, n: number, numClasses: number): void {
  if (labels.length < n) throw new Error(`labels holds ${labels.length} values, expected ${n}`);
  for (let i = 0; i < n; i++) {
    // tf.oneHot would silently turn an out-of-range label into an all-zero row (zero loss).
    if (!(labels[i]! >= 0 && labels[i]! < numClasses)) throw new Error(`label ${labels[i]} at ${i} is out of range`);
  }
}

/** The first n labels as one-hot rows [n, numClasses]. */
export function oneHotLabels(labels: Int32Array, n: number, numClasses: number): tf.Tensor2D {
  checkLabels(labels, n, numClasses);
  return tf.tidy(() => tf.oneHot(tf.tensor1d(labels.subarray(0, n), 'int32'), numClasses) as tf.Tensor2D);
}

/** The first n rows of soft targets as a tensor, each row checked to be a distribution. */
function softTargetsTensor(targets: Float32Array, n: number, numClasses: number): tf.Tensor2D {
  if (targets.length < n * numClasses)
    throw new Error(`softTargets holds ${targets.length} values, ${n} images of ${numClasses} classes need ${n * numClasses}`);
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (let k = 0; k < numClasses; k++) {
      const p = targets[i * numClasses + k]!;
      if (!(p >= 0)) throw new Error(`softTargets row ${i} holds ${p} at class ${k}: targets are probabilities`);
      sum += p;
    }
    if (Math.abs(sum - 1) > TARGET_SUM_TOLERANCE) throw new Error(`softTargets row ${i} sums to ${sum}, not 1`);
  }
  return tf.tensor2d(targets.subarray(0, n * numClasses), [n, numClasses]);
}

/** The index of each row's largest value (the first on ties) of n rows of k row-major values. */
export function argmaxRows(values: ArrayLike<number>, n: number, k: number): Int32Array {
  const best = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    for (let j = 1; j < k; j++) if (values[i * k + j]! > values[i * k + best[i]!]!) best[i] = j;
  }
  return best;
}

/** How many of n rows of logits (read from the backend, [n, classes] row-major) have the label as argmax. */
export function countCorrectIn(logits: ArrayLike<number>, classes: number, labels: Int32Array, n: number): number {
  const predicted = argmaxRows(logits, n, classes);
  let correct = 0;
  for (let i = 0; i < n; i++) if (predicted[i] === labels[i]) correct++;
  return correct;
}

/**
 * The logits of the classifier used at inference: the class head, or for a distilled model the
 * mean of both heads (DeiT's joint classifier, timm's VisionTransformerDistilled in eval mode).
 */
export function jointLogits(heads: HeadLogits): tf.Tensor2D {
  return heads.dist ? tf.mul(tf.add(heads.cls, heads.dist), 0.5) : heads.cls;
}

export interface Objective {
  lossSum: tf.Scalar;
  dLogits: HeadLogits;
  /** A distilled model's distillation term alone, before the alpha weighting; null otherwise. */
  distillationLossSum: tf.Scalar | null;
}

/**
 * The training loss of n images summed, and its gradient w.r.t. each head's logits. Call inside
 * tf.tidy: the targets are made here.
 *
 * The class head learns ctx.softTargets when given (label smoothing already folded in by the
 * caller), otherwise the labels, label-smoothed by ctx.regularization.labelSmoothing as timm's
 * LabelSmoothingCrossEntropy does: (1 - eps) onehot + eps / K. ctx.loss 'sigmoid_xent' makes the
 * class head's loss big_vision's per-class sigmoid cross entropy on those targets; the distillation
 * head's terms stay DeiT's softmax ones.
 *
 * A distilled model's loss is (1 - alpha) CE(class head, targets) + alpha D, DeiT's distillation,
 * with the distillation head's term D:
 * - hard (ctx.distillation.mode): CE(distillation head, argmax of the teacher's logits);
 * - soft: tau^2 KL(softmax(teacher / tau) || softmax(distillation head / tau)), the tau^2 keeping
 *   the gradient's scale independent of tau (Hinton et al. 2015);
 * - no teacher in the context: CE(distillation head, the soft targets or the labels unsmoothed as a
 *   teacher's argmax is); both heads then learn the labels and the distillation token is a second
 *   class token.
 */
export function trainingObjective(
  heads: HeadLogits,
  labels: Int32Array,
  n: number,
  numClasses: number,
  ctx: TrainContext | undefined,
): Objective {
  const alpha = ctx?.distillationAlpha ?? 0.5;
  if (!(alpha >= 0 && alpha <= 1)) throw new Error(`distillationAlpha must be in [0, 1], got ${alpha}`);
  const smoothing = ctx?.regularization?.labelSmoothing ?? 0;
  // What the heads learn without a teacher: the soft targets as they are, or one-hot labels.
  const unsmoothed = ctx?.softTargets ? softTargetsTensor(ctx.softTargets, n, numClasses) : oneHotLabels(labels, n, numClasses);
  const clsSmoothing = ctx?.softTargets ? 0 : smoothing;
  const cls =
    ctx?.loss === 'sigmoid_xent'
      ? sigmoidCrossEntropyTerm(heads.cls, smoothed(unsmoothed, clsSmoothing))
      : crossEntropyTerm(heads.cls, unsmoothed, clsSmoothing);
  if (!heads.dist) return { lossSum: cls.lossSum, dLogits: { cls: cls.dLogits, dist: null }, distillationLossSum: null };
  const dist = distillationTerm(heads.dist, unsmoothed, n, numClasses, ctx?.distillation);
  return {
    lossSum: tf.add(tf.mul(cls.lossSum, 1 - alpha), tf.mul(dist.lossSum, alpha)),
    dLogits: { cls: tf.mul(cls.dLogits, 1 - alpha), dist: tf.mul(dist.dLogits, alpha) },
    distillationLossSum: dist.lossSum,
  };
}

/** The distillation head's loss term summed over the n images, and its gradient w.r.t. that head's logits. */
function distillationTerm(
  dist: tf.Tensor2D,
  targets: tf.Tensor2D,
  n: number,
  numClasses: number,
  guidance: TeacherGuidance | undefined,
): LossTerm {
  if (!guidance) return crossEntropyTerm(dist, targets);
  const K = numClasses;
  if (guidance.teacherLogits.length < n * K)
    throw new Error(`teacherLogits holds ${guidance.teacherLogits.length} values, ${n} images of ${K} classes need ${n * K}`);
  const teacher = guidance.teacherLogits.subarray(0, n * K);
  if (guidance.mode === 'hard') return crossEntropyTerm(dist, oneHotLabels(argmaxRows(teacher, n, K), n, K));
  const { tau } = guidance;
  if (!(tau > 0)) throw new Error(`distillation tau must be positive, got ${tau}`);
  const teacherScaled = tf.div(tf.tensor2d(teacher, [n, K]), tau);
  const studentScaled = tf.div(dist, tau);
  const pTeacher = tf.softmax(teacherScaled);
  // KL(p_t || p_s) = sum_k p_t (log p_t - log p_s), both logs from logSoftmax so a tiny p_t stays finite.
  const kl = tf.sum(tf.mul(pTeacher, tf.sub(tf.logSoftmax(teacherScaled), tf.logSoftmax(studentScaled))));
  // d(tau^2 KL)/d(logits) = tau^2 (1 / tau) (softmax(logits / tau) - p_t).
  return { lossSum: tf.mul(kl, tau * tau), dLogits: tf.mul(tf.sub(tf.softmax(studentScaled), pTeacher), tau) };
}
