// Learning rate per step: linear warmup, then a cosine decay to a floor (DeiT and AugReg both
// use this shape; timm's CosineLRScheduler with warmup, big_vision's "warmup_cosine"). The peak
// is the recipe's base rate scaled for the global batch by the recipe's rule.
import type { Recipe } from './recipe.ts';

export interface ScheduleConfig {
  /** Peak learning rate, reached at the end of warmup. */
  baseLr: number;
  /** Learning rate at the last step. */
  minLr: number;
  warmupSteps: number;
  totalSteps: number;
}

/** The learning rate for 0-based step `step`. Warmup ramps linearly so that step 0 already moves. */
export function learningRate(config: ScheduleConfig, step: number): number {
  const { baseLr, minLr, warmupSteps, totalSteps } = config;
  if (step < 0 || step >= totalSteps) throw new RangeError(`step ${step} is outside the schedule's 0..${totalSteps - 1}`);
  if (step < warmupSteps) return (baseLr * (step + 1)) / warmupSteps;
  const decaySteps = totalSteps - warmupSteps;
  if (decaySteps <= 1) return baseLr;
  const progress = (step - warmupSteps) / (decaySteps - 1);
  return minLr + 0.5 * (baseLr - minLr) * (1 + Math.cos(Math.PI * progress));
}

export type LrScalingRule = 'none' | 'linear' | 'sqrt';

/**
 * A base learning rate tuned at `referenceBatch` images per step, carried to `globalBatch`:
 * 'linear' (Goyal et al. 2017; DeiT: lr x batch / 512), 'sqrt' (the square root of that ratio,
 * for adaptive optimizers, Krizhevsky 2014 / Hoffer et al. 2017), or 'none'.
 */
export function scaleLearningRate(baseLr: number, rule: LrScalingRule, globalBatch: number, referenceBatch: number): number {
  const ratio = globalBatch / referenceBatch;
  switch (rule) {
    case 'none':
      return baseLr;
    case 'linear':
      return baseLr * ratio;
    case 'sqrt':
      return baseLr * Math.sqrt(ratio);
  }
}

/** The recipe's peak learning rate: its base rate scaled for its global batch. */
export function peakLearningRate(recipe: Recipe): number {
  const { rule, referenceBatch } = recipe.lrScaling;
  return scaleLearningRate(recipe.optimizer.lr, rule, recipe.globalBatch, referenceBatch);
}

/** Warmup in steps: the recipe's warmupSteps, or its warmupEpochs rounded to whole steps. */
export function warmupStepsOf(schedule: Recipe['schedule'], stepsPerEpoch: number): number {
  return schedule.warmupSteps ?? Math.round(schedule.warmupEpochs! * stepsPerEpoch);
}

/** The schedule a run of `totalSteps` follows, with `stepsPerEpoch` resolving warmup epochs. */
export function recipeSchedule(recipe: Recipe, stepsPerEpoch: number, totalSteps: number): ScheduleConfig {
  return {
    baseLr: peakLearningRate(recipe),
    minLr: recipe.schedule.minLr,
    warmupSteps: warmupStepsOf(recipe.schedule, stepsPerEpoch),
    totalSteps,
  };
}
