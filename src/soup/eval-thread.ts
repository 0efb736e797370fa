// One evaluation thread: selects its compute backend and builds the model once, then evaluates the
// parameter vectors it is sent on its range of a split, reading the images itself.
import { parentPort, workerData } from 'node:worker_threads';
import { evalBatches } from '../data/loader.ts';
import { selectBackend } from '../model/backend.ts';
import { createModel } from '../model/model.ts';
import { evaluateModel } from './evaluate.ts';
import type { EvalJob, EvalReply, EvalThreadSetup } from './eval-pool.ts';

const setup = workerData as EvalThreadSetup;
const port = parentPort!;
const { reason } = await selectBackend({ requested: setup.backend });
const model = createModel(setup.config);

async function run(job: EvalJob): Promise<EvalReply> {
  model.setParams(job.params);
  try {
    const { spec, pipeline, batchSize } = setup;
    return { id: job.id, tally: await evaluateModel(model, evalBatches(spec, job.split, pipeline, batchSize, job.range)) };
  } finally {
    model.disposeParams();
  }
}

// The pool sends a thread one job at a time.
port.on('message', (job: EvalJob) => {
  run(job).then(
    (reply) => port.postMessage(reply),
    (err: Error) => port.postMessage({ id: job.id, error: err.message } satisfies EvalReply),
  );
});
port.postMessage({ ready: true, backend: reason });
