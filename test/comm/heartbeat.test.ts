// The heartbeat's blocked-loop guard on both kinds of connection that use it: the control
// connection (`watchWebSocket`, the worker's and the coordinator's end alike) and a ring link.
// The far end runs in its own thread (heartbeat-peer.ts), so it keeps talking while this thread
// blocks its event loop for longer than the heartbeat timeout, as a long backward pass does.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import WebSocket, { WebSocketServer } from 'ws';
import { watchWebSocket } from '../../src/comm/heartbeat.ts';
import { RingPeer } from '../../src/comm/ring.ts';
import type { PeerOrder, PeerReport, PeerSetup } from './heartbeat-peer.ts';

const TIMEOUT = { timeout: 30_000 };
/** This thread's heartbeat timeout. */
const HEARTBEAT_MS = 200;
/**
 * The far end's: it must outlast this thread's blocked loop, as a coordinator's outlasts a backward
 * pass, and the far end pings every PEER_HEARTBEAT_MS / 5, several times while this loop is blocked.
 */
const PEER_HEARTBEAT_MS = 5 * HEARTBEAT_MS;
/** Longer than this thread's timeout, so without the guard the peer would count as silent. */
const BLOCK_MS = 2.5 * HEARTBEAT_MS;

class Peer {
  private readonly thread: Worker;
  private readonly reports: PeerReport[] = [];
  private readonly waiting: Array<() => void> = [];
  private failure: Error | null = null;

  constructor(setup: PeerSetup) {
    this.thread = new Worker(new URL('./heartbeat-peer.mjs', import.meta.url), { workerData: setup });
    this.thread.on('message', (report: PeerReport) => {
      this.reports.push(report);
      for (const wake of this.waiting.splice(0)) wake();
    });
    this.thread.on('error', (err) => {
      this.failure = err;
      for (const wake of this.waiting.splice(0)) wake();
    });
  }

  order(order: PeerOrder): void {
    this.thread.postMessage(order);
  }

  /** The first report (in arrival order) that `pick` accepts. */
  async next<T>(pick: (report: PeerReport) => T | undefined): Promise<T> {
    for (;;) {
      if (this.failure) throw this.failure;
      for (const report of this.reports) {
        const picked = pick(report);
        if (picked !== undefined) return picked;
      }
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
  }

  get lost(): boolean {
    return this.reports.some((report) => 'lost' in report);
  }

  async stop(): Promise<void> {
    await this.thread.terminate();
  }
}

/**
 * Busy-waits inside a setImmediate callback: the loop's next step is then to run its timers, now
 * overdue, before it reads any socket. That is when the heartbeat judges with only the silence
 * of our own making in view, and the guard must give the peer's waiting pings a turn.
 */
function blockEventLoop(ms: number): Promise<void> {
  return new Promise((resolve) =>
    setImmediate(() => {
      const until = Date.now() + ms;
      while (Date.now() < until);
      resolve();
    }),
  );
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `body` with this thread's end of a control connection watched by its heartbeat. */
async function withControlConnection(
  thisEnd: 'worker' | 'coordinator',
  body: (peer: Peer, silence: { heard: boolean; lost: Promise<void> }) => Promise<void>,
): Promise<void> {
  let onLost!: () => void;
  const silence = { heard: false, lost: new Promise<void>((resolve) => (onLost = resolve)) };
  const onSilence = () => {
    silence.heard = true;
    onLost();
  };
  let server: WebSocketServer | null = null;
  let socket: WebSocket;
  let peer: Peer;
  if (thisEnd === 'worker') {
    // The worker dials the coordinator's server.
    peer = new Peer({ kind: 'control-server', timeoutMs: PEER_HEARTBEAT_MS });
    const port = await peer.next((report) => ('listening' in report ? report.listening : undefined));
    socket = new WebSocket(`ws://127.0.0.1:${port}`);
    watchWebSocket(socket, { timeoutMs: HEARTBEAT_MS, onSilence });
    await once(socket, 'open');
  } else {
    server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(server, 'listening');
    const accepted = once(server, 'connection');
    peer = new Peer({
      kind: 'control-client',
      timeoutMs: PEER_HEARTBEAT_MS,
      url: `ws://127.0.0.1:${(server.address() as { port: number }).port}`,
    });
    [socket] = (await accepted) as [WebSocket];
    watchWebSocket(socket, { timeoutMs: HEARTBEAT_MS, onSilence });
  }
  try {
    await body(peer, silence);
  } finally {
    socket.terminate();
    server?.close();
    await peer.stop();
  }
}

for (const thisEnd of ['worker', 'coordinator'] as const) {
  test(
    `control connection, the ${thisEnd}'s end: a blocked event loop does not count as a lost peer, a frozen peer does`,
    TIMEOUT,
    async () => {
      await withControlConnection(thisEnd, async (peer, silence) => {
        await blockEventLoop(BLOCK_MS);
        await sleep(2 * HEARTBEAT_MS);
        assert.equal(silence.heard, false, 'the peer kept pinging while this loop was blocked: it is not lost');
        assert.equal(peer.lost, false);
        // Now the peer itself goes silent, for longer than this end's timeout.
        peer.order({ freezeMs: 4 * HEARTBEAT_MS });
        await silence.lost;
      });
    },
  );
}

test('ring link: a blocked event loop does not count as a lost neighbour, a frozen neighbour does', TIMEOUT, async () => {
  const options = { token: 'heartbeat-test-token', generation: 3, chunkBytes: 64 * 1024 };
  const peer = new Peer({ kind: 'ring', timeoutMs: PEER_HEARTBEAT_MS, ...options });
  const ring = await RingPeer.listen({ rank: 0, worldSize: 2, heartbeatTimeoutMs: HEARTBEAT_MS, ...options });
  const failures: Error[] = [];
  ring.on('error', (err: Error) => failures.push(err));
  try {
    const peerAddress = await peer.next((report) => ('ringAddress' in report ? report.ringAddress : undefined));
    const addresses = [ring.address, peerAddress];
    peer.order({ connect: addresses });
    await ring.connect(addresses);

    await blockEventLoop(BLOCK_MS);
    await sleep(2 * HEARTBEAT_MS);
    const length = 100_003;
    const buffer = new Float32Array(length).fill(1);
    peer.order({ allReduce: length, step: 1 });
    await ring.allReduce(buffer, 1);
    assert.deepEqual(failures, [], 'the neighbour kept pinging while this loop was blocked: it is not lost');
    assert.ok(buffer.every((value) => value === 3));
    const peerResult = await peer.next((report) => ('allReduced' in report ? report.allReduced : undefined));
    assert.ok(peerResult.every((value) => value === 3));

    // Now the neighbour goes silent on both links, for longer than this end's timeout.
    peer.order({ freezeMs: 4 * HEARTBEAT_MS });
    const [failure] = (await once(ring, 'error')) as [Error];
    assert.match(
      failure.message,
      /^rank 0: connection (to successor|from predecessor) rank 1 failed: no heartbeat from (successor|predecessor) rank 1 for 0.2 s$/,
    );
  } finally {
    await ring.close();
    await peer.stop();
  }
});
