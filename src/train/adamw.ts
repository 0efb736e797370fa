// AdamW (Loshchilov & Hutter, 2019) over one shard of the flat parameter vector: ZeRO stage 1.
// After the ring's reduce-scatter, rank r holds the reduced gradient of shard r only, so it keeps
// the first and second moments of shard r only and updates that shard; an all-gather then hands
// every rank the same bits. The arithmetic follows torch.optim.AdamW: decoupled weight decay
// multiplied by the learning rate, bias-corrected moments, eps added after the square root.

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export interface AdamWState {
  /** Number of updates applied so far (the t of the bias correction). */
  step: number;
  /** First moment of this shard. */
  m: Float32Array;
  /** Second moment of this shard. */
  v: Float32Array;
}

export function createAdamWState(shardLength: number): AdamWState {
  return { step: 0, m: new Float32Array(shardLength), v: new Float32Array(shardLength) };
}

export interface ShardUpdate {
  /** The shard of the parameters, updated in place. */
  params: Float32Array;
  /** The shard of the mean gradient over the global batch (before clipping). */
  grad: Float32Array;
  /** 1 where weight decay applies, 0 where it does not (biases, norms, tokens, position embedding). */
  decayMask: Uint8Array;
  /** Multiplies the gradient first: the global-norm clip factor. */
  gradScale: number;
  lr: number;
}

export function adamwStep(config: AdamWConfig, state: AdamWState, update: ShardUpdate): void {
  const { params, grad, decayMask, gradScale, lr } = update;
  const { m, v } = state;
  if (params.length !== m.length || grad.length !== m.length || decayMask.length !== m.length) {
    throw new RangeError(`AdamW shard length mismatch: params ${params.length}, grad ${grad.length}, mask ${decayMask.length}, state ${m.length}`);
  }
  state.step += 1;
  const { beta1, beta2, eps, weightDecay } = config;
  const biasCorrection1 = 1 - beta1 ** state.step;
  const biasCorrection2Sqrt = Math.sqrt(1 - beta2 ** state.step);
  const stepSize = lr / biasCorrection1;
  const decayFactor = 1 - lr * weightDecay;
  for (let i = 0; i < params.length; i++) {
    const g = grad[i]! * gradScale;
    const mi = (m[i] = beta1 * m[i]! + (1 - beta1) * g);
    const vi = (v[i] = beta2 * v[i]! + (1 - beta2) * g * g);
    const p = decayMask[i] ? params[i]! * decayFactor : params[i]!;
    params[i] = p - (stepSize * mi) / (Math.sqrt(vi) / biasCorrection2Sqrt + eps);
  }
}
