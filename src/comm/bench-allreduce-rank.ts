/**
 * One rank of `benchAllreduce`, run as its own OS process (forked with an IPC channel).
 *
 * Parent -> child: {type:'start', ...RankJob}, then {type:'peers', peers}.
 * Child -> parent: {type:'address', address}, then {type:'result', millis} or {type:'error', message}.
 */
import type { WireFormat } from '../common/wire.ts';
import type { RingTransport } from './local-socket.ts';
import type { PeerAddress } from './ring.ts';
import { RingThread, sharedFloat32Array } from './ring-thread.ts';

export interface RankJob {
  rank: number;
  workers: number;
  floats: number;
  iterations: number;
  warmup: number;
  chunkBytes: number;
  token: string;
  generation: number;
  /** Reduce-scatter payloads in float32 or bf16 (the all-gather is float32 either way). */
  wire: WireFormat;
  /** auto: links over Unix sockets (all ranks are on this machine); tcp: loopback TCP. */
  transport: RingTransport;
}

export type ParentMessage = ({ type: 'start' } & RankJob) | { type: 'peers'; peers: PeerAddress[] };
export type ChildMessage =
  | { type: 'address'; address: PeerAddress }
  | { type: 'result'; millis: number[] }
  | { type: 'error'; message: string };

const BENCH_HEARTBEAT_TIMEOUT_MS = 10 * 60 * 1000;

/** Integer-valued test data: every partial sum is exact in float32, so the check is exact. */
export function benchValue(rank: number, index: number): number {
  return ((index * 7 + rank * 13) % 1001) - 500;
}

function send(message: ChildMessage): void {
  process.send!(message);
}

function nextMessage<T extends ParentMessage['type']>(type: T): Promise<Extract<ParentMessage, { type: T }>> {
  return new Promise((resolve) => {
    const listener = (message: ParentMessage) => {
      if (message.type !== type) return;
      process.off('message', listener);
      resolve(message as Extract<ParentMessage, { type: T }>);
    };
    process.on('message', listener);
  });
}

/** Exact for float32; with bf16 on the wire, within bf16's rounding (2^-9 relative) of every partial sum. */
function verify(result: Float32Array, job: RankJob): void {
  const tolerance = job.wire === 'bf16' ? job.workers * job.workers * 500 * 2 ** -8 : 0;
  for (let i = 0; i < result.length; i++) {
    let expected = 0;
    for (let rank = 0; rank < job.workers; rank++) expected += benchValue(rank, i);
    if (Math.abs(result[i]! - expected) > tolerance)
      throw new Error(`rank ${job.rank}: element ${i} is ${result[i]}, expected ${expected}`);
  }
}

async function runRank(job: RankJob): Promise<number[]> {
  // In its own thread, as a worker runs it (ring-thread.ts).
  const peer = await RingThread.listen({
    rank: job.rank,
    worldSize: job.workers,
    token: job.token,
    generation: job.generation,
    chunkBytes: job.chunkBytes,
    localSocket: job.transport === 'auto',
    // Making and checking 86M-float buffers blocks a rank's event loop for long on a loaded machine.
    heartbeatTimeoutMs: BENCH_HEARTBEAT_TIMEOUT_MS,
  });
  try {
    const peersMessage = nextMessage('peers');
    send({ type: 'address', address: peer.address });
    await peer.connect((await peersMessage).peers);
    const original = Float32Array.from({ length: job.floats }, (_, i) => benchValue(job.rank, i));
    const buffer = sharedFloat32Array(job.floats);
    const millis: number[] = [];
    for (let iteration = 0; iteration < job.warmup + job.iterations; iteration++) {
      buffer.set(original);
      await peer.allReduceScalars(new Float64Array(1), iteration); // barrier: start timing together
      const started = process.hrtime.bigint();
      // One request to the ring thread, as gloo's all_reduce is one call.
      await peer.allReduce(buffer, iteration, { wire: job.wire });
      const elapsed = Number(process.hrtime.bigint() - started) / 1e6;
      if (iteration === 0) verify(buffer, job);
      if (iteration >= job.warmup) millis.push(elapsed);
    }
    return millis;
  } finally {
    await peer.close();
  }
}

const start = await nextMessage('start');
try {
  send({ type: 'result', millis: await runRank(start) });
} catch (err) {
  send({ type: 'error', message: (err as Error).message });
}
process.disconnect();
