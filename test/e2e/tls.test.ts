// wss:// for clusters (issue #5): the coordinator serves TLS from certificate files; a worker that
// trusts the certificate trains, one that does not is refused by its own TLS check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MICRO_RECIPE, TOKEN, needsData, run, start, stepRecords, tempRunDir } from './cluster.ts';

function selfSignedCertificate(): { cert: string; key: string } {
  const dir = mkdtempSync(join(tmpdir(), 'vit-dist-tls-'));
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore' },
  );
  return { cert, key };
}

test('a coordinator with --tls-cert serves wss://; workers with --ca train, others are refused', {
  skip: needsData,
  timeout: 120_000,
}, async () => {
  const { cert, key } = selfSignedCertificate();
  const out = tempRunDir('tls');
  const coordinator = start(
    [
      'coordinator',
      '--workers',
      '1',
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--token',
      TOKEN,
      '--tls-cert',
      cert,
      '--tls-key',
      key,
      '--recipe',
      MICRO_RECIPE,
      '--steps',
      '3',
      '--out',
      out,
    ],
    { timeoutMs: 110_000 },
  );
  try {
    await coordinator.waitFor(/listening on wss:\/\/127\.0\.0\.1:\d+/, 30_000);
    const port = /listening on wss:\/\/127\.0\.0\.1:(\d+)/.exec(coordinator.stdout())![1];
    const env = { VIT_DIST_TOKEN: TOKEN };
    const untrusting = await run(['worker', '--coordinator', `wss://127.0.0.1:${port}`, '--backend', 'cpu', '--reconnect-timeout', '1'], {
      timeoutMs: 60_000,
      env,
    });
    assert.equal(untrusting.code, 1);
    assert.match(untrusting.stderr, /self-signed certificate/);
    const trusting = await run(['worker', '--coordinator', `wss://127.0.0.1:${port}`, '--ca', cert, '--backend', 'wasm'], {
      timeoutMs: 100_000,
      env,
    });
    assert.equal(trusting.code, 0, trusting.stderr);
    assert.equal((await coordinator.finished).code, 0);
    assert.equal(stepRecords(out).length, 3);
  } finally {
    coordinator.child.kill('SIGKILL');
    await coordinator.finished;
  }
});

test('--tls-cert without --tls-key is a usage error', { timeout: 30_000 }, async () => {
  const result = await run(['coordinator', '--workers', '1', '--token', TOKEN, '--tls-cert', '/nonexistent.pem'], { timeoutMs: 20_000 });
  assert.equal(result.code, 1);
  assert.match(result.stderr, /--tls-cert and --tls-key go together/);
});
