// The ring in a worker thread (ring-thread.ts): the same bits as RingPeer on the main thread, with
// buckets requested before the previous one settled, and an all-reduce in one request; progress while the main thread is blocked;
// errors of the same kind with their cause; buffers outside shared memory refused.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { errorKind, RecoverableError } from '../../src/common/errors.ts';
import { Mulberry32 } from '../../src/common/random.ts';
import { type ElementRange, shardRange } from '../../src/common/shard.ts';
import type { WireFormat } from '../../src/common/wire.ts';
import { RingPeer } from '../../src/comm/ring.ts';
import { RingThread, sharedFloat32Array } from '../../src/comm/ring-thread.ts';

const TIMEOUT = { timeout: 60_000 };
const TOKEN = 'test-token-for-the-ring-thread';
const CHUNK_BYTES = 4096;

async function makeRing<R extends RingPeer | RingThread>(worldSize: number, listen: (rank: number) => Promise<R>): Promise<R[]> {
  const peers = await Promise.all(Array.from({ length: worldSize }, (_, rank) => listen(rank)));
  const addresses = peers.map((peer) => peer.address);
  await Promise.all(peers.map((peer) => peer.connect(addresses)));
  return peers;
}

const options = (rank: number, worldSize: number) => ({
  rank,
  worldSize,
  token: TOKEN,
  generation: 7,
  chunkBytes: CHUNK_BYTES,
  connectTimeoutMs: 10_000,
});

function rankData(rank: number, length: number, shared: boolean): Float32Array {
  const rng = new Mulberry32(500 + rank);
  const data = shared ? sharedFloat32Array(length) : new Float32Array(length);
  for (let i = 0; i < length; i++) data[i] = (rng.next() - 0.5) * 2 ** Math.floor(rng.next() * 20 - 10);
  return data;
}

/** Buckets from the end down, as the backward pass hands them over. */
function buckets(length: number, count: number): ElementRange[] {
  const edges = Array.from({ length: count + 1 }, (_, i) => Math.round((i * length) / count));
  return edges
    .slice(1)
    .map((end, i) => ({ start: edges[i]!, end }))
    .reverse();
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Reduce-scatter then all-gather on RingPeers, the reference. */
async function onMainThread(worldSize: number, length: number, wire: WireFormat): Promise<Float32Array[]> {
  const peers = await makeRing(worldSize, (rank) => RingPeer.listen(options(rank, worldSize)));
  try {
    const buffers = peers.map((_, rank) => rankData(rank, length, false));
    await Promise.all(
      peers.map(async (peer, rank) => {
        await peer.reduceScatter(buffers[rank]!, 1, { wire });
        await peer.allGather(buffers[rank]!, 1);
      }),
    );
    return buffers;
  } finally {
    await Promise.all(peers.map((peer) => peer.close()));
  }
}

describe('the ring in a worker thread', () => {
  for (const worldSize of [2, 3, 4]) {
    test(
      `N=${worldSize}: buckets requested at once, then an all-gather, or an all-reduce in one request, give RingPeer's bits, fp32 and bf16`,
      TIMEOUT,
      async () => {
        const length = 10_007;
        const rings = await makeRing(worldSize, (rank) => RingThread.listen(options(rank, worldSize)));
        try {
          for (const wire of ['fp32', 'bf16'] as const) {
            const expected = await onMainThread(worldSize, length, wire);
            const buffers = rings.map((_, rank) => rankData(rank, length, true));
            await Promise.all(
              rings.map((ring, rank) => {
                // Not awaited one by one: the thread queues them in order.
                const requested = buckets(length, 5).map((range) => ring.reduceScatter(buffers[rank]!, 2, { wire, range }));
                requested.push(ring.allGather(buffers[rank]!, 2));
                return Promise.all(requested);
              }),
            );
            for (const [rank, buf] of buffers.entries()) assert.ok(sameBits(buf, expected[rank]!), `${wire}: rank ${rank} differs`);
            const whole = rings.map((_, rank) => rankData(rank, length, true));
            await Promise.all(rings.map((ring, rank) => ring.allReduce(whole[rank]!, 2, { wire })));
            for (const [rank, buf] of whole.entries())
              assert.ok(sameBits(buf, expected[rank]!), `${wire} all-reduce: rank ${rank} differs`);
          }
          const sums = await Promise.all(rings.map((ring, rank) => ring.allReduceScalars(Float64Array.of(rank, 0.1), 3)));
          for (const sum of sums) assert.deepEqual([...sum], [...sums[0]!]);
          const traffic = rings[0]!.traffic();
          assert.ok(traffic.sent > 4 * length && traffic.received > 4 * length, JSON.stringify(traffic));
        } finally {
          await Promise.all(rings.map((ring) => ring.close()));
        }
      },
    );
  }

  test('a reduce-scatter moves while the main thread is blocked', TIMEOUT, async () => {
    const worldSize = 2;
    const length = 256 * 1024;
    const rings = await makeRing(worldSize, (rank) => RingThread.listen(options(rank, worldSize)));
    try {
      const buffers = rings.map((_, rank) => rankData(rank, length, true));
      const [expected] = await Promise.all([onMainThread(worldSize, length, 'fp32')]);
      const done = rings.map((ring, rank) => ring.reduceScatter(buffers[rank]!, 4));
      // Block this thread as a backward pass does, until the sums have landed in shared memory.
      const shard = shardRange(length, worldSize, 1);
      const want = expected![1]!.subarray(shard.start, shard.end);
      const deadline = Date.now() + 30_000;
      while (!sameBits(buffers[1]!.subarray(shard.start, shard.end), want) && Date.now() < deadline) {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
      }
      assert.ok(sameBits(buffers[1]!.subarray(shard.start, shard.end), want), 'the sums did not arrive while the main thread was blocked');
      await Promise.all(done);
    } finally {
      await Promise.all(rings.map((ring) => ring.close()));
    }
  });

  test("a neighbour's close mid-collective rejects the pending and later collectives as recoverable, with the cause", TIMEOUT, async () => {
    const worldSize = 3;
    const rings = await makeRing(worldSize, (rank) => RingThread.listen(options(rank, worldSize)));
    try {
      const errors: Error[] = [];
      rings[0]!.on('error', (err: Error) => errors.push(err));
      const pending = rings[0]!.reduceScatter(rankData(0, 4096, true), 1).then(
        () => assert.fail('the collective should have failed'),
        (e: Error) => e,
      );
      const queued = assert.rejects(rings[0]!.allGather(rankData(0, 4096, true), 1), RecoverableError);
      await rings[1]!.close();
      const err = await pending;
      assert.ok(err instanceof RecoverableError, String(err));
      assert.equal(errorKind(err), 'recoverable');
      // Rank 0 learns of rank 1's close from its send link closing, from a write to rank 1 failing
      // (EPIPE: the write was in flight when the socket went), or from rank 2's link closing as rank
      // 2 fails in turn: whichever lands first names the link.
      assert.match(
        err.message,
        /rank 0: (connection to successor rank 1|sending to successor rank 1|connection from predecessor rank 2) failed/,
      );
      assert.ok(err.cause instanceof Error, 'the cause crossed the thread');
      await queued;
      assert.ok(errors.length === 1 && errors[0]!.message === err.message, errors.map(String).join('; '));
    } finally {
      await Promise.all(rings.map((ring) => ring.close()));
    }
  });

  test(
    'bad options reject listen, a buffer outside shared memory is refused, both as input errors; requests after close reject',
    TIMEOUT,
    async () => {
      await assert.rejects(
        RingThread.listen({ ...options(0, 2), chunkBytes: 5 }),
        (err: Error) => errorKind(err) === 'input' && /chunkBytes/.test(err.message),
      );
      const [solo] = await makeRing(1, (rank) => RingThread.listen(options(rank, 1)));
      await solo!.reduceScatter(sharedFloat32Array(8), 0);
      await assert.rejects(
        solo!.allGather(new Float32Array(8), 0),
        (err: Error) => errorKind(err) === 'input' && /shared memory/.test(err.message),
      );
      await solo!.close();
      await assert.rejects(solo!.allGather(sharedFloat32Array(8), 0), /ring closed/);
    },
  );
});
