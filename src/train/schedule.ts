// Learning rate per step: linear warmup, then a cosine decay to a floor (DeiT and AugReg both
// use this shape; timm's CosineLRScheduler with warmup, big_vision's "warmup_cosine").

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
