// The coordinator: admits workers (token proof, protocol version), runs the ring generation by
// generation, and recovers from failures. When a worker dies or is cut off, the generation in
// flight is abandoned everywhere, the survivors wait for a replacement (or carry on with at least
// --min-workers), and a new generation restarts from the last checkpoint: the replayed steps are
// exact, so the run ends with the parameters it would have had without the failure.
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { mkdirSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { WebSocketServer, type WebSocket } from 'ws';
import { makeNonce, verifyProof } from '../comm/auth.ts';
import {
  CLOSE_CODES,
  CONTROL_PROTOCOL_VERSION,
  MAX_CONTROL_MESSAGE_BYTES,
  controlProofContext,
  decodeWorkerMessage,
  encodeMessage,
  type WorkerMessage,
} from '../comm/control.ts';
import type { Recipe } from '../train/recipe.ts';
import { FatalError, VitDistError } from '../common/errors.ts';
import type { Logger } from '../common/logger.ts';
import type { LoadedCheckpoint } from '../train/checkpoint.ts';
import { Generation, MembershipChange, RoundRegroup, type RunContext, type RunSummary, type StartState } from './generation.ts';
import { MetricsLog, type RecordListener } from './metrics.ts';
import { ProgressPrinter } from './progress.ts';
import { RunStatus, stragglerNote } from './run-status.ts';
import { WorkerLink } from './worker-link.ts';

/** How long a connecting worker has to answer the challenge. */
const HELLO_TIMEOUT_MS = 30_000;
export const HEALTH_PATH = '/healthz';

export interface CoordinatorOptions {
  workers: number;
  /**
   * Hot spares: workers admitted beyond `workers`, which wait connected and take a failed member's
   * place in the next generation at once instead of the run waiting for a replacement to start.
   */
  spares: number;
  /** The fewest workers a generation may run with after a failure; `workers` by default. */
  minWorkers: number;
  /** DiLoCo: how long after the first worker finishes a round's inner steps the others have; null: --step-timeout. */
  roundDeadlineMs: number | null;
  recipe: Recipe;
  outDir: string;
  token: string;
  host: string;
  /** 0 picks a free port; `listen` returns the bound one. */
  port: number;
  joinTimeoutMs: number;
  /** After a failure, how long to wait for replacements before going on with fewer workers. */
  rejoinTimeoutMs: number;
  stepTimeoutMs: number;
  heartbeatTimeoutMs: number;
  /** Failures the run recovers from before it gives up. */
  maxRestarts: number;
  /** The checkpoint to continue from, already read and verified. */
  resume: LoadedCheckpoint | null;
  /** Without a checkpoint: the parameters step 0 starts from (--init) instead of the seed's initialization. */
  initialParams: Float32Array | null;
  /** PEM certificate and key files: serve wss:// (and https health checks) instead of ws://. */
  tls: { certFile: string; keyFile: string } | null;
  logger: Logger;
  /** Prints human-readable progress to stdout. */
  progress: boolean;
}

/** A worker the coordinator declared lost (and fenced), for whoever supervises its process. */
export interface LostWorker {
  workerId: number;
  host: string;
  pid: number;
  reason: string;
}

/** A handler for one HTTP path of the coordinator's port. */
export type HttpRoute = (req: IncomingMessage, res: ServerResponse) => void;

type Phase = 'waiting' | 'training' | 'recovering' | 'done' | 'failed';

export class Coordinator {
  readonly runId = randomUUID();
  readonly outDir: string;
  readonly token: string;
  readonly tls: CoordinatorOptions['tls'];
  private http: Server | null = null;
  private wss: WebSocketServer | null = null;
  /** Every connected, admitted worker: in the ring or waiting to join it. */
  private links: WorkerLink[] = [];
  private joinWaiter: (() => void) | null = null;
  private nextWorkerId = 0;
  private phase: Phase = 'waiting';
  private stopRequested = false;
  private readonly context: RunContext;
  private readonly routes = new Map<string, HttpRoute>();
  /** What the status page shows; kept from the run's records and rings. */
  readonly status: RunStatus;
  private readonly lostListeners: ((worker: LostWorker) => void)[] = [];

  constructor(private readonly options: CoordinatorOptions) {
    this.outDir = options.outDir;
    this.token = options.token;
    this.tls = options.tls;
    mkdirSync(options.outDir, { recursive: true });
    const metrics = new MetricsLog(join(options.outDir, 'metrics.jsonl'));
    this.status = new RunStatus(
      {
        runId: this.runId,
        recipe: options.recipe,
        outDir: options.outDir,
        startedAt: new Date().toISOString(),
        workers: options.workers,
        generation: null,
        ended: null,
      },
      true,
      metrics.read(),
    );
    metrics.onAppend((record) => this.status.record(record));
    this.context = {
      runId: this.runId,
      recipe: options.recipe,
      workers: options.workers,
      minWorkers: options.minWorkers,
      roundDeadlineMs: options.roundDeadlineMs,
      stepTimeoutMs: options.stepTimeoutMs,
      checkpointDir: join(options.outDir, 'checkpoints'),
      logger: options.logger,
      metrics,
      progress: new ProgressPrinter(options.progress),
      restarts: 0,
      lastCheckpoint: options.resume,
      stopRequested: () => this.stopRequested,
      waitingJoiners: () => this.links.filter((l) => l.rank < 0).length,
      generationStarted: (start) => this.status.generationStarted(start),
    };
    this.status.onStragglerChange((change, member) => {
      options.logger.warn({ ...change, member }, change.straggling ? 'straggler' : 'straggler recovered');
      this.context.progress.note(stragglerNote(change, member));
    });
  }

  /** Serves `path` (without its query) on the coordinator's port, beside the WebSocket and /healthz; call before listen. */
  route(path: string, handler: HttpRoute): void {
    if (path === HEALTH_PATH || this.routes.has(path)) throw new Error(`the coordinator already serves ${path}`);
    this.routes.set(path, handler);
  }

  /** Every record the run appends to metrics.jsonl, as it is appended. */
  onRecord(listener: RecordListener): void {
    this.context.metrics.onAppend(listener);
  }

  /**
   * Every worker the coordinator declares lost (silent past --heartbeat-timeout, or no abort
   * acknowledgement), as it is fenced: its generation is over and its connection closed, but its
   * process may still exist, stopped or hung. `launch` kills and replaces such a process.
   */
  onWorkerLost(listener: (worker: LostWorker) => void): void {
    this.lostListeners.push(listener);
  }

  /** Starts listening (WebSocket for workers, GET /healthz for probes); resolves with the bound address. */
  async listen(): Promise<AddressInfo> {
    const { host, port, workers, logger } = this.options;
    const respond = (req: IncomingMessage, res: ServerResponse): void => {
      const route = this.routes.get(new URL(req.url ?? '/', 'http://coordinator').pathname);
      if (route) {
        route(req, res);
        return;
      }
      const ok = req.method === 'GET' && req.url === HEALTH_PATH && this.phase !== 'failed';
      res.writeHead(ok ? 200 : req.url === HEALTH_PATH ? 503 : 404, { 'content-type': 'application/json' });
      res.end(JSON.stringify(this.health()));
    };
    const { tls } = this.options;
    const http = tls
      ? createTlsServer({ cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) }, respond)
      : createServer(respond);
    this.http = http;
    this.wss = new WebSocketServer({ server: http, maxPayload: MAX_CONTROL_MESSAGE_BYTES, perMessageDeflate: false });
    this.wss.on('connection', (socket) => this.admit(socket));
    await new Promise<void>((resolve, reject) => {
      http.once('error', reject);
      http.listen(port, host, () => resolve());
    });
    const address = http.address() as AddressInfo;
    logger.info({ host: address.address, port: address.port, tls: tls !== null, workers, runId: this.runId }, 'coordinator listening');
    return address;
  }

  private health(): object {
    return {
      status: this.phase === 'failed' ? 'failed' : 'ok',
      phase: this.phase,
      runId: this.runId,
      workers: this.links.length,
      restarts: this.context.restarts,
      lastCheckpointStep: this.context.lastCheckpoint?.meta.step ?? null,
    };
  }

  /** Asks the run to stop at the next step boundary, after a checkpoint (SIGTERM). */
  requestStop(): void {
    this.stopRequested = true;
    this.joinWaiter?.();
  }

  /** Challenges a new connection, checks its token proof and protocol version, then adds the worker. */
  private admit(socket: WebSocket): void {
    const { logger, token, workers, spares, heartbeatTimeoutMs } = this.options;
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
        return refuse(
          CLOSE_CODES.badProtocol,
          `protocol version ${hello.protocol} is not supported; the coordinator speaks version ${CONTROL_PROTOCOL_VERSION}`,
          who,
        );
      }
      if (!(hello.proof instanceof Uint8Array) || !verifyProof(token, nonce, controlProofContext(this.runId), hello.proof)) {
        return refuse(CLOSE_CODES.badToken, 'wrong token', who);
      }
      if (this.links.length >= workers + spares)
        return refuse(
          CLOSE_CODES.runFull,
          `the run already has its ${workers} workers${spares > 0 ? ` and ${spares} spare${spares === 1 ? '' : 's'}` : ''}`,
          who,
        );
      if (this.phase === 'done' || this.phase === 'failed') return refuse(CLOSE_CODES.runComplete, `the run is ${this.phase}`, who);
      const link = new WorkerLink(
        socket,
        this.nextWorkerId++,
        { host: hello.host, pid: hello.pid, backend: hello.backend, gpu: hello.gpu ?? null },
        heartbeatTimeoutMs,
      );
      this.links.push(link);
      link.onClose = () => {
        this.links = this.links.filter((l) => l !== link);
        logger.warn({ worker: link.name }, 'worker left');
      };
      link.onLost = (reason) => {
        logger.warn({ worker: link.name, ...who, reason }, 'worker declared lost and fenced');
        for (const listener of this.lostListeners) listener({ workerId: link.workerId, ...who, reason });
      };
      logger.info({ worker: link.workerId, ...who, backend: hello.backend, joined: this.links.length, of: workers }, 'worker joined');
      link.send({
        type: 'welcome',
        workerId: link.workerId,
        waitingFor: Math.max(0, workers - this.links.length),
        recipe: this.options.recipe,
      });
      this.joinWaiter?.();
    });
    socket.send(encodeMessage({ type: 'challenge', protocol: CONTROL_PROTOCOL_VERSION, runId: this.runId, nonce }));
  }

  /**
   * Waits until `workers` workers are connected; when `timeoutMs` runs out, goes on with at least
   * `minWorkers` or fails. The longest connected are taken: survivors, then spares in join order.
   */
  private async waitForWorkers(timeoutMs: number, flag: string): Promise<WorkerLink[]> {
    const { workers, minWorkers } = this.options;
    const deadline = Date.now() + timeoutMs;
    while (this.links.length < workers && !this.stopRequested) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.joinWaiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.joinWaiter = null;
    }
    if (this.stopRequested) throw new FatalError('STOPPED', 'stopped on request while waiting for workers');
    if (this.links.length < minWorkers) {
      const wanted = minWorkers < workers ? `at least ${minWorkers} (--min-workers) of ${workers}` : `${workers}`;
      throw new FatalError(
        'TOO_FEW_WORKERS',
        `only ${this.links.length} of ${wanted} workers joined within ${Math.round(timeoutMs / 1000)} s (${flag})`,
      );
    }
    return this.links.slice(0, workers);
  }

  /** Runs the whole training; on an unrecoverable failure tells the workers to stop and rejects. */
  async run(): Promise<RunSummary> {
    try {
      this.phase = 'training';
      const summary = await this.supervise();
      this.phase = 'done';
      this.status.end(summary.stopped ? 'stopped' : 'finished');
      for (const link of this.links) {
        link.send({ type: 'stop', reason: summary.stopped ? 'run stopped on request' : 'run complete' });
        link.close(CLOSE_CODES.runComplete, 'run complete');
      }
      return summary;
    } catch (err) {
      this.phase = 'failed';
      const message = (err as Error).message;
      this.status.end('failed', message);
      this.options.logger.error({ err: message }, 'run failed');
      for (const link of this.links) link.close(CLOSE_CODES.runFailed, `run failed: ${message}`);
      throw err;
    } finally {
      await this.close();
    }
  }

  /** Generation after generation until the run ends or fails beyond --max-restarts. */
  private async supervise(): Promise<RunSummary> {
    const { logger, maxRestarts, joinTimeoutMs, rejoinTimeoutMs } = this.options;
    const context = this.context;
    let start = this.startFromLastCheckpoint();
    // A restart drops what was logged after its starting point: a step logged twice would count twice.
    context.metrics.truncateAfter(start.step);
    let generation = 0;
    let members = await this.waitForWorkers(joinTimeoutMs, '--join-timeout');
    for (;;) {
      try {
        return await new Generation(context, members, generation, start).run();
      } catch (err) {
        if (err instanceof RoundRegroup) {
          generation += 1;
          const regrouped = this.regroup(err, generation);
          members = regrouped.members;
          start = regrouped.start;
          continue;
        }
        // Any error not of ours is a bug: it stops the run.
        const recoverable = err instanceof VitDistError && err.kind === 'recoverable';
        if (!(err instanceof MembershipChange) && !recoverable) throw err;
        logger.warn({ cause: (err as Error).message, generation }, 'generation ended');
        if (recoverable) {
          if (context.restarts >= maxRestarts) {
            throw new FatalError(
              'RESTARTS_EXHAUSTED',
              `giving up after ${context.restarts} restart${context.restarts === 1 ? '' : 's'} (--max-restarts ${maxRestarts}): ${(err as Error).message}`,
              { cause: err },
            );
          }
          context.restarts += 1;
        }
        const cause = (err as Error).message;
        await this.abandon(members, generation, cause);
        generation += 1;
        start = this.startFromLastCheckpoint();
        context.metrics.truncateAfter(start.step);
        this.phase = 'recovering';
        logger.warn(
          { cause, generation, restarts: context.restarts, resumeStep: start.step },
          recoverable ? 'worker failure: restarting the ring from the last checkpoint' : 'taking in new workers',
        );
        context.progress.note(recoverable ? `restart ${context.restarts}: ${cause}; resuming from step ${start.step}` : `${cause}`);
        members = await this.waitForWorkers(recoverable ? rejoinTimeoutMs : 0, '--rejoin-timeout');
        context.metrics.append({
          kind: 'restart',
          step: start.step,
          generation,
          restarts: context.restarts,
          cause,
          workers: members.length,
          time: new Date().toISOString(),
        });
        this.phase = 'training';
      }
    }
  }

  /**
   * Abandons a generation everywhere: survivors drop the step in flight and their ring, and
   * acknowledge. Waiting for the acknowledgements keeps a worker that died in this failure (its
   * close may still be on its way) out of the next generation, so one failure costs one restart.
   */
  private async abandon(members: WorkerLink[], generation: number, cause: string): Promise<void> {
    const ackTimeoutMs = Math.min(this.options.heartbeatTimeoutMs, this.options.stepTimeoutMs);
    await Promise.all(
      members
        .filter((link) => link.alive)
        .map(async (link) => {
          try {
            link.send({ type: 'abort', generation, reason: cause });
            await link.awaitAbortAck(ackTimeoutMs);
          } catch (err) {
            this.options.logger.warn(
              { worker: link.name, err: (err as Error).message },
              'a worker did not acknowledge the abort; dropping it',
            );
            link.drop('no abort acknowledgement');
          }
        }),
    );
  }

  /**
   * DiLoCo's membership change at a round's end, without a restart from the checkpoint: the
   * stayers keep their state and data slots, waiting workers join (up to --workers) in the lowest
   * free slots, and the new generation starts with the round's outer step.
   */
  private regroup(change: RoundRegroup, generation: number): { members: WorkerLink[]; start: StartState } {
    const { stayers, pending, slotCount } = change;
    const joiners = this.links.filter((link) => link.alive && !stayers.includes(link)).slice(0, this.options.workers - stayers.length);
    const slots = [...change.slots];
    for (let slot = 0; slots.length < stayers.length + joiners.length; slot++) if (!slots.includes(slot)) slots.push(slot);
    const members = [...stayers, ...joiners];
    this.options.logger.warn(
      { step: pending.step, generation, left: change.left, joined: joiners.length, workers: members.length },
      'DiLoCo membership changed at a round end: regrouping without a restart',
    );
    this.context.progress.note(
      `step ${pending.step}: ${change.left} left, ${joiners.length} joined; ${members.length} workers go on from the round's end (no restart)`,
    );
    this.context.metrics.append({
      kind: 'regroup',
      step: pending.step,
      generation,
      left: change.left,
      joined: joiners.length,
      workers: members.length,
      time: new Date().toISOString(),
    });
    return {
      members,
      start: {
        step: pending.step,
        checkpoint: null,
        initialParams: null,
        regroup: { pending, stayers: stayers.length, slots, slotCount },
      },
    };
  }

  private startFromLastCheckpoint(): StartState {
    const last = this.context.lastCheckpoint;
    // Until the first checkpoint, every (re)start begins at step 0 from the same initial weights.
    return last
      ? { step: last.meta.step, checkpoint: last, initialParams: null, regroup: null }
      : { step: 0, checkpoint: null, initialParams: this.options.initialParams, regroup: null };
  }

  async close(): Promise<void> {
    this.joinWaiter?.();
    const wss = this.wss;
    const http = this.http;
    this.wss = null;
    this.http = null;
    if (wss) await new Promise<void>((resolve) => wss.close(() => resolve()));
    if (http) {
      http.closeAllConnections();
      await new Promise<void>((resolve) => http.close(() => resolve()));
    }
  }
}
