// A model's accuracy and loss over a split: top-1 and top-5 of the classifier used at inference
// (for a distilled model the joint classifier, the mean of both heads) and its mean cross entropy,
// plus each head's top-1 for a distilled model. Counts are integers, and the loss is summed batch
// by batch in a fixed order, so a split evaluated in batch-aligned pieces (one per worker thread)
// gives the same numbers, to the bit, whatever the number of pieces.
import type { EvalBatch } from '../data/loader.ts';
import { shardRange, type ElementRange } from '../common/shard.ts';

/** The second accuracy reported beside top-1, as timm's accuracy(topk=(1, 5)). */
export const TOP_K = 5;

/** What one piece of a split contributes; pieces merge in split order with mergeTallies. */
export interface EvalTally {
  samples: number;
  correctTop1: number;
  correctTop5: number;
  /** Distilled models: the class head's and the distillation head's top-1 hits alone. */
  correctClassHead?: number;
  correctDistHead?: number;
  /** The summed cross entropy of each batch, in order; summed in that order only at the end. */
  batchLossSums: number[];
}

export interface EvalResult {
  samples: number;
  top1: number;
  top5: number;
  /** Mean cross entropy per image. */
  loss: number;
  /** Distilled models: each head's top-1 alone (top1 is the joint classifier's). */
  classHeadTop1?: number;
  distHeadTop1?: number;
}

/** What a tally needs of a model (parameters set): the inference classifier's logits, and each head's hits for a distilled one. */
export interface EvaluableModel {
  readonly config: { numClasses: number; distilled?: boolean };
  /** The inference classifier's logits for n images, [n, numClasses] row-major (a distilled model's joint classifier). */
  logits(images: Float32Array, n: number): Float32Array;
  evaluate(images: Float32Array, labels: Int32Array, n: number): { correctClassHead?: number; correctDistHead?: number };
}

/**
 * The position of `label` when the row's classes are ranked by logit, highest first, ties broken
 * by class index as argmax breaks them (the first wins): so rank 0 is exactly "argmax = label".
 */
function labelRank(logits: Float32Array, row: number, classes: number, label: number): number {
  const at = row * classes;
  const target = logits[at + label]!;
  let rank = 0;
  for (let k = 0; k < classes; k++) {
    const v = logits[at + k]!;
    if (v > target || (v === target && k < label)) rank++;
  }
  return rank;
}

/** -log softmax(row)[label], in float64 (log-sum-exp shifted by the row's maximum). */
function crossEntropy(logits: Float32Array, row: number, classes: number, label: number): number {
  const at = row * classes;
  let max = -Infinity;
  for (let k = 0; k < classes; k++) max = Math.max(max, logits[at + k]!);
  let sum = 0;
  for (let k = 0; k < classes; k++) sum += Math.exp(logits[at + k]! - max);
  return max + Math.log(sum) - logits[at + label]!;
}

function emptyTally(distilled: boolean): EvalTally {
  const tally: EvalTally = { samples: 0, correctTop1: 0, correctTop5: 0, batchLossSums: [] };
  if (distilled) Object.assign(tally, { correctClassHead: 0, correctDistHead: 0 });
  return tally;
}

/** Tallies `model` (parameters set) over `batches`. */
export async function evaluateModel(model: EvaluableModel, batches: AsyncIterable<EvalBatch>): Promise<EvalTally> {
  const classes = model.config.numClasses;
  const distilled = model.config.distilled === true;
  const tally = emptyTally(distilled);
  for await (const { images, labels, n } of batches) {
    if (n === 0) continue;
    const logits = model.logits(images, n);
    let lossSum = 0;
    for (let i = 0; i < n; i++) {
      const label = labels[i]!;
      if (!(Number.isInteger(label) && label >= 0 && label < classes))
        throw new Error(`label ${label} of sample ${tally.samples + i} is not one of the model's ${classes} classes`);
      const rank = labelRank(logits, i, classes, label);
      if (rank === 0) tally.correctTop1++;
      if (rank < TOP_K) tally.correctTop5++;
      lossSum += crossEntropy(logits, i, classes, label);
    }
    if (distilled) {
      // The model's logits are the joint classifier's; its evaluate counts each head's hits (a second forward pass).
      const heads = model.evaluate(images, labels, n);
      tally.correctClassHead! += heads.correctClassHead!;
      tally.correctDistHead! += heads.correctDistHead!;
    }
    tally.samples += n;
    tally.batchLossSums.push(lossSum);
  }
  return tally;
}

/** The tallies of consecutive pieces of a split, given in split order, as one. */
export function mergeTallies(tallies: readonly EvalTally[]): EvalTally {
  const distilled = tallies.some((t) => t.correctClassHead !== undefined);
  const merged = emptyTally(distilled);
  for (const t of tallies) {
    merged.samples += t.samples;
    merged.correctTop1 += t.correctTop1;
    merged.correctTop5 += t.correctTop5;
    if (distilled) {
      merged.correctClassHead! += t.correctClassHead ?? 0;
      merged.correctDistHead! += t.correctDistHead ?? 0;
    }
    merged.batchLossSums.push(...t.batchLossSums);
  }
  return merged;
}

export function summarize(tally: EvalTally): EvalResult {
  const { samples } = tally;
  if (samples === 0) throw new Error('no samples were evaluated');
  let lossSum = 0;
  for (const s of tally.batchLossSums) lossSum += s;
  const result: EvalResult = { samples, top1: tally.correctTop1 / samples, top5: tally.correctTop5 / samples, loss: lossSum / samples };
  if (tally.correctClassHead !== undefined && tally.correctDistHead !== undefined) {
    Object.assign(result, { classHeadTop1: tally.correctClassHead / samples, distHeadTop1: tally.correctDistHead / samples });
  }
  return result;
}

/**
 * A split of `size` samples cut into `parts` contiguous ranges that start on multiples of
 * `batchSize`, so every piece reads the same batches a single pass would; balanced in batches.
 * Ranges are empty when there are fewer batches than parts.
 */
export function batchAlignedRanges(size: number, batchSize: number, parts: number): ElementRange[] {
  const batches = Math.ceil(size / batchSize);
  return Array.from({ length: parts }, (_, part) => {
    const { start, end } = shardRange(batches, parts, part);
    return { start: Math.min(start * batchSize, size), end: Math.min(end * batchSize, size) };
  });
}
