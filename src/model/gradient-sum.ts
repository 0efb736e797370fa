// A step's gradient summed over its micro-batches where the model's tensors live (GPU memory on a
// GPU worker), brought to the host once. Owned by one step: a step abandoned half-way (a ring
// restart) keeps its partial sum to itself instead of leaking it into the next one.
import * as tf from '@tensorflow/tfjs-core';

export class DeviceGradientSum {
  private sum: tf.Tensor1D | null = null;

  constructor(readonly length: number) {}

  /** Adds `grad` into the sum; takes ownership of `grad`. */
  add(grad: tf.Tensor1D): void {
    if (grad.size !== this.length) {
      grad.dispose();
      throw new Error(`gradient has ${grad.size} values, the sum ${this.length}`);
    }
    const previous = this.sum;
    this.sum = previous ? tf.add(previous, grad) : grad;
    if (previous) tf.dispose([previous, grad]);
  }

  /** Writes the sum into `into` (zeros when nothing was added) with one download, and frees it. */
  async take(into: Float32Array): Promise<void> {
    if (into.length !== this.length) throw new Error(`gradient buffer has length ${into.length}, expected ${this.length}`);
    const sum = this.sum;
    this.sum = null;
    if (sum === null) {
      into.fill(0);
      return;
    }
    try {
      into.set(await sum.data());
    } finally {
      sum.dispose();
    }
  }

  /** Frees the sum without reading it (a step that failed). */
  dispose(): void {
    this.sum?.dispose();
    this.sum = null;
  }
}
