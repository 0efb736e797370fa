import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, test } from 'node:test';
import { LOCAL_SOCKET_ORIGIN, localScope } from '../../src/comm/local-socket.ts';
import { type PeerAddress, RingPeer, type RingLogger, type RingOptions } from '../../src/comm/ring.ts';
import { Mulberry32 } from '../../src/common/random.ts';

const TIMEOUT = { timeout: 20_000 };
const TOKEN = 'test-token-for-local-links';
const WORLD = 3;
const FLOATS = 50_001;

/** Where each rank's successor connected from, as its ring logged it. */
type Origins = string[];

function recordingLogger(origins: Origins): RingLogger {
  return {
    info(obj, msg) {
      if (msg === 'successor connected') origins.push(String((obj as { from: unknown }).from));
    },
    warn() {},
    error() {},
    debug() {},
  };
}

async function listenAll(origins: Origins, extra: Partial<RingOptions> = {}): Promise<RingPeer[]> {
  return Promise.all(
    Array.from({ length: WORLD }, (_, rank) =>
      RingPeer.listen({
        rank,
        worldSize: WORLD,
        token: TOKEN,
        generation: 3,
        chunkBytes: 8192,
        connectTimeoutMs: 5000,
        logger: recordingLogger(origins),
        ...extra,
      }),
    ),
  );
}

/** Random floats (not exactly summable), the same for a rank on every run. */
function rankData(rank: number): Float32Array {
  const random = new Mulberry32(1000 + rank);
  return Float32Array.from({ length: FLOATS }, () => random.next() * 2 - 1);
}

/** All-reduces every rank's data and returns rank 0's result, after checking all ranks agree. */
async function allReduce(peers: RingPeer[], addresses: PeerAddress[]): Promise<Float32Array> {
  await Promise.all(peers.map((peer) => peer.connect(addresses)));
  const buffers = peers.map((peer) => rankData(peer.rank));
  await Promise.all(peers.map((peer, rank) => peer.allReduce(buffers[rank]!, 1)));
  await Promise.all(peers.map((peer) => peer.close()));
  for (const [rank, buffer] of buffers.entries()) assert.deepEqual(buffer, buffers[0], `rank ${rank} differs from rank 0`);
  return buffers[0]!;
}

const overTcp = (origin: string) => /^127\.0\.0\.1:\d+$/.test(origin);

describe('ring links on one machine', {
  skip: localScope() === null ? 'no Linux abstract Unix sockets here (/proc unreadable)' : false,
}, () => {
  test('neighbours on this machine connect over the Unix socket, with the bits TCP gives', TIMEOUT, async () => {
    const unixOrigins: Origins = [];
    const unixPeers = await listenAll(unixOrigins);
    const addresses = unixPeers.map((peer) => peer.address);
    for (const address of addresses) {
      assert.equal(address.local?.scope, localScope());
      assert.ok(address.local?.path.startsWith('\0vit-dist-ring-'), 'an abstract socket name');
    }
    assert.equal(new Set(addresses.map((address) => address.local?.path)).size, WORLD, 'one name per server');
    const overUnix = await allReduce(unixPeers, addresses);
    assert.deepEqual(unixOrigins, [LOCAL_SOCKET_ORIGIN, LOCAL_SOCKET_ORIGIN, LOCAL_SOCKET_ORIGIN]);

    const tcpOrigins: Origins = [];
    const tcpPeers = await listenAll(tcpOrigins, { localSocket: false });
    assert.ok(
      tcpPeers.every((peer) => peer.address.local === undefined),
      'no Unix socket published with localSocket: false',
    );
    const overTcpLinks = await allReduce(
      tcpPeers,
      tcpPeers.map((peer) => peer.address),
    );
    assert.equal(tcpOrigins.length, WORLD);
    assert.ok(tcpOrigins.every(overTcp), `TCP origins, got ${tcpOrigins.join(', ')}`);
    assert.deepEqual(overUnix, overTcpLinks, 'the transport does not change a bit');
  });

  test('a Unix socket of another machine or network namespace is not dialled: the link goes over TCP', TIMEOUT, async () => {
    const origins: Origins = [];
    const peers = await listenAll(origins);
    const elsewhere = peers.map((peer) => {
      const address = peer.address;
      return { ...address, local: { ...address.local!, scope: 'another-boot/net:[4026531840]' } };
    });
    await allReduce(peers, elsewhere);
    assert.equal(origins.length, WORLD);
    assert.ok(origins.every(overTcp), `TCP origins, got ${origins.join(', ')}`);
  });

  test('closing a peer frees its Unix socket name', TIMEOUT, async () => {
    const peers = await listenAll([]);
    const path = peers[0]!.address.local!.path;
    await Promise.all(peers.map((peer) => peer.close()));
    // A new server binds the closed peer's name: it was released, not leaked.
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
});
