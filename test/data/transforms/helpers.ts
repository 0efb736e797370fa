// Shared by the transform tests: the PIL/torchvision vectors of test/fixtures/transform-vectors.json,
// a generator that replays scripted uniforms, and a textured test image.
import { readFileSync } from 'node:fs';
import { Mulberry32 } from '../../../src/common/random.ts';
import type { RawImage } from '../../../src/data/source.ts';

export interface Vectors {
  images: Record<string, { height: number; width: number; channels: number; data: string }>;
  resize: {
    image: string;
    interpolation: 'bilinear' | 'bicubic';
    height: number;
    width: number;
    box: { top: number; left: number; height: number; width: number } | null;
    expected: string;
  }[];
  warp: {
    image: string;
    interpolation: 'nearest' | 'bilinear' | 'bicubic';
    matrix?: number[];
    rotate?: number;
    fill: number | number[];
    expected: string;
  }[];
  enhance: { image: string; op: 'color' | 'contrast' | 'brightness' | 'sharpness'; factor: number; expected: string }[];
  tone: { image: string; op: string; expected: string }[];
  rrc: {
    height: number;
    width: number;
    scale: [number, number];
    ratio: [number, number];
    draws: number[];
    box: { top: number; left: number; height: number; width: number };
  }[];
  eval: { image: string; size: number; cropPct: number; expected: string }[];
}

export const vectors: Vectors = JSON.parse(readFileSync(new URL('../../fixtures/transform-vectors.json', import.meta.url), 'utf8'));

export function decode(base64: string): Uint8Array {
  return new Uint8Array(Buffer.from(base64, 'base64'));
}

export function fixtureImage(name: string): RawImage {
  const image = vectors.images[name];
  if (!image) throw new Error(`no fixture image "${name}"`);
  return { height: image.height, width: image.width, channels: image.channels, data: decode(image.data) };
}

/** Largest absolute difference between two byte arrays of equal length, and how many bytes differ. */
export function compare(actual: Uint8Array, expected: Uint8Array): { maxDiff: number; differing: number } {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} vs ${expected.length}`);
  let maxDiff = 0;
  let differing = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    if (d > 0) differing++;
    if (d > maxDiff) maxDiff = d;
  }
  return { maxDiff, differing };
}

/** A generator that returns the given uniforms in order and fails when it runs out. */
export class ScriptedRng extends Mulberry32 {
  used = 0;
  constructor(private readonly draws: readonly number[]) {
    super(0);
  }
  override next(): number {
    if (this.used >= this.draws.length) throw new Error(`scripted draws exhausted after ${this.used}`);
    return this.draws[this.used++]!;
  }
}

/** A deterministic textured image (gradients plus pseudo-random noise) with values in [lo, hi]. */
export function texturedImage(height: number, width: number, channels: number, seed = 1, lo = 20, hi = 230): RawImage {
  const rng = new Mulberry32(seed);
  const data = new Uint8Array(height * width * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < channels; c++) {
        const wave = 0.5 + 0.3 * Math.sin(x * (0.31 + 0.1 * c) + y * 0.17) * Math.cos(y * 0.23 - x * 0.05 * (c + 1));
        const v = Math.min(1, Math.max(0, wave + (rng.next() - 0.5) * 0.3));
        data[(y * width + x) * channels + c] = Math.round(lo + v * (hi - lo));
      }
    }
  }
  return { height, width, channels, data };
}
