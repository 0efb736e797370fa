// `vit-dist worker`: one process per GPU, joining a coordinator.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { createLogger, type LogLevel } from './logging.ts';
import { resolveToken } from './options.ts';
import type { BackendChoice } from '../model/backend.ts';
import type { RingTransport } from '../comm/local-socket.ts';

export interface WorkerFlags {
  coordinator: string;
  gpu?: number;
  backend: BackendChoice;
  threads?: number;
  token?: string;
  ca?: string;
  ringHost: string;
  ringPort: number;
  advertise?: string;
  ringTransport: RingTransport;
  data?: string;
  dataThreads: number;
  reconnectTimeout: number;
  heartbeatTimeout: number;
  healthPort?: number;
  stallTimeout: number;
  logDir?: string;
  logName: string;
  logLevel: LogLevel;
}

/** `host`, `host:port` or `[v6]:port` into the advertised host and optional port. */
function parseAdvertise(value: string): { advertiseHost: string; advertisePort: number | null } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(value);
  if (!match) return { advertiseHost: value, advertisePort: null };
  const advertisePort = Number(match[2]);
  if (advertisePort < 1 || advertisePort > 65535) throw new Error(`--advertise ${value}: port out of range`);
  return { advertiseHost: match[1]!.replace(/^\[|\]$/g, ''), advertisePort };
}

/**
 * Without --advertise: the --ring-host, unless it is a wildcard, which no neighbour can dial; then this
 * machine's host name, which is what a container's peers resolve it by (compose replicas, pods).
 */
function defaultAdvertise(ringHost: string): string {
  return ringHost === '0.0.0.0' || ringHost === '::' ? hostname() : ringHost;
}

export async function runWorkerCommand(flags: WorkerFlags): Promise<void> {
  // Must happen before TensorFlow.js binds a device: tfjs-node-gpu reads it when it loads.
  if (flags.gpu !== undefined) process.env.CUDA_VISIBLE_DEVICES = String(flags.gpu);
  // TensorFlow reads its thread pools' sizes once, when the addon loads. Inter-op parallelism runs
  // independent graph ops side by side; eager ops come one at a time, so one thread is enough.
  if (flags.threads !== undefined) {
    process.env.TF_NUM_INTRAOP_THREADS = String(flags.threads);
    process.env.TF_NUM_INTEROP_THREADS ??= '1';
  }
  if (!/^wss?:\/\//.test(flags.coordinator)) throw new Error(`--coordinator must be a ws:// or wss:// URL, got "${flags.coordinator}"`);
  const token = resolveToken(flags.token, false);
  const logger = createLogger(flags.logName, flags.logDir ?? null, flags.logLevel);
  // Loaded only now, so CUDA_VISIBLE_DEVICES is set before any TensorFlow.js module is evaluated.
  const { runWorker } = await import('../worker/worker.ts');
  // SIGTERM (docker stop, a pod deletion): leave at once. The coordinator sees the worker go and
  // restarts the ring from its last checkpoint with whoever is left or replaces it.
  process.once('SIGTERM', () => {
    logger.info('SIGTERM: leaving the run');
    process.exit(0);
  });
  await runWorker({
    coordinatorUrl: flags.coordinator,
    token,
    ca: flags.ca ? readFileSync(flags.ca) : null,
    backend: flags.backend,
    gpu: flags.gpu ?? null,
    ringHost: flags.ringHost,
    ringPort: flags.ringPort,
    ...parseAdvertise(flags.advertise ?? defaultAdvertise(flags.ringHost)),
    ringTransport: flags.ringTransport,
    dataPath: flags.data ?? null,
    dataThreads: flags.dataThreads,
    reconnectTimeoutMs: flags.reconnectTimeout * 1000,
    heartbeatTimeoutMs: flags.heartbeatTimeout * 1000,
    healthPort: flags.healthPort ?? null,
    stallTimeoutMs: flags.stallTimeout * 1000,
    logger,
  });
  logger.info('worker finished');
}
