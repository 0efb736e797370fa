// A TCP proxy that holds every chunk DELAY_MS before forwarding it, in order, both ways: the
// latency of a long link, where netem is not available. bench/wan.sh runs one in each network
// namespace in front of the ring and control ports.
//   node bench/delay-proxy.mjs LISTEN_HOST LISTEN_PORT TARGET_PORT DELAY_MS   (target: 127.0.0.1)
import { connect, createServer } from 'node:net';

const [host, listenPort, targetPort, delayMs] = process.argv.slice(2);
if (!host || !listenPort || !targetPort || delayMs === undefined) {
  console.error('usage: node bench/delay-proxy.mjs LISTEN_HOST LISTEN_PORT TARGET_PORT DELAY_MS');
  process.exit(2);
}
const delay = Number(delayMs);

/** Forwards what `from` sends to `to`, each chunk `delay` ms after it arrived; the end travels after the last chunk. */
function forward(from, to) {
  from.on('data', (chunk) => setTimeout(() => to.destroyed || to.write(chunk), delay));
  from.on('end', () => setTimeout(() => to.end(), delay));
  from.on('error', () => to.destroy());
  from.on('close', () => setTimeout(() => to.destroy(), delay + 1));
}

createServer((client) => {
  client.setNoDelay(true);
  const upstream = connect(Number(targetPort), '127.0.0.1');
  upstream.setNoDelay(true);
  forward(client, upstream);
  forward(upstream, client);
}).listen(Number(listenPort), host);
