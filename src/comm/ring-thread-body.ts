// One ring thread: owns a RingPeer (its server, both links, their heartbeats, the frame parsing,
// the adds and the bf16 rounding) on its own event loop, so that the ring moves data while the
// main thread is inside a backward pass. Collectives run one at a time in the order they were
// requested: the main thread may hand over the next gradient bucket before the last one is done.
import { parentPort, workerData } from 'node:worker_threads';
import { RingPeer } from './ring.ts';
import { adoptKernelMemory } from './simd-add.ts';
import {
  type LogLevel,
  type RingRequest,
  type RingThreadMessage,
  type RingThreadSetup,
  type SharedView,
  serializeError,
} from './ring-thread-protocol.ts';

const port = parentPort!;
const setup = workerData as RingThreadSetup;
const traffic = new Float64Array(setup.traffic);
const post = (message: RingThreadMessage) => port.postMessage(message);
const logAt =
  (level: LogLevel) =>
  (obj: object, msg: string): void =>
    post({ type: 'log', level, obj, msg });

let peer: RingPeer;
try {
  peer = await RingPeer.listen({
    ...setup.options,
    logger: { info: logAt('info'), warn: logAt('warn'), error: logAt('error'), debug: logAt('debug') },
  });
} catch (err) {
  post({ type: 'startFailed', error: serializeError(err) });
  process.exit(0);
}
peer.on('error', (err: Error) => post({ type: 'error', error: serializeError(err) }));
peer.on('close', () => post({ type: 'close' }));

/** The kernel memories seen so far, by id: views on their own buffer object are added in place. */
const memories = new Map<number, WebAssembly.Memory>();
function view(shared: SharedView): Float32Array {
  if (shared.memoryId === undefined) return new Float32Array(shared.buffer, shared.byteOffset, shared.length);
  if (shared.memory) {
    memories.set(shared.memoryId, shared.memory);
    adoptKernelMemory(shared.memory);
  }
  return new Float32Array(memories.get(shared.memoryId)!.buffer, shared.byteOffset, shared.length);
}

async function perform(request: RingRequest): Promise<Float64Array | undefined> {
  switch (request.type) {
    case 'connect':
      return void (await peer.connect(request.peers));
    case 'reduceScatter':
      return void (await peer.reduceScatter(view(request.buf), request.step, { range: request.range, wire: request.wire }));
    case 'allGather':
      return void (await peer.allGather(view(request.buf), request.step));
    case 'allReduce':
      return void (await peer.allReduce(view(request.buf), request.step, { wire: request.wire }));
    case 'allReduceScalars':
      return peer.allReduceScalars(request.values, request.step);
    case 'close':
      return void (await peer.close());
  }
}

/** Requests run in arrival order; each one's failure is its own (a broken ring fails the later ones by itself). */
let queue: Promise<void> = Promise.resolve();
port.on('message', (request: RingRequest) => {
  // connect and close do not wait behind collectives: close must end the one in flight.
  const run = () =>
    perform(request).then(
      (sums) => {
        const { sent, received } = peer.traffic();
        traffic[0] = sent;
        traffic[1] = received;
        post({ type: 'reply', id: request.id, sums });
      },
      (err: unknown) => post({ type: 'reply', id: request.id, error: serializeError(err) }),
    );
  if (request.type === 'connect' || request.type === 'close') void run();
  else queue = queue.then(run);
});
post({ type: 'listening', address: peer.address });
