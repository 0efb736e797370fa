// The far end of a heartbeat test, in its own thread so that its event loop keeps running (and
// pinging) while the test's thread blocks its own. It freezes (busy-waits, sending nothing) when
// asked: a truly silent peer.
import { parentPort, workerData } from 'node:worker_threads';
import WebSocket, { WebSocketServer } from 'ws';
import { watchWebSocket } from '../../src/comm/heartbeat.ts';
import { type PeerAddress, RingPeer } from '../../src/comm/ring.ts';

export type PeerSetup =
  | { kind: 'control-server'; timeoutMs: number }
  | { kind: 'control-client'; timeoutMs: number; url: string }
  | { kind: 'ring'; timeoutMs: number; token: string; generation: number; chunkBytes: number };

export type PeerOrder = { freezeMs: number } | { connect: PeerAddress[] } | { allReduce: number; step: number };

export type PeerReport =
  | { listening: number }
  | { ringAddress: PeerAddress }
  | { connected: true }
  | { allReduced: number[] }
  | { lost: string };

const setup = workerData as PeerSetup;
const port = parentPort!;
const report = (message: PeerReport) => port.postMessage(message);
const lost = (what: string) => report({ lost: what });
let ring: RingPeer | null = null;

if (setup.kind === 'control-server') {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  server.on('listening', () => report({ listening: (server.address() as { port: number }).port }));
  server.on('connection', (socket) => {
    watchWebSocket(socket, { timeoutMs: setup.timeoutMs, onSilence: () => lost('the test thread') });
  });
} else if (setup.kind === 'control-client') {
  const socket = new WebSocket(setup.url);
  watchWebSocket(socket, { timeoutMs: setup.timeoutMs, onSilence: () => lost('the test thread') });
  socket.on('open', () => report({ connected: true }));
} else {
  ring = await RingPeer.listen({
    rank: 1,
    worldSize: 2,
    token: setup.token,
    generation: setup.generation,
    chunkBytes: setup.chunkBytes,
    heartbeatTimeoutMs: setup.timeoutMs,
  });
  ring.on('error', (err: Error) => lost(err.message));
  report({ ringAddress: ring.address });
}

port.on('message', (order: PeerOrder) => {
  if ('freezeMs' in order) {
    const until = Date.now() + order.freezeMs;
    while (Date.now() < until);
  } else if ('connect' in order) {
    void ring!.connect(order.connect).then(() => report({ connected: true }));
  } else {
    const buffer = new Float32Array(order.allReduce).fill(2);
    void ring!.allReduce(buffer, order.step).then(() => report({ allReduced: Array.from(buffer) }));
  }
});
