import assert from 'node:assert/strict';
import test from 'node:test';
import { stragglerScores } from '../../src/coordinator/straggler.ts';

test('straggler scores: the fastest rank is 1.0, a rank twice as slow 0.5', () => {
  assert.deepEqual(stragglerScores([{ computeMs: 100 }, { computeMs: 200 }, { computeMs: 100 }, { computeMs: 125 }]), [1, 0.5, 1, 0.8]);
});

test('straggler scores: a rank that computed nothing is not a straggler', () => {
  assert.deepEqual(stragglerScores([{ computeMs: 0 }, { computeMs: 0 }]), [1, 1]);
});
