// Optimizers over one shard of the flat parameter vector: ZeRO stage 1. After the ring's
// reduce-scatter, rank r holds the reduced gradient of shard r only, so it keeps the optimizer
// state of shard r only and updates that shard; an all-gather then hands every rank the same bits.
//
// Each optimizer names its state tensors (Adam: m and v; SGD: momentum), each as long as the
// shard, so a checkpoint can gather them from every rank and re-shard them for another worker
// count without knowing which optimizer wrote them.
//
// The arithmetic follows PyTorch, element by element (test/train/optimizer.test.ts checks it
// against torch.optim vectors):
//   Adam/AdamW: torch.optim.AdamW — bias-corrected moments, eps added after the square root, and
//     decoupled weight decay p <- p - rate x p applied to the parameters before the Adam step.
//     The decay rate follows one of two conventions, named in the recipe:
//       'lr-scaled' (DeiT, torch.optim.AdamW): rate = lr_t x wd.
//       'absolute'  (AugReg, big_vision): rate = wd x lr_t / lr_peak. big_vision's optax.make
//         chains add_decayed_weights(wd) before scale_by_schedule, so the decay follows the
//         schedule's multiplier but not the peak learning rate
//         (google-research/big_vision, big_vision/optax.py, `make`).
//     With no weight decay, both are torch.optim.Adam.
//   SGD: torch.optim.SGD with momentum and dampening 0: buf <- momentum x buf + g; p <- p - lr x buf,
//     or with nesterov (DiLoCo's outer optimizer): p <- p - lr x (g + momentum x buf).
//     Weight decay is PyTorch's L2 term g <- g + wd x p (coupled, before the momentum).
// Weight decay applies only where the decay mask is 1 (src/train/weight-decay.ts).
import type { Recipe } from './recipe.ts';
import { peakLearningRate } from './schedule.ts';
import { InputError } from '../common/errors.ts';

export type OptimizerName = 'adam' | 'adamw' | 'sgd';
export type DecayConvention = 'lr-scaled' | 'absolute';

export interface AdamConfig {
  name: 'adam' | 'adamw';
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  decayConvention: DecayConvention;
  /** The schedule's peak learning rate (after batch scaling): the 'absolute' decay's reference. */
  peakLr: number;
}

export interface SgdConfig {
  name: 'sgd';
  momentum: number;
  weightDecay: number;
  /** Nesterov momentum (torch.optim.SGD's nesterov=True); absent: plain momentum. */
  nesterov?: boolean;
}

export type OptimizerConfig = AdamConfig | SgdConfig;

/** Named state tensors of one shard, e.g. { m, v } for Adam. */
export type OptimizerState = Record<string, Float32Array>;

export interface ShardOptimizer {
  /** Names of the state tensors, in a fixed order. */
  readonly stateNames: readonly string[];
  /** Updates applied so far (Adam's bias-correction step t). */
  readonly steps: number;
  /**
   * One update of `params` (this rank's shard, in place) from `grad`, the shard of the mean
   * gradient; `gradScale` (the global-norm clip factor) multiplies the gradient first.
   */
  step(params: Float32Array, grad: Float32Array, decayMask: Uint8Array, gradScale: number, lr: number): void;
  /** The state tensors themselves (not copies). */
  state(): OptimizerState;
  /** Restores state saved by `state()` after `steps` updates; refuses missing, extra or mis-sized tensors. */
  restore(state: OptimizerState, steps: number): void;
}

export function createShardOptimizer(config: OptimizerConfig, shardLength: number): ShardOptimizer {
  return config.name === 'sgd' ? new SgdMomentum(config, shardLength) : new Adam(config, shardLength);
}

/** Shared bookkeeping: named state tensors of the shard's length and the update count. */
abstract class ShardOptimizerBase implements ShardOptimizer {
  readonly stateNames: readonly string[];
  protected readonly tensors: OptimizerState;
  steps = 0;

  constructor(
    names: readonly string[],
    readonly shardLength: number,
  ) {
    this.stateNames = names;
    this.tensors = Object.fromEntries(names.map((n) => [n, new Float32Array(shardLength)]));
  }

  abstract step(params: Float32Array, grad: Float32Array, decayMask: Uint8Array, gradScale: number, lr: number): void;

  state(): OptimizerState {
    return this.tensors;
  }

  restore(state: OptimizerState, steps: number): void {
    const given = Object.keys(state).sort();
    const expected = [...this.stateNames].sort();
    if (given.join() !== expected.join()) {
      throw new InputError(
        'OPTIMIZER_STATE_MISMATCH',
        `optimizer state holds tensors [${given.join(', ')}], this optimizer keeps [${expected.join(', ')}] (was the checkpoint written with another optimizer?)`,
      );
    }
    for (const name of this.stateNames) {
      const tensor = state[name]!;
      if (tensor.length !== this.shardLength)
        throw new InputError(
          'OPTIMIZER_STATE_MISMATCH',
          `optimizer state "${name}" has ${tensor.length} elements, the shard has ${this.shardLength}`,
        );
      this.tensors[name]!.set(tensor);
    }
    this.steps = steps;
  }

  protected checkLengths(params: Float32Array, grad: Float32Array, decayMask: Uint8Array): void {
    if (params.length !== this.shardLength || grad.length !== this.shardLength || decayMask.length !== this.shardLength) {
      throw new RangeError(
        `optimizer shard length mismatch: params ${params.length}, grad ${grad.length}, mask ${decayMask.length}, state ${this.shardLength}`,
      );
    }
  }
}

class Adam extends ShardOptimizerBase {
  constructor(
    private readonly config: AdamConfig,
    shardLength: number,
  ) {
    super(['m', 'v'], shardLength);
  }

  /** The fraction of each decayed parameter removed this step, in the recipe's convention. */
  private decayRate(lr: number): number {
    const { weightDecay, decayConvention, peakLr } = this.config;
    if (decayConvention === 'lr-scaled') return lr * weightDecay;
    // A zero peak means a zero schedule: no update, and no decay either.
    return peakLr > 0 ? (weightDecay * lr) / peakLr : 0;
  }

  step(params: Float32Array, grad: Float32Array, decayMask: Uint8Array, gradScale: number, lr: number): void {
    this.checkLengths(params, grad, decayMask);
    const { m, v } = this.tensors as { m: Float32Array; v: Float32Array };
    this.steps += 1;
    const { beta1, beta2, eps } = this.config;
    const biasCorrection1 = 1 - beta1 ** this.steps;
    const biasCorrection2Sqrt = Math.sqrt(1 - beta2 ** this.steps);
    const stepSize = lr / biasCorrection1;
    const decayFactor = 1 - this.decayRate(lr);
    for (let i = 0; i < params.length; i++) {
      const g = grad[i]! * gradScale;
      const mi = (m[i] = beta1 * m[i]! + (1 - beta1) * g);
      const vi = (v[i] = beta2 * v[i]! + (1 - beta2) * g * g);
      const p = decayMask[i] ? params[i]! * decayFactor : params[i]!;
      params[i] = p - (stepSize * mi) / (Math.sqrt(vi) / biasCorrection2Sqrt + eps);
    }
  }
}

class SgdMomentum extends ShardOptimizerBase {
  constructor(
    private readonly config: SgdConfig,
    shardLength: number,
  ) {
    super(['momentum'], shardLength);
  }

  step(params: Float32Array, grad: Float32Array, decayMask: Uint8Array, gradScale: number, lr: number): void {
    this.checkLengths(params, grad, decayMask);
    const buf = this.tensors.momentum!;
    this.steps += 1;
    const { momentum, weightDecay, nesterov } = this.config;
    for (let i = 0; i < params.length; i++) {
      const g = grad[i]! * gradScale + (decayMask[i] ? weightDecay * params[i]! : 0);
      // torch starts the buffer as a copy of the first gradient: momentum x 0 + g is the same.
      const b = (buf[i] = momentum * buf[i]! + g);
      params[i] = params[i]! - lr * (nesterov ? g + momentum * b : b);
    }
  }
}

/** The optimizer a validated recipe asks for (validateRecipe guarantees each optimizer's own fields). */
export function optimizerConfigOf(recipe: Recipe): OptimizerConfig {
  const { name, weightDecay, beta1, beta2, eps, momentum, decayConvention } = recipe.optimizer;
  if (name === 'sgd') return { name, momentum: momentum!, weightDecay };
  return {
    name,
    beta1: beta1!,
    beta2: beta2!,
    eps: eps!,
    weightDecay,
    decayConvention: decayConvention!,
    peakLr: peakLearningRate(recipe),
  };
}
