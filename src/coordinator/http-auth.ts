// Who may read the coordinator's HTTP pages (status page, /metrics): a request that carries the run's
// token, or the read-only status token, as `Authorization: Bearer TOKEN` (what Prometheus's
// `authorization` scrape setting sends), or a browser's session cookie from the status page's login
// form. /healthz stays open: probes carry no secrets.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
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

/** The HttpOnly cookie the status page's login sets. */
export const SESSION_COOKIE = 'vit_dist_session';

/** The session cookie's value for `token`: derived from it, so the cookie never holds the token itself. */
export function sessionValue(token: string): string {
  return createHmac('sha256', token).update('vit-dist status page session').digest('base64url');
}

/** The value of cookie `name` in `req`'s Cookie header, or null. */
export function cookieValue(req: IncomingMessage, name: string): string | null {
  for (const pair of (req.headers.cookie ?? '').split(';')) {
    const at = pair.indexOf('=');
    if (at > 0 && pair.slice(0, at).trim() === name) return pair.slice(at + 1).trim();
  }
  return null;
}

/** Whether `req` carries one of `accepted` as a bearer token, or the session cookie a login with one of them set. */
export function requestAuthorized(req: IncomingMessage, accepted: readonly string[]): boolean {
  return tokenAccepted(bearerToken(req), accepted) || tokenAccepted(cookieValue(req, SESSION_COOKIE), accepted.map(sessionValue));
}
