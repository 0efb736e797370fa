// TensorFlow's C library reads its logging options from the process environment when it loads.
// Worker threads (the evaluation pool) cannot change that environment, only the main thread can, so
// the CLI sets these defaults at start as well as src/model/backend.ts before it loads tfjs-node.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/** Keeps TensorFlow's INFO lines (e.g. CPU features) off stderr unless the user set a log level. */
export function quietTensorflowByDefault(): void {
  process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
}

/** What scripts/build-tensorflow-engine.mjs recorded about the package's smoke test, if it ran. */
export interface EngineStatus {
  ok: boolean;
  failure?: string;
  fusedKernels?: FusedKernelsBuild;
}

/** What the build script records about the fused kernels (src/model/native/fused_ops.cc) it compiled. */
export interface FusedKernelsBuild {
  ok: boolean;
  /** The compiled module, and the SHA-256 of the source it was compiled from. */
  file?: string;
  sourceSha256?: string;
  failure?: string;
}

export function installStatus(pkg: string): EngineStatus | null {
  let packageDir: string;
  try {
    packageDir = dirname(createRequire(import.meta.url).resolve(`${pkg}/package.json`));
  } catch {
    return null;
  }
  const file = join(packageDir, 'vit-dist-engine.json');
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as EngineStatus) : null;
}
