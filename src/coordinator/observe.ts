// What a run shows outside its directory's metrics.jsonl: Prometheus metrics on the coordinator's
// port (GET /metrics, behind the token) and TensorBoard scalars in RUN_DIR/tb/. Both hear every
// record as the coordinator appends it; neither may stop a run when it fails.
import type { Recipe } from '../train/recipe.ts';
import type { Logger } from '../common/logger.ts';
import type { Coordinator } from './coordinator.ts';
import type { MetricsRecord } from './metrics.ts';
import { METRICS_PATH, PrometheusExporter } from './prometheus.ts';
import { TensorBoardScalars } from './tensorboard.ts';

export interface RunObservers {
  /** Writes TensorBoard's buffered events; call once the run is over. */
  close(): Promise<void>;
}

/** Call before `coordinator.listen()`; `acceptedTokens` may read /metrics. */
export function observeRun(coordinator: Coordinator, recipe: Recipe, logger: Logger, acceptedTokens: readonly string[]): RunObservers {
  const prometheus = new PrometheusExporter({
    runId: coordinator.runId,
    recipe: recipe.name,
    model: recipe.model,
    globalBatch: recipe.globalBatch,
  });
  coordinator.route(METRICS_PATH, prometheus.handler(acceptedTokens));
  coordinator.onRecord((record) => prometheus.observe(record));

  // Opening loads TensorFlow with a synchronous require: half a second on an idle machine, seconds
  // on a loaded one, with the event loop blocked. So it waits for the run's first record: a
  // coordinator that was just (re)started first listens, takes its workers back and completes a
  // step (a restart record can come before that), and records that come meanwhile wait in `pending`.
  let tensorboard: TensorBoardScalars | null = null;
  let pending: MetricsRecord[] | null = [];
  let opened: Promise<void> | null = null;
  const turnOff = (why: string, err: unknown): void => {
    tensorboard = null;
    pending = null;
    logger.warn({ err }, `TensorBoard scalars are off: ${why}`);
    console.log(`TensorBoard scalars are off: ${why}`);
  };
  const write = (tb: TensorBoardScalars, record: MetricsRecord): void => {
    try {
      tb.observe(record);
    } catch (err) {
      turnOff(`writing to ${tb.dir} failed: ${(err as Error).message}`, err);
    }
  };
  const open = (): Promise<void> =>
    TensorBoardScalars.open(coordinator.outDir).then(
      (tb) => {
        logger.info({ dir: tb.dir }, 'TensorBoard scalars on');
        const waiting = pending ?? [];
        tensorboard = tb;
        pending = null;
        for (const record of waiting) write(tb, record);
      },
      (err: Error) => turnOff(err.message, err),
    );
  coordinator.onRecord((record) => {
    if (tensorboard) write(tensorboard, record);
    else pending?.push(record);
    // After this turn of the loop, so the record's own work (the step's reply to the workers) goes first.
    if (record.kind === 'step') opened ??= new Promise<void>((resolve) => setImmediate(resolve)).then(open);
  });

  return {
    async close() {
      await opened;
      try {
        (tensorboard as TensorBoardScalars | null)?.flush();
      } catch (err) {
        turnOff(`flushing failed: ${(err as Error).message}`, err);
      }
    },
  };
}
