// A worker's liveness: /healthz fails once an order is stuck in flight (not merely while the
// process is up), /readyz follows the coordinator connection, and a stopped or blocked event loop
// is noticed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { LoopStallWatch, OrderProgress, serveHealth } from '../../src/worker/liveness.ts';

test('an order in flight past the stall timeout makes /healthz answer 503; /readyz follows the connection', async () => {
  const progress = new OrderProgress(60_000);
  let connected = false;
  const server = await serveHealth(0, progress, () => ({ connected, rank: -1 }));
  const url = (path: string) => `http://127.0.0.1:${(server.address() as AddressInfo).port}${path}`;
  try {
    assert.equal((await fetch(url('/healthz'))).status, 200, 'idle between orders is healthy');
    assert.equal((await fetch(url('/readyz'))).status, 503, 'not connected: not ready');
    connected = true;
    assert.equal((await fetch(url('/readyz'))).status, 200);

    progress.begin('step', 7);
    assert.equal((await fetch(url('/healthz'))).status, 200, 'a step just begun is progress');
    const start = Date.now();
    assert.equal(progress.stalled(start + 59_000), false);
    assert.equal(progress.stalled(start + 61_000), true);

    const stuck = new OrderProgress(0);
    stuck.begin('step', 7);
    await new Promise((r) => setTimeout(r, 5));
    const stuckServer = await serveHealth(0, stuck, () => ({ connected: true, rank: 3 }));
    try {
      const response = await fetch(`http://127.0.0.1:${(stuckServer.address() as AddressInfo).port}/healthz`);
      assert.equal(response.status, 503);
      const body = (await response.json()) as { status: string; rank: number; inFlight: { order: string; step: number } };
      assert.equal(body.status, 'stalled');
      assert.equal(body.rank, 3);
      assert.deepEqual([body.inFlight.order, body.inFlight.step], ['step', 7]);
      stuck.end();
      assert.equal((await fetch(`http://127.0.0.1:${(stuckServer.address() as AddressInfo).port}/healthz`)).status, 200, 'the order ended');
    } finally {
      stuckServer.close();
    }
  } finally {
    server.close();
  }
});

test('a blocked event loop is reported as a stall longer than the threshold', async () => {
  const stalls: number[] = [];
  const watch = new LoopStallWatch(100, (ms) => stalls.push(ms));
  try {
    await new Promise((r) => setTimeout(r, 50));
    const until = Date.now() + 400;
    while (Date.now() < until) {
      // Block the loop, as a stopped process or a long synchronous op would.
    }
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(stalls.length, 1);
    assert.ok(stalls[0]! > 100, `stall of ${stalls[0]} ms`);
  } finally {
    watch.stop();
  }
});

test('check() reports a stall at once, before the watch timer runs (a continued process may read its sockets first)', () => {
  const stalls: number[] = [];
  const watch = new LoopStallWatch(100, (ms) => stalls.push(ms));
  try {
    const until = Date.now() + 400;
    while (Date.now() < until) {
      // Block the loop; no timer can run before the check below.
    }
    watch.check();
    assert.equal(stalls.length, 1);
    assert.ok(stalls[0]! > 100, `stall of ${stalls[0]} ms`);
    watch.check();
    assert.equal(stalls.length, 1, 'a stall is reported once');
  } finally {
    watch.stop();
  }
});
