import assert from 'node:assert/strict';
import { test } from 'node:test';
import { authContext, makeNonce, NONCE_BYTES, PROOF_BYTES, proveToken, verifyProof } from '../../src/comm/auth.ts';

const context = authContext('test', { generation: 3, from: 1, to: 0 });

test('a proof made with the token verifies', () => {
  const nonce = makeNonce();
  assert.equal(nonce.length, NONCE_BYTES);
  const proof = proveToken('secret', nonce, context);
  assert.equal(proof.length, PROOF_BYTES);
  assert.ok(verifyProof('secret', nonce, context, proof));
});

test('wrong token, nonce, context or a mangled proof are refused', () => {
  const nonce = makeNonce();
  const proof = proveToken('secret', nonce, context);
  assert.equal(verifyProof('other', nonce, context, proof), false);
  assert.equal(verifyProof('secret', makeNonce(), context, proof), false);
  assert.equal(verifyProof('secret', nonce, authContext('test', { generation: 4, from: 1, to: 0 }), proof), false);
  const mangled = Buffer.from(proof);
  mangled[0]! ^= 1;
  assert.equal(verifyProof('secret', nonce, context, mangled), false);
  assert.equal(verifyProof('secret', nonce, context, proof.subarray(0, 16)), false);
});

test('nonces are fresh and the proof does not contain the token', () => {
  assert.notDeepEqual(makeNonce(), makeNonce());
  const proof = proveToken('secret-token', makeNonce(), context);
  assert.equal(proof.includes(Buffer.from('secret-token')), false);
});

test('authContext is canonical and refuses separators', () => {
  assert.equal(authContext('p', { b: 2, a: 1 }), authContext('p', { a: 1, b: 2 }));
  assert.equal(authContext('p', { a: 1, b: 2 }), 'p|a=1|b=2');
  assert.throws(() => authContext('p', { a: 'x|b=2' }), /may not contain/);
  assert.throws(() => authContext('p=q', { a: 1 }), /may not contain/);
});

test('empty token and short nonce are errors', () => {
  assert.throws(() => proveToken('', makeNonce(), context), /empty/);
  assert.throws(() => proveToken('secret', Buffer.alloc(8), context), /nonce must be/);
});
