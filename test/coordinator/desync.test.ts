import { test } from 'node:test';
import assert from 'node:assert/strict';
import { desyncError } from '../../src/coordinator/generation.ts';

test('a desync error is fatal and names the ranks that hold each digest', () => {
  const error = desyncError(12, ['aaaa', 'aaaa', 'bbbb', 'aaaa']);
  assert.equal(error.kind, 'fatal');
  assert.equal(error.code, 'DESYNC');
  assert.equal(error.message, 'desync after step 12: workers hold different parameters (ranks 0,1,3: aaaa; rank 2: bbbb)');
});
