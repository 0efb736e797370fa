// Conversion between the flat parameter vector and timm's state_dict: the same names, and each
// tensor in timm's layout (PyTorch Linear weights [out, in], the patch conv [D, C, p, p]), so a
// model trained here loads into timm and a timm/DeiT checkpoint loads here. Generic over the
// ParamSpec table: any parameter a model declares converts through its timmPerm.
import type { ParamSpec } from './vit.ts';
import type { Tensor } from './safetensors.ts';

/** Classifier heads, whose shape depends on the class count: replaced rather than loaded when fine-tuning. */
const HEAD_PATTERN = /^head(_dist)?\./;

/** `data` of row-major `shape` with its axes reordered: result axis k is input axis perm[k]. */
function permute(data: Float32Array, shape: number[], perm: number[]): Float32Array {
  const rank = shape.length;
  const inStrides = new Array<number>(rank);
  for (let axis = rank - 1, stride = 1; axis >= 0; axis--) {
    inStrides[axis] = stride;
    stride *= shape[axis]!;
  }
  const outShape = perm.map((axis) => shape[axis]!);
  const strides = perm.map((axis) => inStrides[axis]!); // input stride of each output axis
  const out = new Float32Array(data.length);
  const index = new Array<number>(rank).fill(0); // odometer over the output, last axis fastest
  let source = 0;
  for (let i = 0; i < out.length; i++) {
    out[i] = data[source]!;
    for (let k = rank - 1; k >= 0; k--) {
      index[k]! += 1;
      source += strides[k]!;
      if (index[k]! < outShape[k]!) break;
      source -= strides[k]! * outShape[k]!;
      index[k] = 0;
    }
  }
  return out;
}

function inversePerm(perm: number[]): number[] {
  const inverse = new Array<number>(perm.length);
  perm.forEach((axis, k) => (inverse[axis] = k));
  return inverse;
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

const showShape = (shape: number[]): string => `[${shape.join(', ')}]`;

function numParamsOf(specs: ParamSpec[]): number {
  const last = specs[specs.length - 1];
  return last ? last.offset + last.size : 0;
}

function checkLength(specs: ParamSpec[], flat: Float32Array): void {
  const numParams = numParamsOf(specs);
  if (flat.length !== numParams) throw new Error(`the model has ${numParams} parameters, the vector ${flat.length}`);
}

/** Every parameter as a timm state_dict tensor, in the table's (timm's) order. */
export function exportTimmState(specs: ParamSpec[], flat: Float32Array): Map<string, Tensor> {
  checkLength(specs, flat);
  const state = new Map<string, Tensor>();
  for (const spec of specs) {
    const internal = flat.slice(spec.offset, spec.offset + spec.size);
    state.set(spec.name, { shape: [...spec.timmShape], data: spec.timmPerm ? permute(internal, spec.shape, spec.timmPerm) : internal });
  }
  return state;
}

/**
 * Strict by default. For fine-tuning, allowHeadMismatch lets a head (head.*, head_dist.*) of another
 * class count keep its value from `init`, the model's fresh initialization.
 */
export type ImportOptions = { allowHeadMismatch: false } | { allowHeadMismatch: true; init: Float32Array };

export interface ImportResult {
  params: Float32Array;
  /** Head tensors left at their fresh initialization because the file's class count differs. */
  replaced: { name: string; fileShape: number[]; modelShape: number[] }[];
}

/**
 * The flat vector from timm-named tensors. Like PyTorch's strict load_state_dict, every parameter
 * must be present with its exact shape and the file may hold nothing else: a missing or leftover
 * tensor means the file belongs to another architecture.
 */
export function importTimmState(specs: ParamSpec[], tensors: Map<string, Tensor>, options: ImportOptions): ImportResult {
  let params: Float32Array;
  if (options.allowHeadMismatch) {
    checkLength(specs, options.init);
    params = options.init.slice();
  } else {
    params = new Float32Array(numParamsOf(specs)); // every value is loaded from the file
  }
  const replaced: ImportResult['replaced'] = [];
  for (const spec of specs) {
    const tensor = tensors.get(spec.name);
    if (!tensor) throw new Error(`tensor "${spec.name}" is missing (the model expects shape ${showShape(spec.timmShape)})`);
    if (!sameShape(tensor.shape, spec.timmShape)) {
      if (options.allowHeadMismatch && HEAD_PATTERN.test(spec.name)) {
        replaced.push({ name: spec.name, fileShape: tensor.shape, modelShape: spec.timmShape });
        continue;
      }
      throw new Error(`tensor "${spec.name}" has shape ${showShape(tensor.shape)} in the file, the model expects ${showShape(spec.timmShape)}`);
    }
    params.set(spec.timmPerm ? permute(tensor.data, spec.timmShape, inversePerm(spec.timmPerm)) : tensor.data, spec.offset);
  }
  const known = new Set(specs.map((s) => s.name));
  const unexpected = [...tensors.keys()].filter((name) => !known.has(name));
  if (unexpected.length > 0) throw new Error(`the file holds tensors the model does not have: ${unexpected.join(', ')}`);
  return { params, replaced };
}
