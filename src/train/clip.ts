// Global-norm gradient clipping, as torch.nn.utils.clip_grad_norm_ and optax.clip_by_global_norm.
// Each rank holds one shard of the reduced gradient; the global norm is the square root of the sum
// of every shard's sum of squares, which the ring sums in a fixed order so every rank agrees.

/** Sum of squares of a shard, accumulated in float64 so the norm does not depend on shard sizes much. */
export function sumOfSquares(values: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i]! * values[i]!;
  return sum;
}

/** The factor the gradient is multiplied by: min(1, maxNorm / norm); no clipping when maxNorm is 0. */
export function clipFactor(globalNorm: number, maxNorm: number): number {
  if (maxNorm <= 0 || globalNorm <= maxNorm) return 1;
  return maxNorm / globalNorm;
}
