// The run's Prometheus metrics, served as GET /metrics on the coordinator's port (prom-client's text
// format). They are made from the records the run appends to metrics.jsonl, so Prometheus, the file
// and the console always tell the same story. A private registry: a process that runs several
// coordinators (a sweep) or a test never sees another run's series.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Counter, Gauge, Histogram, Registry, exponentialBuckets } from 'prom-client';
import { bearerToken, tokenAccepted } from './http-auth.ts';
import type { EvalRecord, MetricsRecord, RestartRecord, StepRecord } from './metrics.ts';
import { stragglerScores } from './straggler.ts';

export const METRICS_PATH = '/metrics';

/** What the exporter needs to know about the run beyond its records. */
export interface RunDescription {
  runId: string;
  recipe: string;
  model: string;
  /** Images per step: the step counter's images come from it (every step trains exactly one global batch). */
  globalBatch: number;
}

/** Step times from 10 ms (a tiny model on loopback) to about 80 s (a large model on a slow cluster). */
const STEP_SECONDS_BUCKETS = exponentialBuckets(0.01, 2, 14);

export class PrometheusExporter {
  readonly registry = new Registry();
  private readonly globalBatch: number;
  private restartsSeen = 0;

  private readonly steps = this.counter(
    'vit_dist_steps_total',
    'Training steps completed by this coordinator (steps replayed after a restart count again)',
  );
  private readonly images = this.counter('vit_dist_images_total', 'Training images processed (the global batch per step)');
  private readonly restarts = this.counter('vit_dist_restarts_total', 'Failures the ring recovered from by restarting from a checkpoint');
  private readonly bytesSent = this.counter('vit_dist_ring_sent_bytes_total', 'Bytes a rank sent to its ring neighbour', ['rank']);
  private readonly bytesReceived = this.counter('vit_dist_ring_received_bytes_total', 'Bytes a rank received from its ring neighbour', [
    'rank',
  ]);

  private readonly info = this.gauge('vit_dist_run_info', 'Always 1; the labels name the run, its recipe and model', [
    'run_id',
    'recipe',
    'model',
  ]);
  private readonly step = this.gauge('vit_dist_step', 'Steps completed in the run (its position, which a restart sets back)');
  private readonly epoch = this.gauge('vit_dist_epoch', 'Epoch of the last step');
  private readonly loss = this.gauge('vit_dist_loss', 'Mean training loss over the last global batch');
  private readonly accuracy = this.gauge('vit_dist_train_accuracy_ratio', 'Training accuracy over the last global batch (0-1)');
  private readonly learningRate = this.gauge('vit_dist_learning_rate', 'Learning rate of the last step');
  private readonly gradNorm = this.gauge('vit_dist_grad_norm', 'Global gradient norm of the last step, before clipping');
  private readonly imagesPerSecond = this.gauge('vit_dist_images_per_second', 'Training throughput of the last step');
  private readonly workers = this.gauge('vit_dist_workers', 'Workers in the ring');
  private readonly generation = this.gauge('vit_dist_generation', 'Ring generation (0 at start, one more after each restart)');
  private readonly testAccuracy = this.gauge('vit_dist_test_accuracy_ratio', 'Accuracy of the last evaluation (0-1)');
  private readonly testLoss = this.gauge('vit_dist_test_loss', 'Mean loss of the last evaluation');
  private readonly straggler = this.gauge(
    'vit_dist_straggler_score',
    "A rank's compute speed relative to the fastest rank in the last step (1 as fast, 0.5 twice as slow)",
    ['rank'],
  );
  private readonly computeSeconds = this.gauge('vit_dist_rank_compute_seconds', "A rank's forward and backward time in the last step", [
    'rank',
  ]);
  private readonly dataWaitSeconds = this.gauge('vit_dist_rank_data_wait_seconds', "A rank's wait on its data loader in the last step", [
    'rank',
  ]);
  private readonly exposedCommSeconds = this.gauge(
    'vit_dist_rank_exposed_comm_seconds',
    "A rank's wait on the ring's collectives in the last step",
    ['rank'],
  );
  private readonly stepSeconds = new Histogram({
    name: 'vit_dist_step_duration_seconds',
    help: 'Wall time of a training step at the coordinator, from sending the step to the last report',
    buckets: STEP_SECONDS_BUCKETS,
    registers: [this.registry],
  });

  constructor(run: RunDescription) {
    this.globalBatch = run.globalBatch;
    this.info.set({ run_id: run.runId, recipe: run.recipe, model: run.model }, 1);
    this.generation.set(0);
  }

  /** Takes in one metrics.jsonl record (Coordinator.onRecord). */
  observe(record: MetricsRecord): void {
    if (record.kind === 'step') this.observeStep(record);
    else if (record.kind === 'eval') this.observeEval(record);
    else if (record.kind === 'restart') this.observeRestart(record);
  }

  /** GET /metrics for a request carrying one of `acceptedTokens` as a bearer token; 401 otherwise. */
  handler(acceptedTokens: readonly string[]): (req: IncomingMessage, res: ServerResponse) => void {
    return (req, res) => {
      if (!tokenAccepted(bearerToken(req), acceptedTokens)) {
        res
          .writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Bearer realm="vit-dist"' })
          .end('a bearer token is required\n');
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end(`${req.method} is not served here\n`);
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
      );
    };
  }

  private observeStep(record: StepRecord): void {
    this.steps.inc();
    this.images.inc(this.globalBatch);
    this.step.set(record.step);
    this.epoch.set(record.epoch);
    this.loss.set(record.loss);
    this.accuracy.set(record.accuracy);
    this.learningRate.set(record.lr);
    this.gradNorm.set(record.gradNorm);
    this.imagesPerSecond.set(record.imagesPerSec);
    this.workers.set(record.workers);
    this.stepSeconds.observe(this.globalBatch / record.imagesPerSec);
    // A smaller ring after a restart leaves no stale per-rank series behind.
    for (const gauge of [this.straggler, this.computeSeconds, this.dataWaitSeconds, this.exposedCommSeconds]) gauge.reset();
    const scores = stragglerScores(record.ranks);
    record.ranks.forEach((r, i) => {
      const rank = String(r.rank);
      this.bytesSent.inc({ rank }, r.bytesSent);
      this.bytesReceived.inc({ rank }, r.bytesReceived);
      this.straggler.set({ rank }, scores[i]!);
      this.computeSeconds.set({ rank }, r.computeMs / 1000);
      this.dataWaitSeconds.set({ rank }, r.dataWaitMs / 1000);
      this.exposedCommSeconds.set({ rank }, r.exposedCommMs / 1000);
    });
  }

  private observeEval(record: EvalRecord): void {
    this.testAccuracy.set(record.testAccuracy);
    this.testLoss.set(record.testLoss);
  }

  private observeRestart(record: RestartRecord): void {
    // A restart to take in new workers keeps the count; only recovered failures add to it.
    if (record.restarts > this.restartsSeen) this.restarts.inc(record.restarts - this.restartsSeen);
    this.restartsSeen = Math.max(this.restartsSeen, record.restarts);
    this.generation.set(record.generation);
    this.workers.set(record.workers);
    this.step.set(record.step);
  }

  private counter<L extends string>(name: string, help: string, labelNames: L[] = []): Counter<L> {
    return new Counter({ name, help, labelNames, registers: [this.registry] });
  }

  private gauge<L extends string>(name: string, help: string, labelNames: L[] = []): Gauge<L> {
    return new Gauge({ name, help, labelNames, registers: [this.registry] });
  }
}
