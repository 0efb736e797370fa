/**
 * Ring all-reduce benchmark: N ranks as N OS processes on loopback, each all-reducing a
 * Float32Array of `floats` elements. Reports the median wall time of one all-reduce (per
 * iteration, the slowest rank's time) and the bus bandwidth 2(N-1)/N × 4·floats bytes / time,
 * the figure NCCL and the gloo comparison (bench/gloo_allreduce.py) use (for `wire: 'bf16'` too,
 * so that it compares with float32 at equal payload). The first iteration's result is checked
 * against the exact sum on every rank (within bf16 rounding for bf16).
 *
 * Run directly: node --import tsx src/comm/bench-allreduce.ts --workers 2 --floats 1000000 [--json]
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { ChildMessage, ParentMessage, RankJob } from './bench-allreduce-rank.ts';
import type { WireFormat } from '../common/wire.ts';
import { RING_TRANSPORTS, type RingTransport } from './local-socket.ts';
import type { PeerAddress } from './ring.ts';
import { DEFAULT_CHUNK_BYTES } from './ring.ts';

export interface BenchAllreduceOptions {
  workers: number;
  floats: number;
  iterations?: number;
  warmup?: number;
  chunkBytes?: number;
  /** Reduce-scatter payloads, default 'fp32'. */
  wire?: WireFormat;
  /** Default 'auto': the ranks' links go over Unix sockets (local-socket.ts); 'tcp': loopback TCP. */
  transport?: RingTransport;
  /** Also print the result as one JSON line on stdout. */
  json?: boolean;
}

export interface BenchAllreduceResult {
  workers: number;
  floats: number;
  wire: WireFormat;
  transport: RingTransport;
  msPerAllreduce: number;
  busGBps: number;
}

const DEFAULT_ITERATIONS = 10;
const DEFAULT_WARMUP = 2;
/** The whole benchmark is abandoned (children killed) after this long. */
const BENCH_TIMEOUT_MS = 15 * 60 * 1000;
/** How long ranks get to exit after reporting (or after a failure) before they are killed. */
const EXIT_GRACE_MS = 5000;
const RANK_ENTRY = fileURLToPath(new URL('./bench-allreduce-rank.ts', import.meta.url));

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
  return value;
}

export async function benchAllreduce(opts: BenchAllreduceOptions): Promise<BenchAllreduceResult> {
  const workers = positiveInteger('workers', opts.workers);
  const floats = positiveInteger('floats', opts.floats);
  const iterations = positiveInteger('iterations', opts.iterations ?? DEFAULT_ITERATIONS);
  const warmup = opts.warmup ?? DEFAULT_WARMUP;
  const base = {
    workers,
    floats,
    iterations,
    warmup,
    chunkBytes: opts.chunkBytes ?? DEFAULT_CHUNK_BYTES,
    token: randomBytes(16).toString('hex'),
    generation: 1,
    wire: opts.wire ?? 'fp32',
    transport: opts.transport ?? 'auto',
  };
  if (!RING_TRANSPORTS.includes(base.transport))
    throw new RangeError(`ring transport must be one of ${RING_TRANSPORTS.join(', ')}, got ${base.transport}`);
  // Children load TypeScript through the same tsx this process was started with.
  const execArgv = ['--import', import.meta.resolve('tsx')];
  const children: ChildProcess[] = [];
  try {
    const perRank = await new Promise<number[][]>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`benchmark did not finish within ${BENCH_TIMEOUT_MS / 1000} s`)), BENCH_TIMEOUT_MS);
      const addresses: PeerAddress[] = new Array(workers);
      const results: number[][] = new Array(workers);
      let addressCount = 0;
      let resultCount = 0;
      const fail = (err: Error) => {
        clearTimeout(timer);
        reject(err);
      };
      for (let rank = 0; rank < workers; rank++) {
        const child = fork(RANK_ENTRY, [], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
        children.push(child);
        child.on('message', (message: ChildMessage) => {
          if (message.type === 'address') {
            addresses[rank] = message.address;
            if (++addressCount === workers)
              for (const each of children) each.send({ type: 'peers', peers: addresses } satisfies ParentMessage);
          } else if (message.type === 'result') {
            results[rank] = message.millis;
            if (++resultCount === workers) {
              clearTimeout(timer);
              resolve(results);
            }
          } else {
            fail(new Error(`benchmark rank ${rank} failed: ${message.message}`));
          }
        });
        child.on('exit', (code, signal) => {
          if (results[rank] === undefined)
            fail(new Error(`benchmark rank ${rank} exited (code ${code}, signal ${signal}) before reporting`));
        });
        child.send({ type: 'start', rank, ...base } satisfies ParentMessage & RankJob);
      }
    });
    // An all-reduce is done when the slowest rank is done.
    const slowest = perRank[0]!.map((_, iteration) => Math.max(...perRank.map((millis) => millis[iteration]!)));
    const msPerAllreduce = median(slowest);
    const busBytes = workers === 1 ? 0 : ((2 * (workers - 1)) / workers) * 4 * floats;
    const result = {
      workers,
      floats,
      wire: base.wire,
      transport: base.transport,
      msPerAllreduce,
      busGBps: busBytes / (msPerAllreduce / 1000) / 1e9,
    };
    if (opts.json) console.log(JSON.stringify(result));
    return result;
  } finally {
    await stopChildren(children);
  }
}

/** Lets the ranks exit on their own (they close their rings first), killing stragglers. */
async function stopChildren(children: ChildProcess[]): Promise<void> {
  await Promise.all(
    children.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          const timer = setTimeout(() => child.kill(), EXIT_GRACE_MS);
          child.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
        }),
    ),
  );
}

export function formatResult(result: BenchAllreduceResult): string {
  return `workers ${result.workers}, ${result.floats} floats, ${result.wire} wire, ${result.transport === 'tcp' ? 'TCP' : 'Unix socket'} links: ${result.msPerAllreduce.toFixed(1)} ms per all-reduce (median), bus ${result.busGBps.toFixed(3)} GB/s`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { values } = parseArgs({
    options: {
      workers: { type: 'string', default: '2' },
      floats: { type: 'string', default: '5000000' },
      iterations: { type: 'string' },
      warmup: { type: 'string' },
      'chunk-bytes': { type: 'string' },
      wire: { type: 'string', default: 'fp32' },
      'ring-transport': { type: 'string', default: 'auto' },
      json: { type: 'boolean', default: false },
    },
  });
  const numberOrUndefined = (text: string | undefined) => (text === undefined ? undefined : Number(text));
  const result = await benchAllreduce({
    workers: Number(values.workers),
    floats: Number(values.floats),
    iterations: numberOrUndefined(values.iterations),
    warmup: numberOrUndefined(values.warmup),
    chunkBytes: numberOrUndefined(values['chunk-bytes']),
    wire: values.wire as WireFormat,
    transport: values['ring-transport'] as RingTransport,
    json: values.json,
  });
  if (!values.json) console.log(formatResult(result));
}
