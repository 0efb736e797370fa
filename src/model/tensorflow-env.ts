// TensorFlow's C library reads its logging options from the process environment when it loads.
// Worker threads (the evaluation pool) cannot change that environment, only the main thread can, so
// the CLI sets these defaults at start as well as src/model/backend.ts before it loads tfjs-node.

/** Keeps TensorFlow's INFO lines (e.g. CPU features) off stderr unless the user set a log level. */
export function quietTensorflowByDefault(): void {
  process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
}
