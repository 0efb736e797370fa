// Workers on one machine link their ring over Unix sockets (src/comm/local-socket.ts) unless told
// `--ring-transport tcp`; the transport changes no bit of the run. (A worker that advertises a
// port, with a proxy in front of its ring, is dialled over TCP: ring-faults.test.ts.)
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { LOCAL_SOCKET_ORIGIN, localScope } from '../../src/comm/local-socket.ts';
import { MICRO_RECIPE, needsData, run, stepRecords, tempRunDir } from './cluster.ts';

const STEPS = 4;
const TIMEOUT_MS = 180_000;

/** Launches 2 workers; returns where each ring link's successor connected from, and the final digest. */
async function launch(transport: string[]): Promise<{ origins: string[]; digest: string }> {
  const out = tempRunDir('ring-transport');
  const args = ['launch', '--workers', '2', '--backend', 'wasm', '--recipe', MICRO_RECIPE, '--steps', String(STEPS), ...transport];
  const result = await run([...args, '--out', out], { timeoutMs: TIMEOUT_MS });
  assert.equal(result.code, 0, result.stdout + result.stderr);
  const origins = [0, 1].flatMap((slot) =>
    readFileSync(join(out, 'logs', `worker-${slot}.log`), 'utf8')
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { msg: string; from?: string })
      .filter((entry) => entry.msg === 'successor connected')
      .map((entry) => entry.from!),
  );
  const steps = stepRecords(out);
  assert.equal(steps.length, STEPS);
  return { origins, digest: steps.at(-1)!.paramDigest };
}

test('launch links the ring over Unix sockets, or over TCP with --ring-transport tcp, with the same digest', {
  skip: needsData || (localScope() === null ? 'no Linux abstract Unix sockets here (/proc unreadable)' : false),
  timeout: 2 * TIMEOUT_MS,
}, async () => {
  const unix = await launch([]);
  assert.deepEqual(unix.origins, [LOCAL_SOCKET_ORIGIN, LOCAL_SOCKET_ORIGIN]);
  const tcp = await launch(['--ring-transport', 'tcp']);
  assert.equal(tcp.origins.length, 2);
  for (const origin of tcp.origins) assert.match(origin, /^127\.0\.0\.1:\d+$/);
  assert.equal(tcp.digest, unix.digest);
});
