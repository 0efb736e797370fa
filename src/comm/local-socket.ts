/**
 * Ring links between ranks on one machine go over Unix domain sockets instead of TCP loopback.
 *
 * Why: on one host every ring is CPU-bound (all ranks share the cores), and a Unix socket moves a
 * byte with the same two copies as TCP loopback but without TCP's per-segment work. The speed-up
 * was measured with `bench/allreduce-vs-gloo.sh` (README). Like NCCL's and MPI's intra-node
 * transports, it is chosen automatically and carries the same WebSocket frames: the link code
 * above the socket does not change.
 *
 * Each ring server also listens on a Linux abstract socket (a name starting with a NUL byte: no
 * file to clean up, and it vanishes with the process) and publishes it beside its TCP address,
 * tagged with where it can be reached: this boot of this machine and this network namespace
 * (abstract names are scoped to a network namespace). A neighbour dials it only when its own tag
 * is the same; workers in other containers, namespaces or machines dial TCP. Elsewhere than on
 * Linux no tag exists, and every link is TCP.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';

/** A worker's `--ring-transport`: auto uses the Unix socket where it can, tcp never. */
export const RING_TRANSPORTS = ['auto', 'tcp'] as const;
export type RingTransport = (typeof RING_TRANSPORTS)[number];

/** Where a ring server's log says a connection over its Unix socket came from. */
export const LOCAL_SOCKET_ORIGIN = 'this machine (Unix socket)';

/** A ring server's Unix socket, and the machine and network namespace it can be reached from. */
export interface LocalEndpoint {
  /** This boot of this machine and this network namespace (`localScope()`). */
  scope: string;
  /** The abstract socket's name, NUL first (net.connect's `path`). */
  path: string;
}

let cachedScope: string | null | undefined;

/**
 * Where abstract Unix sockets are shared: the kernel's boot id and the network namespace's
 * inode, or null where there are none (not Linux, or /proc unreadable).
 */
export function localScope(): string | null {
  if (cachedScope === undefined) {
    try {
      const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
      cachedScope = `${boot}/${readlinkSync('/proc/self/ns/net')}`;
    } catch {
      cachedScope = null;
    }
  }
  return cachedScope;
}

/** A fresh abstract socket name for a ring server in this scope, or null where none can exist. */
export function newLocalEndpoint(): LocalEndpoint | null {
  const scope = localScope();
  return scope === null ? null : { scope, path: `\0vit-dist-ring-${randomUUID()}` };
}

/** The Unix socket to dial for a neighbour's `local` endpoint: only one in this machine's scope. */
export function reachableLocalPath(local: LocalEndpoint | undefined): string | null {
  return local && local.scope === localScope() ? local.path : null;
}
