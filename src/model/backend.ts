// Picks the TF.js backend the model runs on.
//
// Preference for 'auto': native TensorFlow with CUDA (@tensorflow/tfjs-node-gpu) when a GPU was
// asked for, then WebGPU on a real GPU adapter (./webgpu/device.ts), then native TensorFlow on the CPU
// (@tensorflow/tfjs-node), then WebAssembly (XNNPACK, SIMD), then the plain-JS cpu backend. The two native packages are optional: their install step
// downloads libtensorflow, which is not always possible, so they are loaded with a dynamic import()
// of a module name held in a variable — that keeps them out of the typecheck and out of the static
// module graph, and a missing package becomes a fallback instead of a crash.
//
// On machines without internet, tfjs-node is built by scripts/build-tensorflow-engine.mjs (npm's
// postinstall), which smoke-tests it in a child process and records the outcome beside the package:
// an engine that failed there is not loaded here, and the reason is part of the logged choice.

import * as tf from '@tensorflow/tfjs-core';
import { installStatus, quietTensorflowByDefault } from './tensorflow-env.ts';
import { loadFusedKernels } from './tensorflow-ops.ts';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { activateWebGPU, NoWebGPUAdapter } from './webgpu/device.ts';

export type BackendChoice = 'auto' | 'tensorflow' | 'wasm' | 'cpu' | 'webgpu';

export interface BackendLogger {
  info(obj: object, msg?: string): void;
}

export interface SelectBackendOptions {
  requested: BackendChoice;
  /** GPU index asked for on the command line; the CLI has already set CUDA_VISIBLE_DEVICES. */
  gpu?: number;
  logger?: BackendLogger;
}

export interface SelectedBackend {
  /** tf.getBackend() after selection: 'tensorflow', 'wasm' or 'cpu'. */
  name: string;
  reason: string;
}

const TFJS_NODE = '@tensorflow/tfjs-node';
const TFJS_NODE_GPU = '@tensorflow/tfjs-node-gpu';

/** Outcome of trying to load one of the optional native packages. */
type NativeLoad = { ok: true } | { ok: false; why: string };

async function loadNative(pkg: string): Promise<NativeLoad> {
  const status = installStatus(pkg);
  if (status && !status.ok) {
    return {
      ok: false,
      why: `${pkg} was not built or failed its smoke test at install (${status.failure}); rebuild with node scripts/build-tensorflow-engine.mjs`,
    };
  }
  quietTensorflowByDefault();
  try {
    // The variable module name is deliberate: see the header comment.
    const moduleName: string = pkg;
    await import(moduleName);
  } catch (err) {
    const e = err as { code?: string; message?: string };
    const message = e.message ?? String(err);
    // Only "this very package is absent" counts as not installed; a missing transitive dependency
    // or a libtensorflow that fails to load is a broken install and is reported as such.
    if (e.code === 'ERR_MODULE_NOT_FOUND' && message.includes(`'${pkg}'`)) {
      return { ok: false, why: `${pkg} is not installed (npm install ${pkg}; its install step downloads libtensorflow)` };
    }
    return { ok: false, why: `${pkg} is installed but failed to load: ${message}` };
  }
  // tfjs-node registers its 'tensorflow' backend into the copy of tfjs-core it imports. If npm did
  // not dedupe that copy with ours, the backend exists but not in the engine the model uses.
  if (tf.findBackendFactory('tensorflow') === null) {
    return {
      ok: false,
      why: `${pkg} loaded, but registered its backend in another copy of @tensorflow/tfjs-core (versions differ from ${tf.version_core}?)`,
    };
  }
  return { ok: true };
}

async function activate(name: string): Promise<boolean> {
  const ok = await tf.setBackend(name);
  await tf.ready();
  return ok && tf.getBackend() === name;
}

/** The TensorFlow C library's own version, as its binding reports it. */
function tensorflowVersion(): string {
  const backend = tf.backend() as unknown as { binding?: { TF_Version?: string } };
  return backend.binding?.TF_Version ?? '(version unknown)';
}

function intraOpThreads(): string {
  const threads = process.env.TF_NUM_INTRAOP_THREADS;
  return threads ? `${threads} intra-op thread${threads === '1' ? '' : 's'}` : "TensorFlow's default thread count";
}

/** Loads the fused CPU kernels (tensorflow-ops.ts) and says whether they run, or why not. */
function cpuKernels(pkg: string): string {
  const why = loadFusedKernels(installStatus(pkg)?.fusedKernels);
  return why === null ? 'fused ViT kernels' : `without fused ViT kernels: ${why}`;
}

/** Tries tfjs-node-gpu (only if a GPU was asked for) and then tfjs-node. */
async function tryTensorflow(gpu: number | undefined): Promise<{ reason: string } | { failures: string[] }> {
  const failures: string[] = [];
  const candidates = gpu === undefined ? [TFJS_NODE] : [TFJS_NODE_GPU, TFJS_NODE];
  for (const pkg of candidates) {
    const loaded = await loadNative(pkg);
    if (!loaded.ok) {
      failures.push(loaded.why);
      continue;
    }
    if (!(await activate('tensorflow'))) {
      failures.push(`${pkg} loaded but the 'tensorflow' backend failed to initialize`);
      continue;
    }
    const device =
      pkg === TFJS_NODE_GPU
        ? `GPU ${gpu} (CUDA_VISIBLE_DEVICES=${process.env.CUDA_VISIBLE_DEVICES ?? 'unset'})`
        : `CPU, ${intraOpThreads()}, ${cpuKernels(pkg)}`;
    const note = gpu !== undefined && pkg === TFJS_NODE ? ` (GPU ${gpu} was asked for but ${failures[0]})` : '';
    return { reason: `native TensorFlow ${tensorflowVersion()} via ${pkg} on ${device}${note}` };
  }
  return { failures };
}

/** With --gpu: tfjs-node-gpu if it loads, else WebGPU on a real GPU adapter (never a software one). */
async function tryGpu(gpu: number): Promise<{ reason: string } | { failures: string[] }> {
  const loaded = await loadNative(TFJS_NODE_GPU);
  if (loaded.ok && (await activate('tensorflow')))
    return {
      reason: `native TensorFlow via ${TFJS_NODE_GPU} on GPU ${gpu} (CUDA_VISIBLE_DEVICES=${process.env.CUDA_VISIBLE_DEVICES ?? 'unset'})`,
    };
  const failures = [loaded.ok ? `${TFJS_NODE_GPU} loaded but the 'tensorflow' backend failed to initialize` : loaded.why];
  try {
    return { reason: `${(await activateWebGPU({ gpu, allowSoftware: false })).reason}, because ${failures[0]}` };
  } catch (err) {
    if (!(err instanceof NoWebGPUAdapter)) throw err;
    return { failures: [...failures, `webgpu: ${err.message}`] };
  }
}

async function activateWasm(): Promise<boolean> {
  // In Node the wasm backend is always single-threaded (WASM_HAS_MULTITHREAD_SUPPORT is false
  // there), which suits data parallelism with one worker process per core. Where threads do exist
  // (browsers with cross-origin isolation) we still use one, for the same reason; the count must be
  // set before the backend initializes.
  if (await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT')) {
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    wasm.setThreadsCount(1);
  }
  return activate('wasm');
}

async function wasmReason(): Promise<string> {
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  return `WebAssembly (XNNPACK, ${simd ? 'SIMD' : 'no SIMD'}, 1 thread)`;
}

/**
 * Activates a backend and returns its name and a human-readable reason for the choice, which is
 * also logged. 'tensorflow' fails loudly when neither native package can be used; 'auto' falls
 * back down the preference list.
 */
export async function selectBackend(opts: SelectBackendOptions): Promise<SelectedBackend> {
  const { requested, gpu, logger } = opts;
  let reason: string;

  switch (requested) {
    case 'tensorflow': {
      const native = await tryTensorflow(gpu);
      if ('failures' in native) {
        throw new Error(`backend 'tensorflow' requested but unavailable: ${native.failures.join('; ')}`);
      }
      reason = `requested: ${native.reason}`;
      break;
    }
    case 'wasm':
      if (!(await activateWasm())) throw new Error(`backend 'wasm' requested but failed to initialize`);
      reason = `requested: ${await wasmReason()}`;
      break;
    case 'cpu':
      if (!(await activate('cpu'))) throw new Error(`backend 'cpu' failed to initialize`);
      reason = 'requested: plain-JS cpu backend';
      break;
    case 'webgpu':
      // Asked for by name, a software adapter (llvmpipe) may serve: that is how CPU machines test it.
      reason = `requested: ${(await activateWebGPU({ gpu, allowSoftware: true })).reason}`;
      break;
    case 'auto': {
      const onGpu = gpu === undefined ? { failures: [] } : await tryGpu(gpu);
      const gpuFailures = 'failures' in onGpu ? onGpu.failures : [];
      const cpuNative = 'reason' in onGpu ? onGpu : await tryTensorflow(undefined);
      const native = 'reason' in cpuNative ? cpuNative : { failures: [...gpuFailures, ...cpuNative.failures] };
      if ('reason' in native) {
        // On a GPU worker that ends on the CPU engine, say why each GPU path was passed over.
        reason = gpuFailures.length > 0 ? `auto: ${native.reason}, because ${gpuFailures.join('; ')}` : `auto: ${native.reason}`;
      } else if (await activateWasm()) {
        reason = `auto: ${await wasmReason()}, because ${native.failures.join('; ')}`;
      } else if (await activate('cpu')) {
        reason = `auto: plain-JS cpu backend (slowest), because ${native.failures.join('; ')}; and wasm failed to initialize`;
      } else {
        throw new Error('no TF.js backend could be initialized (tried tensorflow, wasm, cpu)');
      }
      break;
    }
    default: {
      const never: never = requested;
      throw new Error(`unknown backend '${String(never)}' (expected auto, tensorflow, wasm, cpu or webgpu)`);
    }
  }

  const name = tf.getBackend();
  logger?.info({ backend: name, requested, gpu, reason }, `model backend: ${name}`);
  return { name, reason };
}
