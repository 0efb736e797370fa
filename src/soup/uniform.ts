// The uniform soup (Wortsman et al. 2022, "Model soups"): the element-wise mean of the ingredients'
// weights, read one ingredient at a time.
//
// The mean is accumulated as a float64 SUM, divided once at the end, rather than as a running
// mean (mean_k = mean_{k-1} + (x_k - mean_{k-1}) / k). Both keep the same memory: one float64
// vector (the size of two float32 parameter vectors) plus the ingredient being added. But a sum of
// K float32 values in float64 is exact whenever they lie within a factor of about 2^(29 - log2 K)
// of each other (float64 has 53 - 24 bits of headroom), the usual case for one parameter across
// fine-tunes of one model, and otherwise errs far below float32's resolution; so the soup is the
// exact mean, rounded, and does not depend on the order of the ingredients. The running mean rounds
// at every update, and its result does depend on the order.

/** A float64 sum of parameter vectors and how many were added. */
export class WeightSum {
  private readonly sum: Float64Array;
  private added = 0;

  constructor(readonly numParams: number) {
    this.sum = new Float64Array(numParams);
  }

  get count(): number {
    return this.added;
  }

  add(params: Float32Array): void {
    this.checkLength(params);
    for (let i = 0; i < this.sum.length; i++) this.sum[i]! += params[i]!;
    this.added += 1;
  }

  /** The mean of the vectors added so far, rounded to float32. */
  mean(): Float32Array {
    if (this.added === 0) throw new Error('the mean of no ingredients is undefined');
    const out = new Float32Array(this.sum.length);
    for (let i = 0; i < out.length; i++) out[i] = this.sum[i]! / this.added;
    return out;
  }

  /** The mean of the vectors added so far and `params`, without adding `params`: the greedy soup's candidate. */
  meanWith(params: Float32Array): Float32Array {
    this.checkLength(params);
    const count = this.added + 1;
    const out = new Float32Array(this.sum.length);
    for (let i = 0; i < out.length; i++) out[i] = (this.sum[i]! + params[i]!) / count;
    return out;
  }

  private checkLength(params: Float32Array): void {
    if (params.length !== this.sum.length)
      throw new Error(`a parameter vector of ${params.length} values cannot join a soup of ${this.sum.length}`);
  }
}
