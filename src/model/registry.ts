// Named model variants, timm style: `createModelConfig('vit_small_patch16_224')` plays the role of
// timm.create_model's architecture lookup (weights are never loaded from anywhere).

import type { ConvNetConfig } from './convnet.ts';
import { modelFlops, modelParamSpecs, type ModelArgs, type ModelConfig } from './model.ts';
import type { VitConfig } from './vit.ts';

const IMAGENET = { imageSize: 224, patchSize: 16, inChannels: 3, numClasses: 1000, mlpRatio: 4, distilled: false } as const;
const TINY = { ...IMAGENET, embedDim: 192, depth: 12, numHeads: 3 } as const;
const SMALL = { ...IMAGENET, embedDim: 384, depth: 12, numHeads: 6 } as const;
const BASE = { ...IMAGENET, embedDim: 768, depth: 12, numHeads: 12 } as const;
const LARGE = { ...IMAGENET, embedDim: 1024, depth: 24, numHeads: 16 } as const;

// Fashion-MNIST (28x28x1, 10 classes). Sized by measurement on one single-threaded wasm core:
// 7x7 patches (16 tokens + class token) keep attention cheap; ~550 images/s forward+backward
// (vs ~310 at embedDim 96, ~370 at depth 6, ~135 with 4x4 patches). Single-process AdamW, global
// batch 512, lr 4e-3, 60 warmup steps, cosine: 78.4/83.1/84.9/85.7/87.0/87.2% test accuracy after
// epochs 1-6, i.e. ~5.5 minutes per worker for 6 epochs when two workers split the batch.
const FMNIST_TINY = {
  imageSize: 28,
  patchSize: 7,
  inChannels: 1,
  numClasses: 10,
  embedDim: 64,
  depth: 4,
  numHeads: 4,
  mlpRatio: 2,
  distilled: false,
} as const;

const VIT_MODELS = {
  vit_fmnist_tiny: FMNIST_TINY,
  // The same with DeiT's distillation token and head (recipes/fmnist-deit-tiny-distilled.json).
  deit_fmnist_tiny_distilled: { ...FMNIST_TINY, distilled: true },
  // CIFAR-10 (32x32x3): the same width and depth; 4x4 patches (64 tokens), the usual patch size for
  // ViTs trained on 32-pixel images, since 8x8 patches would leave a 4x4 grid.
  vit_cifar_tiny: { ...FMNIST_TINY, imageSize: 32, patchSize: 4, inChannels: 3 },
  // The ImageNet-1k ViTs (Dosovitskiy et al.; AugReg for tiny and small), timm's names and sizes.
  vit_tiny_patch16_224: TINY,
  vit_tiny_patch16_384: { ...TINY, imageSize: 384 },
  vit_small_patch32_224: { ...SMALL, patchSize: 32 },
  vit_small_patch32_384: { ...SMALL, patchSize: 32, imageSize: 384 },
  vit_small_patch16_224: SMALL,
  vit_small_patch16_384: { ...SMALL, imageSize: 384 },
  vit_small_patch8_224: { ...SMALL, patchSize: 8 },
  vit_base_patch32_224: { ...BASE, patchSize: 32 },
  vit_base_patch32_384: { ...BASE, patchSize: 32, imageSize: 384 },
  vit_base_patch16_224: BASE,
  vit_base_patch16_384: { ...BASE, imageSize: 384 },
  vit_base_patch8_224: { ...BASE, patchSize: 8 },
  vit_large_patch32_224: { ...LARGE, patchSize: 32 },
  vit_large_patch32_384: { ...LARGE, patchSize: 32, imageSize: 384 },
  vit_large_patch16_224: LARGE,
  vit_large_patch16_384: { ...LARGE, imageSize: 384 },
  // DeiT (Touvron et al. 2021): the same architectures; the distilled ones add a distillation token
  // and a second head (timm's VisionTransformerDistilled).
  deit_tiny_patch16_224: TINY,
  deit_small_patch16_224: SMALL,
  deit_base_patch16_224: BASE,
  deit_base_patch16_384: { ...BASE, imageSize: 384 },
  deit_tiny_distilled_patch16_224: { ...TINY, distilled: true },
  deit_small_distilled_patch16_224: { ...SMALL, distilled: true },
  deit_base_distilled_patch16_224: { ...BASE, distilled: true },
  deit_base_distilled_patch16_384: { ...BASE, imageSize: 384, distilled: true },
} satisfies Record<string, Readonly<VitConfig>>;

const CONVNET_MODELS = {
  // A convolutional distillation teacher for Fashion-MNIST (convnet.ts), named like the other
  // Fashion-MNIST entries (family, data set, size): a timm name would promise a timm architecture.
  // A 2x2 stem to 14x14x32, one 3x3 convolution there, a 2x2 downsampling to 7x7x64, two 3x3
  // convolutions, the head over the whole 7x7 map: 123k parameters, 11.8 MFLOPs. Sized by
  // measurement on one single-threaded wasm core, batch 128: ~410 images/s forward+backward and
  // ~1550 forward (vit_fmnist_tiny: ~560 and ~1950), 91.8% test accuracy after 6 epochs (PyTorch,
  // the same recipe). One 3x3 convolution at 7x7 instead of two: 20% faster, 91.5%; a second one
  // at 14x14: 1.2x slower; widths 48/96, even with one convolution per stage: 1.4x slower.
  convnet_fmnist_small: {
    family: 'convnet',
    imageSize: 28,
    inChannels: 1,
    numClasses: 10,
    widths: [32, 64],
    depths: [1, 2],
    distilled: false,
  },
} satisfies Record<string, Readonly<ConvNetConfig>>;

const MODELS: Readonly<Record<string, Readonly<ModelConfig>>> = { ...VIT_MODELS, ...CONVNET_MODELS };

export type VitModelName = keyof typeof VIT_MODELS;
export type ConvNetModelName = keyof typeof CONVNET_MODELS;

/**
 * The config of a named variant, with fields optionally overridden (e.g. numClasses). An override
 * the variant's family does not have (patchSize for a convnet) is an error naming it; the model's
 * constructor validates the values.
 */
export function createModelConfig(name: VitModelName, overrides?: Partial<VitConfig>): VitConfig;
export function createModelConfig(name: ConvNetModelName, overrides?: Partial<ConvNetConfig>): ConvNetConfig;
export function createModelConfig(name: string, overrides?: ModelArgs): ModelConfig;
export function createModelConfig(name: string, overrides: ModelArgs = {}): ModelConfig {
  const base = Object.hasOwn(MODELS, name) ? MODELS[name] : undefined;
  if (base === undefined) {
    throw new Error(`unknown model '${name}'; known models: ${Object.keys(MODELS).join(', ')}`);
  }
  // The family is what the name means, not an argument.
  const args = Object.keys(base).filter((key) => key !== 'family');
  const unknown = Object.keys(overrides).filter((key) => !args.includes(key));
  if (unknown.length > 0) throw new Error(`model '${name}' has no argument ${unknown.join(', ')} (its arguments: ${args.join(', ')})`);
  return { ...base, ...overrides } as ModelConfig;
}

export interface ModelInfo {
  name: string;
  config: ModelConfig;
  numParams: number;
  flopsPerImage: number; // forward, multiply-add = 2
}

export function listModels(): ModelInfo[] {
  return Object.keys(MODELS).map((name) => {
    const config = createModelConfig(name);
    const specs = modelParamSpecs(config);
    const numParams = specs.reduce((total, p) => total + p.size, 0);
    return { name, config, numParams, flopsPerImage: modelFlops(config) };
  });
}
