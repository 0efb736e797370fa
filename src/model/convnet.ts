// A small convolutional network in TF.js: DeiT's distillation teacher is a convnet (RegNetY-16GF
// in the paper), whose inductive bias the student's distillation token learns from.
//
// The layout follows ConvNeXt's (Liu et al. 2022) plain skeleton, without its depthwise blocks:
// a non-overlapping 2x2 "patchify" stem, stages of 3x3 convolutions at constant resolution, a 2x2
// stride-2 convolution between stages. Every convolution is followed by a LayerNorm over channels
// (per pixel, ConvNeXt's LayerNorm2d) and a ReLU. The head is a convolution whose kernel covers the
// whole last map (a Linear on the flattened map) rather than global average pooling and a Linear:
// measured with the same optimizer, schedule and batch 512 on Fashion-MNIST (PyTorch, one thread,
// the convnet_fmnist_small shape), pooling reached 54% test accuracy after 60 steps and 87.6% after
// 6 epochs, the full-map head 84% and 91.8% (the ViT student: 87.3%).
//
// No batch norm: its statistics would depend on how the global batch is split across workers and
// micro-batches, and a run must give bit-identical weights on every worker and the same losses on
// 1, 2 or 4 workers. A LayerNorm over channels normalizes each pixel of each image on its own.
//
// Like the ViT, all parameters live in one flat vector (ParamSpec) with PyTorch-style names and
// layouts for export (`stem.conv.weight` [out, in, kh, kw]), the init is seeded pure JS, and the
// backward pass is written by hand (conv.ts: only kernels that the wasm backend runs fast).

import * as tf from '@tensorflow/tfjs-core';
import { FlatParamClassifier, type TrainPass } from './classifier.ts';
import { convSame, convSameBackward, patchify, unpatchify } from './conv.ts';
import { layerNorm, layerNormBackward, linear, linearBackward, reluBackward } from './layers.ts';
import type { HeadLogits } from './loss.ts';
import type { ParamSpec, TrainContext } from './model.ts';
import { ParamTable } from './param-table.ts';

export interface ConvNetConfig {
  family: 'convnet';
  imageSize: number; // square input, H = W; a multiple of 2 ** widths.length
  inChannels: number;
  numClasses: number;
  widths: readonly number[]; // output channels of each stage: the stem's, then each downsampling's
  depths: readonly number[]; // 3x3 convolutions in each stage, after its stem or downsampling
  distilled: false; // no distillation token: a convnet is a teacher, not a DeiT student
}

/** The stem and the downsampling between stages: a 2x2 convolution of stride 2 (non-overlapping). */
const PATCH = 2;
/** The kernel of the convolutions inside a stage (stride 1, zero padding keeping the size). */
const KERNEL = 3;

/** One convolution, its channel LayerNorm and its ReLU. */
interface ConvUnit {
  name: string; // state_dict prefix: `${name}.conv`, `${name}.norm`
  kind: 'patch' | 'same';
  inChannels: number;
  outChannels: number;
  inSize: number; // input height = width
  outSize: number;
}

function convUnits(config: ConvNetConfig): ConvUnit[] {
  const { widths, depths } = config;
  let size = config.imageSize;
  const units: ConvUnit[] = [];
  const add = (name: string, kind: ConvUnit['kind'], inChannels: number, outChannels: number) => {
    const outSize = kind === 'patch' ? size / PATCH : size;
    units.push({ name, kind, inChannels, outChannels, inSize: size, outSize });
    size = outSize;
  };
  add('stem', 'patch', config.inChannels, widths[0]!);
  widths.forEach((width, s) => {
    if (s > 0) add(`stages.${s}.downsample`, 'patch', widths[s - 1]!, width);
    for (let d = 0; d < depths[s]!; d++) add(`stages.${s}.blocks.${d}`, 'same', width, width);
  });
  return units;
}

function kernelSize(unit: ConvUnit): number {
  return unit.kind === 'patch' ? PATCH : KERNEL;
}

/** The parameter table in the state_dict order of the equivalent torch.nn module. Pure arithmetic. */
export function convNetParamSpecs(config: ConvNetConfig): ParamSpec[] {
  const table = new ParamTable();
  const add = table.add.bind(table);
  for (const unit of convUnits(config)) {
    const k = kernelSize(unit);
    // nn.Conv2d(in, out, k).weight is [out, in, k, k]; here [k, k, in, out] (HWIO). ConvNeXt's init:
    // trunc_normal_(std=.02), bias 0.
    add(`${unit.name}.conv.weight`, [k, k, unit.inChannels, unit.outChannels], 'trunc_normal', [3, 2, 0, 1]);
    add(`${unit.name}.conv.bias`, [unit.outChannels], 'zeros');
    add(`${unit.name}.norm.weight`, [unit.outChannels], 'ones');
    add(`${unit.name}.norm.bias`, [unit.outChannels], 'zeros');
  }
  // nn.Conv2d(width, classes, kernel=last map's side).weight, [classes, width, s, s]; here [s, s, width, classes].
  const side = lastSize(config);
  add('head.fc.weight', [side, side, config.widths.at(-1)!, config.numClasses], 'trunc_normal', [3, 2, 0, 1]);
  add('head.fc.bias', [config.numClasses], 'zeros');
  return table.specs;
}

/** Forward FLOPs for one image, a multiply-add counting 2: the convolutions and the head (norms and ReLUs left out, as for the ViT). */
export function countConvNetFlops(config: ConvNetConfig): number {
  const convs = convUnits(config).reduce((sum, u) => sum + 2 * u.outSize ** 2 * kernelSize(u) ** 2 * u.inChannels * u.outChannels, 0);
  return convs + 2 * headInputs(config) * config.numClasses;
}

/** The side of the last feature map: the head's kernel size. */
function lastSize(config: ConvNetConfig): number {
  return config.imageSize / PATCH ** config.widths.length;
}

/** The head's inputs per image: the whole last map. */
function headInputs(config: ConvNetConfig): number {
  return lastSize(config) ** 2 * config.widths.at(-1)!;
}

function validateConfig(config: ConvNetConfig): void {
  const positive = (value: unknown) => Number.isInteger(value) && (value as number) > 0;
  for (const key of ['imageSize', 'inChannels', 'numClasses'] as const) {
    if (!positive(config[key])) throw new Error(`ConvNetConfig.${key} must be a positive integer, got ${config[key]}`);
  }
  const { widths, depths } = config;
  if (!Array.isArray(widths) || widths.length === 0 || !widths.every(positive))
    throw new Error(`ConvNetConfig.widths must be a non-empty list of positive integers, got ${JSON.stringify(widths)}`);
  if (!Array.isArray(depths) || depths.length !== widths.length || !depths.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`ConvNetConfig.depths must hold a count >= 0 for each of the ${widths.length} stages, got ${JSON.stringify(depths)}`);
  }
  const reduction = PATCH ** widths.length; // the stem and each downsampling halve the size
  if (config.imageSize % reduction !== 0)
    throw new Error(
      `ConvNetConfig.imageSize ${config.imageSize} is not a multiple of ${reduction} (${widths.length} stages, each halving it)`,
    );
  if (config.distilled !== false)
    throw new Error(`ConvNetConfig.distilled must be false (a convnet has no distillation token), got ${config.distilled}`);
}

/** Activations of one unit kept for its backward pass. */
interface UnitActs {
  input: tf.Tensor4D | tf.Tensor2D; // the convolution's input: images for 'same', patch rows for 'patch'
  norm: { xHat: tf.Tensor2D; rstd: tf.Tensor };
  out: tf.Tensor2D; // after the ReLU, [B * outSize^2, outChannels]
}

export class ConvNet extends FlatParamClassifier<ConvNetConfig> {
  private readonly units: ConvUnit[];

  constructor(config: ConvNetConfig) {
    validateConfig(config);
    super(config, convNetParamSpecs(config));
    this.units = convUnits(config);
  }

  /** The unit's kernel as stored, [k, k, in, out]. */
  private kernel(unit: ConvUnit): tf.Tensor4D {
    return this.p<tf.Tensor4D>(`${unit.name}.conv.weight`);
  }

  /** A patch unit's kernel as the [k*k*in, out] matrix applied to patchify's rows. */
  private patchMatrix(unit: ConvUnit): tf.Tensor2D {
    return tf.reshape(this.kernel(unit), [PATCH * PATCH * unit.inChannels, unit.outChannels]);
  }

  /** The head's kernel as the [s*s*width, classes] matrix applied to the flattened last map. */
  private headMatrix(): tf.Tensor2D {
    return tf.reshape(this.p('head.fc.weight'), [headInputs(this.config), this.config.numClasses]);
  }

  /** Every unit: [B, S, S, C] images -> the last map flattened in (row, col, channel) order, [B, s*s*width]. */
  private forwardActs(x: tf.Tensor4D): { units: UnitActs[]; features: tf.Tensor2D } {
    const B = x.shape[0];
    let h = x;
    const units: UnitActs[] = [];
    for (const unit of this.units) {
      const input = unit.kind === 'patch' ? patchify(h, PATCH) : h;
      const conv =
        unit.kind === 'patch'
          ? linear(input as tf.Tensor2D, this.patchMatrix(unit), this.b(`${unit.name}.conv`))
          : convSame(h, this.kernel(unit), this.b(`${unit.name}.conv`));
      // Rows are pixels: the LayerNorm normalizes each pixel's channels.
      const norm = layerNorm(tf.reshape(conv, [-1, unit.outChannels]), this.w(`${unit.name}.norm`), this.b(`${unit.name}.norm`));
      const out = tf.relu(norm.y);
      units.push({ input, norm, out });
      h = tf.reshape(out, [B, unit.outSize, unit.outSize, unit.outChannels]);
    }
    return { units, features: tf.reshape(h, [B, -1]) };
  }

  private backward(acts: { units: UnitActs[]; features: tf.Tensor2D }, dLogits: HeadLogits, B: number): tf.Tensor1D {
    const grads = new Map<string, tf.Tensor>();
    const head = linearBackward(dLogits.cls, acts.features, this.headMatrix());
    grads.set('head.fc.weight', head.dw).set('head.fc.bias', head.db);
    let dOut: tf.Tensor2D = tf.reshape(head.dx, [-1, this.units.at(-1)!.outChannels]);
    for (let i = this.units.length - 1; i >= 0; i--) {
      const unit = this.units[i]!;
      const a = acts.units[i]!;
      const norm = layerNormBackward(reluBackward(dOut, a.out), a.norm.xHat, a.norm.rstd, this.w(`${unit.name}.norm`));
      grads.set(`${unit.name}.norm.weight`, norm.dWeight).set(`${unit.name}.norm.bias`, norm.dBias);
      let dx: tf.Tensor4D;
      if (unit.kind === 'patch') {
        const g = linearBackward(norm.dx, a.input as tf.Tensor2D, this.patchMatrix(unit));
        grads.set(`${unit.name}.conv.weight`, g.dw).set(`${unit.name}.conv.bias`, g.db);
        if (i === 0) break; // the images need no gradient
        dx = unpatchify(g.dx, B, unit.inSize, PATCH);
      } else {
        const g = convSameBackward(
          tf.reshape(norm.dx, [B, unit.outSize, unit.outSize, unit.outChannels]),
          a.input as tf.Tensor4D,
          this.kernel(unit),
        );
        grads.set(`${unit.name}.conv.weight`, g.dw).set(`${unit.name}.conv.bias`, g.db);
        dx = g.dx;
      }
      dOut = tf.reshape(dx, [-1, unit.inChannels]);
    }
    return this.flatGradient(grads);
  }

  protected trainPass(x: tf.Tensor4D, n: number, ctx: TrainContext | undefined): TrainPass {
    const reg = ctx?.regularization;
    // The recipe's other regularizers have no site in this network: refuse rather than ignore them.
    for (const key of ['dropout', 'attnDropout', 'dropPath'] as const) {
      if (reg?.[key]) throw new Error(`ConvNet has no dropout or stochastic depth: regularization.${key} is ${reg[key]}, expected 0`);
    }
    const acts = this.forwardActs(x);
    return { heads: this.head(acts.features), backward: (dLogits) => this.backward(acts, dLogits, n) };
  }

  protected inferenceHeads(x: tf.Tensor4D): HeadLogits {
    return this.head(this.forwardActs(x).features);
  }

  private head(features: tf.Tensor2D): HeadLogits {
    return { cls: linear(features, this.headMatrix(), this.b('head.fc')), dist: null };
  }
}
