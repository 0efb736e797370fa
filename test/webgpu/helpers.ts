// The webgpu tests' adapter: llvmpipe on CPU machines (Dawn's OpenGL ES backend on Mesa), a real GPU
// where there is one. Where none can be opened the tests skip, saying why.
import { activateWebGPU, type WebGPUActivation } from '../../src/model/webgpu/device.ts';

let opened: Promise<WebGPUActivation | string> | null = null;

/** The activation, or the reason no adapter could be opened (for `skip`). */
export function openWebGPU(): Promise<WebGPUActivation | string> {
  opened ??= activateWebGPU({ allowSoftware: true }).catch(
    (err: Error) => `no WebGPU adapter (${err.message}); on Debian: apt-get install libegl1 libegl-mesa0 libgles2`,
  );
  return opened;
}

/** `skip` option for node:test: false when an adapter is open, else the reason. */
export async function skipWithoutWebGPU(): Promise<false | string> {
  const opened = await openWebGPU();
  return typeof opened === 'string' ? opened : false;
}
