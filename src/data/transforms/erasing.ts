// timm's RandomErasing (timm/data/random_erasing.py) on one normalized float HWC image, in place:
// with probability p, one box of random area (2% to 1/3 of the image) and log-uniform aspect
// (0.3 to 1/0.3) at a uniform position gets per-pixel standard normal values ('pixel' mode);
// up to 10 draws for a box that fits, none erased if none does.
import { gaussian, type Mulberry32 } from '../../common/random.ts';
import { randomInt, roundHalfEven, uniform } from './draws.ts';

export interface RandomErasingOptions {
  readonly probability: number;
  readonly minArea?: number;
  readonly maxArea?: number;
  readonly minAspect?: number;
}

/** timm's defaults (DeiT sets probability 0.25, mode 'pixel', count 1). */
export const ERASING_MIN_AREA = 0.02;
export const ERASING_MAX_AREA = 1 / 3;
export const ERASING_MIN_ASPECT = 0.3;
const ERASING_ATTEMPTS = 10;

/**
 * Erases (or not) a box of the height x width x channels image at data[offset ...]. Draws: one
 * uniform for the probability; when erasing, 2 per attempt, then 2 for the position and the
 * normal values of the box.
 */
export function randomErasing(
  data: Float32Array,
  offset: number,
  height: number,
  width: number,
  channels: number,
  rng: Mulberry32,
  options: RandomErasingOptions,
): void {
  const { probability, minArea = ERASING_MIN_AREA, maxArea = ERASING_MAX_AREA, minAspect = ERASING_MIN_ASPECT } = options;
  if (offset + height * width * channels > data.length) {
    throw new RangeError(`randomErasing: a ${height}x${width}x${channels} image at offset ${offset} does not fit ${data.length} values`);
  }
  if (rng.next() > probability) return;
  const area = height * width;
  const logAspect = [Math.log(minAspect), Math.log(1 / minAspect)] as const;
  for (let attempt = 0; attempt < ERASING_ATTEMPTS; attempt++) {
    const targetArea = uniform(rng, minArea, maxArea) * area;
    const aspect = Math.exp(uniform(rng, logAspect[0], logAspect[1]));
    const h = roundHalfEven(Math.sqrt(targetArea * aspect));
    const w = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w < width && h < height) {
      const top = randomInt(rng, 0, height - h);
      const left = randomInt(rng, 0, width - w);
      for (let y = top; y < top + h; y++) {
        const row = offset + (y * width + left) * channels;
        for (let i = 0; i < w * channels; i++) data[row + i] = gaussian(rng);
      }
      return;
    }
  }
}
