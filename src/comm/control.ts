// The control protocol between the coordinator and its workers: small msgpack messages over one
// WebSocket per worker. Gradients never travel here (they go around the ring, src/comm/ring.ts);
// only orders, per-step reports, and the model state at start-up and checkpoints.
import { Packr } from 'msgpackr';
import { RecoverableError } from '../common/errors.ts';
import type { ElementRange } from '../common/shard.ts';
import { authContext } from './auth.ts';
import type { PeerAddress } from './link.ts';

/** Bumped whenever a message changes shape; both sides refuse a peer that speaks another version. */
export const CONTROL_PROTOCOL_VERSION = 6;
/** Largest control message accepted; snapshots of large models are the biggest (a shard's params, optimizer state and EMA). */
export const MAX_CONTROL_MESSAGE_BYTES = 2 ** 30;
/** WebSocket close codes in the private range (4000-4999), so a peer can tell why it was dropped. */
export const CLOSE_CODES = {
  badToken: 4001,
  badProtocol: 4002,
  badMessage: 4003,
  runFailed: 4004,
  runComplete: 4005,
  runFull: 4006,
} as const;

/** State a worker starts from: absent for a fresh run (every worker initializes from the seed). */
export interface ResumeState {
  /** The full parameter vector. */
  params: Float32Array;
  /** This rank's shard of each named optimizer state tensor (e.g. m and v for Adam). */
  optimizerState: Record<string, Float32Array>;
  /** This rank's shard of the weights' moving average, when the checkpoint has one. */
  ema: Float32Array | null;
  optimizerStep: number;
}

/** A rank's report of one training step. */
export interface StepReport {
  lossSum: number;
  correct: number;
  count: number;
  gradNorm: number;
  paramDigest: string;
  computeMs: number;
  /** Model device <-> host copies: the step's summed gradient down, the updated weights up (GPU workers: PCIe). */
  copyMs: number;
  /** From the summed gradient on the host (with overlap: the end of the last backward pass) to the updated weights: ring collectives and the optimizer. */
  commMs: number;
  /** Of commMs, the time spent waiting on the ring's collectives after the last gradient was computed (the communication the step did not hide). */
  exposedCommMs: number;
  /** Time the model waited for the loader's next micro-batch. */
  dataWaitMs: number;
  /** Bytes this rank's ring sockets wrote and read during the step (frames, headers and heartbeats). */
  bytesSent: number;
  bytesReceived: number;
  /** Distilled models only: the sum over this rank's samples of the distillation head's loss term (before alpha). */
  distillationLossSum?: number;
  /** Corrupt images replaced by their successors in this step (data.skipCorrupt), by name. */
  skipped: string[];
}

/** Loss sum and correct predictions (of the joint classifier, for a distilled model) over `count` samples. */
export interface EvalCounts {
  lossSum: number;
  correct: number;
  count: number;
  /** Distilled models only: correct predictions of the class head and of the distillation head alone. */
  correctClassHead?: number;
  correctDistHead?: number;
}

/** A rank's shard of the parameters and optimizer state, for a checkpoint. */
export interface ShardSnapshot {
  start: number;
  end: number;
  params: Float32Array;
  optimizerState: Record<string, Float32Array>;
  /** The shard of the weights' moving average; null when the recipe keeps none. */
  ema: Float32Array | null;
  optimizerStep: number;
}

/**
 * A DiLoCo worker's place: it trains data slot `slot` of `slots` (each slot's slice of every global
 * batch, globalBatch / slots images); `carry` keeps the trainer of the previous generation (its
 * outer and inner state), for a member that stays when the membership changes at a round's end.
 */
export interface DilocoPlace {
  slot: number;
  slots: number;
  carry: boolean;
}

/**
 * The outer step of a round: `reporters` workers finished its inner steps and contribute their
 * pseudo-gradients (`contributes`: false for a joiner, which sends zeros); with `broadcastFrom`
 * set, the ring first copies that rank's outer weights and outer momentum to every rank (joiners).
 */
export interface DilocoOuterOrder {
  reporters: number;
  contributes: boolean;
  broadcastFrom: number | null;
  /**
   * 0: the outer step runs now, and the reply follows it. K > 0 (--outer-overlap): the exchange
   * starts now and runs while the next round's first K inner steps do; its result is merged in
   * after the K-th, whose report the reply follows.
   */
  mergeAfter: number;
  /** With mergeAfter > 0: the evaluation due at the round's end, of these test samples, of the merged outer weights; its reply follows the outer step's. */
  evaluate: ElementRange | null;
  /** With mergeAfter > 0: a checkpoint is due at the merge; the rank's snapshot follows the replies. */
  snapshot: boolean;
}

/** A worker's outer step: the outer weights' digest afterwards, its time and its ring traffic. */
export interface OuterReport {
  paramDigest: string;
  /**
   * The rank's time on it, away from inner steps: at a round's end the whole outer step; with an
   * overlap, the wait for the summed pseudo-gradient at the merge and the merge itself (the
   * exchange before that ran during the inner steps).
   */
  commMs: number;
  bytesSent: number;
  bytesReceived: number;
}

// Every order and reply after `assign` carries the ring generation it belongs to: after a failure
// the coordinator starts a new generation, and replies of an older one are dropped.
export type CoordinatorMessage =
  | { type: 'challenge'; protocol: number; runId: string; nonce: Uint8Array }
  /** `recipe`: the run's, so that the worker loads its data and builds its model while it waits for an assignment. */
  | { type: 'welcome'; workerId: number; waitingFor: number; recipe?: unknown }
  /** `init`: the parameters to start from at step 0 instead of the seed's (--init); null when resuming or starting fresh. */
  | {
      type: 'assign';
      rank: number;
      worldSize: number;
      generation: number;
      recipe: unknown;
      startStep: number;
      resume: ResumeState | null;
      init: Float32Array | null;
      /** DiLoCo only (null in lockstep): this worker's data slot and how many there are, and whether it keeps its trainer (a member regrouped at a round's end). */
      diloco: DilocoPlace | null;
    }
  | { type: 'ringPeers'; generation: number; peers: PeerAddress[] }
  /** The rank's samples: data-set indices, their repeat numbers (null: none), the slice's offset in the global batch, and the epoch. */
  | {
      type: 'step';
      generation: number;
      step: number;
      lr: number;
      indices: Uint32Array;
      repeats: Uint8Array | null;
      offset: number;
      epoch: number;
    }
  | { type: 'eval'; generation: number; step: number; start: number; end: number }
  /** DiLoCo: the outer step closing the round that ended after `step` steps (see DilocoOuterOrder). */
  | ({ type: 'outer'; generation: number; step: number } & DilocoOuterOrder)
  | { type: 'snapshot'; generation: number; step: number }
  /** Abandon the generation: drop the step in flight and the ring, wait for a new `assign`. */
  | { type: 'abort'; generation: number; reason: string }
  | { type: 'stop'; reason: string };

export type WorkerMessage =
  /** `gpu`: the worker's --gpu index (null without one); workers before it was added send none. */
  | { type: 'hello'; protocol: number; proof: Uint8Array; backend: string; host: string; pid: number; gpu?: number | null }
  /** The worker dropped the abandoned generation's ring and waits for a new `assign`. */
  | { type: 'aborted'; generation: number }
  | { type: 'ringListening'; generation: number; rank: number; ring: PeerAddress }
  | { type: 'ready'; generation: number; rank: number; paramDigest: string; numParams: number; trainSize: number; testSize: number }
  | ({ type: 'stepDone'; generation: number; step: number } & StepReport)
  /** `ms`: how long the rank evaluated. */
  | ({ type: 'evalDone'; generation: number; step: number; ms: number } & EvalCounts)
  | ({ type: 'outerDone'; generation: number; step: number } & OuterReport)
  | ({ type: 'snapshotData'; generation: number; step: number; rank: number } & ShardSnapshot)
  /**
   * The worker could not carry out an order of `generation`; it stays connected for the next one.
   * `fatal` marks problems no restart can fix (a missing data set, a model that does not fit it).
   */
  | { type: 'failed'; generation: number; message: string; fatal: boolean };

const COORDINATOR_TYPES = new Set(['challenge', 'welcome', 'assign', 'ringPeers', 'step', 'eval', 'outer', 'snapshot', 'abort', 'stop']);
const WORKER_TYPES = new Set(['hello', 'aborted', 'ringListening', 'ready', 'stepDone', 'evalDone', 'outerDone', 'snapshotData', 'failed']);

// One Packr per process: typed arrays round-trip as their own types (msgpackr's extension).
const packr = new Packr({ useRecords: false, moreTypes: true });

export function encodeMessage(message: CoordinatorMessage | WorkerMessage): Buffer {
  return packr.pack(message);
}

function decode(data: Buffer, known: Set<string>, from: string): { type: string } {
  let value: unknown;
  try {
    value = packr.unpack(data);
  } catch (err) {
    throw new RecoverableError('CONTROL_MALFORMED', `malformed message from ${from}: ${(err as Error).message}`, { cause: err });
  }
  const type = (value as { type?: unknown } | null)?.type;
  if (typeof type !== 'string' || !known.has(type)) {
    throw new RecoverableError('CONTROL_UNKNOWN_TYPE', `unknown message type ${JSON.stringify(type)} from ${from}`);
  }
  return value as { type: string };
}

export function decodeWorkerMessage(data: Buffer, from: string): WorkerMessage {
  return decode(data, WORKER_TYPES, from) as WorkerMessage;
}

export function decodeCoordinatorMessage(data: Buffer, from: string): CoordinatorMessage {
  return decode(data, COORDINATOR_TYPES, from) as CoordinatorMessage;
}

/** The context a worker's token proof is bound to, so a proof for one run cannot be replayed on another. */
export function controlProofContext(runId: string): string {
  return authContext('vit-dist control', { protocol: CONTROL_PROTOCOL_VERSION, run: runId });
}
