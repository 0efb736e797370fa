// Allocation and checks of RawImage values shared by the transforms.
import type { RawImage } from '../source.ts';

/** A new zero-filled image. */
export function createImage(height: number, width: number, channels: number): RawImage {
  return { data: new Uint8Array(height * width * channels), height, width, channels };
}

/** Throws unless `img` is a well-formed uint8 HWC image of 1 or 3 channels. */
export function checkImage(img: RawImage, where: string): void {
  const { height, width, channels, data } = img;
  if (!(Number.isInteger(height) && height > 0 && Number.isInteger(width) && width > 0)) {
    throw new RangeError(`${where}: image size ${height}x${width} is not a positive integer size`);
  }
  if (channels !== 1 && channels !== 3) throw new RangeError(`${where}: images have 1 or 3 channels, got ${channels}`);
  if (data.length !== height * width * channels) {
    throw new RangeError(`${where}: a ${height}x${width}x${channels} image needs ${height * width * channels} bytes, got ${data.length}`);
  }
}
