// DiLoCo's outer step on one shard (Douillard et al. 2023, Algorithm 1): the pseudo-gradient of a
// worker is the outer weights minus its local weights after the round's inner steps; the workers'
// pseudo-gradients are summed (by the ring), divided by the number of workers that reported, and
// SGD with Nesterov momentum (torch.optim.SGD(nesterov=True); OpenDiLoCo's lr 0.7, momentum 0.9)
// steps the outer weights with that mean as its gradient. test/train/diloco-outer.test.ts checks
// it against PyTorch.
import { createShardOptimizer, type ShardOptimizer } from './optimizer.ts';
import type { SyncSettings } from './recipe.ts';

/** Is `completed` (steps done) the end of a round: every innerSteps steps, and the run's last step. */
export function isRoundEnd(sync: Pick<SyncSettings, 'innerSteps'>, completed: number, totalSteps: number): boolean {
  return completed % sync.innerSteps === 0 || completed === totalSteps;
}

/** out = outer - local (+ feedback: what packing lost last round), element by element. */
export function pseudoGradient(outer: Float32Array, local: Float32Array, feedback: Float32Array | null, out: Float32Array): void {
  for (let i = 0; i < out.length; i++) out[i] = outer[i]! - local[i]! + (feedback ? feedback[i]! : 0);
}

export class OuterOptimizer {
  private readonly sgd: ShardOptimizer;
  private readonly noDecay: Uint8Array;

  constructor(
    private readonly settings: Pick<SyncSettings, 'outerLr' | 'outerMomentum'>,
    shardLength: number,
  ) {
    this.sgd = createShardOptimizer({ name: 'sgd', momentum: settings.outerMomentum, weightDecay: 0, nesterov: true }, shardLength);
    this.noDecay = new Uint8Array(shardLength);
  }

  /** One outer step of `outerShard` (in place) from `pseudoSum`, the sum of `reporters` workers' pseudo-gradients (made their mean in place). */
  step(outerShard: Float32Array, pseudoSum: Float32Array, reporters: number): void {
    for (let i = 0; i < pseudoSum.length; i++) pseudoSum[i] = pseudoSum[i]! / reporters;
    this.sgd.step(outerShard, pseudoSum, this.noDecay, 1, this.settings.outerLr);
  }

  /** The Nesterov momentum of this shard (not a copy). */
  get momentum(): Float32Array {
    return this.sgd.state().momentum!;
  }

  restore(momentum: Float32Array): void {
    // SGD's update does not depend on its step count (no bias correction).
    this.sgd.restore({ momentum }, 0);
  }
}
