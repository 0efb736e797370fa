// The parameter digest: a hash of the parameters' bytes. Every worker reports it after every step
// and the coordinator compares them, so a single flipped bit on any rank stops the run.
import { createHash } from 'node:crypto';

/** Hex characters of the SHA-256 kept: 64 bits make an accidental match between differing states negligible. */
const DIGEST_HEX_CHARS = 16;

export function paramDigest(params: Float32Array): string {
  return createHash('sha256')
    .update(new Uint8Array(params.buffer, params.byteOffset, params.byteLength))
    .digest('hex')
    .slice(0, DIGEST_HEX_CHARS);
}
