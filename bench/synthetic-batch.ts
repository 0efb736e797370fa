// The benchmarks' inputs: speed and memory do not depend on the pixel values, so a deterministic
// wave and cycling labels stand in for data.
import type { ModelConfig } from '../src/model/model.ts';

export function syntheticBatch(config: ModelConfig, batch: number): { images: Float32Array; labels: Int32Array } {
  const pixels = config.imageSize * config.imageSize * config.inChannels;
  return {
    images: Float32Array.from({ length: batch * pixels }, (_, i) => Math.sin(i * 0.37)),
    labels: Int32Array.from({ length: batch }, (_, i) => i % config.numClasses),
  };
}
