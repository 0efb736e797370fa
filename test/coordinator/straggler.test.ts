import assert from 'node:assert/strict';
import test from 'node:test';
import { StragglerDetector, stragglerScores } from '../../src/coordinator/straggler.ts';

test('straggler scores: the fastest rank is 1.0, a rank twice as slow 0.5', () => {
  assert.deepEqual(stragglerScores([{ computeMs: 100 }, { computeMs: 200 }, { computeMs: 100 }, { computeMs: 125 }]), [1, 0.5, 1, 0.8]);
});

test('straggler scores: a rank that computed nothing is not a straggler', () => {
  assert.deepEqual(stragglerScores([{ computeMs: 0 }, { computeMs: 0 }]), [1, 1]);
});

const step = (...computeMs: number[]) => computeMs.map((ms) => ({ computeMs: ms }));

test('the straggler detector names a rank whose median score over the window is below the threshold, once', () => {
  const detector = new StragglerDetector(0.7, 3);
  assert.deepEqual(detector.observe(1, step(100, 100)), []);
  assert.deepEqual(detector.observe(2, step(100, 200)), []);
  // Median of 1, 0.5, 1: one slow step names nobody.
  assert.deepEqual(detector.observe(3, step(100, 100)), []);
  assert.deepEqual(detector.observe(4, step(100, 250)), [{ rank: 1, straggling: true, step: 4, windowScore: 0.5 }]);
  assert.deepEqual(detector.stragglers(), [1]);
  assert.deepEqual(detector.observe(5, step(100, 200)), [], 'named once');
  // One fast step among slow ones changes nothing.
  assert.deepEqual(detector.observe(6, step(100, 100)), []);
  assert.deepEqual(detector.observe(7, step(100, 200)), []);
  assert.deepEqual(detector.stragglers(), [1]);
});

test('the straggler detector clears a rank back at speed, and forgets on a new ring', () => {
  const detector = new StragglerDetector(0.7, 2);
  detector.observe(1, step(300, 100));
  assert.deepEqual(detector.observe(2, step(300, 100)), [{ rank: 0, straggling: true, step: 2, windowScore: 1 / 3 }]);
  // The median of two is their mean: (1/3 + 1) / 2 is still below 0.7.
  assert.deepEqual(detector.observe(3, step(100, 100)), []);
  assert.deepEqual(detector.observe(4, step(100, 110)), [{ rank: 0, straggling: false, step: 4, windowScore: 1 }]);
  detector.observe(5, step(300, 100));
  detector.observe(6, step(300, 100));
  assert.deepEqual(detector.stragglers(), [0]);
  // Three ranks: another ring, the window starts again.
  assert.deepEqual(detector.observe(7, step(300, 100, 100)), []);
  assert.deepEqual(detector.stragglers(), []);
  assert.deepEqual(detector.windowScores(), [1 / 3, 1, 1]);
});

test('the straggler detector refuses a threshold or window that makes no sense', () => {
  assert.throws(() => new StragglerDetector(1.5, 5), /threshold must lie in \(0, 1\), got 1.5/);
  assert.throws(() => new StragglerDetector(0.7, 0), /window must be a positive number of steps, got 0/);
});
