// A worker process: joins the coordinator, and for each ring generation it is assigned takes a
// rank, opens its ring server, connects the ring, then carries out the coordinator's orders one at
// a time (step, eval, snapshot) until the run ends. When the coordinator abandons a generation
// (a peer failed), the worker drops its ring and waits for the next assignment. When the
// coordinator itself goes away, the worker reconnects (reconnect.ts: short retries, then backoff).
import { hostname } from 'node:os';
import { WebSocket } from 'ws';
import { proveToken } from '../comm/auth.ts';
import {
  CLOSE_CODES,
  CONTROL_PROTOCOL_VERSION,
  MAX_CONTROL_MESSAGE_BYTES,
  controlProofContext,
  decodeCoordinatorMessage,
  encodeMessage,
  type CoordinatorMessage,
  type DilocoPlace,
  type ResumeState,
  type WorkerMessage,
} from '../comm/control.ts';
import { seconds, watchWebSocket, type Heartbeat } from '../comm/heartbeat.ts';
import { RingThread } from '../comm/ring-thread.ts';
import type { RingTransport } from '../comm/local-socket.ts';
import { BatchLoader } from '../data/loader.ts';
import { mixConfigOf } from '../data/mixup.ts';
import { selectBackend, type BackendChoice } from '../model/backend.ts';
import { checkMicroBatchFits } from '../model/memory.ts';
import { createModelConfig } from '../model/registry.ts';
import { loadTeacher } from '../model/teacher.ts';
import { createModel, type ImageClassifier } from '../model/model.ts';
import { initialParams } from '../model/init.ts';
import { FatalError, RecoverableError, errorKind } from '../common/errors.ts';
import type { Logger } from '../common/logger.ts';
import type { ElementRange } from '../common/shard.ts';
import { optimizerConfigOf } from '../train/optimizer.ts';
import { validateRecipe, type Recipe } from '../train/recipe.ts';
import { DilocoTrainer } from './diloco-trainer.ts';
import { commOptionsOf, ShardedTrainer, type StepSamples, type Teacher, type TrainerOptions } from './trainer.ts';
import { LoopStallWatch, OrderProgress, serveHealth, type TrackedOrder } from './liveness.ts';
import { ReconnectSchedule } from './reconnect.ts';

/** Close codes after which reconnecting is pointless: the coordinator will refuse again. */
const FATAL_CLOSE_CODES = new Set<number>([CLOSE_CODES.badToken, CLOSE_CODES.badProtocol, CLOSE_CODES.runFailed, CLOSE_CODES.runComplete]);

export interface WorkerOptions {
  coordinatorUrl: string;
  token: string;
  /** Certificate authority to trust for a wss:// coordinator; the system's when null. */
  ca: Buffer | null;
  backend: BackendChoice;
  gpu: number | null;
  /** Address and port (0: any free one) the ring server binds to. */
  ringHost: string;
  ringPort: number;
  /** What the ring neighbour is told to connect to; the bound port when advertisePort is null. */
  advertiseHost: string;
  advertisePort: number | null;
  /** auto: neighbours on this machine dial the ring's Unix socket (src/comm/local-socket.ts); tcp: never. */
  ringTransport: RingTransport;
  /** Overrides the recipe's data path on this host. */
  dataPath: string | null;
  /** Threads that decode and augment images ahead of the model; 0 does it on the main thread. */
  dataThreads: number;
  /** How long to keep trying to (re)connect to the coordinator. */
  reconnectTimeoutMs: number;
  /** Without a ping from the coordinator for this long, the connection counts as cut. */
  heartbeatTimeoutMs: number;
  /** Serves GET /healthz (liveness: 503 once an order is stuck) and /readyz (200 while connected) when set. */
  healthPort: number | null;
  /** A step, evaluation or snapshot in flight for longer than this means the training loop is stuck. */
  stallTimeoutMs: number;
  logger: Logger;
}

type StepOrder = Extract<CoordinatorMessage, { type: 'step' }>;

/** The samples a step order names: this rank's slice of the step's global batch. */
function samplesOf({ indices, repeats, offset, epoch }: StepOrder): StepSamples {
  return { indices, repeats, offset, epoch };
}

/** The model must take the pipelines' output and predict the data's classes. */
function checkDataFitsModel(recipe: Recipe, model: ImageClassifier, train: BatchLoader, test: BatchLoader): void {
  const { imageSize, inChannels, numClasses } = model.config;
  for (const [name, loader, pipeline] of [
    ['training', train, recipe.data.trainPipeline],
    ['evaluation', test, recipe.data.evalPipeline],
  ] as const) {
    const { height, width, channels } = loader.shape;
    if (height !== imageSize || width !== imageSize || channels !== inChannels) {
      throw new FatalError(
        'MODEL_DATA_MISMATCH',
        `model ${recipe.model} takes ${imageSize}x${imageSize}x${inChannels} images, the ${name} pipeline "${pipeline}" makes ${height}x${width}x${channels} from ${recipe.data.path}`,
      );
    }
  }
  if (train.classes.length !== numClasses)
    throw new FatalError(
      'MODEL_DATA_MISMATCH',
      `model ${recipe.model} has ${numClasses} classes, the data at ${recipe.data.path} has ${train.classes.length}`,
    );
}

/** Why a session with the coordinator ended. */
type SessionEnd = { kind: 'stopped' } | { kind: 'lost'; reason: string } | { kind: 'fatal'; error: Error };

/** What outlives one session with the coordinator. */
interface SessionState {
  connected: boolean;
  /** This worker's rank in the generation it trains in; -1 while it waits (a spare, or between generations). */
  rank: number;
  workbench: Workbench | null;
  /** The order in flight, for /healthz; an order stuck in a lost session still counts. */
  progress: OrderProgress;
}

/** Data and model survive generations and reconnects: they depend only on the recipe. */
interface Workbench {
  key: string;
  recipe: Recipe;
  model: ImageClassifier;
  /** The distillation teacher; null when the recipe's distillation mode is none. */
  teacher: Teacher | null;
  train: BatchLoader;
  test: BatchLoader;
}

/** Runs a worker until the run ends; rejects with a clear error when it cannot go on. */
export async function runWorker(options: WorkerOptions): Promise<void> {
  const { logger } = options;
  const backend = await selectBackend({ requested: options.backend, gpu: options.gpu ?? undefined, logger });
  const state: SessionState = { connected: false, rank: -1, workbench: null, progress: new OrderProgress(options.stallTimeoutMs) };
  const health = options.healthPort === null ? null : await serveHealth(options.healthPort, state.progress, () => state);
  // The last time this process was stopped or blocked past the heartbeat timeout, and for how long.
  const stalls: { last: { at: number; ms: number } | null } = { last: null };
  const stallWatch = new LoopStallWatch(options.heartbeatTimeoutMs, (ms) => {
    stalls.last = { at: Date.now(), ms };
    logger.warn({ stalledMs: ms }, 'this process was stopped or blocked for longer than the heartbeat timeout');
  });
  try {
    let deadline = Date.now() + options.reconnectTimeoutMs;
    const schedule = new ReconnectSchedule(Date.now());
    for (;;) {
      const session = new WorkerSession(options, backend.name, state);
      const end = await session.finished;
      await session.close();
      if (end.kind === 'stopped') return;
      if (end.kind === 'fatal') throw end.error;
      // Lost right after a stall (the coordinator's close waits in the socket when a stopped process
      // continues): the coordinator declared this worker lost, fenced its generation and may have
      // given its place to a replacement. Rejoining would make it a zombie of a run that moved on.
      stallWatch.check();
      const recent = stalls.last;
      if (session.wasAdmitted && recent && Date.now() - recent.at <= options.heartbeatTimeoutMs)
        throw new FatalError(
          'FENCED',
          `this worker was stopped or blocked for ${seconds(Math.round(recent.ms))}, longer than --heartbeat-timeout ${seconds(options.heartbeatTimeoutMs)}, and lost the coordinator (${end.reason}): it was declared lost and fenced; exiting instead of rejoining with stale state`,
        );
      if (session.wasAdmitted) {
        // A session that got in resets the budget: this is a new outage, not the same one.
        deadline = Date.now() + options.reconnectTimeoutMs;
        schedule.outage(Date.now());
      }
      if (Date.now() >= deadline)
        throw new FatalError(
          'RECONNECT_TIMEOUT',
          `${end.reason}; gave up reconnecting after ${Math.round(options.reconnectTimeoutMs / 1000)} s (--reconnect-timeout)`,
        );
      const delay = schedule.nextDelayMs(Date.now());
      logger.warn({ reason: end.reason, retryInMs: Math.round(delay) }, 'lost the coordinator; reconnecting');
      await new Promise((r) => setTimeout(r, delay));
    }
  } finally {
    stallWatch.stop();
    health?.close();
    await closeWorkbench(state.workbench);
  }
}

async function closeWorkbench(bench: Workbench | null): Promise<void> {
  if (!bench) return;
  await Promise.all([bench.train.close(), bench.test.close()]);
  bench.teacher?.model.disposeParams();
  bench.model.disposeParams();
}

/** One connection to the coordinator. */
class WorkerSession {
  readonly finished: Promise<SessionEnd>;
  private settle!: (end: SessionEnd) => void;
  private readonly socket: WebSocket;
  /** Orders are handled strictly one after another, in arrival order. */
  private queue: Promise<void> = Promise.resolve();
  /** Step orders received and not yet handled, in order: a step may load the next one's first micro-batch. */
  private readonly queuedSteps: StepOrder[] = [];
  private generation = -1;
  private rank = -1;
  private ring: RingThread | null = null;
  private trainer: ShardedTrainer | DilocoTrainer | null = null;
  private worldSize = 0;
  /** Where an `assign` starts (a checkpoint's state or --init weights), used once the ring is connected. */
  private pendingStart: {
    resume: ResumeState | null;
    init: Float32Array | null;
    diloco: DilocoPlace | null;
    /** The DiLoCo trainer a regrouped member keeps. */
    carried: DilocoTrainer | null;
  } | null = null;
  private readonly heartbeat: Heartbeat;
  wasAdmitted = false;
  /** Set once the session is over: an order still running must not leave anything open behind it. */
  private closed = false;

  constructor(
    private readonly options: WorkerOptions,
    private readonly backend: string,
    private readonly state: SessionState,
  ) {
    let settled = false;
    this.finished = new Promise((resolve) => {
      this.settle = (end) => {
        if (settled) return;
        settled = true;
        state.connected = false;
        state.rank = -1;
        resolve(end);
      };
    });
    const socket = new WebSocket(options.coordinatorUrl, {
      maxPayload: MAX_CONTROL_MESSAGE_BYTES,
      perMessageDeflate: false,
      ...(options.ca ? { ca: options.ca } : {}),
    });
    this.socket = socket;
    // Both ends ping several times per heartbeat timeout; silence means the link was cut. Backward
    // passes block this loop: the heartbeat reads what arrived before it judges (heartbeat.ts).
    this.heartbeat = watchWebSocket(socket, {
      timeoutMs: options.heartbeatTimeoutMs,
      onSilence: () => {
        socket.terminate();
        this.settle({ kind: 'lost', reason: `no heartbeat from the coordinator for ${seconds(options.heartbeatTimeoutMs)}` });
      },
    });
    socket.on('message', (data: Buffer) => this.receive(data));
    socket.on('close', (code: number, reason: Buffer) => {
      const text = reason.toString() || 'no reason given';
      if (code === CLOSE_CODES.runComplete) return this.settle({ kind: 'stopped' });
      if (FATAL_CLOSE_CODES.has(code))
        return this.settle({
          kind: 'fatal',
          error: new FatalError('COORDINATOR_CLOSED', `the coordinator closed the connection (code ${code}: ${text})`),
        });
      this.settle({ kind: 'lost', reason: `the coordinator closed the connection (code ${code}: ${text})` });
    });
    socket.on('error', (err: Error) =>
      this.settle({ kind: 'lost', reason: `cannot reach the coordinator at ${options.coordinatorUrl}: ${err.message}` }),
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    this.heartbeat.stop();
    await this.dropGeneration();
    if (this.socket.readyState <= WebSocket.OPEN) this.socket.terminate();
  }

  private send(message: WorkerMessage): void {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(encodeMessage(message));
  }

  /** Runs one order of the training loop with its progress visible on /healthz. */
  private async tracked<T>(order: TrackedOrder, step: number, work: () => Promise<T>): Promise<T> {
    this.state.progress.begin(order, step);
    try {
      return await work();
    } finally {
      this.state.progress.end();
    }
  }

  private receive(data: Buffer): void {
    let message: CoordinatorMessage;
    try {
      message = decodeCoordinatorMessage(data, 'the coordinator');
    } catch (err) {
      return this.settle({ kind: 'fatal', error: err as Error });
    }
    // An abort must not wait behind the step it abandons: closing the ring makes that step fail fast.
    if (message.type === 'abort') {
      const { generation } = message;
      if (generation === this.generation) {
        this.options.logger.warn({ generation, reason: message.reason }, 'generation abandoned');
        this.generation = -1;
        this.state.rank = -1;
      }
      // The acknowledgement tells the coordinator this worker is alive and out of the old ring.
      void this.dropGeneration().then(() => this.send({ type: 'aborted', generation }));
      return;
    }
    const generation = 'generation' in message ? message.generation : this.generation;
    if (message.type === 'step') this.queuedSteps.push(message);
    this.queue = this.queue
      .then(() => this.handle(message))
      .catch((err: Error) => {
        // Errors of an abandoned generation (the ring closed under a step) are expected.
        if (generation !== this.generation)
          return this.options.logger.debug({ err: err.message, generation }, 'order of an abandoned generation failed');
        this.options.logger.error({ err: err.message, generation }, 'order failed');
        this.send({ type: 'failed', generation, message: err.message, fatal: errorKind(err) !== 'recoverable' });
      });
  }

  private async dropGeneration(): Promise<void> {
    this.trainer = null;
    const ring = this.ring;
    this.ring = null;
    await ring?.close();
  }

  private async handle(message: CoordinatorMessage): Promise<void> {
    const { logger } = this.options;
    switch (message.type) {
      case 'challenge': {
        if (message.protocol !== CONTROL_PROTOCOL_VERSION) {
          return this.settle({
            kind: 'fatal',
            error: new FatalError(
              'PROTOCOL_VERSION',
              `the coordinator speaks protocol version ${message.protocol}, this worker speaks ${CONTROL_PROTOCOL_VERSION}`,
            ),
          });
        }
        const proof = proveToken(this.options.token, message.nonce, controlProofContext(message.runId));
        this.send({
          type: 'hello',
          protocol: CONTROL_PROTOCOL_VERSION,
          proof,
          backend: this.backend,
          host: hostname(),
          pid: process.pid,
          gpu: this.options.gpu,
        });
        return;
      }
      case 'welcome':
        this.wasAdmitted = true;
        this.state.connected = true;
        logger.info({ workerId: message.workerId, waitingFor: message.waitingFor }, 'joined the coordinator');
        if (message.recipe !== undefined) await this.prepare(message.recipe);
        return;
      case 'assign': {
        // A DiLoCo member that stays at a round's end keeps its trainer (outer and inner state) for the new ring.
        let carried: DilocoTrainer | null = null;
        if (message.diloco?.carry) {
          if (!(this.trainer instanceof DilocoTrainer))
            throw new RecoverableError(
              'DILOCO_NOTHING_TO_CARRY',
              'the coordinator asked to keep a DiLoCo trainer this worker does not have',
            );
          carried = this.trainer;
        }
        await this.dropGeneration();
        this.generation = message.generation;
        this.rank = message.rank;
        this.state.rank = message.rank;
        this.worldSize = message.worldSize;
        let bench: Workbench;
        try {
          bench = await this.workbench(validateRecipe(message.recipe, 'the recipe sent by the coordinator'));
        } catch (err) {
          throw new FatalError('WORKER_SETUP', (err as Error).message, { cause: err });
        }
        if (message.resume && message.resume.params.length !== bench.model.numParams) {
          throw new FatalError(
            'CHECKPOINT_MODEL_MISMATCH',
            `the checkpoint holds ${message.resume.params.length} parameters, model ${bench.recipe.model} has ${bench.model.numParams}`,
          );
        }
        if (message.init && message.init.length !== bench.model.numParams) {
          throw new FatalError(
            'INIT_MODEL_MISMATCH',
            `the initial weights hold ${message.init.length} parameters, model ${bench.recipe.model} has ${bench.model.numParams}`,
          );
        }
        logger.info(
          { rank: message.rank, worldSize: message.worldSize, generation: message.generation, startStep: message.startStep },
          'assigned',
        );
        const ring = await RingThread.listen({
          rank: message.rank,
          worldSize: message.worldSize,
          generation: message.generation,
          token: this.options.token,
          host: this.options.ringHost,
          port: this.options.ringPort,
          // An advertised port is a proxy or NAT in front of the ring: neighbours must go through it.
          localSocket: this.options.ringTransport === 'auto' && this.options.advertisePort === null,
          heartbeatTimeoutMs: this.options.heartbeatTimeoutMs,
          logger,
        });
        // Abandoned, or this session closed, while the server was starting: nobody else would close
        // it, and it would hold --ring-port against every later generation.
        if (this.closed || this.generation !== message.generation) {
          await ring.close();
          return;
        }
        this.ring = ring;
        this.pendingStart = { resume: message.resume, init: message.init, diloco: message.diloco, carried };
        this.send({
          type: 'ringListening',
          generation: message.generation,
          rank: message.rank,
          ring: { ...this.ring.address, host: this.options.advertiseHost, port: this.options.advertisePort ?? this.ring.address.port },
        });
        return;
      }
      case 'ringPeers': {
        const ring = this.requireRing();
        const bench = this.state.workbench!;
        await ring.connect(message.peers);
        logger.info({ rank: this.rank, worldSize: this.worldSize, generation: this.generation }, 'ring connected');
        const { resume, init, diloco, carried } = this.pendingStart ?? { resume: null, init: null, diloco: null, carried: null };
        this.pendingStart = null;
        const { recipe, model, teacher, train, test } = bench;
        const trainerOptions: TrainerOptions = {
          rank: this.rank,
          worldSize: this.worldSize,
          globalBatch: recipe.globalBatch,
          microBatch: recipe.microBatch,
          clipNorm: recipe.clipNorm,
          optimizer: optimizerConfigOf(recipe),
          ema: recipe.ema,
          comm: commOptionsOf(recipe),
          training: {
            seed: recipe.seed,
            regularization: recipe.regularization,
            distillationAlpha: recipe.distillation.alpha,
            loss: recipe.loss ?? 'softmax_xent',
            teacher,
            mixup: recipe.data.mixup ? mixConfigOf(recipe.data.mixup, recipe.regularization.labelSmoothing) : null,
          },
        };
        const startParams = resume ? resume.params : (init ?? initialParams(model, recipe));
        const { sync } = recipe;
        if (carried) {
          carried.rebind(ring, trainerOptions);
          this.trainer = carried;
        } else
          this.trainer =
            sync?.mode === 'diloco'
              ? await DilocoTrainer.create(
                  model,
                  ring,
                  train,
                  trainerOptions,
                  sync,
                  diloco?.slots ?? this.worldSize,
                  this.generation,
                  startParams,
                  resume,
                )
              : new ShardedTrainer(model, ring, train, trainerOptions, startParams, resume);
        this.send({
          type: 'ready',
          generation: this.generation,
          rank: this.rank,
          paramDigest: this.trainer.digest(),
          numParams: model.numParams,
          trainSize: train.size,
          testSize: test.size,
        });
        return;
      }
      case 'step': {
        // Every step order is queued on arrival, so it is the first here.
        this.queuedSteps.shift();
        const upcoming = this.queuedSteps[0];
        const next = upcoming?.generation === message.generation ? samplesOf(upcoming) : null;
        const result = await this.tracked('step', message.step, () =>
          this.requireTrainer().step(message.step, samplesOf(message), message.lr, next),
        );
        for (const name of result.skipped)
          logger.warn({ image: name, step: message.step }, 'corrupt image skipped (data.skipCorrupt): its successor took its place');
        this.send({ type: 'stepDone', generation: message.generation, step: message.step, ...result });
        const trainer = this.requireTrainer();
        if (!(trainer instanceof DilocoTrainer)) return;
        // An overlapped outer step merges after its K-th inner step: its reply (and a snapshot due) follow that step's.
        const merged = await this.tracked('step', message.step, () => trainer.mergeIfDue());
        if (!merged) return;
        this.send({ type: 'outerDone', generation: message.generation, step: merged.step, ...merged.report });
        if (merged.evaluate) await this.evaluate(message.generation, merged.step, merged.evaluate);
        if (merged.snapshot) this.sendSnapshot(message.generation, message.step + 1);
        return;
      }
      case 'eval':
        await this.evaluate(message.generation, message.step, message);
        return;
      case 'outer': {
        const trainer = this.requireTrainer();
        if (!(trainer instanceof DilocoTrainer))
          throw new RecoverableError('ORDER_OUT_OF_SEQUENCE', 'the coordinator sent an outer step to a lockstep trainer');
        const result = await this.tracked('step', message.step, () => trainer.outerStep(message.step, message));
        // An overlapped one replies after its merge (see 'step').
        if (result) this.send({ type: 'outerDone', generation: message.generation, step: message.step, ...result });
        return;
      }
      case 'snapshot':
        this.sendSnapshot(message.generation, message.step);
        return;
      case 'stop':
        logger.info({ reason: message.reason }, 'stopping');
        this.settle({ kind: 'stopped' });
        return;
      case 'abort':
        return; // handled on arrival, in receive()
    }
  }

  /**
   * Loads the data and builds the model before any assignment, so that a spare (or a replacement)
   * taking a failed member's place starts its first step at once. A failure here is only logged:
   * the assignment builds the workbench again and reports the error to the coordinator.
   */
  private async prepare(recipe: unknown): Promise<void> {
    const started = Date.now();
    try {
      await this.workbench(validateRecipe(recipe, 'the recipe sent by the coordinator'));
      this.options.logger.debug({ ms: Date.now() - started }, 'data loaded and model built ahead of an assignment');
    } catch (err) {
      this.options.logger.warn({ err: (err as Error).message }, 'could not prepare the data and model ahead of an assignment');
    }
  }

  /** The data and model for `recipe`, built once and kept while the recipe stays the same. */
  private async workbench(recipe: Recipe): Promise<Workbench> {
    if (this.options.dataPath) recipe.data.path = this.options.dataPath;
    const key = JSON.stringify(recipe);
    const cached = this.state.workbench;
    if (cached && cached.key === key) return cached;
    await closeWorkbench(cached);
    this.state.workbench = null;
    try {
      checkMicroBatchFits({
        model: recipe.model,
        config: createModelConfig(recipe.model, recipe.modelArgs),
        microBatch: recipe.microBatch,
        backend: this.backend,
        regularization: recipe.regularization,
      });
    } catch (err) {
      throw new FatalError(
        'MICRO_BATCH_TOO_LARGE',
        `recipe ${recipe.name} on this worker's ${this.backend} backend: ${(err as Error).message}`,
        { cause: err },
      );
    }
    const { data } = recipe;
    const spec = { format: data.format, path: data.path, holdout: data.holdout, holdoutSeed: data.holdoutSeed };
    const loaderOptions = { threads: this.options.dataThreads, seed: recipe.seed, skipCorrupt: data.skipCorrupt };
    const train = await BatchLoader.open(spec, 'train', data.trainPipeline, loaderOptions);
    let test: BatchLoader | null = null;
    let model: ImageClassifier | null = null;
    try {
      test = await BatchLoader.open(spec, 'val', data.evalPipeline, loaderOptions);
      model = createModel(createModelConfig(recipe.model, recipe.modelArgs));
      checkDataFitsModel(recipe, model, train, test);
      const bench = { key, recipe, model, teacher: this.teacher(recipe, model), train, test };
      this.state.workbench = bench;
      return bench;
    } catch (err) {
      await Promise.all([train.close(), test?.close()]);
      model?.disposeParams();
      throw err;
    }
  }

  /** The recipe's distillation teacher, checked to take the student's images and predict its classes. */
  private teacher(recipe: Recipe, student: ImageClassifier): Teacher | null {
    const { mode, tau, teacher: path } = recipe.distillation;
    if (mode === 'none') return null;
    // DeiT distils through the distillation token's own head; a model without one has nothing to distil into.
    if (!student.config.distilled)
      throw new FatalError(
        'TEACHER_NEEDS_DISTILLED_MODEL',
        `recipe ${recipe.name}: distillation mode "${mode}" needs a distilled model (with a distillation token, e.g. deit_fmnist_tiny_distilled), ${recipe.model} has none`,
      );
    let model: ImageClassifier;
    try {
      model = loadTeacher(path!); // validateRecipe: a teacher is set whenever the mode is not none
    } catch (err) {
      throw new FatalError('TEACHER_UNLOADABLE', `recipe ${recipe.name}: cannot load the distillation teacher: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const [t, s] = [model.config, student.config];
    if (t.imageSize !== s.imageSize || t.inChannels !== s.inChannels || t.numClasses !== s.numClasses) {
      model.disposeParams();
      throw new FatalError(
        'TEACHER_MISMATCH',
        `teacher ${path} takes ${t.imageSize}x${t.imageSize}x${t.inChannels} images into ${t.numClasses} classes, the student ${recipe.model} ${s.imageSize}x${s.imageSize}x${s.inChannels} into ${s.numClasses}`,
      );
    }
    this.options.logger.info(
      { teacher: path, mode, tau, alpha: recipe.distillation.alpha, numParams: model.numParams },
      'distillation teacher loaded',
    );
    return { model, mode, tau };
  }

  private requireRing(): RingThread {
    if (!this.ring)
      throw new RecoverableError('ORDER_OUT_OF_SEQUENCE', "the coordinator sent the ring's addresses before assigning a rank");
    return this.ring;
  }

  /** This rank's share of the test split, [start, end), evaluated after `step` steps. */
  private async evaluate(generation: number, step: number, { start, end }: ElementRange): Promise<void> {
    const started = performance.now();
    const result = await this.tracked('eval', step, () => this.requireTrainer().evaluate(this.state.workbench!.test, start, end));
    this.send({ type: 'evalDone', generation, step, ms: performance.now() - started, ...result });
  }

  /** This rank's snapshot for the checkpoint after `step` steps. */
  private sendSnapshot(generation: number, step: number): void {
    this.send({ type: 'snapshotData', generation, step, rank: this.rank, ...this.requireTrainer().snapshot() });
  }

  private requireTrainer(): ShardedTrainer | DilocoTrainer {
    if (!this.trainer) throw new RecoverableError('ORDER_OUT_OF_SEQUENCE', 'the coordinator sent an order before the ring was formed');
    return this.trainer;
  }
}
