// Fuzzing the coordinator's door (issue #5): for a bounded time, connections send random bytes,
// mutated hellos, and, after a valid hello, random and mutated messages. The coordinator must
// refuse each one without crashing, stay healthy, and then train a real run to the same digest.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket } from 'ws';
import { proveToken } from '../../src/comm/auth.ts';
import { CONTROL_PROTOCOL_VERSION, controlProofContext, decodeCoordinatorMessage, encodeMessage } from '../../src/comm/control.ts';
import { Mulberry32 } from '../../src/common/random.ts';
import { MICRO_RECIPE, TOKEN, needsData, start, startCoordinator, stepRecords, tempRunDir } from './cluster.ts';

const FUZZ_MS = 8_000;
const MAX_CONNECTIONS = 400;
const CONNECTION_TIMEOUT_MS = 5_000;

type Strategy = 'random-bytes' | 'mutated-hello' | 'garbage-after-hello' | 'mutated-message-after-hello';
const STRATEGIES: Strategy[] = ['random-bytes', 'mutated-hello', 'garbage-after-hello', 'mutated-message-after-hello'];

function randomBytes(rng: Mulberry32, max: number): Buffer {
  return Buffer.from(Array.from({ length: 1 + Math.floor(rng.next() * max) }, () => rng.nextUint32() & 0xff));
}

/** Flips a few random bits of a copy. */
function mutate(bytes: Buffer, rng: Mulberry32): Buffer {
  const copy = Buffer.from(bytes);
  const flips = 1 + Math.floor(rng.next() * 4);
  for (let i = 0; i < flips; i++) copy[Math.floor(rng.next() * copy.length)]! ^= 1 << Math.floor(rng.next() * 8);
  return copy;
}

/** One fuzzing connection; resolves with the close code the coordinator chose (or 0 when we gave up). */
function fuzzOnce(url: string, strategy: Strategy, rng: Mulberry32): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => {
      ws.terminate();
      resolve(0);
    }, CONNECTION_TIMEOUT_MS);
    ws.on('error', () => undefined);
    ws.on('close', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
    ws.once('message', (data: Buffer) => {
      const challenge = decodeCoordinatorMessage(data, 'coordinator');
      if (challenge.type !== 'challenge') return ws.terminate();
      const hello = encodeMessage({
        type: 'hello',
        protocol: CONTROL_PROTOCOL_VERSION,
        proof: proveToken(TOKEN, challenge.nonce, controlProofContext(challenge.runId)),
        backend: 'fuzz',
        host: 'fuzz',
        pid: 1,
      });
      if (strategy === 'random-bytes') return ws.send(randomBytes(rng, 300));
      if (strategy === 'mutated-hello') return ws.send(mutate(hello, rng));
      ws.send(hello);
      ws.once('message', () => {
        // Welcomed: now misbehave as a member would.
        const report = encodeMessage({
          type: 'stepDone',
          generation: -1,
          step: 0,
          lossSum: 1,
          correct: 0,
          count: 1,
          gradNorm: 1,
          paramDigest: 'x',
          computeMs: 1,
          copyMs: 0,
          commMs: 1,
          exposedCommMs: 1,
          dataWaitMs: 0,
          bytesSent: 0,
          bytesReceived: 0,
          skipped: [],
        });
        ws.send(strategy === 'garbage-after-hello' ? randomBytes(rng, 300) : mutate(report, rng));
        // A message the coordinator happens to accept is closed from our side after a moment.
        setTimeout(() => ws.close(), 200);
      });
    });
  });
}

test('random and mutated messages never crash the coordinator; a real run then succeeds', {
  skip: needsData,
  timeout: 180_000,
}, async () => {
  const out = tempRunDir('fuzz');
  const { coordinator, url } = await startCoordinator(
    ['--workers', '2', '--recipe', MICRO_RECIPE, '--steps', '5', '--out', out, '--join-timeout', '120'],
    170_000,
  );
  const rng = new Mulberry32(20261127);
  const codes = new Map<number, number>();
  try {
    const deadline = Date.now() + FUZZ_MS;
    let connections = 0;
    while (Date.now() < deadline && connections < MAX_CONNECTIONS) {
      const strategy = STRATEGIES[connections % STRATEGIES.length]!;
      const code = await fuzzOnce(url, strategy, rng);
      codes.set(code, (codes.get(code) ?? 0) + 1);
      connections++;
    }
    assert.ok(connections >= STRATEGIES.length, `fuzzed ${connections} connections`);
    assert.equal(
      coordinator.child.exitCode,
      null,
      `the coordinator is still running after ${connections} fuzz connections:\n${coordinator.stderr()}`,
    );
    assert.ok((codes.get(4003) ?? 0) > 0, `malformed messages are refused with 4003: ${JSON.stringify([...codes])}`);
    const health = await fetch(`${url.replace('ws://', 'http://')}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { workers: number }).workers, 0, 'no fuzz connection stayed a member');

    const env = { VIT_DIST_TOKEN: TOKEN };
    const workers = [0, 1].map(() => start(['worker', '--coordinator', url, '--backend', 'wasm'], { timeoutMs: 150_000, env }));
    const result = await coordinator.finished;
    assert.equal(result.code, 0, result.stdout + result.stderr);
    for (const w of workers) assert.equal((await w.finished).code, 0);
    assert.equal(stepRecords(out).length, 5);
  } finally {
    coordinator.child.kill('SIGKILL');
    await coordinator.finished;
  }
});
