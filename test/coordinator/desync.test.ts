import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DesyncError } from '../../src/coordinator/generation.ts';

test('a desync error names the ranks that hold each digest', () => {
  const error = new DesyncError(12, ['aaaa', 'aaaa', 'bbbb', 'aaaa']);
  assert.equal(error.message, 'desync after step 12: workers hold different parameters (ranks 0,1,3: aaaa; rank 2: bbbb)');
});
