// What the main thread and a ring thread (ring-thread.ts, ring-thread-body.ts) say to each other.
// Gradient memory crosses as a SharedArrayBuffer and a view into it: both threads see the same
// bytes, nothing is copied.
import { FatalError, InputError, RecoverableError, type ErrorKind, VitDistError } from '../common/errors.ts';
import type { ElementRange } from '../common/shard.ts';
import type { WireFormat } from '../common/wire.ts';
import type { PeerAddress, RingOptions } from './ring.ts';

/** A float32 view into shared memory. */
export interface SharedView {
  buffer: SharedArrayBuffer;
  byteOffset: number;
  length: number;
  /**
   * Set when the buffer is a kernel memory (simd-add.ts): the thread adds into it in place. The
   * memory object itself travels with the first request that uses it; later ones name its id.
   */
  memoryId?: number;
  memory?: WebAssembly.Memory;
}

/** workerData: the ring's options less the logger (log lines come back as messages), and where the traffic counters live. */
export interface RingThreadSetup {
  options: Omit<RingOptions, 'logger'>;
  /** Float64Array(2): bytes sent, bytes received, written by the thread before each reply. */
  traffic: SharedArrayBuffer;
}

export type RingRequest =
  | { id: number; type: 'connect'; peers: PeerAddress[] }
  | { id: number; type: 'reduceScatter'; buf: SharedView; step: number; range: ElementRange; wire: WireFormat }
  | { id: number; type: 'allGather'; buf: SharedView; step: number }
  | { id: number; type: 'allReduce'; buf: SharedView; step: number; wire: WireFormat }
  | { id: number; type: 'allReduceScalars'; values: Float64Array; step: number }
  | { id: number; type: 'close' };

export type LogLevel = 'info' | 'warn' | 'error' | 'debug';

export type RingThreadMessage =
  | { type: 'listening'; address: PeerAddress }
  | { type: 'startFailed'; error: SerializedError }
  | { type: 'reply'; id: number; error?: SerializedError; sums?: Float64Array }
  | { type: 'log'; level: LogLevel; obj: object; msg: string }
  | { type: 'error'; error: SerializedError }
  | { type: 'close' };

/** An error as it crosses the thread boundary: what callers branch on (kind, code) and the cause chain. */
export interface SerializedError {
  name: string;
  message: string;
  stack?: string;
  kind?: ErrorKind;
  code?: string;
  cause?: SerializedError;
}

export function serializeError(err: unknown): SerializedError {
  if (!(err instanceof Error)) return { name: 'Error', message: String(err) };
  const code = (err as { code?: unknown }).code;
  return {
    name: err.name,
    message: err.message,
    stack: err.stack,
    kind: err instanceof VitDistError ? err.kind : undefined,
    code: typeof code === 'string' ? code : undefined,
    cause: err.cause === undefined ? undefined : serializeError(err.cause),
  };
}

/** The error again, of the same kind (InputError, FatalError, RecoverableError) with its code and cause. */
export function deserializeError(serialized: SerializedError): Error {
  const options = serialized.cause ? { cause: deserializeError(serialized.cause) } : undefined;
  const code = serialized.code ?? 'RING_THREAD';
  let err: Error;
  if (serialized.kind === 'input') err = new InputError(code, serialized.message, options);
  else if (serialized.kind === 'fatal') err = new FatalError(code, serialized.message, options);
  else if (serialized.kind === 'recoverable') err = new RecoverableError(code, serialized.message, options);
  else {
    err = new Error(serialized.message, options);
    err.name = serialized.name;
    if (serialized.code) Object.assign(err, { code: serialized.code });
  }
  if (serialized.stack) err.stack = serialized.stack;
  return err;
}
