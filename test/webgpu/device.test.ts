// Adapter listing and the software-adapter rule (pure functions), and auto's refusal of a
// software adapter on a worker given --gpu.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { selectBackend } from '../../src/model/backend.ts';
import { isSoftwareAdapter, parseAdapterListing } from '../../src/model/webgpu/device.ts';

test("Dawn's adapter listing is parsed into backend and name", () => {
  const message =
    "no adapter with name '\u0001x' found\nAvailable adapters:\n * backend: 'vulkan', name: 'NVIDIA H200'\n * backend: 'vulkan', name: 'llvmpipe (LLVM 15.0.6, 256 bits)'";
  assert.deepEqual(parseAdapterListing(message), [
    { backend: 'vulkan', name: 'NVIDIA H200' },
    { backend: 'vulkan', name: 'llvmpipe (LLVM 15.0.6, 256 bits)' },
  ]);
  assert.deepEqual(parseAdapterListing('no suitable backends found'), []);
});

test('software rasterizers are told from GPUs by name', () => {
  assert.equal(isSoftwareAdapter('llvmpipe (LLVM 15.0.6, 256 bits)', undefined), true);
  assert.equal(isSoftwareAdapter('SwiftShader Device (Subzero)', undefined), true);
  assert.equal(isSoftwareAdapter('NVIDIA H200', undefined), false);
});

test('auto with --gpu takes WebGPU only on a real GPU adapter, and says why not otherwise', async () => {
  const chosen = await selectBackend({ requested: 'auto', gpu: 0 });
  assert.doesNotMatch(chosen.reason, /software/);
  if (chosen.name !== 'webgpu' && chosen.name !== 'tensorflow') assert.match(chosen.reason, /webgpu: /);
});
