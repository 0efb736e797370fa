import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../src/model/backend.ts';

async function installed(pkg: string): Promise<boolean> {
  try {
    const name: string = pkg;
    await import(name);
    return true;
  } catch {
    return false;
  }
}

const hasTfjsNode = await installed('@tensorflow/tfjs-node');
const hasTfjsNodeGpu = await installed('@tensorflow/tfjs-node-gpu');

function recordingLogger() {
  const entries: { obj: object; msg?: string }[] = [];
  return { entries, info: (obj: object, msg?: string) => void entries.push({ obj, msg }) };
}

test('cpu and wasm can be requested explicitly, and the choice is logged', async () => {
  for (const requested of ['cpu', 'wasm'] as const) {
    const logger = recordingLogger();
    const chosen = await selectBackend({ requested, logger });
    assert.equal(chosen.name, requested);
    assert.equal(tf.getBackend(), requested);
    assert.match(chosen.reason, /^requested: /);
    assert.equal(logger.entries.length, 1);
    assert.deepEqual(logger.entries[0]!.obj, { backend: requested, requested, gpu: undefined, reason: chosen.reason });
  }
});

test('wasm reports SIMD and a single thread', async () => {
  const chosen = await selectBackend({ requested: 'wasm' });
  assert.match(chosen.reason, /XNNPACK, (no )?SIMD, 1 thread/);
});

test('auto prefers native TensorFlow and otherwise falls back to wasm, saying why', async () => {
  const chosen = await selectBackend({ requested: 'auto' });
  if (hasTfjsNode) {
    assert.equal(chosen.name, 'tensorflow');
  } else {
    assert.equal(chosen.name, 'wasm');
    assert.match(chosen.reason, /@tensorflow\/tfjs-node is not installed/);
  }
});

test('auto with a GPU tries tfjs-node-gpu first', { skip: hasTfjsNodeGpu && 'tfjs-node-gpu is installed' }, async () => {
  const chosen = await selectBackend({ requested: 'auto', gpu: 0 });
  assert.match(chosen.reason, /@tensorflow\/tfjs-node-gpu is not installed/);
  assert.equal(chosen.name, hasTfjsNode ? 'tensorflow' : 'wasm');
});

test('requesting tensorflow without the package fails with the package name and the reason', {
  skip: hasTfjsNode && 'tfjs-node is installed',
}, async () => {
  await assert.rejects(selectBackend({ requested: 'tensorflow' }), (err: Error) => {
    assert.match(err.message, /backend 'tensorflow' requested but unavailable/);
    assert.match(
      err.message,
      /@tensorflow\/tfjs-node is not installed \(npm install @tensorflow\/tfjs-node; its install step downloads libtensorflow\)/,
    );
    return true;
  });
});

test('unknown backend names are rejected', async () => {
  await assert.rejects(selectBackend({ requested: 'webgl' as never }), /unknown backend 'webgl'/);
});

test('an engine that failed its smoke test at install is not loaded: auto falls back to wasm and says why', {
  skip: !hasTfjsNode && 'tfjs-node is not installed',
}, () => {
  // The status file scripts/build-tensorflow-engine.mjs writes; replaced for one child process.
  const status = join(dirname(createRequire(import.meta.url).resolve('@tensorflow/tfjs-node/package.json')), 'vit-dist-engine.json');
  const saved = existsSync(status) ? readFileSync(status) : null;
  writeFileSync(status, JSON.stringify({ ok: false, failure: 'smoke test: matMul gave 1,2,3,4' }));
  try {
    const script = `const { selectBackend } = await import(${JSON.stringify(new URL('../../src/model/backend.ts', import.meta.url).href)}); console.log(JSON.stringify(await selectBackend({ requested: 'auto' })));`;
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(child.status, 0, child.stderr);
    const chosen = JSON.parse(child.stdout.trim().split('\n').at(-1)!) as { name: string; reason: string };
    assert.equal(chosen.name, 'wasm');
    assert.match(
      chosen.reason,
      /@tensorflow\/tfjs-node was not built or failed its smoke test at install \(smoke test: matMul gave 1,2,3,4\); rebuild with node scripts\/build-tensorflow-engine.mjs/,
    );
  } finally {
    if (saved) writeFileSync(status, saved);
    else rmSync(status);
  }
});
