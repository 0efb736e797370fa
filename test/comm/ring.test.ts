import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { makeNonce, proveToken } from '../../src/comm/auth.ts';
import { encodeFrameHeader, FRAME_HEADER_BYTES, FRAME_MAGIC, Phase } from '../../src/comm/frame.ts';
import { helloContext, RING_PATH, RING_PROTOCOL_VERSION, welcomeContext } from '../../src/comm/link.ts';
import { RingPeer, type RingOptions } from '../../src/comm/ring.ts';
import { shardRange } from '../../src/comm/shard.ts';
import { addInto, addIntoScalar, simdAvailable } from '../../src/comm/simd-add.ts';

const TIMEOUT = { timeout: 20_000 };

const TOKEN = 'test-token-for-the-ring';

async function makeRing(worldSize: number, extra: Partial<RingOptions> = {}): Promise<RingPeer[]> {
  const peers = await Promise.all(
    Array.from({ length: worldSize }, (_, rank) => RingPeer.listen({ rank, worldSize, token: TOKEN, generation: GENERATION, connectTimeoutMs: 5000, ...extra })),
  );
  const addresses = peers.map((peer) => peer.address);
  await Promise.all(peers.map((peer) => peer.connect(addresses)));
  return peers;
}

async function closeRing(peers: RingPeer[]): Promise<void> {
  await Promise.all(peers.map((peer) => peer.close()));
}

/** Integer-valued floats, distinct per rank and element, whose sums are exact in float32. */
function rankData(rank: number, length: number): Float32Array {
  const data = new Float32Array(length);
  for (let i = 0; i < length; i++) data[i] = ((i * 7 + rank * 13) % 1001) - 500;
  return data;
}

function expectedSum(worldSize: number, length: number): Float32Array {
  const sum = new Float32Array(length);
  for (let rank = 0; rank < worldSize; rank++) {
    const data = rankData(rank, length);
    for (let i = 0; i < length; i++) sum[i]! += data[i]!;
  }
  return sum;
}

const GENERATION = 7;
const CHUNK_BYTES = 4096;

function assertEqualFloats(actual: Float32Array, expected: Float32Array, label: string): void {
  assert.equal(actual.length, expected.length, label);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) assert.fail(`${label}: element ${i} is ${actual[i]}, expected ${expected[i]}`);
  }
}

function assertBitIdentical(buffers: Float32Array[], label: string): void {
  const first = Buffer.from(buffers[0]!.buffer, buffers[0]!.byteOffset, buffers[0]!.byteLength);
  for (const [rank, other] of buffers.entries()) {
    assert.ok(first.equals(Buffer.from(other.buffer, other.byteOffset, other.byteLength)), `${label}: rank ${rank} differs from rank 0`);
  }
}

describe('ring all-reduce results', () => {
  test('worldSize 1 needs no sockets and leaves data as is', TIMEOUT, async () => {
    const [peer] = await makeRing(1);
    const data = rankData(0, 10);
    await peer!.allReduce(data, 0);
    assertEqualFloats(data, rankData(0, 10), 'N=1');
    assert.deepEqual(await peer!.allReduceScalars(new Float64Array([1.5, 2]), 0), new Float64Array([1.5, 2]));
    await peer!.close();
  });

  for (let worldSize = 2; worldSize <= 8; worldSize++) {
    test(`N=${worldSize}: sums exactly and identically for odd lengths and small chunks`, TIMEOUT, async () => {
      const peers = await makeRing(worldSize, { chunkBytes: CHUNK_BYTES });
      try {
        const lengths = [1, worldSize - 1, 7, 1001, 100003];
        for (const [step, length] of lengths.entries()) {
          const buffers = peers.map((_, rank) => rankData(rank, length));
          await Promise.all(peers.map((peer, rank) => peer.allReduce(buffers[rank]!, step)));
          const expected = expectedSum(worldSize, length);
          for (const [rank, buffer] of buffers.entries()) assertEqualFloats(buffer, expected, `N=${worldSize} length ${length} rank ${rank}`);
        }
      } finally {
        await closeRing(peers);
      }
    });
  }

  test('chunks larger than a shard (default 1 MiB chunks)', TIMEOUT, async () => {
    const peers = await makeRing(3);
    try {
      const buffers = peers.map((_, rank) => rankData(rank, 100003));
      await Promise.all(peers.map((peer, rank) => peer.allReduce(buffers[rank]!, 1)));
      for (const buffer of buffers) assertEqualFloats(buffer, expectedSum(3, 100003), 'N=3 large chunk');
    } finally {
      await closeRing(peers);
    }
  });

  test('reduceScatter leaves the sum in each own shard; allGather spreads the owners bits', TIMEOUT, async () => {
    const worldSize = 4;
    const length = 5003;
    const peers = await makeRing(worldSize, { chunkBytes: CHUNK_BYTES });
    try {
      const buffers = peers.map((_, rank) => rankData(rank, length));
      await Promise.all(peers.map((peer, rank) => peer.reduceScatter(buffers[rank]!, 3)));
      const expected = expectedSum(worldSize, length);
      for (const [rank, buffer] of buffers.entries()) {
        const { start, end } = shardRange(length, worldSize, rank);
        assertEqualFloats(buffer.subarray(start, end), expected.subarray(start, end), `shard of rank ${rank}`);
      }
      // Non-integer owner values: every rank must end with the owner's exact bits.
      const owned = peers.map(() => new Float32Array(length).fill(Number.NaN));
      for (const [rank, buffer] of owned.entries()) {
        const { start, end } = shardRange(length, worldSize, rank);
        for (let i = start; i < end; i++) buffer[i] = Math.fround(Math.sin(i) / 3);
      }
      await Promise.all(peers.map((peer, rank) => peer.allGather(owned[rank]!, 3)));
      assertBitIdentical(owned, 'allGather');
      assert.ok(owned[0]!.every((value, i) => value === Math.fround(Math.sin(i) / 3)));
    } finally {
      await closeRing(peers);
    }
  });

  test('non-integer sums are bit-identical on all ranks (large frames, read straight into place)', TIMEOUT, async () => {
    const peers = await makeRing(5);
    try {
      const buffers = peers.map((_, rank) => Float32Array.from({ length: 1_000_003 }, (_, i) => Math.sin(i * (rank + 1)) * 1e-3 + rank / 7));
      await Promise.all(peers.map((peer, rank) => peer.allReduce(buffers[rank]!, 9)));
      assertBitIdentical(buffers, 'allReduce');
    } finally {
      await closeRing(peers);
    }
  });

  test('ranks that start late or run ahead (data waiting to be read) still sum correctly', TIMEOUT, async () => {
    const worldSize = 3;
    const peers = await makeRing(worldSize, { chunkBytes: CHUNK_BYTES });
    try {
      for (let step = 0; step < 4; step++) {
        const length = 20_011 + step;
        const buffers = peers.map((_, rank) => rankData(rank, length));
        // Rank `step % N` joins 30 ms late: the others' frames wait in its socket meanwhile.
        await Promise.all(
          peers.map(async (peer, rank) => {
            if (rank === step % worldSize) await new Promise((resolve) => setTimeout(resolve, 30));
            await peer.allReduce(buffers[rank]!, step);
          }),
        );
        for (const buffer of buffers) assertEqualFloats(buffer, expectedSum(worldSize, length), `step ${step}`);
      }
    } finally {
      await closeRing(peers);
    }
  });

  test('allReduceScalars adds in rank order and agrees bitwise on all ranks', TIMEOUT, async () => {
    const worldSize = 6;
    const peers = await makeRing(worldSize, { chunkBytes: CHUNK_BYTES });
    try {
      const values = peers.map((_, rank) => new Float64Array([0.1 * (rank + 1), 1e16 * (rank % 2 ? -1 : 1), Math.PI / (rank + 1)]));
      const results = await Promise.all(peers.map((peer, rank) => peer.allReduceScalars(values[rank]!, 11)));
      const expected = new Float64Array(3);
      for (const vector of values) for (let i = 0; i < 3; i++) expected[i]! += vector[i]!;
      for (const result of results) assert.deepEqual(result, expected);
      assert.deepEqual(await Promise.all(peers.map((peer) => peer.allReduceScalars(new Float64Array(0), 12))), peers.map(() => new Float64Array(0)));
    } finally {
      await closeRing(peers);
    }
  });
});

describe('reduction kernel', () => {
  test('the SIMD add gives the bits of the plain JS add, for any length and alignment', () => {
    // VIT_DIST_NO_SIMD=1 runs the suite on the JS fallback; otherwise Node 20 must have SIMD.
    if (!process.env.VIT_DIST_NO_SIMD) assert.ok(simdAvailable, 'WebAssembly SIMD should be available on Node 20');
    for (const length of [0, 1, 3, 4, 5, 17, 16 * 1024 + 3, 100_003]) {
      const dst = Float32Array.from({ length }, (_, i) => Math.sin(i) * 1e3);
      const src = Float32Array.from({ length }, (_, i) => Math.cos(i * 3) / 7);
      const expected = dst.slice();
      addIntoScalar(expected, src);
      addInto(dst, src);
      assert.ok(Buffer.from(dst.buffer).equals(Buffer.from(expected.buffer)), `length ${length}`);
    }
  });
});

describe('ring connection checks', () => {
  test('a peer with the wrong token is refused', TIMEOUT, async () => {
    const peers = await Promise.all([0, 1].map((rank) => RingPeer.listen({ rank, worldSize: 2, token: rank === 1 ? 'wrong-token' : TOKEN, generation: GENERATION, connectTimeoutMs: 3000 })));
    const addresses = peers.map((peer) => peer.address);
    const results = await Promise.allSettled(peers.map((peer) => peer.connect(addresses)));
    for (const result of results) {
      assert.equal(result.status, 'rejected');
      assert.match((result as PromiseRejectedResult).reason.message, /failed authentication \(wrong token\)/);
    }
    await closeRing(peers);
  });

  test('a peer of another generation is refused', TIMEOUT, async () => {
    const peers = await Promise.all([0, 1].map((rank) => RingPeer.listen({ rank, worldSize: 2, token: TOKEN, generation: GENERATION + rank, connectTimeoutMs: 3000 })));
    const addresses = peers.map((peer) => peer.address);
    const results = await Promise.allSettled(peers.map((peer) => peer.connect(addresses)));
    for (const result of results) {
      assert.equal(result.status, 'rejected');
      assert.match((result as PromiseRejectedResult).reason.message, /generation \d does not match this ring's generation \d/);
    }
    await closeRing(peers);
  });

  test('wrong rank and wrong protocol version are refused with a close reason', TIMEOUT, async () => {
    const peer = await RingPeer.listen({ rank: 0, worldSize: 3, token: TOKEN, generation: GENERATION });
    try {
      const refusal = (hello: { rank: number; protocol: number }) =>
        new Promise<{ code: number; reason: string }>((resolve, reject) => {
          const ws = new WebSocket(`ws://127.0.0.1:${peer.address.port}${RING_PATH}`, { perMessageDeflate: false });
          ws.on('message', (data: Buffer) => {
            const challenge = JSON.parse(data.toString());
            const proof = proveToken(TOKEN, Buffer.from(challenge.nonce, 'hex'), helloContext(GENERATION, hello.rank, 0));
            ws.send(JSON.stringify({ type: 'hello', protocol: hello.protocol, generation: GENERATION, worldSize: 3, chunkBytes: peer.chunkBytes, rank: hello.rank, nonce: makeNonce().toString('hex'), proof: proof.toString('hex') }));
          });
          ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
          ws.on('error', reject);
        });
      const wrongRank = await refusal({ rank: 2, protocol: RING_PROTOCOL_VERSION });
      assert.equal(wrongRank.code, 4004);
      assert.match(wrongRank.reason, /rank 2 is not the successor of rank 0 \(expected rank 1\)/);
      const wrongVersion = await refusal({ rank: 1, protocol: RING_PROTOCOL_VERSION + 1 });
      assert.equal(wrongVersion.code, 4002);
      assert.match(wrongVersion.reason, /protocol version 2 is not 1/);
    } finally {
      await peer.close();
    }
  });
});

/**
 * A hand-made rank 0 of a 2-rank ring, built on the `ws` library: it authenticates properly both
 * ways, so the real rank 1 accepts it, and then sends whatever a test wants.
 */
async function fakeRankZero(real: RingPeer): Promise<{ toReal: WebSocket; fromRealServer: WebSocketServer; dataSocket: Promise<WebSocket> }> {
  const fromRealServer = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await new Promise((resolve) => fromRealServer.once('listening', resolve));
  // The real rank 1 connects here (rank 0 is its predecessor); this side sends data to it.
  const dataSocket = new Promise<WebSocket>((resolve) => {
    fromRealServer.on('connection', (ws) => {
      const nonce = makeNonce();
      ws.send(JSON.stringify({ type: 'challenge', protocol: RING_PROTOCOL_VERSION, nonce: nonce.toString('hex') }));
      ws.once('message', (data: Buffer) => {
        const hello = JSON.parse(data.toString());
        const proof = proveToken(TOKEN, Buffer.from(hello.nonce, 'hex'), welcomeContext(GENERATION, 0, 1));
        ws.send(JSON.stringify({ type: 'welcome', proof: proof.toString('hex') }));
        resolve(ws);
      });
    });
  });
  // This side connects to the real rank 1 as its successor.
  const toReal = new WebSocket(`ws://127.0.0.1:${real.address.port}${RING_PATH}`, { perMessageDeflate: false });
  toReal.once('message', (data: Buffer) => {
    const challenge = JSON.parse(data.toString());
    const proof = proveToken(TOKEN, Buffer.from(challenge.nonce, 'hex'), helloContext(GENERATION, 0, 1));
    toReal.send(JSON.stringify({ type: 'hello', protocol: RING_PROTOCOL_VERSION, generation: GENERATION, worldSize: 2, chunkBytes: CHUNK_BYTES, rank: 0, nonce: makeNonce().toString('hex'), proof: proof.toString('hex') }));
  });
  const port = (fromRealServer.address() as { port: number }).port;
  await real.connect([{ host: '127.0.0.1', port }, real.address]);
  return { toReal, fromRealServer, dataSocket };
}

async function withFakePredecessor(check: (fake: Awaited<ReturnType<typeof fakeRankZero>>, real: RingPeer) => Promise<void>): Promise<void> {
  const real = await RingPeer.listen({ rank: 1, worldSize: 2, token: TOKEN, generation: GENERATION, chunkBytes: CHUNK_BYTES, connectTimeoutMs: 3000 });
  const fake = await fakeRankZero(real);
  try {
    await check(fake, real);
  } finally {
    fake.toReal.terminate();
    fake.fromRealServer.close();
    await real.close();
  }
}

function dataFrame(magic: number, payloadBytes: number, count: number): Buffer {
  const frame = Buffer.alloc(FRAME_HEADER_BYTES + payloadBytes);
  encodeFrameHeader({ phase: Phase.ReduceScatter, generation: GENERATION, step: 1, chunk: 0, offset: 0, count }, frame);
  frame.writeUInt32LE(magic, 0);
  return frame;
}

describe('bad frames and broken peers', () => {
  test('the fake predecessor is accepted and its well-formed frames work', TIMEOUT, async () => {
    await withFakePredecessor(async (fake, real) => {
      const ws = await fake.dataSocket;
      const buffer = new Float32Array([1, 2, 3, 4]);
      // Rank 1 receives shard 1 (elements 2..4) from rank 0 in a reduce-scatter of 4 floats.
      const frame = Buffer.alloc(FRAME_HEADER_BYTES + 8);
      encodeFrameHeader({ phase: Phase.ReduceScatter, generation: GENERATION, step: 1, chunk: 0, offset: 2, count: 2 }, frame);
      frame.writeFloatLE(10, FRAME_HEADER_BYTES);
      frame.writeFloatLE(20, FRAME_HEADER_BYTES + 4);
      ws.send(frame);
      await real.reduceScatter(buffer, 1);
      assert.deepEqual(Array.from(buffer.subarray(2)), [13, 24]);
    });
  });

  test('a malformed header fails the pending operation, naming the predecessor', TIMEOUT, async () => {
    await withFakePredecessor(async (fake, real) => {
      (await fake.dataSocket).send(dataFrame(0xdeadbeef, 8, 2));
      await assert.rejects(real.allReduce(new Float32Array(4), 1), /rank 1: connection from predecessor rank 0 failed: bad frame magic 0xdeadbeef/);
      await assert.rejects(real.allReduce(new Float32Array(4), 2), /bad frame magic/, 'the ring stays broken');
    });
  });

  test('an unexpected frame (wrong step) is refused', TIMEOUT, async () => {
    await withFakePredecessor(async (fake, real) => {
      const frame = dataFrame(FRAME_MAGIC, 8, 2);
      frame.writeUInt32LE(2, 20); // offset 2: the right shard, but the header says step 1
      (await fake.dataSocket).send(frame);
      await assert.rejects(real.reduceScatter(new Float32Array(4), 5), /unexpected frame: got reduce-scatter generation 7 step 1 .*expected reduce-scatter generation 7 step 5/);
    });
  });

  test('an oversized frame is refused before its payload is read', TIMEOUT, async () => {
    await withFakePredecessor(async (fake, real) => {
      (await fake.dataSocket).send(dataFrame(FRAME_MAGIC, CHUNK_BYTES + 4, (CHUNK_BYTES + 4) / 4));
      await assert.rejects(real.allReduce(new Float32Array(4096), 1), /binary frame of \d+ bytes exceeds the limit of \d+ bytes/);
    });
  });

  test('data from the successor side is refused, naming the successor', TIMEOUT, async () => {
    await withFakePredecessor(async (fake, real) => {
      const pending = real.allReduce(new Float32Array(16), 1);
      fake.toReal.send(Buffer.from('junk'));
      await assert.rejects(pending, /connection to successor rank 0 failed: binary frames are not accepted on this connection/);
    });
  });

  test('a peer that closes mid-operation fails its neighbours instead of hanging', TIMEOUT, async () => {
    const peers = await makeRing(4);
    const length = 2_000_000;
    const settled = Promise.allSettled(peers.slice(0, 3).map((peer, rank) => peer.allReduce(rankData(rank, length), 1)));
    await peers[3]!.close();
    const results = await settled;
    for (const [rank, result] of results.entries()) {
      assert.equal(result.status, 'rejected', `rank ${rank}`);
      assert.match((result as PromiseRejectedResult).reason.message, new RegExp(`^rank ${rank}: connection (to successor|from predecessor) rank \\d`));
    }
    await closeRing(peers);
  });

  test('concurrent collectives and a closed ring are refused', TIMEOUT, async () => {
    const peers = await makeRing(2, { chunkBytes: CHUNK_BYTES });
    const first = peers[0]!.allReduce(new Float32Array(8), 1);
    await assert.rejects(peers[0]!.allReduce(new Float32Array(8), 1), /already in progress/);
    await peers[1]!.allReduce(new Float32Array(8), 1);
    await first;
    await closeRing(peers);
    await assert.rejects(peers[0]!.allReduce(new Float32Array(8), 2), /ring (is )?closed/);
  });
});
