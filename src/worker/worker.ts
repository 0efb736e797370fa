// A worker process: joins the coordinator, takes a rank, joins the ring, then carries out the
// coordinator's orders one at a time (step, eval, snapshot, stop) until the run ends.
import { hostname } from 'node:os';
import { WebSocket } from 'ws';
import { proveToken } from '../comm/auth.ts';
import {
  CLOSE_CODES, CONTROL_PROTOCOL_VERSION, MAX_CONTROL_MESSAGE_BYTES, controlProofContext, decodeCoordinatorMessage,
  encodeMessage, type CoordinatorMessage, type ResumeState, type WorkerMessage,
} from '../comm/control.ts';
import { RingPeer } from '../comm/ring.ts';
import { loadDataset } from '../data/datasets.ts';
import type { ImageDataset } from '../data/fashion-mnist.ts';
import { selectBackend, type BackendChoice } from '../model/backend.ts';
import { createModelConfig } from '../model/registry.ts';
import { VisionTransformer } from '../model/vit.ts';
import type { Logger } from '../cli/logging.ts';
import { validateRecipe, type Recipe } from '../train/recipe.ts';
import { ShardedTrainer } from './trainer.ts';

export interface WorkerOptions {
  coordinatorUrl: string;
  token: string;
  backend: BackendChoice;
  gpu: number | null;
  /** Address the ring server binds to, and the one advertised to the ring neighbour. */
  ringHost: string;
  advertiseHost: string;
  /** Overrides the recipe's data path on this host. */
  dataPath: string | null;
  logger: Logger;
}

export class WorkerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkerError';
  }
}

/** Runs a worker until the coordinator ends the run; rejects with a clear error on any failure. */
export async function runWorker(options: WorkerOptions): Promise<void> {
  const { logger } = options;
  const backend = await selectBackend({ requested: options.backend, gpu: options.gpu ?? undefined, logger });
  const socket = new WebSocket(options.coordinatorUrl, { maxPayload: MAX_CONTROL_MESSAGE_BYTES, perMessageDeflate: false });
  const session = new WorkerSession(options, socket, backend.name);
  try {
    await session.finished;
  } finally {
    await session.close();
    if (socket.readyState <= WebSocket.OPEN) socket.close();
  }
}

class WorkerSession {
  readonly finished: Promise<void>;
  private resolveFinished!: () => void;
  private rejectFinished!: (err: Error) => void;
  /** Orders are handled strictly one after another, in arrival order. */
  private queue: Promise<void> = Promise.resolve();
  private trainer: ShardedTrainer | null = null;
  private ring: RingPeer | null = null;
  /** What `assign` prepared, waiting for the ring's addresses. */
  private pending: { model: VisionTransformer; train: ImageDataset; recipe: Recipe; resume: ResumeState | null; worldSize: number } | null = null;
  private rank = -1;
  private testSet: ImageDataset | null = null;
  private stopping = false;

  constructor(
    private readonly options: WorkerOptions,
    private readonly socket: WebSocket,
    private readonly backend: string,
  ) {
    this.finished = new Promise((resolve, reject) => {
      this.resolveFinished = resolve;
      this.rejectFinished = reject;
    });
    socket.on('message', (data: Buffer) => {
      let message: CoordinatorMessage;
      try {
        message = decodeCoordinatorMessage(data, 'the coordinator');
      } catch (err) {
        return this.fail(err as Error);
      }
      this.queue = this.queue.then(() => this.handle(message)).catch((err: Error) => this.fail(err));
    });
    socket.on('close', (code: number, reason: Buffer) => {
      if (this.stopping || code === CLOSE_CODES.runComplete) return this.resolveFinished();
      const text = reason.toString() || 'no reason given';
      this.rejectFinished(new WorkerError(`the coordinator closed the connection (code ${code}: ${text})`));
    });
    socket.on('error', (err: Error) => this.rejectFinished(new WorkerError(`cannot reach the coordinator at ${options.coordinatorUrl}: ${err.message}`)));
  }

  async close(): Promise<void> {
    await this.ring?.close();
  }

  private send(message: WorkerMessage): void {
    this.socket.send(encodeMessage(message));
  }

  private fail(err: Error): void {
    this.options.logger.error({ err: err.message }, 'worker failed');
    if (this.socket.readyState === WebSocket.OPEN) this.send({ type: 'failed', message: err.message });
    this.stopping = true;
    this.socket.close(CLOSE_CODES.runFailed, err.message.slice(0, 120));
    this.rejectFinished(err);
  }

  private async handle(message: CoordinatorMessage): Promise<void> {
    const { logger } = this.options;
    switch (message.type) {
      case 'challenge': {
        if (message.protocol !== CONTROL_PROTOCOL_VERSION) {
          throw new WorkerError(`the coordinator speaks protocol version ${message.protocol}, this worker speaks ${CONTROL_PROTOCOL_VERSION}`);
        }
        const proof = proveToken(this.options.token, message.nonce, controlProofContext(message.runId));
        this.send({ type: 'hello', protocol: CONTROL_PROTOCOL_VERSION, proof, backend: this.backend, host: hostname(), pid: process.pid });
        return;
      }
      case 'welcome':
        logger.info({ workerId: message.workerId, waitingFor: message.waitingFor }, 'joined the coordinator');
        return;
      case 'assign': {
        const recipe = validateRecipe(message.recipe, 'the recipe sent by the coordinator');
        if (this.options.dataPath) recipe.data.path = this.options.dataPath;
        this.rank = message.rank;
        logger.info({ rank: message.rank, worldSize: message.worldSize, startStep: message.startStep }, 'assigned');
        const train = loadDataset(recipe.data, 'train');
        const model = new VisionTransformer(createModelConfig(recipe.model, recipe.modelArgs));
        if (train.height !== model.config.imageSize || train.width !== model.config.imageSize || train.channels !== model.config.inChannels) {
          throw new WorkerError(`model ${recipe.model} takes ${model.config.imageSize}x${model.config.imageSize}x${model.config.inChannels} images, the data has ${train.height}x${train.width}x${train.channels}`);
        }
        if (train.numClasses !== model.config.numClasses) throw new WorkerError(`model ${recipe.model} has ${model.config.numClasses} classes, the data has ${train.numClasses}`);
        if (message.resume && message.resume.params.length !== model.numParams) {
          throw new WorkerError(`the checkpoint holds ${message.resume.params.length} parameters, model ${recipe.model} has ${model.numParams}`);
        }
        this.testSet = loadDataset(recipe.data, 'test');
        this.ring = await RingPeer.listen({ rank: message.rank, worldSize: message.worldSize, generation: message.generation, token: this.options.token, host: this.options.ringHost, logger });
        this.pending = { model, train, recipe, resume: message.resume, worldSize: message.worldSize };
        this.send({ type: 'ringListening', rank: this.rank, generation: message.generation, ring: { host: this.options.advertiseHost, port: this.ring.address.port } });
        return;
      }
      case 'ringPeers': {
        if (!this.pending || !this.ring) throw new WorkerError("the coordinator sent the ring's addresses before assigning a rank");
        const { model, train, recipe, resume, worldSize } = this.pending;
        this.pending = null;
        await this.ring.connect(message.peers);
        logger.info({ rank: this.rank, worldSize }, 'ring connected');
        const initial = resume ? resume.params : model.initParams(recipe.seed);
        this.trainer = new ShardedTrainer(model, this.ring, train, {
          rank: this.rank, worldSize, globalBatch: recipe.globalBatch, microBatch: recipe.microBatch, clipNorm: recipe.clipNorm, optimizer: recipe.optimizer,
        }, initial, resume);
        this.send({ type: 'ready', rank: this.rank, paramDigest: this.trainer.digest(), numParams: model.numParams, trainSize: train.size, testSize: this.testSet!.size });
        return;
      }
      case 'step': {
        const result = await this.requireTrainer().step(message.step, message.indices, message.lr);
        this.send({ type: 'stepDone', step: message.step, ...result });
        return;
      }
      case 'eval': {
        const result = this.requireTrainer().evaluate(this.testSet!, message.start, message.end);
        this.send({ type: 'evalDone', step: message.step, ...result });
        return;
      }
      case 'snapshot': {
        const trainer = this.requireTrainer();
        this.send({ type: 'snapshotData', step: message.step, rank: this.rank, ...trainer.snapshot() });
        return;
      }
      case 'stop':
        logger.info({ reason: message.reason }, 'stopping');
        this.stopping = true;
        this.resolveFinished();
        return;
    }
  }

  private requireTrainer(): ShardedTrainer {
    if (!this.trainer) throw new WorkerError('the coordinator sent an order before assigning a rank');
    return this.trainer;
  }
}
