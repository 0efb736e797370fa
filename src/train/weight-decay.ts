// Which parameters weight decay applies to. As in DeiT/timm (`no_weight_decay`, and 1-D params
// skipped by `param_groups_weight_decay`) and AugReg: only the matrices of linear layers and the
// patch projection decay; biases, LayerNorm scales and shifts, the class token and the position
// embedding do not.

export interface NamedParam {
  name: string;
  shape: readonly number[];
  offset: number;
  size: number;
}

const NO_DECAY_NAMES = new Set(['cls_token', 'dist_token', 'pos_embed']);

export function decays(param: NamedParam): boolean {
  return param.shape.length >= 2 && !NO_DECAY_NAMES.has(param.name) && !param.name.endsWith('.bias');
}

/** A per-element mask over the flat parameter vector: 1 where decay applies. */
export function decayMask(params: readonly NamedParam[], numParams: number): Uint8Array {
  const mask = new Uint8Array(numParams);
  for (const p of params) if (decays(p)) mask.fill(1, p.offset, p.offset + p.size);
  return mask;
}
