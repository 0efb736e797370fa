// A fault-injecting TCP proxy on loopback for the recovery tests: it forwards connections to a
// target and can delay every chunk, cap the bandwidth of each direction of each connection, or
// freeze the connections it holds (no data, no FIN), which is how a cut network link looks to
// both ends.
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export class FaultProxy {
  private readonly server: Server;
  private readonly pairs = new Set<[Socket, Socket]>();
  /** Cut connections, held open (and silent) until the proxy closes. */
  private readonly frozen: Socket[] = [];
  /** Milliseconds every chunk is held before it is forwarded. */
  delayMs = 0;
  /** Bandwidth cap of each direction of each connection; 0 for none. */
  bytesPerSecond = 0;
  /** Bytes delivered so far, both directions of all connections. */
  bytesForwarded = 0;

  private constructor(private readonly targetPort: number) {
    this.server = createServer((client) => {
      const upstream = connect(this.targetPort, '127.0.0.1');
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      const forward = (from: Socket, to: Socket): void => {
        // What `from` sent (data, its end, its close) waits here, in order, for its send time, so
        // a delayed or throttled stream still ends after its last byte.
        const queue: { sendAt: number; deliver: () => void }[] = [];
        // When the bandwidth cap lets the next chunk go: after the ones before it have passed.
        let linkFreeAt = 0;
        let timer: NodeJS.Timeout | null = null;
        const pump = (): void => {
          timer = null;
          if (to.destroyed || this.frozen.includes(to)) return; // nothing passes a cut link
          while (queue.length > 0 && queue[0]!.sendAt <= Date.now()) queue.shift()!.deliver();
          if (queue.length > 0) timer = setTimeout(pump, queue[0]!.sendAt - Date.now());
        };
        const enqueue = (deliver: () => void, bytes = 0): void => {
          const sendAt = Math.max(Date.now() + this.delayMs, linkFreeAt);
          if (this.bytesPerSecond > 0) linkFreeAt = sendAt + (bytes * 1000) / this.bytesPerSecond;
          queue.push({ sendAt, deliver });
          if (!timer) pump();
        };
        from.on('data', (chunk: Buffer) =>
          enqueue(() => {
            if (!to.writable) return;
            to.write(chunk);
            this.bytesForwarded += chunk.length;
          }, chunk.length),
        );
        from.on('end', () => enqueue(() => to.end()));
        from.on('close', () =>
          enqueue(() => {
            to.destroy();
            this.pairs.delete(pair);
          }),
        );
        // A reset travels at once, as it would on a network.
        from.on('error', () => to.destroy());
      };
      forward(client, upstream);
      forward(upstream, client);
    });
  }

  static async start(targetPort: number): Promise<FaultProxy> {
    const proxy = new FaultProxy(targetPort);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Cuts the connections open now without telling either end: nothing more passes, nothing closes. */
  freezeOpenConnections(): number {
    for (const pair of this.pairs) {
      for (const socket of pair) {
        // Neither a close nor an error may travel to the other side any more.
        socket.removeAllListeners();
        socket.on('error', () => undefined);
        socket.pause();
        this.frozen.push(socket);
      }
    }
    const count = this.pairs.size;
    this.pairs.clear();
    return count;
  }

  async close(): Promise<void> {
    for (const socket of [...[...this.pairs].flat(), ...this.frozen]) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
