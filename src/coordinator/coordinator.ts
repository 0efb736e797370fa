// The coordinator: admits workers, assigns ranks and ring neighbours, then drives training in
// lockstep. Each step it sends every rank its slice of the global batch and the learning rate,
// waits for every report, checks that all ranks hold the same parameter digest, records metrics,
// evaluates and checkpoints. It never sees a gradient: those travel around the ring.
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { WebSocketServer, type WebSocket } from 'ws';
import { makeNonce, verifyProof } from '../comm/auth.ts';
import { shardRange } from '../comm/shard.ts';
import {
  CLOSE_CODES, CONTROL_PROTOCOL_VERSION, MAX_CONTROL_MESSAGE_BYTES, controlProofContext,
  decodeWorkerMessage, encodeMessage, type ResumeState, type WorkerMessage,
} from '../comm/control.ts';
import { EpochSampler } from '../data/sampler.ts';
import { totalSteps, type Recipe } from '../train/recipe.ts';
import { learningRate } from '../train/schedule.ts';
import { paramDigest } from '../train/digest.ts';
import type { Logger } from '../cli/logging.ts';
import { writeCheckpoint, type CheckpointMeta, type CheckpointState, type LoadedCheckpoint } from './checkpoint.ts';
import { MetricsLog } from './metrics.ts';
import { ProgressPrinter } from './progress.ts';
import { WorkerLink } from './worker-link.ts';

/** How long a connecting worker has to answer the challenge. */
const HELLO_TIMEOUT_MS = 30_000;
/** How long workers get to connect the ring, load data and build the model. */
const READY_TIMEOUT_MS = 600_000;

export interface CoordinatorOptions {
  workers: number;
  recipe: Recipe;
  outDir: string;
  token: string;
  host: string;
  /** 0 picks a free port; `listen` returns the bound one. */
  port: number;
  joinTimeoutMs: number;
  stepTimeoutMs: number;
  /** The checkpoint to continue from, already read and verified. */
  resume: LoadedCheckpoint | null;
  logger: Logger;
  /** Prints human-readable progress to stdout. */
  progress: boolean;
}

export interface RunSummary {
  runId: string;
  steps: number;
  testAccuracy: number | null;
  paramDigest: string;
  checkpoint: string | null;
}

export class DesyncError extends Error {
  constructor(step: number, digests: string[]) {
    const groups = new Map<string, number[]>();
    digests.forEach((d, rank) => groups.set(d, [...(groups.get(d) ?? []), rank]));
    const detail = [...groups].map(([d, ranks]) => `rank${ranks.length > 1 ? 's' : ''} ${ranks.join(',')}: ${d}`).join('; ');
    super(`desync after step ${step}: workers hold different parameters (${detail})`);
    this.name = 'DesyncError';
  }
}

export class RunError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RunError';
  }
}

type Reply<T extends WorkerMessage['type']> = Extract<WorkerMessage, { type: T }>;

export class Coordinator {
  readonly runId = randomUUID();
  readonly outDir: string;
  readonly token: string;
  private server: WebSocketServer | null = null;
  private links: WorkerLink[] = [];
  private joinWaiter: (() => void) | null = null;
  private nextWorkerId = 0;
  private readonly metrics: MetricsLog;
  private readonly checkpointDir: string;

  constructor(private readonly options: CoordinatorOptions) {
    this.outDir = options.outDir;
    this.token = options.token;
    mkdirSync(options.outDir, { recursive: true });
    this.metrics = new MetricsLog(join(options.outDir, 'metrics.jsonl'));
    this.checkpointDir = join(options.outDir, 'checkpoints');
  }

  /** Starts listening; resolves with the bound address. */
  async listen(): Promise<AddressInfo> {
    const { host, port, workers, logger } = this.options;
    const server = new WebSocketServer({ host, port, maxPayload: MAX_CONTROL_MESSAGE_BYTES, perMessageDeflate: false });
    this.server = server;
    server.on('connection', (socket) => this.admit(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    const address = server.address() as AddressInfo;
    logger.info({ host: address.address, port: address.port, workers, runId: this.runId }, 'coordinator listening');
    return address;
  }

  /** Challenges a new connection, checks its token proof and protocol version, then adds the worker. */
  private admit(socket: WebSocket): void {
    const { logger, token, workers } = this.options;
    const nonce = makeNonce();
    const refuse = (code: number, reason: string, log: object): void => {
      logger.warn(log, `refused a worker: ${reason}`);
      socket.close(code, reason.slice(0, 120));
    };
    const timer = setTimeout(() => refuse(CLOSE_CODES.badMessage, 'no hello in time', {}), HELLO_TIMEOUT_MS);
    socket.once('message', (data: Buffer) => {
      clearTimeout(timer);
      let hello: WorkerMessage;
      try {
        hello = decodeWorkerMessage(data, 'a joining worker');
      } catch (err) {
        return refuse(CLOSE_CODES.badMessage, (err as Error).message, {});
      }
      if (hello.type !== 'hello') return refuse(CLOSE_CODES.badMessage, `expected 'hello', got '${hello.type}'`, {});
      const who = { host: hello.host, pid: hello.pid };
      if (hello.protocol !== CONTROL_PROTOCOL_VERSION) {
        return refuse(CLOSE_CODES.badProtocol, `protocol version ${hello.protocol} is not supported; the coordinator speaks version ${CONTROL_PROTOCOL_VERSION}`, who);
      }
      if (!(hello.proof instanceof Uint8Array) || !verifyProof(token, nonce, controlProofContext(this.runId), hello.proof)) {
        return refuse(CLOSE_CODES.badToken, 'wrong token', who);
      }
      if (this.links.length >= workers) return refuse(CLOSE_CODES.runFull, `the run already has its ${workers} workers`, who);
      const link = new WorkerLink(socket, this.nextWorkerId++, { host: hello.host, pid: hello.pid, backend: hello.backend });
      this.links.push(link);
      link.onClose = () => {
        // Before ranks are assigned a worker may leave and another take its place.
        if (link.rank < 0) this.links = this.links.filter((l) => l !== link);
      };
      logger.info({ worker: link.workerId, ...who, backend: hello.backend, joined: this.links.length, of: workers }, 'worker joined');
      link.send({ type: 'welcome', workerId: link.workerId, waitingFor: workers - this.links.length });
      this.joinWaiter?.();
    });
    socket.send(encodeMessage({ type: 'challenge', protocol: CONTROL_PROTOCOL_VERSION, runId: this.runId, nonce }));
  }

  private async waitForWorkers(): Promise<void> {
    const { workers, joinTimeoutMs } = this.options;
    const deadline = Date.now() + joinTimeoutMs;
    while (this.links.length < workers) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        throw new RunError(`only ${this.links.length} of ${workers} workers joined within ${Math.round(joinTimeoutMs / 1000)} s (--join-timeout)`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.joinWaiter = () => { clearTimeout(timer); resolve(); };
      });
      this.joinWaiter = null;
    }
  }

  /** Waits for one reply of `type` from every rank, failing fast on the first worker that fails. */
  private gather<T extends WorkerMessage['type']>(type: T, timeoutMs: number): Promise<Reply<T>[]> {
    return Promise.all(this.links.map((link) => link.expect(type, timeoutMs)));
  }

  private broadcastStop(reason: string, code: number): void {
    for (const link of this.links) {
      if (!link.failed) {
        link.send({ type: 'stop', reason });
        link.close(code, reason);
      }
    }
  }

  /** Runs the whole training; rejects on any failure after telling the surviving workers to stop. */
  async run(): Promise<RunSummary> {
    try {
      const summary = await this.train();
      this.broadcastStop('run complete', CLOSE_CODES.runComplete);
      return summary;
    } catch (err) {
      const message = (err as Error).message;
      this.options.logger.error({ err: message }, 'run failed');
      for (const link of this.links) {
        if (!link.failed) link.fail(new RunError(`stopped: ${message}`), CLOSE_CODES.runFailed);
      }
      throw err;
    } finally {
      await this.close();
    }
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async train(): Promise<RunSummary> {
    const { recipe, workers: worldSize, logger, stepTimeoutMs } = this.options;
    const { resume } = this.options;
    if (resume) logger.info({ checkpoint: resume.path, step: resume.meta.step }, 'resuming');
    const startStep = resume?.meta.step ?? 0;

    await this.waitForWorkers();
    // Ranks follow join order. Each worker opens its ring server only once it knows its rank and
    // the generation, then the coordinator hands everyone the ring's addresses.
    const generation = 0;
    this.links.forEach((link, rank) => {
      link.rank = rank;
      link.send({ type: 'assign', rank, worldSize, generation, recipe, startStep, resume: resume ? this.resumeShard(resume.state, resume.meta, rank) : null });
    });
    const peers = (await this.gather('ringListening', READY_TIMEOUT_MS)).map((r) => r.ring);
    for (const link of this.links) link.send({ type: 'ringPeers', generation, peers });

    const ready = await this.gather('ready', READY_TIMEOUT_MS);
    const first = ready[0]!;
    for (const r of ready) {
      if (r.numParams !== first.numParams || r.trainSize !== first.trainSize || r.testSize !== first.testSize) {
        throw new RunError(`workers disagree on the setup: rank 0 has ${first.numParams} parameters and ${first.trainSize}/${first.testSize} train/test samples, rank ${r.rank} has ${r.numParams} and ${r.trainSize}/${r.testSize}`);
      }
    }
    if (resume && first.numParams !== resume.meta.numParams) {
      throw new RunError(`checkpoint has ${resume.meta.numParams} parameters but the recipe's model has ${first.numParams}`);
    }
    let digest = this.checkDigests(ready.map((r) => r.paramDigest), startStep);
    if (resume && digest !== resume.meta.paramDigest) {
      throw new RunError(`workers loaded the checkpoint but hold digest ${digest}, the checkpoint recorded ${resume.meta.paramDigest}`);
    }
    logger.info({ workers: worldSize, numParams: first.numParams, backends: this.links.map((l) => l.info.backend), digest }, 'all workers ready');

    const sampler = new EpochSampler(first.trainSize, recipe.globalBatch, recipe.seed);
    const steps = totalSteps(recipe, sampler.stepsPerEpoch);
    if (startStep >= steps) throw new RunError(`the checkpoint is at step ${startStep}, the run has only ${steps} steps: nothing to do`);
    const schedule = { baseLr: recipe.optimizer.lr, minLr: recipe.schedule.minLr, warmupSteps: recipe.schedule.warmupSteps, totalSteps: steps };
    if (resume) this.metrics.truncateAfter(startStep);
    const progress = new ProgressPrinter(this.options.progress, steps, startStep);
    let testAccuracy: number | null = null;
    let checkpoint: string | null = resume?.path ?? null;
    let optimizerStep = resume?.meta.optimizerStep ?? 0;

    for (let step = startStep; step < steps; step++) {
      const started = performance.now();
      const lr = learningRate(schedule, step);
      this.links.forEach((link, rank) => link.send({ type: 'step', step, lr, indices: sampler.slice(step, rank, worldSize) }));
      const reports = await this.gather('stepDone', stepTimeoutMs);
      const completed = step + 1;
      digest = this.checkDigests(reports.map((r) => r.paramDigest), completed);
      optimizerStep += 1;
      const seconds = (performance.now() - started) / 1000;
      const count = reports.reduce((a, r) => a + r.count, 0);
      if (count !== recipe.globalBatch) throw new RunError(`step ${step}: workers processed ${count} samples, the global batch is ${recipe.globalBatch}`);
      const record = {
        kind: 'step' as const,
        step: completed,
        epoch: sampler.epochOf(step),
        loss: reports.reduce((a, r) => a + r.lossSum, 0) / count,
        accuracy: reports.reduce((a, r) => a + r.correct, 0) / count,
        lr,
        gradNorm: reports[0]!.gradNorm,
        paramDigest: digest,
        workers: worldSize,
        imagesPerSec: count / seconds,
        computeMs: Math.max(...reports.map((r) => r.computeMs)),
        commMs: Math.max(...reports.map((r) => r.commMs)),
        time: new Date().toISOString(),
      };
      this.metrics.append(record);
      logger.debug(record, 'step');
      progress.step(record);

      const last = completed === steps;
      if (completed % sampler.stepsPerEpoch === 0 || last) {
        testAccuracy = await this.evaluate(completed, sampler.epochOf(step), first.testSize, stepTimeoutMs, progress);
      }
      if (completed % recipe.checkpointEvery === 0 || last) {
        checkpoint = await this.saveCheckpoint(completed, first.numParams, optimizerStep, digest, stepTimeoutMs);
      }
    }
    return { runId: this.runId, steps, testAccuracy, paramDigest: digest, checkpoint };
  }

  /** All ranks must report the same digest; otherwise the run is stopped, naming the ranks. */
  private checkDigests(digests: string[], step: number): string {
    if (digests.some((d) => d !== digests[0])) throw new DesyncError(step, digests);
    return digests[0]!;
  }

  private resumeShard(state: CheckpointState, meta: CheckpointMeta, rank: number): ResumeState {
    const { start, end } = shardRange(meta.numParams, this.options.workers, rank);
    return { params: state.params, m: state.m.slice(start, end), v: state.v.slice(start, end), optimizerStep: meta.optimizerStep };
  }

  /** Data-parallel evaluation on the test split: each rank a contiguous slice, counts summed. */
  private async evaluate(completed: number, epoch: number, testSize: number, timeoutMs: number, progress: ProgressPrinter): Promise<number> {
    const worldSize = this.links.length;
    this.links.forEach((link, rank) => link.send({ type: 'eval', step: completed, ...shardRange(testSize, worldSize, rank) }));
    const results = await this.gather('evalDone', timeoutMs);
    const samples = results.reduce((a, r) => a + r.count, 0);
    if (samples !== testSize) throw new RunError(`evaluation covered ${samples} samples, the test split has ${testSize}`);
    const testAccuracy = results.reduce((a, r) => a + r.correct, 0) / samples;
    const testLoss = results.reduce((a, r) => a + r.lossSum, 0) / samples;
    this.metrics.append({ kind: 'eval', step: completed, epoch, testAccuracy, testLoss, samples, time: new Date().toISOString() });
    this.options.logger.info({ step: completed, epoch, testAccuracy, testLoss }, 'evaluation');
    progress.evaluation(completed, epoch, testAccuracy, testLoss);
    return testAccuracy;
  }

  /** Collects every rank's shard of parameters and optimizer state and writes one checkpoint. */
  private async saveCheckpoint(completed: number, numParams: number, optimizerStep: number, digest: string, timeoutMs: number): Promise<string> {
    for (const link of this.links) link.send({ type: 'snapshot', step: completed });
    const shards = await this.gather('snapshotData', timeoutMs);
    const state: CheckpointState = { params: new Float32Array(numParams), m: new Float32Array(numParams), v: new Float32Array(numParams) };
    shards.forEach((shard, rank) => {
      const { start, end } = shardRange(numParams, this.links.length, rank);
      if (shard.start !== start || shard.end !== end || shard.params.length !== end - start || shard.m.length !== end - start || shard.v.length !== end - start) {
        throw new RunError(`rank ${rank} sent a snapshot of [${shard.start}, ${shard.end}), expected [${start}, ${end})`);
      }
      state.params.set(shard.params, start);
      state.m.set(shard.m, start);
      state.v.set(shard.v, start);
    });
    const assembled = paramDigest(state.params);
    if (assembled !== digest) throw new RunError(`the snapshot shards assemble to digest ${assembled}, but every rank reported ${digest}`);
    const meta: CheckpointMeta = {
      runId: this.runId, step: completed, recipe: this.options.recipe, numParams, worldSize: this.links.length,
      optimizerStep, sampler: { seed: this.options.recipe.seed, step: completed }, paramDigest: digest,
    };
    const path = writeCheckpoint(this.checkpointDir, meta, state);
    this.options.logger.info({ step: completed, path }, 'checkpoint written');
    return path;
  }
}
