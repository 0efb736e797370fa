import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import test from 'node:test';
import { bearerToken, requestAuthorized, SESSION_COOKIE, sessionValue, tokenAccepted } from '../../src/coordinator/http-auth.ts';

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

test('requestAuthorized takes a bearer token or the session cookie of an accepted token, never the token as a cookie', () => {
  const withCookie = (cookie: string) => ({ headers: { cookie } }) as IncomingMessage;
  const accepted = ['run-token', 'status-token'];
  assert.ok(requestAuthorized(request('Bearer status-token'), accepted));
  assert.ok(requestAuthorized(withCookie(`theme=dark; ${SESSION_COOKIE}=${sessionValue('status-token')}`), accepted));
  assert.ok(!requestAuthorized(withCookie(`${SESSION_COOKIE}=${sessionValue('other')}`), accepted));
  assert.ok(!requestAuthorized(withCookie(`${SESSION_COOKIE}=status-token`), accepted));
  assert.ok(!requestAuthorized(request(), accepted));
  assert.notEqual(sessionValue('run-token'), sessionValue('status-token'));
});
