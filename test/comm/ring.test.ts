import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { describe, test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { makeNonce, proveToken } from '../../src/comm/auth.ts';
import { encodeFrameHeader, FRAME_HEADER_BYTES, FRAME_MAGIC, Phase } from '../../src/comm/frame.ts';
import { helloContext, RING_PATH, RING_PROTOCOL_VERSION, welcomeContext } from '../../src/comm/link.ts';
import { RingPeer, type RingOptions } from '../../src/comm/ring.ts';
import { shardRange } from '../../src/common/shard.ts';
import { addBf16BytesInto } from '../../src/comm/bf16.ts';
import {
  addBytesInto,
  addInto,
  addIntoScalar,
  adoptKernelMemory,
  KERNEL_MEMORY_DATA_AT,
  kernelMemory,
  simdAvailable,
  wasmInputOf,
} from '../../src/comm/simd-add.ts';
import {
  clientHandshakeRequest,
  encodeFrame,
  FrameParser,
  makeHandshakeKey,
  Opcode,
  serverHandshakeResponse,
} from '../../src/comm/websocket.ts';
import { Mulberry32 } from '../../src/common/random.ts';

const TIMEOUT = { timeout: 20_000 };

const TOKEN = 'test-token-for-the-ring';

async function makeRing(worldSize: number, extra: Partial<RingOptions> = {}): Promise<RingPeer[]> {
  const peers = await Promise.all(
    Array.from({ length: worldSize }, (_, rank) =>
      RingPeer.listen({ rank, worldSize, token: TOKEN, generation: GENERATION, connectTimeoutMs: 5000, ...extra }),
    ),
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
          for (const [rank, buffer] of buffers.entries())
            assertEqualFloats(buffer, expected, `N=${worldSize} length ${length} rank ${rank}`);
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
      const buffers = peers.map((_, rank) =>
        Float32Array.from({ length: 1_000_003 }, (_, i) => Math.sin(i * (rank + 1)) * 1e-3 + rank / 7),
      );
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
      assert.deepEqual(
        await Promise.all(peers.map((peer) => peer.allReduceScalars(new Float64Array(0), 12))),
        peers.map(() => new Float64Array(0)),
      );
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

  test('adds into an adopted kernel memory, from its input region or from elsewhere, float32 and bf16, give the same bits', (t) => {
    const memory = kernelMemory(200_000);
    if (!memory) return t.skip('no WebAssembly SIMD (VIT_DIST_NO_SIMD): no kernel memories');
    adoptKernelMemory(memory);
    const input = wasmInputOf(memory.buffer)!;
    assert.ok(input.byteLength >= 64 * 1024, 'a kernel memory has an input region');
    for (const [length, offset] of [
      [1, 0],
      [5, 3],
      [17, 1],
      [16 * 1024 + 3, 7],
      [60_001, 12_345],
    ] as const) {
      for (const elementBytes of [4, 2] as const) {
        const dst = new Float32Array(memory.buffer, KERNEL_MEMORY_DATA_AT + offset * 4, length);
        for (let i = 0; i < length; i++) dst[i] = Math.sin(i) * 1e3;
        const expected = dst.slice();
        const bytes = new Uint8Array(length * elementBytes + 3);
        for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 37 + 11) & 0x7f; // finite values
        const start = 3;
        if (elementBytes === 4) addIntoScalar(expected, new Float32Array(bytes.slice(start, start + length * 4).buffer));
        else addBf16BytesInto(expected, bytes, start);
        const sources = length * elementBytes + start <= input.byteLength ? [bytes, input] : [bytes];
        for (const source of sources) {
          if (source === input) input.set(bytes);
          const target = new Float32Array(memory.buffer, KERNEL_MEMORY_DATA_AT + offset * 4, length);
          target.set(Float32Array.from({ length }, (_, i) => Math.sin(i) * 1e3));
          if (elementBytes === 4) addBytesInto(target, source, start);
          else addBf16BytesInto(target, source, start);
          assert.ok(
            Buffer.from(target.buffer, target.byteOffset, target.byteLength).equals(Buffer.from(expected.buffer)),
            `length ${length} at ${offset}, ${elementBytes}-byte elements, from ${source === input ? 'the input region' : 'elsewhere'}`,
          );
        }
      }
    }
  });
});

describe('ring connection checks', () => {
  test('a peer with the wrong token is refused', TIMEOUT, async () => {
    const peers = await Promise.all(
      [0, 1].map((rank) =>
        RingPeer.listen({ rank, worldSize: 2, token: rank === 1 ? 'wrong-token' : TOKEN, generation: GENERATION, connectTimeoutMs: 3000 }),
      ),
    );
    const addresses = peers.map((peer) => peer.address);
    const results = await Promise.allSettled(peers.map((peer) => peer.connect(addresses)));
    for (const result of results) {
      assert.equal(result.status, 'rejected');
      assert.match((result as PromiseRejectedResult).reason.message, /failed authentication \(wrong token\)/);
    }
    await closeRing(peers);
  });

  test('a peer of another generation is refused', TIMEOUT, async () => {
    const peers = await Promise.all(
      [0, 1].map((rank) => RingPeer.listen({ rank, worldSize: 2, token: TOKEN, generation: GENERATION + rank, connectTimeoutMs: 3000 })),
    );
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
            ws.send(
              JSON.stringify({
                type: 'hello',
                protocol: hello.protocol,
                generation: GENERATION,
                worldSize: 3,
                chunkBytes: peer.chunkBytes,
                rank: hello.rank,
                nonce: makeNonce().toString('hex'),
                proof: proof.toString('hex'),
              }),
            );
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

/** A real rank 1 of a 2-rank ring, facing fakes. */
function realRankOne(extra: Partial<RingOptions> = {}): Promise<RingPeer> {
  return RingPeer.listen({
    rank: 1,
    worldSize: 2,
    token: TOKEN,
    generation: GENERATION,
    chunkBytes: CHUNK_BYTES,
    connectTimeoutMs: 3000,
    ...extra,
  });
}

/**
 * The successor of the real rank 1 (rank 0 of 2), played by a `ws` client that authenticates
 * properly. It sends nothing by itself; with `autoPong` (the `ws` default) it answers pings.
 */
function fakeSuccessor(real: RingPeer, autoPong: boolean): WebSocket {
  const toReal = new WebSocket(`ws://127.0.0.1:${real.address.port}${RING_PATH}`, { perMessageDeflate: false, autoPong });
  toReal.once('message', (data: Buffer) => {
    const challenge = JSON.parse(data.toString());
    const proof = proveToken(TOKEN, Buffer.from(challenge.nonce, 'hex'), helloContext(GENERATION, 0, 1));
    toReal.send(
      JSON.stringify({
        type: 'hello',
        protocol: RING_PROTOCOL_VERSION,
        generation: GENERATION,
        worldSize: 2,
        chunkBytes: real.chunkBytes,
        rank: 0,
        nonce: makeNonce().toString('hex'),
        proof: proof.toString('hex'),
      }),
    );
  });
  return toReal;
}

function welcomeFor(hello: { nonce: string }): string {
  const proof = proveToken(TOKEN, Buffer.from(hello.nonce, 'hex'), welcomeContext(GENERATION, 0, 1));
  return JSON.stringify({ type: 'welcome', proof: proof.toString('hex') });
}

interface FakeSides {
  /** The predecessor answers the real rank's pings (default true). */
  predecessorPongs?: boolean;
  /** The successor answers the real rank's pings (default true). */
  successorPongs?: boolean;
}

/**
 * A hand-made rank 0 of a 2-rank ring, built on the `ws` library: it authenticates properly both
 * ways, so the real rank 1 accepts it, and then sends whatever a test wants.
 */
async function fakeRankZero(
  real: RingPeer,
  sides: FakeSides = {},
): Promise<{ toReal: WebSocket; fromRealServer: WebSocketServer; dataSocket: Promise<WebSocket> }> {
  const fromRealServer = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    perMessageDeflate: false,
    autoPong: sides.predecessorPongs ?? true,
  });
  await new Promise((resolve) => fromRealServer.once('listening', resolve));
  // The real rank 1 connects here (rank 0 is its predecessor); this side sends data to it.
  const dataSocket = new Promise<WebSocket>((resolve) => {
    fromRealServer.on('connection', (ws) => {
      ws.send(JSON.stringify({ type: 'challenge', protocol: RING_PROTOCOL_VERSION, nonce: makeNonce().toString('hex') }));
      ws.once('message', (data: Buffer) => {
        ws.send(welcomeFor(JSON.parse(data.toString())));
        resolve(ws);
      });
    });
  });
  // This side connects to the real rank 1 as its successor.
  const toReal = fakeSuccessor(real, sides.successorPongs ?? true);
  const port = (fromRealServer.address() as { port: number }).port;
  await real.connect([{ host: '127.0.0.1', port }, real.address]);
  return { toReal, fromRealServer, dataSocket };
}

async function withFakePredecessor(
  check: (fake: Awaited<ReturnType<typeof fakeRankZero>>, real: RingPeer) => Promise<void>,
  options: Partial<RingOptions> = {},
  sides: FakeSides = {},
): Promise<void> {
  const real = await realRankOne(options);
  const fake = await fakeRankZero(real, sides);
  try {
    await check(fake, real);
  } finally {
    fake.toReal.terminate();
    fake.fromRealServer.close();
    await real.close();
  }
}

/** A predecessor on a raw socket, after authentication: the test writes any bytes it likes. */
interface RawPredecessor {
  socket: net.Socket;
  /** Frames the real rank sent after its hello (pongs, pings, close). */
  received: { opcode: number; payload: Buffer }[];
}

/**
 * Serves rank 0 to the real rank 1 on a raw TCP socket: answers the upgrade and authenticates as
 * `ws` would, then leaves the socket to the test. It answers no pings: it is silent unless the
 * test writes.
 */
async function rawPredecessorServer(): Promise<{ port: number; predecessor: Promise<RawPredecessor>; close(): void }> {
  let resolvePredecessor!: (predecessor: RawPredecessor) => void;
  const predecessor = new Promise<RawPredecessor>((resolve) => (resolvePredecessor = resolve));
  const sockets: net.Socket[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    const raw: RawPredecessor = { socket, received: [] };
    let request: Buffer | null = Buffer.alloc(0);
    let authenticated = false;
    const parser = new FrameParser(
      { expectMasked: true, maxTextBytes: 4096, maxBinaryBytes: 0 },
      {
        message(opcode, payload) {
          if (authenticated) {
            raw.received.push({ opcode, payload });
          } else {
            socket.write(encodeFrame(Opcode.Text, Buffer.from(welcomeFor(JSON.parse(payload.toString()))), false));
            authenticated = true;
            resolvePredecessor(raw);
          }
        },
      },
      null,
    );
    socket.on('error', () => undefined);
    socket.on('data', (data: Buffer) => {
      if (!request) return void parser.feed(data, 0, data.length);
      request = Buffer.concat([request, data]);
      const end = request.indexOf('\r\n\r\n');
      if (end < 0) return;
      const key = /sec-websocket-key: *(\S+)/i.exec(request.subarray(0, end).toString('latin1'))![1]!;
      const rest = request.subarray(end + 4);
      request = null;
      socket.write(serverHandshakeResponse(key));
      socket.write(
        encodeFrame(
          Opcode.Text,
          Buffer.from(JSON.stringify({ type: 'challenge', protocol: RING_PROTOCOL_VERSION, nonce: makeNonce().toString('hex') })),
          false,
        ),
      );
      parser.feed(rest, 0, rest.length);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    predecessor,
    close() {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

/** The real rank 1 connected to a raw predecessor and a `ws` successor that answers pings. */
async function withRawPredecessor(
  options: Partial<RingOptions>,
  check: (predecessor: RawPredecessor, real: RingPeer) => Promise<void>,
): Promise<void> {
  const real = await realRankOne(options);
  const server = await rawPredecessorServer();
  const toReal = fakeSuccessor(real, true);
  try {
    await real.connect([{ host: '127.0.0.1', port: server.port }, real.address]);
    await check(await server.predecessor, real);
  } finally {
    toReal.terminate();
    server.close();
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
      await assert.rejects(
        real.allReduce(new Float32Array(4), 1),
        /rank 1: connection from predecessor rank 0 failed: bad frame magic 0xdeadbeef/,
      );
      await assert.rejects(real.allReduce(new Float32Array(4), 2), /bad frame magic/, 'the ring stays broken');
    });
  });

  test('an unexpected frame (wrong step) is refused', TIMEOUT, async () => {
    await withFakePredecessor(async (fake, real) => {
      const frame = dataFrame(FRAME_MAGIC, 8, 2);
      frame.writeUInt32LE(2, 20); // offset 2: the right shard, but the header says step 1
      (await fake.dataSocket).send(frame);
      await assert.rejects(
        real.reduceScatter(new Float32Array(4), 5),
        /unexpected frame: got reduce-scatter generation 7 step 1 .*expected reduce-scatter generation 7 step 5/,
      );
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
      assert.match(
        (result as PromiseRejectedResult).reason.message,
        new RegExp(`^rank ${rank}: connection (to successor|from predecessor) rank \\d`),
      );
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

describe('ring heartbeats', () => {
  const HEARTBEAT_MS = 300;
  /** Detection takes the timeout plus at most one ping interval; the rest is scheduling slack. */
  const DETECTION_BOUND_MS = 3 * HEARTBEAT_MS;

  test('a predecessor that goes silent fails the pending collective within the timeout, naming it', TIMEOUT, async () => {
    await withFakePredecessor(
      async (_fake, real) => {
        const started = Date.now();
        await assert.rejects(real.reduceScatter(new Float32Array(8), 1), {
          message: `rank 1: connection from predecessor rank 0 failed: no heartbeat from predecessor rank 0 for ${HEARTBEAT_MS / 1000} s`,
        });
        const elapsed = Date.now() - started;
        assert.ok(elapsed >= HEARTBEAT_MS * 0.9 && elapsed < DETECTION_BOUND_MS, `detected after ${elapsed} ms`);
      },
      { heartbeatTimeoutMs: HEARTBEAT_MS },
      { predecessorPongs: false },
    );
  });

  test('a successor that goes silent between collectives is reported by the error event and on the next collective', TIMEOUT, async () => {
    await withFakePredecessor(
      async (_fake, real) => {
        const started = Date.now();
        const [error] = (await once(real, 'error')) as [Error];
        const elapsed = Date.now() - started;
        assert.equal(
          error.message,
          `rank 1: connection to successor rank 0 failed: no heartbeat from successor rank 0 for ${HEARTBEAT_MS / 1000} s`,
        );
        assert.ok(elapsed < DETECTION_BOUND_MS, `detected after ${elapsed} ms`);
        await assert.rejects(real.allReduce(new Float32Array(8), 1), error);
      },
      { heartbeatTimeoutMs: HEARTBEAT_MS },
      { successorPongs: false },
    );
  });

  test('pings and pongs interleave with data frames without changing results, and keep an idle ring alive', TIMEOUT, async () => {
    // Small chunks give many frames between pings; 1 MiB chunks are read straight into place.
    for (const chunkBytes of [CHUNK_BYTES, 1024 * 1024]) {
      const worldSize = 3;
      const peers = await makeRing(worldSize, { chunkBytes, heartbeatTimeoutMs: 100 });
      try {
        for (const [step, length] of [1001, 600_011, 2_000_003].entries()) {
          // Idle for several timeouts: only pings and pongs keep the links alive meanwhile.
          await new Promise((resolve) => setTimeout(resolve, 250));
          const buffers = peers.map((_, rank) => rankData(rank, length));
          await Promise.all(peers.map((peer, rank) => peer.allReduce(buffers[rank]!, step)));
          const expected = expectedSum(worldSize, length);
          for (const [rank, buffer] of buffers.entries())
            assertEqualFloats(buffer, expected, `chunk ${chunkBytes} length ${length} rank ${rank}`);
        }
      } finally {
        await closeRing(peers);
      }
    }
  });

  test('neither a rank that starts a collective late nor a blocked event loop counts as a silent peer', TIMEOUT, async () => {
    const heartbeatTimeoutMs = 100;
    const peers = await makeRing(2, { chunkBytes: CHUNK_BYTES, heartbeatTimeoutMs });
    try {
      const length = 100_003;
      const buffers = peers.map((_, rank) => rankData(rank, length));
      // Rank 0's frames wait, unread, in rank 1's socket for several timeouts.
      const early = peers[0]!.allReduce(buffers[0]!, 1);
      await new Promise((resolve) => setTimeout(resolve, 4 * heartbeatTimeoutMs));
      await Promise.all([early, peers[1]!.allReduce(buffers[1]!, 1)]);
      for (const buffer of buffers) assertEqualFloats(buffer, expectedSum(2, length), 'late rank');
      // A long synchronous computation (a backward pass) blocks every timer and socket here:
      // the heartbeat must read what arrived before it judges the peer.
      const blockedUntil = Date.now() + 3 * heartbeatTimeoutMs;
      while (Date.now() < blockedUntil);
      await new Promise((resolve) => setTimeout(resolve, heartbeatTimeoutMs));
      const again = peers.map((_, rank) => rankData(rank, length));
      await Promise.all(peers.map((peer, rank) => peer.allReduce(again[rank]!, 2)));
      for (const buffer of again) assertEqualFloats(buffer, expectedSum(2, length), 'after a blocked loop');
    } finally {
      await closeRing(peers);
    }
  });

  test('pings split across reads in the middle of a large all-gather, and while the receiver waits, are answered', TIMEOUT, async () => {
    const chunkBytes = 256 * 1024; // above the receiver's direct-read threshold: payloads land in place
    await withRawPredecessor({ chunkBytes }, async (predecessor, real) => {
      const chunkElements = chunkBytes / 4;
      const frames = 3;
      const length = 2 * frames * chunkElements; // rank 1 receives shard 0: three full chunks
      const { start, end } = shardRange(length, 2, 0);
      const ping = encodeFrame(Opcode.Ping, Buffer.from('beat'), false);
      const pong = encodeFrame(Opcode.Pong, Buffer.alloc(0), false);
      const pieces: Buffer[] = [];
      for (let chunk = 0; chunk < frames; chunk++) {
        const offset = start + chunk * chunkElements;
        const frame = Buffer.alloc(FRAME_HEADER_BYTES + chunkBytes);
        encodeFrameHeader({ phase: Phase.AllGather, generation: GENERATION, step: 4, chunk, offset, count: chunkElements }, frame);
        for (let i = 0; i < chunkElements; i++) frame.writeFloatLE(offset + i + 0.5, FRAME_HEADER_BYTES + i * 4);
        pieces.push(encodeFrame(Opcode.Binary, frame, false), ping, pong);
      }
      const stream = Buffer.concat(pieces);
      // Cut the stream inside headers, payloads and pings, and send it in bursts, so that reads
      // end and begin in the middle of frames. The first bursts arrive before the collective
      // starts: the receiver holds them, paused, and reads the pings behind them later.
      const dataFrameBytes = pieces[0]!.length;
      const frameAt = (k: number) => k * (dataFrameBytes + ping.length + pong.length);
      const pingAt = (k: number) => frameAt(k) + dataFrameBytes;
      const cuts = [
        3,
        1000,
        pingAt(0) - 5,
        pingAt(0) + 1,
        pingAt(0) + 4,
        frameAt(1) + 20,
        pingAt(1) + 2,
        frameAt(2) + 100_000,
        stream.length,
      ];
      const startCollectiveAfter = 3;
      const buffer = new Float32Array(length).fill(-1);
      let pending: Promise<void> | null = null;
      for (const [i, cut] of cuts.entries()) {
        predecessor.socket.write(stream.subarray(i === 0 ? 0 : cuts[i - 1], cut));
        await new Promise((resolve) => setTimeout(resolve, 20));
        if (i === startCollectiveAfter) pending = real.allGather(buffer, 4);
      }
      await pending;
      for (let i = start; i < end; i++) if (buffer[i] !== i + 0.5) assert.fail(`element ${i} is ${buffer[i]}`);
      for (let i = end; i < length; i++) assert.equal(buffer[i], -1, 'rank 1 keeps its own shard');
      await waitFor(() => predecessor.received.length >= frames, 'a pong for every ping');
      assert.deepEqual(
        predecessor.received,
        Array.from({ length: frames }, () => ({ opcode: Opcode.Pong, payload: Buffer.from('beat') })),
      );
    });
  });
});

async function waitFor(predicate: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('ring fuzz', () => {
  /** Change it to explore other cases; every failure message names the seed and the case. */
  const SEED = 0x5eed_2026;
  const TIME_BUDGET_MS = 7000;
  const MAX_CASES = 400;
  /** Short, so that a fake that stops mid-frame is caught quickly by the heartbeat. */
  const FUZZ_HEARTBEAT_MS = 100;
  const FUZZ_AUTH_TIMEOUT_MS = 300;
  /** Longest a case may take to settle: beyond it, the peer hung. */
  const SETTLE_BOUND_MS = 3000;
  const LENGTH = 8;

  function randomBytes(rng: Mulberry32, length: number): Buffer {
    return Buffer.from(Array.from({ length }, () => rng.nextUint32() & 0xff));
  }

  function flipBit(rng: Mulberry32, bytes: Buffer): { mutated: Buffer; at: number } {
    const mutated = Buffer.from(bytes);
    const at = rng.nextUint32() % mutated.length;
    mutated[at]! ^= 1 << (rng.nextUint32() % 8);
    return { mutated, at };
  }

  function settleWithin<T>(promise: Promise<T>, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`hung: ${what} did not settle within ${SETTLE_BOUND_MS} ms`)), SETTLE_BOUND_MS);
      promise.then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  /** The frame rank 1 expects first in a reduce-scatter of LENGTH floats: shard 1, from rank 0. */
  function validFrame(): Buffer {
    const { start, end } = shardRange(LENGTH, 2, 1);
    const frame = Buffer.alloc(FRAME_HEADER_BYTES + (end - start) * 4);
    encodeFrameHeader({ phase: Phase.ReduceScatter, generation: GENERATION, step: 1, chunk: 0, offset: start, count: end - start }, frame);
    for (let i = 0; i < end - start; i++) frame.writeFloatLE(i + 1, FRAME_HEADER_BYTES + i * 4);
    return encodeFrame(Opcode.Binary, frame, false);
  }

  /**
   * What an authenticated predecessor sends during a pending collective, and whether the
   * collective may still succeed (only a flip in the float payload leaves a well-formed frame).
   */
  function dataAttack(rng: Mulberry32): { name: string; bytes: Buffer; mayComplete: boolean } {
    const valid = validFrame();
    const payloadStart = valid.length - (LENGTH / 2) * 4;
    switch (rng.nextUint32() % 4) {
      case 0:
        return { name: 'random bytes', bytes: randomBytes(rng, 1 + (rng.nextUint32() % 200)), mayComplete: false };
      case 1: {
        const { mutated, at } = flipBit(rng, valid);
        return { name: `valid frame, bit flipped at byte ${at}`, bytes: mutated, mayComplete: at >= payloadStart };
      }
      case 2: {
        // A well-formed WebSocket frame whose data frame declares another element count.
        const declared = rng.nextUint32() % 9;
        const payload = Buffer.alloc(FRAME_HEADER_BYTES + (rng.nextUint32() % 9) * 4);
        encodeFrameHeader(
          { phase: Phase.ReduceScatter, generation: GENERATION, step: 1, chunk: 0, offset: LENGTH / 2, count: declared },
          payload,
        );
        const wellFormed = declared === LENGTH / 2 && payload.length === FRAME_HEADER_BYTES + declared * 4;
        return {
          name: `count ${declared} with ${payload.length - FRAME_HEADER_BYTES} payload bytes`,
          bytes: encodeFrame(Opcode.Binary, payload, false),
          mayComplete: wellFormed,
        };
      }
      default: {
        const cut = rng.nextUint32() % valid.length;
        return { name: `valid frame cut after ${cut} bytes`, bytes: valid.subarray(0, cut), mayComplete: false };
      }
    }
  }

  /**
   * Bytes a stranger sends to a ring server instead of (or in) a proper handshake. `end`: the
   * stranger then ends its side, so that an HTTP request cut short is not left waiting for the
   * HTTP server's header timeout; after a complete upgrade it stays, for the ring's own
   * authentication timeout to close.
   */
  function handshakeAttack(rng: Mulberry32, port: number): { name: string; bytes: Buffer; end: boolean } {
    const upgrade = Buffer.from(clientHandshakeRequest('127.0.0.1', port, RING_PATH, makeHandshakeKey()), 'latin1');
    switch (rng.nextUint32() % 3) {
      case 0:
        return { name: 'random bytes', bytes: randomBytes(rng, 1 + (rng.nextUint32() % 300)), end: true };
      case 1: {
        const { mutated, at } = flipBit(rng, upgrade);
        return { name: `upgrade request, bit flipped at byte ${at}`, bytes: mutated, end: true };
      }
      default:
        return {
          name: 'upgrade, then random bytes',
          bytes: Buffer.concat([upgrade, randomBytes(rng, 1 + (rng.nextUint32() % 200))]),
          end: false,
        };
    }
  }

  /** A fake predecessor authenticates, attacks a pending collective, then closes or goes silent. */
  async function dataCase(rng: Mulberry32, label: string): Promise<void> {
    const attack = dataAttack(rng);
    const thenClose = rng.next() < 0.5;
    const what = `${label}: ${attack.name}, then ${thenClose ? 'FIN' : 'silence'}`;
    await withRawPredecessor({ heartbeatTimeoutMs: FUZZ_HEARTBEAT_MS, connectTimeoutMs: SETTLE_BOUND_MS }, async (predecessor, real) => {
      const pending = real.reduceScatter(new Float32Array(LENGTH), 1);
      predecessor.socket.write(attack.bytes);
      if (thenClose) predecessor.socket.end();
      const outcome = await settleWithin(
        pending.then(
          () => null,
          (err: unknown) => err,
        ),
        what,
      );
      if (outcome === null) {
        assert.ok(attack.mayComplete, `${what}: the collective accepted a malformed frame`);
      } else {
        assert.ok(outcome instanceof Error && outcome.message.startsWith('rank 1: '), `${what}: rejected with ${String(outcome)}`);
      }
    });
  }

  /** A stranger botches the handshake with a ring server; afterwards the server still forms its ring. */
  async function handshakeCase(rng: Mulberry32, label: string): Promise<void> {
    const peers = await Promise.all(
      [0, 1].map((rank) =>
        RingPeer.listen({
          rank,
          worldSize: 2,
          token: TOKEN,
          generation: GENERATION,
          chunkBytes: CHUNK_BYTES,
          connectTimeoutMs: FUZZ_AUTH_TIMEOUT_MS,
        }),
      ),
    );
    try {
      const attack = handshakeAttack(rng, peers[0]!.address.port);
      const what = `${label}: ${attack.name}`;
      const stranger = net.connect(peers[0]!.address.port, '127.0.0.1');
      stranger.on('error', () => undefined);
      stranger.on('data', () => undefined);
      stranger.write(attack.bytes);
      if (attack.end) stranger.end();
      await settleWithin(once(stranger, 'close'), `${what}: the server closing the connection`);
      const addresses = peers.map((peer) => peer.address);
      await settleWithin(Promise.all(peers.map((peer) => peer.connect(addresses))), `${what}: forming the ring afterwards`);
      const buffers = peers.map((_, rank) => rankData(rank, LENGTH));
      await Promise.all(peers.map((peer, rank) => peer.allReduce(buffers[rank]!, 1)));
      for (const buffer of buffers) assertEqualFloats(buffer, expectedSum(2, LENGTH), what);
    } finally {
      await closeRing(peers);
    }
  }

  test(`random and mutated frames are refused without crashing or hanging, and a fresh ring still sums exactly (seed 0x${SEED.toString(16)})`, {
    timeout: 30_000,
  }, async (t) => {
    const rng = new Mulberry32(SEED);
    const deadline = Date.now() + TIME_BUDGET_MS;
    let cases = 0;
    while (cases < MAX_CASES && Date.now() < deadline) {
      const label = `seed 0x${SEED.toString(16)} case ${cases}`;
      if (rng.next() < 0.5) await dataCase(rng, label);
      else await handshakeCase(rng, label);
      cases++;
    }
    t.diagnostic(`${cases} cases`);
    assert.ok(cases >= 20, `only ${cases} cases ran in ${TIME_BUDGET_MS} ms`);
    const worldSize = 3;
    const peers = await makeRing(worldSize, { chunkBytes: CHUNK_BYTES });
    try {
      for (const [step, length] of [LENGTH, 100_003].entries()) {
        const buffers = peers.map((_, rank) => rankData(rank, length));
        await Promise.all(peers.map((peer, rank) => peer.allReduce(buffers[rank]!, step)));
        for (const buffer of buffers)
          assertEqualFloats(buffer, expectedSum(worldSize, length), `fresh ring after ${cases} cases, length ${length}`);
      }
    } finally {
      await closeRing(peers);
    }
  });
});
