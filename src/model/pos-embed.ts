// Position-embedding resampling, for fine-tuning at a new resolution or patch grid (DeiT's
// 224 -> 384 px fine-tuning; timm's resample_abs_pos_embed). The prefix tokens (class token, and
// the distillation token of a distilled model) have no place on the grid and are kept as they are;
// the patch tokens are viewed as a [dim, h, w] image and resized bicubically.
//
// The interpolation is PyTorch's F.interpolate(mode='bicubic', align_corners=False), as DeiT's
// main.py calls it and timm's resample_abs_pos_embed does with antialias=False (timm's default,
// antialias=True, uses PyTorch's separate antialiasing kernel when downsampling, and is not this).
// test/fixtures/make_pos_embed_vectors.py checks it against PyTorch.

/** Keys' cubic convolution with PyTorch's a = -0.75 (upsample_bicubic2d; OpenCV's choice too). */
const A = -0.75;

/** Weight of a tap at distance |x| <= 1. */
function cubicNear(x: number): number {
  return ((A + 2) * x - (A + 3)) * x * x + 1;
}

/** Weight of a tap at distance 1 < |x| < 2. */
function cubicFar(x: number): number {
  return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
}

/** For each output position along one axis: the 4 source indices (clamped to the border) and their weights. */
function taps(inSize: number, outSize: number): { index: Int32Array; weight: Float64Array } {
  const index = new Int32Array(4 * outSize);
  const weight = new Float64Array(4 * outSize);
  const scale = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    // align_corners=False: pixel centers line up; PyTorch does not clamp the source coordinate
    // for cubic modes, it clamps the taps instead.
    const source = scale * (o + 0.5) - 0.5;
    const base = Math.floor(source);
    const t = source - base;
    const w = [cubicFar(t + 1), cubicNear(t), cubicNear(1 - t), cubicFar(2 - t)];
    for (let k = 0; k < 4; k++) {
      index[4 * o + k] = Math.min(Math.max(base - 1 + k, 0), inSize - 1);
      weight[4 * o + k] = w[k]!;
    }
  }
  return { index, weight };
}

/**
 * Resamples a position embedding [1, numPrefixTokens + h*w, dim] (flat, row-major, the grid
 * row by row) to [1, numPrefixTokens + H*W, dim] for toGrid [H, W].
 */
export function resamplePosEmbed(
  posEmbed: Float32Array,
  fromGrid: readonly [number, number],
  toGrid: readonly [number, number],
  numPrefixTokens: 1 | 2,
  dim: number,
): Float32Array {
  const [h, w] = fromGrid;
  const [H, W] = toGrid;
  for (const [name, n] of [
    ['fromGrid', h],
    ['fromGrid', w],
    ['toGrid', H],
    ['toGrid', W],
    ['dim', dim],
  ] as const) {
    if (!Number.isInteger(n) || n <= 0) throw new Error(`resamplePosEmbed: ${name} must hold positive integers, got ${n}`);
  }
  if (numPrefixTokens !== 1 && numPrefixTokens !== 2)
    throw new Error(`resamplePosEmbed: numPrefixTokens must be 1 or 2, got ${numPrefixTokens}`);
  const expected = (numPrefixTokens + h * w) * dim;
  if (posEmbed.length !== expected) {
    throw new Error(
      `resamplePosEmbed: a ${h}x${w} grid with ${numPrefixTokens} prefix tokens of ${dim} needs ${expected} values, got ${posEmbed.length}`,
    );
  }
  const prefix = numPrefixTokens * dim;
  const grid = posEmbed.subarray(prefix);
  const cols = taps(w, W);
  const rows = taps(h, H);

  // Separable: along the rows' width first into [h, W, dim], in float64 so that rounding happens once.
  const wide = new Float64Array(h * W * dim);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < W; x++) {
      const out = (y * W + x) * dim;
      for (let k = 0; k < 4; k++) {
        const src = (y * w + cols.index[4 * x + k]!) * dim;
        const c = cols.weight[4 * x + k]!;
        for (let d = 0; d < dim; d++) wide[out + d]! += c * grid[src + d]!;
      }
    }
  }
  const result = new Float32Array(prefix + H * W * dim);
  result.set(posEmbed.subarray(0, prefix));
  const acc = new Float64Array(dim);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      acc.fill(0);
      for (let k = 0; k < 4; k++) {
        const src = (rows.index[4 * y + k]! * W + x) * dim;
        const c = rows.weight[4 * y + k]!;
        for (let d = 0; d < dim; d++) acc[d]! += c * wide[src + d]!;
      }
      result.set(acc, prefix + (y * W + x) * dim);
    }
  }
  return result;
}
