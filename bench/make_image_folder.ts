// Builds a JPEG folder in ImageNet's layout (train/<class>/*.JPEG) for the data benchmarks:
// generated images of varied sizes (ImageNet's typical 300-500 px sides, some portrait, some
// landscape) and varied content (gradients, shapes and noise), so decoding and resizing cost what
// they cost on photographs rather than on flat colour.
//   node --import tsx bench/make_image_folder.ts --out /tmp/jpegs --images 2000 --classes 10
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { Mulberry32 } from '../src/common/random.ts';

const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    images: { type: 'string', default: '2000' },
    classes: { type: 'string', default: '10' },
    seed: { type: 'string', default: '0' },
  },
});
if (!values.out) throw new Error('--out DIR is required');
const images = Number(values.images);
const classes = Number(values.classes);
const rng = new Mulberry32(Number(values.seed));
const between = (lo: number, hi: number) => lo + Math.floor(rng.next() * (hi - lo + 1));

function picture(width: number, height: number): Buffer {
  const pixels = Buffer.alloc(width * height * 3);
  const [r0, g0, b0] = [between(0, 255), between(0, 255), between(0, 255)];
  const [fx, fy] = [rng.next() * 0.05, rng.next() * 0.05];
  const [cx, cy, radius] = [between(0, width), between(0, height), between(20, 200)];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const inside = (x - cx) ** 2 + (y - cy) ** 2 < radius * radius;
      const wave = 60 * Math.sin(fx * x + fy * y);
      const noise = between(-25, 25);
      const o = (y * width + x) * 3;
      pixels[o] = Math.max(0, Math.min(255, (inside ? 255 - r0 : r0) + wave + noise));
      pixels[o + 1] = Math.max(0, Math.min(255, (inside ? 255 - g0 : g0) - wave + noise));
      pixels[o + 2] = Math.max(0, Math.min(255, b0 + (x * 64) / width + noise));
    }
  }
  return pixels;
}

for (let c = 0; c < classes; c++) mkdirSync(join(values.out, 'train', `n${String(c).padStart(8, '0')}`), { recursive: true });
for (let i = 0; i < images; i++) {
  const [width, height] = rng.next() < 0.7 ? [between(400, 500), between(300, 400)] : [between(300, 400), between(400, 500)];
  const dir = join(values.out, 'train', `n${String(i % classes).padStart(8, '0')}`);
  await sharp(picture(width, height), { raw: { width, height, channels: 3 } })
    .jpeg({ quality: 90 })
    .toFile(join(dir, `img_${String(i).padStart(6, '0')}.JPEG`));
}
console.log(`wrote ${images} JPEGs in ${classes} classes under ${join(values.out, 'train')}`);
