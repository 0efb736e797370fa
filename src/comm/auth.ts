/**
 * HMAC-SHA256 challenge-response, used by every vit-dist connection (ring links, and worker to
 * coordinator).
 *
 * The shared token never crosses the wire:
 *   1. the accepting side sends `makeNonce()` (fresh random bytes, never reused);
 *   2. the connecting side answers `proveToken(token, nonce, context)`;
 *   3. the accepting side checks it with `verifyProof(token, nonce, context, proof)`.
 * `context` is a string both sides build independently from what they expect the connection to
 * be (see `authContext`): purpose, run id or generation, ranks. Binding it into the MAC means a
 * proof made for one rank or generation is refused for another, and the nonce makes each proof
 * single-use, so a recorded exchange cannot be replayed. For mutual authentication the
 * connecting side also sends a nonce and the accepting side answers it with a different purpose
 * string, so a proof can never be reflected back at its sender.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { InputError, RecoverableError } from '../common/errors.ts';

/** Length of a challenge nonce: 256 random bits. */
export const NONCE_BYTES = 32;
/** Length of an HMAC-SHA256 proof. */
export const PROOF_BYTES = 32;

/** A fresh random challenge. */
export function makeNonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

/**
 * Canonical context string: `purpose` then the fields sorted by name, as `purpose|k=v|k=v`.
 * Both sides must pass the same purpose and fields. Field names and values may not contain the
 * separators, so two different field sets can never produce the same string.
 */
export function authContext(purpose: string, fields: Record<string, string | number>): string {
  const parts = [purpose];
  for (const name of Object.keys(fields).sort()) {
    const value = String(fields[name]);
    for (const text of [name, value]) {
      if (/[|=]/.test(text)) throw new InputError('AUTH_CONTEXT', `auth context text may not contain '|' or '=': ${text}`);
    }
    parts.push(`${name}=${value}`);
  }
  if (/[|=]/.test(purpose)) throw new InputError('AUTH_CONTEXT', `auth context purpose may not contain '|' or '=': ${purpose}`);
  return parts.join('|');
}

function checkInputs(token: string, nonce: Uint8Array): void {
  if (token.length === 0) throw new InputError('AUTH_EMPTY_TOKEN', 'auth token is empty');
  // Nonces come from the other side: a wrong one is its failure.
  if (nonce.length !== NONCE_BYTES) {
    throw new RecoverableError('AUTH_NONCE', `auth nonce must be ${NONCE_BYTES} bytes, got ${nonce.length}`);
  }
}

/** HMAC-SHA256(token, nonce ‖ context): the answer to a challenge. */
export function proveToken(token: string, nonce: Uint8Array, context: string): Buffer {
  checkInputs(token, nonce);
  return createHmac('sha256', token).update(nonce).update(context, 'utf8').digest();
}

/**
 * True when `proof` answers the challenge `nonce` for `context` with `token`. Compared in
 * constant time. A proof of the wrong length is simply false.
 */
export function verifyProof(token: string, nonce: Uint8Array, context: string, proof: Uint8Array): boolean {
  const expected = proveToken(token, nonce, context);
  return proof.length === PROOF_BYTES && timingSafeEqual(expected, proof);
}
