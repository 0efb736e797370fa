// The 'webgpu' engine: finds a WebGPU adapter through Dawn (npm `webgpu`), opens a device with the
// limits our kernels need, and registers tfjs-backend-webgpu on that device with our kernels.
//
// Adapters: Dawn's Vulkan (or Metal, D3D) adapters are real GPUs. On CPU-only machines Dawn's
// OpenGL ES backend runs on Mesa's llvmpipe, a software rasterizer: exact but slow, so it is taken
// only when asked for (`--backend webgpu`, the tests), never by `auto`. Dawn names one adapter per
// physical device; `--gpu K` picks the K-th it lists (CUDA_VISIBLE_DEVICES does not apply to Vulkan).
// Dawn selects by name only, so K > 0 needs adapters whose names differ; identical GPUs are told
// apart by giving each worker one GPU (a container's NVIDIA_VISIBLE_DEVICES), where K is 0.

import * as tf from '@tensorflow/tfjs-core';
import { ENABLE_SUBGROUPS_MARKER } from './rows.ts';
import { GPU_MIN_WORKGROUPS, SGEMM_LAYOUTS, type SgemmLayout } from './sgemm.ts';

/** An adapter Dawn offers, as its `adapter=` listing names it. */
export interface AdapterListing {
  backend: string;
  name: string;
}

export interface WebGPUActivation {
  /** The adapter's name as Dawn reports it, e.g. "NVIDIA H200" or "llvmpipe (LLVM 15.0.6, 256 bits)". */
  adapterName: string;
  software: boolean;
  reason: string;
  /** How the row kernels (LayerNorm, softmax, the loss) reduce on this device: rows.ts's rowReduction. */
  rowReduction: string;
}

/** Why no adapter could be used, for auto's log and for a requested backend's error. */
export class NoWebGPUAdapter extends Error {}

type Dawn = typeof import('webgpu');

async function loadDawn(): Promise<Dawn> {
  // Mesa's EGL needs a platform without a display server; harmless for Vulkan.
  process.env.EGL_PLATFORM ??= 'surfaceless';
  try {
    return await import('webgpu');
  } catch (err) {
    throw new NoWebGPUAdapter(`npm package 'webgpu' (Dawn) failed to load: ${(err as Error).message}`, { cause: err });
  }
}

/** Dawn's names for the adapters of its default (GPU) backends; empty when none. */
export async function listGpuAdapters(): Promise<AdapterListing[]> {
  const dawn = await loadDawn();
  // Dawn lists its adapters in the error for a name that matches none.
  const probe = dawn.create(['adapter=\u0001no such adapter']);
  try {
    await probe.requestAdapter({ powerPreference: 'high-performance' });
    return [];
  } catch (err) {
    return parseAdapterListing((err as Error).message);
  }
}

export function parseAdapterListing(message: string): AdapterListing[] {
  return [...message.matchAll(/^ \* backend: '([^']*)', name: '([^']*)'$/gm)].map((m) => ({ backend: m[1]!, name: m[2]! }));
}

/** Software rasterizers: correct, but no faster than the CPU engines. */
export function isSoftwareAdapter(name: string, info: GPUAdapterInfo | undefined): boolean {
  if (info && 'isFallbackAdapter' in info && (info as { isFallbackAdapter?: boolean }).isFallbackAdapter) return true;
  return /llvmpipe|lavapipe|softpipe|swiftshader/i.test(`${name} ${info?.description ?? ''} ${info?.device ?? ''}`);
}

interface FoundAdapter {
  gpu: GPU;
  adapter: GPUAdapter;
  name: string;
  software: boolean;
}

/** The K-th real GPU adapter, or an error saying why there is none. */
async function findGpuAdapter(dawn: Dawn, index: number): Promise<FoundAdapter> {
  const listed = (await listGpuAdapters()).filter((a) => a.backend !== 'null' && !isSoftwareAdapter(a.name, undefined));
  if (listed.length === 0)
    throw new NoWebGPUAdapter(
      'Dawn found no GPU adapter (no Vulkan driver with a GPU: libvulkan1 and the NVIDIA ICD, with NVIDIA_DRIVER_CAPABILITIES including graphics)',
    );
  const chosen = listed[index];
  if (!chosen)
    throw new NoWebGPUAdapter(
      `--gpu ${index} asked for, but Dawn lists ${listed.length} GPU adapter(s): ${listed.map((a) => a.name).join(', ')}`,
    );
  if (listed.findIndex((a) => a.name === chosen.name) !== index) {
    throw new NoWebGPUAdapter(
      `--gpu ${index}: adapters ${listed.map((a) => a.name).join(', ')} share the name '${chosen.name}', and Dawn selects by name; give each worker one GPU (NVIDIA_VISIBLE_DEVICES) and use --gpu 0`,
    );
  }
  const gpu = dawn.create([`adapter=${chosen.name}`, `backend=${chosen.backend}`]);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new NoWebGPUAdapter(`Dawn listed '${chosen.name}' but returned no adapter for it`);
  return { gpu, adapter, name: chosen.name, software: false };
}

/** Mesa's llvmpipe through Dawn's OpenGL ES backend, which Dawn offers only in compatibility mode. */
async function findSoftwareAdapter(dawn: Dawn): Promise<FoundAdapter> {
  const gpu = dawn.create(['backend=opengles']);
  const adapter = await gpu.requestAdapter({ featureLevel: 'compatibility' } as GPURequestAdapterOptions).catch((err: Error) => {
    throw new NoWebGPUAdapter(`no OpenGL ES adapter (Debian: apt-get install libegl1 libegl-mesa0 libgles2): ${err.message}`, {
      cause: err,
    });
  });
  if (!adapter) throw new NoWebGPUAdapter('no OpenGL ES adapter (Debian: apt-get install libegl1 libegl-mesa0 libgles2)');
  const name = `${adapter.info.device} (${adapter.info.description})`;
  return { gpu, adapter, name, software: isSoftwareAdapter(name, adapter.info) };
}

/** Our kernels' needs: 16x16 workgroups, and buffers as large as the adapter allows (DeiT-B activations). */
function requiredLimits(adapter: GPUAdapter): Record<string, number> {
  const { limits } = adapter;
  if (limits.maxComputeInvocationsPerWorkgroup < 256)
    throw new NoWebGPUAdapter(`adapter allows ${limits.maxComputeInvocationsPerWorkgroup} invocations per workgroup; our kernels need 256`);
  return {
    maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
    maxComputeWorkgroupSizeY: limits.maxComputeWorkgroupSizeY,
    maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
    maxComputeWorkgroupsPerDimension: limits.maxComputeWorkgroupsPerDimension,
    maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
    maxBufferSize: limits.maxBufferSize,
  };
}

/** VIT_DIST_SGEMM_LAYOUT picks the SGEMM's thread layout (sgemm.ts): 'strided' (default, measured on an H200) or 'vec4'. */
export const SGEMM_LAYOUT_ENV = 'VIT_DIST_SGEMM_LAYOUT';

function sgemmLayoutFromEnv(): SgemmLayout {
  const value = process.env[SGEMM_LAYOUT_ENV] ?? 'strided';
  if (!(SGEMM_LAYOUTS as readonly string[]).includes(value))
    throw new Error(`${SGEMM_LAYOUT_ENV}=${value}: expected one of ${SGEMM_LAYOUTS.join(', ')}`);
  return value as SgemmLayout;
}

/** VIT_DIST_SUBGROUPS=0 keeps the row kernels off subgroups where the device has them (rows.ts). */
export const SUBGROUPS_ENV = 'VIT_DIST_SUBGROUPS';

/**
 * The subgroup size the row kernels may reduce with: the adapter offers `subgroups` with one fixed
 * size (min = max, as NVIDIA's 32) that a workgroup can be; null otherwise.
 */
export function subgroupRowSize(
  features: ReadonlySet<string>,
  info: { subgroupMinSize?: number; subgroupMaxSize?: number },
  env = process.env,
): number | null {
  const setting = env[SUBGROUPS_ENV];
  if (setting !== undefined && setting !== '0' && setting !== '1') throw new Error(`${SUBGROUPS_ENV}=${setting}: expected 0 or 1`);
  if (setting === '0' || !features.has('subgroups')) return null;
  const { subgroupMinSize: min, subgroupMaxSize: max } = info;
  if (min === undefined || min !== max || min < 4 || min > 128 || (min & (min - 1)) !== 0) return null;
  return min;
}

/**
 * WGSL needs `enable subgroups;` before any declaration, and tfjs writes the top of every shader:
 * the device prepends it to shaders that carry rows.ts's marker.
 */
function enableSubgroupsInMarkedShaders(device: GPUDevice): void {
  const create = device.createShaderModule.bind(device);
  device.createShaderModule = (descriptor: GPUShaderModuleDescriptor) =>
    create(
      descriptor.code.includes(ENABLE_SUBGROUPS_MARKER) ? { ...descriptor, code: `enable subgroups;\n${descriptor.code}` } : descriptor,
    );
}

let active: WebGPUActivation | null = null;

/**
 * Makes 'webgpu' the active tfjs backend on the chosen adapter. `gpu` is the adapter's index
 * among real GPUs (default 0); `allowSoftware` lets llvmpipe serve when no GPU exists. Throws
 * NoWebGPUAdapter, naming why, when neither is possible. A process binds one adapter: a second call
 * returns the first's.
 */
export async function activateWebGPU(opts: { gpu?: number; allowSoftware: boolean }): Promise<WebGPUActivation> {
  if (active) {
    if (!(await tf.setBackend('webgpu'))) throw new Error("the 'webgpu' backend was registered but failed to initialize");
    return active;
  }
  const dawn = await loadDawn();
  let found: FoundAdapter;
  try {
    found = await findGpuAdapter(dawn, opts.gpu ?? 0);
  } catch (err) {
    if (!(err instanceof NoWebGPUAdapter) || !opts.allowSoftware || (opts.gpu ?? 0) > 0) throw err;
    found = await findSoftwareAdapter(dawn);
    found = { ...found, name: `${found.name} (software; ${err.message})` };
  }
  const { adapter } = found;
  const info = adapter.info;
  const subgroupRows = subgroupRowSize(adapter.features, info);
  const requiredFeatures = (['timestamp-query', 'subgroups'] as const).filter((f) => adapter.features.has(f)) as GPUFeatureName[];
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits: requiredLimits(adapter) });
  if (subgroupRows !== null) enableSubgroupsInMarkedShaders(device);

  // tfjs-backend-webgpu checks navigator.gpu when it loads and when its backend is made.
  Object.assign(globalThis, dawn.globals);
  Object.defineProperty(globalThis, 'navigator', { value: { gpu: found.gpu }, configurable: true, writable: true });
  const webgpu = await import('@tensorflow/tfjs-backend-webgpu');
  const { registerWebGPUKernels } = await import('./kernels.ts');
  registerWebGPUKernels({ minWorkgroups: found.software ? 1 : GPU_MIN_WORKGROUPS, layout: sgemmLayoutFromEnv(), subgroupRows });
  // Its own factory would ask navigator.gpu for the default adapter: ours brings the chosen device.
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  tf.registerBackend('webgpu', () => new webgpu.WebGPUBackend(device, info));
  if (!(await tf.setBackend('webgpu'))) throw new Error(`the 'webgpu' backend failed to initialize on ${found.name}`);
  await tf.ready();
  const { rowReduction } = await import('./rows.ts');
  active = { adapterName: found.name, software: found.software, reason: `WebGPU (Dawn) on ${found.name}`, rowReduction: rowReduction() };
  return active;
}
