// Helpers for the end-to-end tests: run the real CLI as child processes on loopback, with every
// wait bounded, and read what a run left in its directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { latestCheckpoint, readCheckpoint } from '../../src/train/checkpoint.ts';
import type { MetricsRecord, StepRecord, EvalRecord, RestartRecord } from '../../src/coordinator/metrics.ts';
import { DEFAULT_FASHION_MNIST_DIR } from '../../src/data/fashion-mnist.ts';

export const BIN = fileURLToPath(new URL('../../bin/vit-dist.js', import.meta.url));
export const MICRO_RECIPE = fileURLToPath(new URL('../fixtures/fmnist-micro.json', import.meta.url));
export const TOKEN = 'test-token-123';

/** Skip reason for tests that need the real data set, or false when it is installed. */
export const needsData = existsSync(join(DEFAULT_FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz'))
  ? false
  : `Fashion-MNIST is not installed at ${DEFAULT_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)`;

export function tempRunDir(prefix: string): string {
  return join(mkdtempSync(join(tmpdir(), `vit-dist-${prefix}-`)), 'run');
}

export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  finished: Promise<Finished>;
  /** Resolves when stdout+stderr matches `pattern`; rejects after `timeoutMs` or when the process ends first. */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<void>;
}

/** Starts `vit-dist ARGS`; the process is killed if it outlives `timeoutMs`. */
export function start(args: string[], options: { timeoutMs: number; env?: Record<string, string>; detached?: boolean }): Running {
  // detached: the child leads a process group, so killGroup() reaches the workers it spawns too.
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: options.detached ?? false,
  });
  let stdout = '';
  let stderr = '';
  const listeners = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => {
    stdout += d;
    listeners.forEach((l) => {
      l();
    });
  });
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d;
    listeners.forEach((l) => {
      l();
    });
  });
  const killer = setTimeout(() => (options.detached ? killGroup(child) : child.kill('SIGKILL')), options.timeoutMs);
  const finished = new Promise<Finished>((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(killer);
      listeners.forEach((l) => {
        l();
      });
      resolve({ code, signal, stdout, stderr });
    });
  });
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    finished,
    waitFor(pattern, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          if (pattern.test(stdout + stderr)) return done(resolve);
          if (child.exitCode !== null || child.signalCode !== null)
            done(() => reject(new Error(`process ended before printing ${pattern}:\n${stdout}\n${stderr}`)));
        };
        const timer = setTimeout(() => done(() => reject(new Error(`timed out waiting for ${pattern}:\n${stdout}\n${stderr}`))), timeoutMs);
        const done = (f: () => void): void => {
          clearTimeout(timer);
          listeners.delete(check);
          f();
        };
        listeners.add(check);
        check();
      });
    },
  };
}

export async function run(args: string[], options: { timeoutMs: number; env?: Record<string, string> }): Promise<Finished> {
  return start(args, options).finished;
}

export function readMetrics(runDir: string): MetricsRecord[] {
  return readFileSync(join(runDir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as MetricsRecord);
}

export function stepRecords(runDir: string): StepRecord[] {
  return readMetrics(runDir).filter((r): r is StepRecord => r.kind === 'step');
}

export function evalRecords(runDir: string): EvalRecord[] {
  return readMetrics(runDir).filter((r): r is EvalRecord => r.kind === 'eval');
}

/** kill -9 of a detached child's whole process group. */
export function killGroup(child: ChildProcess): void {
  try {
    process.kill(-child.pid!, 'SIGKILL');
  } catch {
    // The group is already gone.
  }
}

/** Polls until `predicate` holds; rejects after `timeoutMs`. */
export async function waitUntil(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts `vit-dist coordinator` on a free loopback port and resolves with its URL. */
export async function startCoordinator(args: string[], timeoutMs: number): Promise<{ coordinator: Running; url: string }> {
  const coordinator = start(['coordinator', '--host', '127.0.0.1', '--port', '0', '--token', TOKEN, ...args], { timeoutMs });
  await coordinator.waitFor(/listening on ws:\/\/[\d.]+:\d+/, 30_000);
  const port = /listening on ws:\/\/[\d.]+:(\d+)/.exec(coordinator.stdout())![1];
  return { coordinator, url: `ws://127.0.0.1:${port}` };
}

const finalDigests = new Map<string, string>();
/** The digest an uninterrupted `launch ARGS` run ends with; run once per argument list and file. */
export async function uninterruptedDigest(args: string[], timeoutMs: number): Promise<string> {
  const key = args.join(' ');
  const known = finalDigests.get(key);
  if (known) return known;
  const out = tempRunDir('straight');
  const result = await run(['launch', ...args, '--out', out], { timeoutMs });
  if (result.code !== 0) throw new Error(`the uninterrupted run failed:\n${result.stdout}\n${result.stderr}`);
  const digest = stepRecords(out).at(-1)!.paramDigest;
  finalDigests.set(key, digest);
  return digest;
}

export function restartRecords(runDir: string): RestartRecord[] {
  return readMetrics(runDir).filter((r): r is RestartRecord => r.kind === 'restart');
}

/** A predicate for waitUntil: the checkpoint of `step` exists in `runDir`. */
export function checkpointAt(runDir: string, step: number): () => boolean {
  return () => existsSync(join(runDir, 'checkpoints', `step-${String(step).padStart(9, '0')}.ckpt`));
}

/** Steps 1..steps recorded exactly once, the last one with `digest`, and the newest checkpoint agrees. */
export function assertCompleteRun(runDir: string, steps: number, digest: string): void {
  const records = stepRecords(runDir);
  assert.deepEqual(
    records.map((s) => s.step),
    Array.from({ length: steps }, (_, i) => i + 1),
    'each step recorded once',
  );
  assert.equal(records.at(-1)!.paramDigest, digest);
  const latest = latestCheckpoint(runDir);
  assert.ok(latest, 'a checkpoint exists');
  assert.equal(readCheckpoint(latest).meta.paramDigest, digest);
}

/** A port below the kernel's ephemeral range (which starts at 32768 here), so it can be bound again later. */
export function pickPort(): number {
  return 20000 + Math.floor(Math.random() * 10000);
}
