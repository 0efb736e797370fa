// A worker retries a lost coordinator on a short interval first, then backs off to a cap.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RECONNECT_BASE_DELAY_MS,
  RECONNECT_FAST_DELAY_MS,
  RECONNECT_FAST_WINDOW_MS,
  RECONNECT_MAX_DELAY_MS,
  ReconnectSchedule,
} from '../../src/worker/reconnect.ts';

test('short fixed retries for the first seconds of an outage, then doubling delays up to the cap, each with ±50% jitter', () => {
  const schedule = new ReconnectSchedule(0);
  assert.equal(schedule.nextDelayMs(0, 0.5), RECONNECT_FAST_DELAY_MS);
  assert.equal(schedule.nextDelayMs(RECONNECT_FAST_WINDOW_MS - 1, 0.5), RECONNECT_FAST_DELAY_MS, 'the interval stays short');
  assert.equal(schedule.nextDelayMs(1_000, 0), RECONNECT_FAST_DELAY_MS * 0.5);
  assert.equal(schedule.nextDelayMs(1_000, 0.999), RECONNECT_FAST_DELAY_MS * 1.499);

  const late = RECONNECT_FAST_WINDOW_MS;
  const delays = Array.from({ length: 8 }, () => schedule.nextDelayMs(late, 0.5));
  assert.equal(delays[0], RECONNECT_BASE_DELAY_MS);
  assert.equal(delays[1], RECONNECT_BASE_DELAY_MS * 2);
  assert.equal(delays.at(-1), RECONNECT_MAX_DELAY_MS);
  for (let i = 1; i < delays.length; i++) assert.ok(delays[i]! >= delays[i - 1]!, 'never shorter than the one before');
});

test('a new outage starts on the short interval again', () => {
  const schedule = new ReconnectSchedule(0);
  for (let i = 0; i < 10; i++) schedule.nextDelayMs(RECONNECT_FAST_WINDOW_MS + 60_000, 0.5);
  const lostAgainAt = 200_000;
  schedule.outage(lostAgainAt);
  assert.equal(schedule.nextDelayMs(lostAgainAt + 100, 0.5), RECONNECT_FAST_DELAY_MS);
  assert.equal(schedule.nextDelayMs(lostAgainAt + RECONNECT_FAST_WINDOW_MS, 0.5), RECONNECT_BASE_DELAY_MS, 'the backoff starts over too');
});
