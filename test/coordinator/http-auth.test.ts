import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import test from 'node:test';
import { bearerToken, tokenAccepted } from '../../src/coordinator/http-auth.ts';

const request = (authorization?: string) => ({ headers: authorization === undefined ? {} : { authorization } }) as IncomingMessage;

test('bearerToken reads the Authorization header and nothing else', () => {
  assert.equal(bearerToken(request('Bearer abc123')), 'abc123');
  assert.equal(bearerToken(request('bearer abc123 ')), 'abc123');
  assert.equal(bearerToken(request('Basic abc123')), null);
  assert.equal(bearerToken(request()), null);
});

test('tokenAccepted takes any of the accepted tokens, and only them', () => {
  assert.ok(tokenAccepted('run-token', ['run-token', 'status-token']));
  assert.ok(tokenAccepted('status-token', ['run-token', 'status-token']));
  assert.ok(!tokenAccepted('run-toke', ['run-token', 'status-token']));
  assert.ok(!tokenAccepted(null, ['run-token']));
  assert.ok(!tokenAccepted('', []));
});
