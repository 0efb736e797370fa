// Per-kernel GPU times on 'webgpu' from timestamp queries, where the adapter offers the
// `timestamp-query` feature (device.ts asks for it; an H200 offers it, llvmpipe does not).
// tfjs-backend-webgpu's own timer (backend.time) gives each program its own compute pass with
// timestamp writes while it runs; it names a program by its class, so ours (plain objects) are
// named here by their shader key instead.

import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUProgram } from './sgemm.ts';

export interface KernelTime {
  name: string;
  ms: number;
}

/** The part of WebGPUBackend its timer uses. */
interface TimedBackend {
  supportTimestampQuery: boolean;
  activeTimers: ({ name: string } | unknown[])[] | null;
  runWebGPUProgram(program: WebGPUProgram, ...rest: unknown[]): tf.TensorInfo;
  time(f: () => void): Promise<{ kernelMs: number; getExtraProfileInfo(): string }>;
}

function timedBackend(): TimedBackend {
  if (tf.getBackend() !== 'webgpu') throw new Error(`kernel profiling needs the 'webgpu' backend, not '${tf.getBackend()}'`);
  return tf.backend() as unknown as TimedBackend;
}

/** Whether the active webgpu device can time kernels. */
export function timestampQueryAvailable(): boolean {
  return timedBackend().supportTimestampQuery;
}

/**
 * Runs `record` (which must record its GPU work synchronously, as accumulateGradient does before its
 * first await) and returns each program's GPU time in order, or null when the device has no
 * timestamp-query (the work still runs). Each program then runs in its own pass and submit, so the
 * sum exceeds an untimed run's time; the shares are what to read.
 */
export async function profileKernels(record: () => void): Promise<KernelTime[] | null> {
  if (!timedBackend().supportTimestampQuery) {
    record();
    return null;
  }
  return timedKernels(record);
}

/**
 * The programs `record` runs, in order, named, through tfjs's timer: with their GPU times where the
 * device has timestamp-query, 0 ms each without (tfjs then warns once). profileKernels' core, and
 * the part of it a device without the feature (llvmpipe, the tests) can still check.
 */
export async function timedKernels(record: () => void): Promise<KernelTime[]> {
  const backend = timedBackend();
  const run = backend.runWebGPUProgram;
  backend.runWebGPUProgram = function (this: TimedBackend, program, ...rest) {
    const key = program.shaderKey; // before tfjs appends the shapes to it
    const output = run.call(this, program, ...rest);
    const timers = this.activeTimers;
    const last = timers?.[timers.length - 1];
    if (last && !Array.isArray(last) && program.constructor === Object) (last as { name: string }).name = key;
    return output;
  };
  try {
    const timing = await backend.time(record);
    return parseProfileInfo(timing.getExtraProfileInfo());
  } finally {
    backend.runWebGPUProgram = run;
  }
}

/** tfjs's "name: ms, name: ms" list. */
export function parseProfileInfo(info: string): KernelTime[] {
  if (info.trim() === '') return [];
  return info.split(', ').map((entry) => {
    const at = entry.lastIndexOf(': ');
    const ms = Number(entry.slice(at + 2));
    if (at < 0 || !Number.isFinite(ms)) throw new Error(`kernel profile: cannot read '${entry}'`);
    return { name: entry.slice(0, at), ms };
  });
}

export interface KernelSummary {
  name: string;
  calls: number;
  ms: number;
  share: number;
}

/** Times summed per kernel name, largest first, with each one's share of the total. */
export function summarizeKernelTimes(times: KernelTime[]): KernelSummary[] {
  const byName = new Map<string, { calls: number; ms: number }>();
  for (const { name, ms } of times) {
    const entry = byName.get(name) ?? { calls: 0, ms: 0 };
    entry.calls++;
    entry.ms += ms;
    byName.set(name, entry);
  }
  const total = times.reduce((sum, t) => sum + t.ms, 0);
  return [...byName].map(([name, { calls, ms }]) => ({ name, calls, ms, share: total > 0 ? ms / total : 0 })).sort((a, b) => b.ms - a.ms);
}
