// The coordinator's part of DiLoCo (src/worker/diloco-trainer.ts) beside its round loop
// (generation.ts, runRounds): how a checkpoint holds a DiLoCo run.
//
// A DiLoCo checkpoint holds, beside the outer weights (`params`), the outer optimizer's state
// gathered whole from every rank's shard (`outer.momentum`, replicated on the ranks, and
// `outer.feedback` on a packed wire), and each rank's own inner state whole under `rank<R>.` (the inner optimizer's tensors,
// `rank<R>.inner.m` ..., and its pseudo-gradient's error feedback), with `innerSteps` holding
// each rank's inner optimizer step count at element R (every checkpoint tensor is as long as the
// model). A resume with more workers starts the extra ranks' inner state fresh.
import type { ResumeState, WorkerMessage } from '../comm/control.ts';
import { FatalError } from '../common/errors.ts';
import { shardRange } from '../common/shard.ts';
import type { CheckpointMeta, CheckpointState } from '../train/checkpoint.ts';
import type { Recipe } from '../train/recipe.ts';

type Snapshot = Extract<WorkerMessage, { type: 'snapshotData' }>;

const INNER_STEPS = 'innerSteps';
const OUTER = 'outer.';
/** Replicated on every rank (the worker's DILOCO_STATE.outerMomentum): a resume hands it whole. */
const OUTER_MOMENTUM = 'outer.momentum';

function rankPrefix(rank: number): string {
  return `rank${rank}.`;
}

/** True when the recipe trains with DiLoCo rather than lockstep. */
export function isDiloco(recipe: Recipe): boolean {
  return recipe.sync?.mode === 'diloco';
}

/** The DiLoCo checkpoint state from every rank's snapshot (rank order), checked against the shard layout. */
export function assembleDilocoState(shards: Snapshot[], numParams: number): CheckpointState {
  const worldSize = shards.length;
  const params = new Float32Array(numParams);
  const optimizerState: Record<string, Float32Array> = {};
  const innerSteps = new Float32Array(numParams);
  shards.forEach((shard, rank) => {
    const { start, end } = shardRange(numParams, worldSize, rank);
    if (shard.start !== start || shard.end !== end || shard.params.length !== end - start)
      throw new FatalError(
        'SNAPSHOT_MISMATCH',
        `rank ${rank} sent a snapshot of [${shard.start}, ${shard.end}), expected [${start}, ${end})`,
      );
    params.set(shard.params, start);
    innerSteps[rank] = shard.optimizerStep;
    for (const [name, tensor] of Object.entries(shard.optimizerState)) {
      if (name.startsWith(OUTER)) {
        if (tensor.length !== end - start)
          throw new FatalError(
            'SNAPSHOT_MISMATCH',
            `rank ${rank} sent ${tensor.length} elements of "${name}", its shard has ${end - start}`,
          );
        optimizerState[name] ??= new Float32Array(numParams);
        optimizerState[name].set(tensor, start);
      } else {
        if (tensor.length !== numParams)
          throw new FatalError('SNAPSHOT_MISMATCH', `rank ${rank} sent ${tensor.length} elements of "${name}", the model has ${numParams}`);
        optimizerState[rankPrefix(rank) + name] = tensor;
      }
    }
  });
  optimizerState[INNER_STEPS] = innerSteps;
  return { params, optimizerState, ema: null };
}

/** What rank `rank` of `worldSize` resumes from: all outer weights and outer momentum, its shard of the outer feedback, and the inner state of the checkpoint's rank of that number, if any. */
export function dilocoResumeShard(
  checkpoint: { meta: CheckpointMeta; state: CheckpointState },
  worldSize: number,
  rank: number,
): ResumeState {
  const { state, meta } = checkpoint;
  const { start, end } = shardRange(meta.numParams, worldSize, rank);
  const innerSteps = state.optimizerState[INNER_STEPS];
  if (!innerSteps)
    throw new FatalError('DILOCO_RESUME', 'the checkpoint was not written by a DiLoCo run (no inner state): resume it in lockstep');
  const optimizerState: Record<string, Float32Array> = {};
  const own = rankPrefix(rank);
  for (const [name, tensor] of Object.entries(state.optimizerState)) {
    if (name === OUTER_MOMENTUM) optimizerState[name] = tensor;
    else if (name.startsWith(OUTER)) optimizerState[name] = tensor.slice(start, end);
    else if (name.startsWith(own)) optimizerState[name.slice(own.length)] = tensor;
  }
  const hasInner = rank < meta.worldSize;
  return { params: state.params, optimizerState, ema: null, optimizerStep: hasInner ? innerSteps[rank]! : 0 };
}
