// Reduce-scatter by gradient buckets (the overlapped step's path) and with bf16 on the wire.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { bf16ToFloat32, float32ToBf16 } from '../../src/comm/bf16.ts';
import { RingPeer } from '../../src/comm/ring.ts';
import type { WireFormat } from '../../src/common/wire.ts';
import { Mulberry32 } from '../../src/common/random.ts';
import { type ElementRange, shardRange } from '../../src/common/shard.ts';

const TIMEOUT = { timeout: 30_000 };
const TOKEN = 'test-token-for-the-ring-buckets';
/** Small chunks: many frames per shard, and bucket edges inside chunks. */
const CHUNK_BYTES = 4096;

async function makeRing(worldSize: number): Promise<RingPeer[]> {
  const peers = await Promise.all(
    Array.from({ length: worldSize }, (_, rank) =>
      RingPeer.listen({ rank, worldSize, token: TOKEN, generation: 3, chunkBytes: CHUNK_BYTES, connectTimeoutMs: 5000 }),
    ),
  );
  const addresses = peers.map((peer) => peer.address);
  await Promise.all(peers.map((peer) => peer.connect(addresses)));
  return peers;
}

/** Gradient-like floats: every addition rounds, so a changed summation order would show in the bits. */
function rankData(rank: number, length: number): Float32Array {
  const rng = new Mulberry32(1000 + rank);
  return Float32Array.from({ length }, () => (rng.next() - 0.5) * 2 ** Math.floor(rng.next() * 20 - 10));
}

/** Buckets covering [0, length) from the end down, as the backward pass hands them over, cut at random. */
function randomBuckets(length: number, count: number, seed: number): ElementRange[] {
  const rng = new Mulberry32(seed);
  const cuts = Array.from({ length: count - 1 }, () => Math.floor(rng.next() * length)).sort((a, b) => a - b);
  const edges = [0, ...cuts, length];
  return edges
    .slice(1)
    .map((end, i) => ({ start: edges[i]!, end }))
    .reverse();
}

async function reduceScatterAll(
  worldSize: number,
  length: number,
  wire: WireFormat,
  buckets: ElementRange[] | null,
): Promise<Float32Array[]> {
  const peers = await makeRing(worldSize);
  try {
    const buffers = peers.map((_, rank) => rankData(rank, length));
    await Promise.all(
      peers.map(async (peer, rank) => {
        if (!buckets) return peer.reduceScatter(buffers[rank]!, 5, { wire });
        for (const range of buckets) await peer.reduceScatter(buffers[rank]!, 5, { wire, range });
      }),
    );
    // Each rank's own shard is the result; the rest is scratch.
    return buffers.map((buf, rank) => {
      const { start, end } = shardRange(length, worldSize, rank);
      return buf.slice(start, end);
    });
  } finally {
    await Promise.all(peers.map((peer) => peer.close()));
  }
}

function assertSameBits(actual: Float32Array[], expected: Float32Array[], label: string): void {
  for (const [rank, shard] of actual.entries()) {
    const want = expected[rank]!;
    assert.ok(Buffer.from(shard.buffer).equals(Buffer.from(want.buffer)), `${label}: rank ${rank}'s shard differs`);
  }
}

/** The ring's order for shard s: rank s+1's values, then each next rank adds its own, rank s last; bf16 rounds each hop's partial sum. */
function simulatedShards(worldSize: number, length: number, wire: WireFormat): Float32Array[] {
  const data = Array.from({ length: worldSize }, (_, rank) => rankData(rank, length));
  const onWire = (x: number) => (wire === 'bf16' ? bf16ToFloat32(float32ToBf16(x)) : x);
  return Array.from({ length: worldSize }, (_, owner) => {
    const { start, end } = shardRange(length, worldSize, owner);
    const shard = new Float32Array(end - start);
    for (let i = start; i < end; i++) {
      let acc = data[(owner + 1) % worldSize]![i]!;
      for (let k = 2; k <= worldSize; k++) acc = Math.fround(data[(owner + k) % worldSize]![i]! + onWire(acc));
      shard[i - start] = acc;
    }
    return shard;
  });
}

describe('reduce-scatter by buckets and bf16 on the wire', () => {
  for (const worldSize of [2, 3, 4]) {
    test(`N=${worldSize}: bucket by bucket gives the whole buffer's bits, fp32 and bf16, for any bucket cut`, TIMEOUT, async () => {
      const length = 10_007;
      for (const wire of ['fp32', 'bf16'] as const) {
        const whole = await reduceScatterAll(worldSize, length, wire, null);
        assertSameBits(whole, simulatedShards(worldSize, length, wire), `${wire} whole against the ring order`);
        for (const [count, seed] of [
          [1, 1],
          [3, 2],
          [17, 3],
        ] as const) {
          assertSameBits(
            await reduceScatterAll(worldSize, length, wire, randomBuckets(length, count, seed)),
            whole,
            `${wire}, ${count} buckets`,
          );
        }
      }
    });
  }

  test('bf16 on the wire is deterministic, halves the payload bytes and stays within bf16 rounding of the exact sum', TIMEOUT, async () => {
    const worldSize = 4;
    const length = 64 * 1024;
    const first = await reduceScatterAll(worldSize, length, 'bf16', null);
    assertSameBits(await reduceScatterAll(worldSize, length, 'bf16', null), first, 'second bf16 run');
    const exact = simulatedShards(worldSize, length, 'fp32');
    let worst = 0;
    let scale = 0;
    for (const [rank, shard] of first.entries()) {
      for (let i = 0; i < shard.length; i++) {
        worst = Math.max(worst, Math.abs(shard[i]! - exact[rank]![i]!));
        scale = Math.max(scale, Math.abs(exact[rank]![i]!));
      }
    }
    // Three hops of bf16 rounding (relative 2^-9 each) on partial sums no larger than the data's range.
    assert.ok(worst > 0 && worst <= 3 * 2 ** -8 * scale, `largest error ${worst} against a scale of ${scale}`);

    const peers = await makeRing(2);
    try {
      const bytesOf = async (wire: WireFormat) => {
        const before = peers[0]!.traffic().sent;
        await Promise.all(peers.map((peer, rank) => peer.reduceScatter(rankData(rank, length), 1, { wire })));
        return peers[0]!.traffic().sent - before;
      };
      const fp32 = await bytesOf('fp32');
      const bf16 = await bytesOf('bf16');
      assert.ok(bf16 < 0.55 * fp32 && bf16 > 0.45 * fp32, `bf16 sent ${bf16} bytes, fp32 ${fp32}`);
    } finally {
      await Promise.all(peers.map((peer) => peer.close()));
    }
  });

  test('a bucket outside the buffer and an unknown wire format are refused', TIMEOUT, async () => {
    const [peer] = await makeRing(1);
    await assert.rejects(peer!.reduceScatter(new Float32Array(10), 0, { range: { start: 5, end: 11 } }), /not within the buffer of 10/);
    await assert.rejects(peer!.reduceScatter(new Float32Array(10), 0, { wire: 'fp8' as WireFormat }), /unknown wire format "fp8"/);
    await peer!.close();
  });

  test('ranks that disagree on the wire format fail with a frame error, not wrong sums', TIMEOUT, async () => {
    const peers = await makeRing(2);
    const results = await Promise.allSettled(
      peers.map((peer, rank) => peer.reduceScatter(rankData(rank, 4096), 2, { wire: rank === 0 ? 'fp32' : 'bf16' })),
    );
    assert.ok(
      results.some((r) => r.status === 'rejected' && /unexpected frame|reduce-scatter \(bf16\)/.test(String(r.reason))),
      JSON.stringify(results.map((r) => (r.status === 'rejected' ? String(r.reason) : 'ok'))),
    );
    await Promise.all(peers.map((peer) => peer.close()));
  });
});
