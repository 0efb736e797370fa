import { test } from 'node:test';
import assert from 'node:assert/strict';
import { convNetParamSpecs } from '../../src/model/convnet.ts';
import { resamplePosEmbed } from '../../src/model/pos-embed.ts';
import { createModelConfig } from '../../src/model/registry.ts';
import type { ParamSpec } from '../../src/model/model.ts';
import { paramSpecs, type VitConfig } from '../../src/model/vit.ts';
import { exportTimmState, importTimmState } from '../../src/model/weights.ts';

// Three input channels so the conv layout's channel axis is exercised; D=8, p=7, hidden=16.
const CONFIG = createModelConfig('vit_fmnist_tiny', { imageSize: 14, inChannels: 3, embedDim: 8, depth: 1, numHeads: 2, mlpRatio: 2 });
const SPECS = paramSpecs(CONFIG);
const NUM_PARAMS = SPECS.at(-1)!.offset + SPECS.at(-1)!.size;
const [D, C, P, CLASSES] = [8, 3, 7, 10];

/** Distinct values, so any misplaced element shows. */
function distinct(n: number, from = 0): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => from + i);
}

function spec(name: string): ParamSpec {
  return SPECS.find((s) => s.name === name)!;
}

test("exported tensors carry timm's shapes", () => {
  const state = exportTimmState(SPECS, distinct(NUM_PARAMS));
  const shapes = Object.fromEntries([...state].map(([name, t]) => [name, t.shape]));
  assert.deepEqual(shapes['patch_embed.proj.weight'], [D, C, P, P]);
  assert.deepEqual(shapes['blocks.0.attn.qkv.weight'], [3 * D, D]);
  assert.deepEqual(shapes['blocks.0.mlp.fc1.weight'], [2 * D, D]);
  assert.deepEqual(shapes['head.weight'], [CLASSES, D]);
  assert.deepEqual(shapes.pos_embed, [1, (14 / P) ** 2 + 1, D]);
  assert.deepEqual(
    [...state.keys()],
    SPECS.map((s) => s.name),
    "timm's state_dict order",
  );
});

test('Linear weights are transposed to [out, in] and the conv kernel to [D, C, p, p]', () => {
  const flat = distinct(NUM_PARAMS);
  const state = exportTimmState(SPECS, flat);
  const qkv = spec('blocks.0.attn.qkv.weight'); // internal [in=D, out=3D]
  const timmQkv = state.get(qkv.name)!.data;
  for (let o = 0; o < 3 * D; o++) for (let i = 0; i < D; i++) assert.equal(timmQkv[o * D + i], flat[qkv.offset + i * 3 * D + o]);
  const conv = spec('patch_embed.proj.weight'); // internal [p, p, C, D]
  const timmConv = state.get(conv.name)!.data;
  for (let d = 0; d < D; d++)
    for (let c = 0; c < C; c++)
      for (let r = 0; r < P; r++)
        for (let s = 0; s < P; s++) {
          assert.equal(timmConv[((d * C + c) * P + r) * P + s], flat[conv.offset + ((r * P + s) * C + c) * D + d]);
        }
  const bias = spec('blocks.0.attn.qkv.bias');
  assert.deepEqual(state.get(bias.name)!.data, flat.slice(bias.offset, bias.offset + bias.size), 'same layout: copied as is');
});

test('import inverts export bit for bit', () => {
  const flat = Float32Array.from({ length: NUM_PARAMS }, (_, i) => Math.sin(i) * 1e-3);
  const { params, replaced, posEmbedResampled } = importTimmState(SPECS, exportTimmState(SPECS, flat), { allowHeadMismatch: false });
  assert.deepEqual(new Uint32Array(params.buffer), new Uint32Array(flat.buffer));
  assert.deepEqual(replaced, []);
  assert.equal(posEmbedResampled, null);
});

test('a missing tensor is an error naming it and the expected shape', () => {
  const state = exportTimmState(SPECS, distinct(NUM_PARAMS));
  state.delete('blocks.0.mlp.fc2.weight');
  assert.throws(
    () => importTimmState(SPECS, state, { allowHeadMismatch: false }),
    /tensor "blocks\.0\.mlp\.fc2\.weight" is missing \(the model expects shape \[8, 16\]\)/,
  );
});

test('a shape mismatch is an error naming the tensor and both shapes, also when heads may differ', () => {
  // 17 patch tokens are no square grid; 16 are, but of another width: neither can be resampled.
  for (const shape of [
    [1, 18, D],
    [1, 17, 2 * D],
  ]) {
    const state = exportTimmState(SPECS, distinct(NUM_PARAMS));
    state.set('pos_embed', { shape, data: new Float32Array(shape[1]! * shape[2]!) });
    for (const options of [
      { allowHeadMismatch: false as const },
      { allowHeadMismatch: true as const, init: new Float32Array(NUM_PARAMS) },
    ]) {
      assert.throws(
        () => importTimmState(SPECS, state, options),
        new RegExp(`tensor "pos_embed" has shape \\[1, ${shape[1]}, ${shape[2]}\\] in the file, the model expects \\[1, 5, 8\\]`),
      );
    }
  }
});

test('fine-tuning at another grid: pos_embed is resampled from 14x14 to 7x7, the prefix tokens kept', () => {
  for (const [model, prefix] of [
    ['vit_fmnist_tiny', 1],
    ['deit_fmnist_tiny_distilled', 2],
  ] as const) {
    // Patch 7: 98 px is a 14x14 grid, 49 px a 7x7 one; nothing else changes shape.
    const config = (imageSize: number): VitConfig => createModelConfig(model, { ...CONFIG, imageSize, distilled: prefix === 2 });
    const [fileSpecs, modelSpecs] = [paramSpecs(config(98)), paramSpecs(config(49))];
    const fileFlat = Float32Array.from({ length: fileSpecs.at(-1)!.offset + fileSpecs.at(-1)!.size }, (_, i) => Math.sin(i * 0.1));
    const file = exportTimmState(fileSpecs, fileFlat);
    const numParams = modelSpecs.at(-1)!.offset + modelSpecs.at(-1)!.size;
    assert.throws(
      () => importTimmState(modelSpecs, file, { allowHeadMismatch: false }),
      new RegExp(`tensor "pos_embed" has shape \\[1, ${prefix + 196}, 8\\] in the file, the model expects \\[1, ${prefix + 49}, 8\\]`),
      'a strict load does not resample',
    );

    const { params, replaced, posEmbedResampled } = importTimmState(modelSpecs, file, {
      allowHeadMismatch: true,
      init: new Float32Array(numParams).fill(-1),
    });
    assert.deepEqual(replaced, []);
    assert.deepEqual(posEmbedResampled, {
      fileShape: [1, prefix + 196, D],
      modelShape: [1, prefix + 49, D],
      fromGrid: [14, 14],
      toGrid: [7, 7],
    });
    const posEmbed = modelSpecs.find((s) => s.name === 'pos_embed')!;
    const loaded = params.subarray(posEmbed.offset, posEmbed.offset + posEmbed.size);
    const filePosEmbed = file.get('pos_embed')!.data;
    assert.deepEqual(loaded, resamplePosEmbed(filePosEmbed, [14, 14], [7, 7], prefix, D));
    assert.deepEqual(
      loaded.subarray(0, prefix * D),
      filePosEmbed.subarray(0, prefix * D),
      `${model}: the ${prefix} prefix token(s) are kept`,
    );
    for (const s of modelSpecs.filter((s) => s.name !== 'pos_embed')) {
      const from = fileSpecs.find((f) => f.name === s.name)!;
      assert.deepEqual(
        params.subarray(s.offset, s.offset + s.size),
        fileFlat.subarray(from.offset, from.offset + from.size),
        `${s.name} is loaded`,
      );
    }
  }
});

test('a tensor the model does not have is an error naming it', () => {
  const state = exportTimmState(SPECS, distinct(NUM_PARAMS));
  state.set('fc_norm.weight', { shape: [D], data: new Float32Array(D) });
  assert.throws(
    () => importTimmState(SPECS, state, { allowHeadMismatch: false }),
    /the file holds tensors the model does not have: fc_norm\.weight/,
  );
});

test('fine-tuning: a head of another class count keeps its fresh init, everything else is loaded', () => {
  const pretrained = createModelConfig('vit_fmnist_tiny', { ...CONFIG, numClasses: 1000 });
  const pretrainedSpecs = paramSpecs(pretrained);
  const pretrainedFlat = distinct(pretrainedSpecs.at(-1)!.offset + pretrainedSpecs.at(-1)!.size);
  const file = exportTimmState(pretrainedSpecs, pretrainedFlat);
  assert.throws(
    () => importTimmState(SPECS, file, { allowHeadMismatch: false }),
    /tensor "head\.weight" has shape \[1000, 8\] in the file, the model expects \[10, 8\]/,
  );

  const init = Float32Array.from({ length: NUM_PARAMS }, () => -1);
  const { params, replaced } = importTimmState(SPECS, file, { allowHeadMismatch: true, init });
  assert.deepEqual(replaced, [
    { name: 'head.weight', fileShape: [1000, D], modelShape: [CLASSES, D] },
    { name: 'head.bias', fileShape: [1000], modelShape: [CLASSES] },
  ]);
  for (const s of SPECS) {
    const values = params.subarray(s.offset, s.offset + s.size);
    if (s.name.startsWith('head.'))
      assert.ok(
        values.every((v) => v === -1),
        `${s.name} keeps the init`,
      );
    else assert.deepEqual(values, pretrainedFlat.subarray(s.offset, s.offset + s.size), `${s.name} is loaded`);
  }
});

test('generic over the spec table: a distillation token and head_dist convert and are replaced like head', () => {
  // A DeiT-style table written by hand, the shape of what the model would declare.
  const table = (classes: number): ParamSpec[] => [
    { name: 'dist_token', shape: [1, 1, 4], offset: 0, size: 4, init: 'trunc_normal', timmShape: [1, 1, 4], timmPerm: null },
    {
      name: 'head_dist.weight',
      shape: [4, classes],
      offset: 4,
      size: 4 * classes,
      init: 'trunc_normal',
      timmShape: [classes, 4],
      timmPerm: [1, 0],
    },
    {
      name: 'head_dist.bias',
      shape: [classes],
      offset: 4 + 4 * classes,
      size: classes,
      init: 'zeros',
      timmShape: [classes],
      timmPerm: null,
    },
  ];
  const file = exportTimmState(table(3), distinct(4 + 5 * 3));
  assert.deepEqual(file.get('head_dist.weight')!.data, Float32Array.from([4, 7, 10, 13, 5, 8, 11, 14, 6, 9, 12, 15]));
  const { params, replaced } = importTimmState(table(2), file, { allowHeadMismatch: true, init: new Float32Array(4 + 5 * 2).fill(-1) });
  assert.deepEqual(
    replaced.map((r) => r.name),
    ['head_dist.weight', 'head_dist.bias'],
  );
  assert.deepEqual(Array.from(params), [0, 1, 2, 3, ...new Array(10).fill(-1)]);
});

test('the convnet: convolutions export as [out, in, kh, kw], import inverts export, a head of another class count is replaced', () => {
  const conv = createModelConfig('convnet_fmnist_small', { inChannels: 3 });
  const specs = convNetParamSpecs(conv);
  const numParams = specs.at(-1)!.offset + specs.at(-1)!.size;
  const flat = Float32Array.from({ length: numParams }, (_, i) => Math.sin(i) * 1e-3);
  const state = exportTimmState(specs, flat);
  const kernel = specs.find((s) => s.name === 'stages.0.blocks.0.conv.weight')!; // internal [3, 3, 32, 32]
  assert.deepEqual(state.get(kernel.name)!.shape, [32, 32, 3, 3]);
  const [k, ci, co] = [3, 32, 32];
  const timm = state.get(kernel.name)!.data;
  for (const [o, i, r, c] of [
    [0, 0, 0, 0],
    [5, 7, 1, 2],
    [31, 30, 2, 1],
  ] as const) {
    assert.equal(timm[((o * ci + i) * k + r) * k + c], flat[kernel.offset + ((r * k + c) * ci + i) * co + o]);
  }
  assert.deepEqual(state.get('stem.conv.weight')!.shape, [32, 3, 2, 2]);
  assert.deepEqual(state.get('head.fc.weight')!.shape, [10, 64, 7, 7]);
  const { params } = importTimmState(specs, state, { allowHeadMismatch: false });
  assert.deepEqual(new Uint32Array(params.buffer), new Uint32Array(flat.buffer));

  const fewer = convNetParamSpecs({ ...conv, numClasses: 4 });
  const init = new Float32Array(fewer.at(-1)!.offset + fewer.at(-1)!.size).fill(-1);
  const { replaced } = importTimmState(fewer, state, { allowHeadMismatch: true, init });
  assert.deepEqual(
    replaced.map((r) => r.name),
    ['head.fc.weight', 'head.fc.bias'],
  );
});
