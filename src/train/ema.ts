// Exponential moving average of the weights (DeiT's --model-ema; timm's ModelEmaV2): after each
// optimizer step, ema <- decay x ema + (1 - decay) x p. It starts as a copy of the weights it is
// created from. Like the optimizer state, each rank keeps the average of its own shard only (the
// shard it updates), and checkpoints gather the shards into one tensor named `ema`, saved beside
// the weights.

export class ShardEma {
  /** The averaged weights of this rank's shard. */
  readonly values: Float32Array;

  constructor(
    readonly decay: number,
    initial: Float32Array,
  ) {
    if (!(decay >= 0 && decay <= 1)) throw new RangeError(`EMA decay must be in [0, 1], got ${decay}`);
    this.values = initial.slice();
  }

  /** Folds the shard's weights after a step into the average. */
  update(params: Float32Array): void {
    const { values, decay } = this;
    if (params.length !== values.length)
      throw new RangeError(`EMA shard length mismatch: params ${params.length}, average ${values.length}`);
    const weight = 1 - decay;
    for (let i = 0; i < values.length; i++) values[i] = decay * values[i]! + weight * params[i]!;
  }
}
