// How much wasm heap one training pass (lossAndGrad) needs, and the check that refuses a
// micro-batch that cannot fit, before the first step.
//
// tfjs-backend-wasm 4.22 is a wasm32 Emscripten build: its heap grows on demand up to
// 4 GiB - 64 KiB (getHeapMax() in its glue code; 32-bit addresses). Past that, malloc returns NULL
// and the backend uses address 0 without a check: tensors overwrite each other and the process
// dies later, in some unrelated kernel or free(), with "memory access out of bounds" (issue 19).
// No build in the package and no flag raises the ceiling (the SIMD, threaded-SIMD and plain .wasm
// are all wasm32), and the other backends have none: only a wasm pass is checked.
//
// The model of the heap a pass needs was fitted to bench/wasm_memory.ts's high-water marks (the
// end of the highest allocation) on this code: ViT variants at depth 2 and 12 varying the width,
// heads, tokens and MLP ratio, at micro-batches 8 and 16, and convnet_fmnist_small at 64 and 128.
// It grows linearly with the micro-batch; the fit's per-image figures are within 2% of the
// measurements (README "Memory per worker").

import * as tf from '@tensorflow/tfjs-core';
import type { ConvNetConfig } from './convnet.ts';
import type { ModelConfig, Regularization } from './model.ts';
import { modelParamSpecs } from './model.ts';
import type { VitConfig } from './vit.ts';

/** The largest heap tfjs-backend-wasm's module can grow to: 65535 pages of 64 KiB. */
export const WASM_HEAP_MAX_BYTES = 65535 * 65536;

/** Headroom over the fitted model: its error, heap fragmentation, small changes to the passes. */
const MARGIN = 1.1;

const FLOAT_BYTES = 4;

/**
 * Per block, the activations a ViT block keeps for its backward pass (vit.ts BlockActs), in floats
 * per image: norm1's and norm2's xHat (2TD), q, k, v (3TD), the merged heads (TD), the attention
 * probabilities (HT^2), fc1 and GELU's CDF (2T*hidden), the two LayerNorms' rstd (2T); with
 * regularization its masks and the masked copies.
 */
function vitKeptPerBlock(T: number, D: number, H: number, hidden: number, reg: Regularization | undefined): number {
  let floats = 6 * T * D + H * T * T + 2 * T * hidden + 2 * T;
  if (reg && (reg.attnDropout ?? 0) > 0) floats += 2 * H * T * T; // mask and dropped probabilities
  if (reg && reg.dropout > 0) floats += T * hidden; // GELU's dropout mask
  if (reg && (reg.dropout > 0 || reg.dropPath > 0)) floats += 2 * T * D; // proj and fc2 masks
  return floats;
}

/** Floats per image of one ViT pass: kept activations of every block, plus one block's temporaries (fitted). */
function vitFloatsPerImage(config: VitConfig, reg: Regularization | undefined): number {
  const { imageSize: S, patchSize: p, inChannels: C, embedDim: D, numHeads: H, depth } = config;
  const T = (S / p) ** 2 + (config.distilled ? 2 : 1);
  const hidden = Math.floor(D * config.mlpRatio);
  // The temporaries of the block whose backward runs (its attention branch's products and softmax
  // gradient, its MLP's), and the images and patches: least-squares coefficients.
  const temporaries = 8.0 * T * D + 13.0 * H * T * T + 11.8 * T * hidden + 1.5 * S * S * C;
  return depth * vitKeptPerBlock(T, D, H, hidden, reg) + temporaries;
}

/**
 * Floats per image of one convnet pass: a fitted multiple (21: the convolutions' transposed and
 * padded copies, the LayerNorms' and ReLUs' intermediates) of its feature maps' sizes.
 */
function convNetFloatsPerImage(config: ConvNetConfig): number {
  let size = config.imageSize;
  let maps = 0;
  config.widths.forEach((width, stage) => {
    size /= 2; // the stem or downsampling halves the map
    maps += size * size * width * (1 + config.depths[stage]!);
  });
  return 21 * maps;
}

/**
 * Bytes of wasm heap one training pass of `config` on n images needs, with MARGIN: per image as
 * above, plus 4x the parameters (the weights, their gradients, the flat gradient, transposed weight
 * copies) and 32 MiB of fixed overhead, both measured upper bounds.
 */
export function wasmPassBytes(config: ModelConfig, n: number, regularization?: Regularization): number {
  const perImage = config.family === 'convnet' ? convNetFloatsPerImage(config) : vitFloatsPerImage(config, regularization);
  const numParams = modelParamSpecs(config).reduce((total, spec) => total + spec.size, 0);
  return MARGIN * (FLOAT_BYTES * (n * perImage + 4 * numParams) + 32 * 2 ** 20);
}

/** The largest micro-batch whose pass fits the wasm heap; 0 when not even one image does. */
export function largestWasmMicroBatch(config: ModelConfig, regularization?: Regularization): number {
  const one = wasmPassBytes(config, 1, regularization);
  const perImage = wasmPassBytes(config, 2, regularization) - one;
  return Math.max(0, Math.floor((WASM_HEAP_MAX_BYTES - one) / perImage) + 1);
}

export interface MicroBatchPlan {
  model: string; // registry name, for the message
  config: ModelConfig;
  microBatch: number;
  backend: string; // tf.getBackend() after selectBackend
  regularization?: Regularization;
}

/**
 * Throws, naming the model, the micro-batch and what to change, when a pass would not fit the
 * backend's memory: today only wasm's 4 GiB heap. Call it before the first step.
 */
export function checkMicroBatchFits(plan: MicroBatchPlan): void {
  const { model, config, microBatch, backend, regularization } = plan;
  if (backend !== 'wasm') return;
  const needed = wasmPassBytes(config, microBatch, regularization);
  if (needed <= WASM_HEAP_MAX_BYTES) return;
  const largest = largestWasmMicroBatch(config, regularization);
  const gib = (bytes: number) => (bytes / 2 ** 30).toFixed(1);
  const change =
    largest > 0
      ? `use micro-batch ${largest} or less (the recipe's microBatch, or --micro-batch of run, launch and sweep; the global batch and the update stay the same)`
      : 'not even one image fits';
  throw new Error(
    `model ${model} at micro-batch ${microBatch} needs about ${gib(needed)} GiB of wasm heap per training pass, more than the ${gib(WASM_HEAP_MAX_BYTES)} GiB ` +
      `a wasm32 module can address: ${change}, or run the worker on the tensorflow backend (@tensorflow/tfjs-node)`,
  );
}

/** The parts of tfjs-backend-wasm's Emscripten module that watchWasmHeap uses (not in its typings). */
interface EmscriptenHeap {
  _malloc(bytes: number): number;
  _free(pointer: number): void;
}

/**
 * Starts recording the wasm heap's high-water mark (the end of the highest allocation since this
 * call) on the active wasm backend, and returns its reader. For measuring the model above
 * (bench/wasm_memory.ts, its test); it also turns an exhausted heap into an error instead of the
 * unchecked NULL the backend would use.
 */
export function watchWasmHeap(): () => number {
  if (tf.getBackend() !== 'wasm') throw new Error(`watchWasmHeap needs the wasm backend, the active one is ${tf.getBackend()}`);
  const heap = (tf.backend() as unknown as { wasm: EmscriptenHeap }).wasm;
  // Emscripten's first call of Module._malloc replaces it with the module's export: call it once,
  // then wrap what is left there.
  heap._free(heap._malloc(1));
  const malloc = heap._malloc.bind(heap);
  let highWater = 0;
  heap._malloc = (bytes: number) => {
    const pointer = malloc(bytes) >>> 0; // >>> 0: addresses above 2 GiB come back negative
    if (pointer === 0) throw new Error(`the wasm heap is exhausted: malloc(${bytes}) failed with ${highWater} bytes in use`);
    highWater = Math.max(highWater, pointer + bytes);
    return pointer;
  };
  return () => highWater;
}
