// How the row kernels reduce. The subgroup way cannot run here (llvmpipe offers no `subgroups`
// feature), so these tests check its choice (device.ts's subgroupRowSize) and the WGSL it generates,
// not its results; the plain way's results are checked by the LayerNorm, softmax and loss tests.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { subgroupRowSize } from '../../src/model/webgpu/device.ts';
import { ENABLE_SUBGROUPS_MARKER, rowProgram, rowReduction, useSubgroupRows, workgroupSum } from '../../src/model/webgpu/rows.ts';

test('row kernels use subgroups only with the feature and one fixed subgroup size', () => {
  const both = new Set(['subgroups', 'timestamp-query']);
  assert.equal(subgroupRowSize(both, { subgroupMinSize: 32, subgroupMaxSize: 32 }, {}), 32);
  assert.equal(subgroupRowSize(new Set(['timestamp-query']), { subgroupMinSize: 32, subgroupMaxSize: 32 }, {}), null);
  assert.equal(subgroupRowSize(both, { subgroupMinSize: 8, subgroupMaxSize: 32 }, {}), null); // sizes vary (Intel)
  assert.equal(subgroupRowSize(both, { subgroupMinSize: 4, subgroupMaxSize: 128 }, {}), null); // llvmpipe's report
  assert.equal(subgroupRowSize(both, {}, {}), null);
  assert.equal(subgroupRowSize(both, { subgroupMinSize: 32, subgroupMaxSize: 32 }, { VIT_DIST_SUBGROUPS: '0' }), null);
  assert.throws(() => subgroupRowSize(both, {}, { VIT_DIST_SUBGROUPS: 'yes' }), /VIT_DIST_SUBGROUPS=yes: expected 0 or 1/);
});

test('a row program reduces with one subgroupAdd per row on subgroups, in workgroup memory otherwise', () => {
  const program = () => rowProgram('k', [3, 5], 3, ['X'], workgroupSum('total', 'vec2<f32>(X[base], 0.0)'));
  try {
    useSubgroupRows(32);
    const sub = program();
    const code = sub.getUserCode();
    assert.deepEqual(sub.workgroupSize, [32, 1, 1]);
    assert.equal(sub.shaderKey, 'k_subgroup32');
    assert.ok(code.includes(ENABLE_SUBGROUPS_MARKER));
    assert.ok(code.includes('const ROW_THREADS = 32;'));
    assert.ok(code.includes('let total = subgroupAdd(vec2<f32>(X[base], 0.0));'));
    assert.ok(!code.includes('workgroupBarrier') && !code.includes('var<workgroup>'));
    assert.equal(rowReduction(), 'one subgroup of 32 per row');
    assert.throws(() => useSubgroupRows(48), /size 48 is not a power of two/);
  } finally {
    useSubgroupRows(null);
  }
  const plain = program();
  const code = plain.getUserCode();
  assert.deepEqual(plain.workgroupSize, [64, 1, 1]);
  assert.equal(plain.shaderKey, 'k');
  assert.ok(!code.includes(ENABLE_SUBGROUPS_MARKER) && !code.includes('subgroupAdd'));
  assert.ok(code.includes('const ROW_THREADS = 64;') && code.includes('workgroupBarrier();'));
});
