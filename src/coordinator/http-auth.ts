// Who may read the coordinator's HTTP pages (status page, /metrics): a request that carries the run's
// token, or the read-only status token, as `Authorization: Bearer TOKEN` (what Prometheus's
// `authorization` scrape setting sends). /healthz stays open: probes carry no secrets.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/** The bearer token of `req`'s Authorization header, or null. */
export function bearerToken(req: IncomingMessage): string | null {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return match ? match[1]! : null;
}

/** Whether `given` equals one of `accepted`, compared in constant time (hashes first, so lengths leak nothing). */
export function tokenAccepted(given: string | null, accepted: readonly string[]): boolean {
  if (given === null) return false;
  const digest = createHash('sha256').update(given).digest();
  let ok = false;
  for (const token of accepted) ok = timingSafeEqual(digest, createHash('sha256').update(token).digest()) || ok;
  return ok;
}
