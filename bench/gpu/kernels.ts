// Our matMul kernels' speed at the products of a DeiT-B training step, for bench/gpu-check.sh:
// the four linear layers (qkv, attention projection, fc1, fc2) forward and in their two backward
// forms (dX = dY W^T, dW = X^T dY), and the attention products (QK^T, PV and their backward forms),
// each timed by benchMatMul (src/model/webgpu/bench-kernels.ts) with its sampled error against a
// float64 product. Then the sum over one block's forward+backward: the matMul time of a step.
//
//   node --import tsx bench/gpu/kernels.ts [--tiny] [--allow-software] [--only 'fc1 Y=XW,...']
//
// --tiny: small shapes with odd sizes (for llvmpipe); --allow-software: llvmpipe may serve;
// --only: just the named products (then no block sum).
// Prints a table, then one JSON line (the last) for scripts.
import { parseArgs } from 'node:util';
import { activateWebGPU } from '../../src/model/webgpu/device.ts';
import { benchMatMul } from '../../src/model/webgpu/bench-kernels.ts';

/** The dimensions a ViT block's products are made of. */
interface BlockDims {
  images: number;
  /** Rows of the linear layers' inputs: images x tokens (DeiT-B at batch 64: 64 x 196, as issue #12 states them). */
  rows: number;
  dim: number;
  hidden: number;
  heads: number;
  tokens: number;
  headDim: number;
  depth: number;
}

const DEIT_B_BATCH_64: BlockDims = { images: 64, rows: 12544, dim: 768, hidden: 3072, heads: 12, tokens: 197, headDim: 64, depth: 12 };
/** Not multiples of any tile, so edge handling is exercised; small enough for llvmpipe. */
const TINY: BlockDims = { images: 2, rows: 50, dim: 40, hidden: 160, heads: 2, tokens: 17, headDim: 20, depth: 12 };

interface Product {
  name: string;
  m: number;
  n: number;
  k: number;
  transposeA: boolean;
  transposeB: boolean;
  batch: number;
}

function blockProducts(d: BlockDims): Product[] {
  const linear = (layer: string, fanIn: number, fanOut: number): Product[] => [
    { name: `${layer} Y=XW`, m: d.rows, n: fanOut, k: fanIn, transposeA: false, transposeB: false, batch: 1 },
    { name: `${layer} dX=dY W^T`, m: d.rows, n: fanIn, k: fanOut, transposeA: false, transposeB: true, batch: 1 },
    { name: `${layer} dW=X^T dY`, m: fanIn, n: fanOut, k: d.rows, transposeA: true, transposeB: false, batch: 1 },
  ];
  const pairs = d.images * d.heads;
  const { tokens: t, headDim: h } = d;
  return [
    ...linear('qkv', d.dim, 3 * d.dim),
    ...linear('proj', d.dim, d.dim),
    ...linear('fc1', d.dim, d.hidden),
    ...linear('fc2', d.hidden, d.dim),
    { name: 'attn S=QK^T', m: t, n: t, k: h, transposeA: false, transposeB: true, batch: pairs },
    { name: 'attn O=PV', m: t, n: h, k: t, transposeA: false, transposeB: false, batch: pairs },
    { name: 'attn dP=dO V^T', m: t, n: t, k: h, transposeA: false, transposeB: true, batch: pairs },
    { name: 'attn dV=P^T dO', m: t, n: h, k: t, transposeA: true, transposeB: false, batch: pairs },
    { name: 'attn dQ=dS K', m: t, n: h, k: t, transposeA: false, transposeB: false, batch: pairs },
    { name: 'attn dK=dS^T Q', m: t, n: h, k: t, transposeA: true, transposeB: false, batch: pairs },
  ];
}

const { values } = parseArgs({
  options: { tiny: { type: 'boolean', default: false }, 'allow-software': { type: 'boolean', default: false }, only: { type: 'string' } },
});
const dims = values.tiny ? TINY : DEIT_B_BATCH_64;
const iterations = values.tiny ? 2 : 20;

const { reason } = await activateWebGPU({ gpu: 0, allowSoftware: values['allow-software'] });
console.log(`our matMul kernels on ${reason}`);
console.log(
  `${'product'.padEnd(16)} ${'batch x M x N x K'.padStart(24)} ${'ms'.padStart(9)} ${'TFLOP/s'.padStart(8)} ${'max rel err'.padStart(11)} tile`,
);
const results = [];
let blockMs = 0;
let blockFlops = 0;
const only = values.only?.split(',');
const products = blockProducts(dims).filter((p) => !only || only.includes(p.name));
if (products.length === 0)
  throw new Error(
    `--only ${values.only} names no product (${blockProducts(dims)
      .map((p) => p.name)
      .join(', ')})`,
  );
for (const p of products) {
  const r = await benchMatMul(p.m, p.n, p.k, p.transposeA, p.transposeB, { batch: p.batch, iterations });
  const shape = `${p.batch} x ${p.m} x ${p.n} x ${p.k}`;
  console.log(
    `${p.name.padEnd(16)} ${shape.padStart(24)} ${r.ms.toFixed(3).padStart(9)} ${r.tflops.toFixed(2).padStart(8)} ${r.maxRelError.toExponential(1).padStart(11)} ${r.tile}`,
  );
  results.push({ ...p, ...r });
  blockMs += r.ms;
  blockFlops += 2 * p.batch * p.m * p.n * p.k;
}
if (only) {
  console.log(JSON.stringify({ adapter: reason, dims, iterations, results }));
  process.exit(0);
}
// Every product above runs once per block in a training step (forward, then backward).
const stepMatMulMs = blockMs * dims.depth;
const imagesPerSecBound = (dims.images * 1000) / stepMatMulMs;
console.log(
  `one block's forward+backward products: ${(blockFlops / 1e9).toFixed(1)} GFLOP in ${blockMs.toFixed(2)} ms = ${(blockFlops / (blockMs * 1e9)).toFixed(2)} TFLOP/s; ${dims.depth} blocks: ${stepMatMulMs.toFixed(1)} ms per ${dims.images} images, so the products alone allow ${imagesPerSecBound.toFixed(0)} images/s`,
);
console.log(
  JSON.stringify({ adapter: reason, dims, iterations, results, blockMs, blockTflops: blockFlops / (blockMs * 1e9), imagesPerSecBound }),
);
