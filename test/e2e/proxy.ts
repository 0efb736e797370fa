// A fault-injecting TCP proxy on loopback for the recovery tests: it forwards connections to a
// target and can delay every chunk, or freeze the connections it holds (no data, no FIN), which
// is how a cut network link looks to both ends.
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export class FaultProxy {
  private readonly server: Server;
  private readonly pairs = new Set<[Socket, Socket]>();
  /** Cut connections, held open (and silent) until the proxy closes. */
  private readonly frozen: Socket[] = [];
  /** Milliseconds every chunk is held before it is forwarded. */
  delayMs = 0;

  private constructor(private readonly targetPort: number) {
    this.server = createServer((client) => {
      const upstream = connect(this.targetPort, '127.0.0.1');
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      const forward = (from: Socket, to: Socket): void => {
        from.on('data', (chunk) => {
          if (this.delayMs > 0) setTimeout(() => to.writable && to.write(chunk), this.delayMs);
          else if (to.writable) to.write(chunk);
        });
        from.on('end', () => to.end());
        from.on('error', () => to.destroy());
        from.on('close', () => { to.destroy(); this.pairs.delete(pair); });
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
