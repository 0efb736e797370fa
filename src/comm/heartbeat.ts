/**
 * Liveness of one connection, for the ring's links and the control connection alike: a peer that
 * is heard from (any frame, ping or pong) at least once per timeout is alive; one silent for longer
 * is lost. A cut that sends no FIN or RST (a frozen proxy, a partition) is caught only this way.
 *
 * The blocked-loop guard: a backward pass blocks a worker's event loop for seconds. Meanwhile the
 * peer's pings wait, unread, in the kernel. When the loop comes back, timers run before sockets
 * are read, so a check at that moment would see only the silence of our own making. A check that
 * finds the peer silent therefore waits one loop turn (setImmediate runs after the poll phase
 * that reads what has arrived) and judges again.
 */
import type { WebSocket } from 'ws';

/**
 * Pings per timeout. A peer whose event loop is blocked sends nothing meanwhile, so a connection
 * tolerates a blocked peer for the timeout minus one ping interval.
 */
export const HEARTBEAT_PINGS_PER_TIMEOUT = 5;
/** Checks per ping: silence is noticed within a tenth of a ping interval after the timeout, not a whole one. */
const CHECKS_PER_PING = 10;

export interface HeartbeatOptions {
  timeoutMs: number;
  /** Sends a ping, HEARTBEAT_PINGS_PER_TIMEOUT times per timeout: both ends ping, so each finds the other's pings waiting after its own loop was blocked. */
  ping: () => void;
  /** Called once the peer has been silent for longer than `timeoutMs`; the heartbeat has stopped. */
  onSilence: () => void;
  /** True while this side itself stopped reading: the silence is then ours, not the peer's. */
  notReading?: () => boolean;
}

export class Heartbeat {
  private timer: NodeJS.Timeout | null = null;
  private lastHeard = 0;
  private lastPing = 0;

  constructor(private readonly options: HeartbeatOptions) {}

  start(): void {
    this.lastHeard = Date.now();
    this.timer = setInterval(() => this.check(), this.options.timeoutMs / HEARTBEAT_PINGS_PER_TIMEOUT / CHECKS_PER_PING);
    // The connection keeps the process alive; the heartbeat alone must not.
    this.timer.unref();
  }

  heard(): void {
    this.lastHeard = Date.now();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private check(): void {
    // By time, not by count: the first check after a blocked loop pings at once, as every peer in
    // this process does, so that the pings the guard below waits for are on their way.
    const now = Date.now();
    if (now - this.lastPing >= this.options.timeoutMs / HEARTBEAT_PINGS_PER_TIMEOUT) {
      this.lastPing = now;
      this.options.ping();
    }
    if (this.options.notReading?.()) this.heard();
    if (!this.silentTooLong()) return;
    // The blocked-loop guard (see the header): let this turn's poll phase read what has arrived.
    setImmediate(() => {
      if (this.timer && this.silentTooLong()) {
        this.stop();
        this.options.onSilence();
      }
    });
  }

  private silentTooLong(): boolean {
    return Date.now() - this.lastHeard > this.options.timeoutMs;
  }
}

/**
 * Watches a `ws` WebSocket (the control connection) with a Heartbeat that pings a few times per timeout, as
 * the ring's links do: `ws` answers pings with pongs by itself, and every message, ping and pong
 * counts as heard. Both ends ping, so an end whose own loop was blocked finds the other's pings
 * waiting when it judges. Starts once the socket is open and stops when it closes.
 */
export function watchWebSocket(socket: WebSocket, options: { timeoutMs: number; onSilence: () => void }): Heartbeat {
  const heartbeat = new Heartbeat({
    timeoutMs: options.timeoutMs,
    onSilence: options.onSilence,
    ping: () => {
      if (socket.readyState === socket.OPEN) socket.ping();
    },
  });
  const heard = () => heartbeat.heard();
  socket.on('message', heard);
  socket.on('ping', heard);
  socket.on('pong', heard);
  socket.on('close', () => heartbeat.stop());
  if (socket.readyState === socket.OPEN) heartbeat.start();
  else socket.once('open', () => heartbeat.start());
  return heartbeat;
}

/** "3 s", "0.25 s": how heartbeat errors state a timeout. */
export function seconds(ms: number): string {
  return `${ms / 1000} s`;
}
