// How a run fails (issue #2): a wrong token, a wrong protocol version, a malformed message, workers
// that never arrive, a missing data set and a worker killed mid-run each end with a clear message
// and a non-zero exit, and the last checkpoint stays intact.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket } from 'ws';
import { proveToken } from '../../src/comm/auth.ts';
import {
  CLOSE_CODES,
  CONTROL_PROTOCOL_VERSION,
  controlProofContext,
  decodeCoordinatorMessage,
  encodeMessage,
} from '../../src/comm/control.ts';
import { latestCheckpoint, readCheckpoint } from '../../src/train/checkpoint.ts';
import { MICRO_RECIPE, TOKEN, checkpointAt, needsData, run, start, startCoordinator, tempRunDir, waitUntil } from './cluster.ts';

/** Connects a hand-driven client, answers the challenge with `hello` fields of our choosing, and reports how the coordinator closed. */
async function rawHello(
  url: string,
  hello: (challenge: { runId: string; nonce: Uint8Array }) => object,
  after?: (ws: WebSocket) => void,
): Promise<{ code: number; reason: string }> {
  const ws = new WebSocket(url);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the coordinator did not close the connection')), 20_000);
    ws.once('message', (data: Buffer) => {
      const challenge = decodeCoordinatorMessage(data, 'coordinator');
      assert.equal(challenge.type, 'challenge');
      ws.send(encodeMessage(hello(challenge as { runId: string; nonce: Uint8Array }) as never));
      after?.(ws);
    });
    ws.on('close', (code, reason) => {
      clearTimeout(timer);
      resolve({ code, reason: reason.toString() });
    });
    ws.on('error', () => undefined);
  });
}

const validHello = (c: { runId: string; nonce: Uint8Array }, protocol = CONTROL_PROTOCOL_VERSION, token = TOKEN) => ({
  type: 'hello',
  protocol,
  proof: proveToken(token, c.nonce, controlProofContext(c.runId)),
  ring: { host: '127.0.0.1', port: 1 },
  backend: 'none',
  host: 'test',
  pid: 1,
});

test('the coordinator refuses a wrong token, a wrong protocol version and malformed messages', { timeout: 60_000 }, async () => {
  const { coordinator, url } = await startCoordinator(
    ['--workers', '2', '--recipe', MICRO_RECIPE, '--out', tempRunDir('refuse'), '--join-timeout', '40'],
    60_000,
  );
  try {
    const wrongToken = await rawHello(url, (c) => validHello(c, CONTROL_PROTOCOL_VERSION, 'wrong'));
    assert.deepEqual(wrongToken, { code: CLOSE_CODES.badToken, reason: 'wrong token' });
    const wrongVersion = await rawHello(url, (c) => validHello(c, 999));
    assert.equal(wrongVersion.code, CLOSE_CODES.badProtocol);
    assert.match(
      wrongVersion.reason,
      new RegExp(`protocol version 999 is not supported; the coordinator speaks version ${CONTROL_PROTOCOL_VERSION}`),
    );
    const junkHello = await rawHello(url, () => ({ type: 'launch-missiles' }));
    assert.equal(junkHello.code, CLOSE_CODES.badMessage);
    assert.match(junkHello.reason, /unknown message type "launch-missiles"/);
    const junkAfterJoin = await rawHello(
      url,
      (c) => validHello(c),
      (ws) => ws.send(Buffer.from([0xc1, 0xff, 0x00])),
    );
    assert.equal(junkAfterJoin.code, CLOSE_CODES.badMessage);
    assert.match(junkAfterJoin.reason, /malformed message|unknown message type/);
  } finally {
    coordinator.child.kill('SIGKILL');
    await coordinator.finished;
  }
});

test('a worker with the wrong token exits with a clear error', { timeout: 60_000 }, async () => {
  const { coordinator, url } = await startCoordinator(
    ['--workers', '1', '--recipe', MICRO_RECIPE, '--out', tempRunDir('token'), '--join-timeout', '30'],
    60_000,
  );
  try {
    const worker = await run(['worker', '--coordinator', url, '--token', 'not-the-token', '--backend', 'cpu'], { timeoutMs: 30_000 });
    assert.equal(worker.code, 1);
    assert.match(worker.stderr, /vit-dist: error: the coordinator closed the connection \(code 4001: wrong token\)/);
  } finally {
    coordinator.child.kill('SIGKILL');
    await coordinator.finished;
  }
});

test('workers that never arrive end the run after --join-timeout', { timeout: 30_000 }, async () => {
  const result = await run(
    [
      'coordinator',
      '--workers',
      '2',
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--token',
      TOKEN,
      '--recipe',
      MICRO_RECIPE,
      '--out',
      tempRunDir('join'),
      '--join-timeout',
      '1',
    ],
    { timeoutMs: 20_000 },
  );
  assert.equal(result.code, 1);
  assert.match(result.stderr, /vit-dist: error: only 0 of 2 workers joined within 1 s \(--join-timeout\)/);
});

test('a coordinator without a token refuses to start', { timeout: 30_000 }, async () => {
  const result = await run(['coordinator', '--workers', '1', '--port', '0'], { timeoutMs: 20_000, env: { VIT_DIST_TOKEN: '' } });
  assert.equal(result.code, 1);
  assert.match(result.stderr, /a shared token is required: pass --token or set VIT_DIST_TOKEN/);
});

test('a missing data set fails the run with an error naming the path', { skip: needsData, timeout: 60_000 }, async () => {
  const result = await run(
    [
      'launch',
      '--workers',
      '1',
      '--recipe',
      MICRO_RECIPE,
      '--data',
      '/nonexistent/fmnist',
      '--backend',
      'wasm',
      '--out',
      tempRunDir('nodata'),
    ],
    { timeoutMs: 60_000 },
  );
  assert.equal(result.code, 1);
  assert.match(result.stderr, /\/nonexistent\/fmnist\/train-images-idx3-ubyte.gz: file not found/);
});

test('with --max-restarts 0, a worker killed mid-run stops the run with an error naming its rank; the last checkpoint is intact', {
  skip: needsData,
  timeout: 180_000,
}, async () => {
  const out = tempRunDir('killed');
  const { coordinator, url } = await startCoordinator(
    ['--workers', '2', '--recipe', MICRO_RECIPE, '--steps', '1000', '--checkpoint-every', '5', '--max-restarts', '0', '--out', out],
    170_000,
  );
  const env = { VIT_DIST_TOKEN: TOKEN };
  const workers = [0, 1].map(() => start(['worker', '--coordinator', url, '--backend', 'wasm'], { timeoutMs: 170_000, env }));
  try {
    await waitUntil(checkpointAt(out, 10), 150_000, 'two checkpoints');
    workers[1]!.child.kill('SIGKILL');
    const result = await coordinator.finished;
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /vit-dist: error: giving up after 0 restarts \(--max-restarts 0\): rank \d \(.* pid \d+\) (disconnected|failed: )/,
    );
    const survivor = await workers[0]!.finished;
    assert.equal(survivor.code, 1, 'the surviving worker exits with an error too');
    const latest = latestCheckpoint(out);
    assert.ok(latest, 'a checkpoint exists');
    assert.ok(readCheckpoint(latest).meta.step >= 10);
  } finally {
    for (const p of [coordinator, ...workers]) p.child.kill('SIGKILL');
    await Promise.all([coordinator, ...workers].map((p) => p.finished));
  }
});
