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

  // Opening loads TensorFlow (about half a second); records that come meanwhile wait for it.
  let tensorboard: TensorBoardScalars | null = null;
  let pending: MetricsRecord[] | null = [];
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
  const opened = TensorBoardScalars.open(coordinator.outDir).then(
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
