// Adapter listing and the software-adapter rule: pure functions, no adapter needed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isSoftwareAdapter, parseAdapterListing } from '../../src/model/webgpu/device.ts';

test("Dawn's adapter listing is parsed into backend and name", () => {
  const message = "no adapter with name '\u0001x' found\nAvailable adapters:\n * backend: 'vulkan', name: 'NVIDIA H200'\n * backend: 'vulkan', name: 'llvmpipe (LLVM 15.0.6, 256 bits)'";
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
