// A step's gradient summed over its micro-batches where the model's tensors live (GPU memory on a
// GPU worker), brought to the host once. Owned by one step: a step abandoned half-way (a ring
// restart) keeps its partial sum to itself instead of leaking it into the next one.
//
// On the step's last micro-batch the sum can instead be handed over bucket by bucket as the
// backward pass finishes them (handOffBuckets, gradient-buckets.ts), for the ring to overlap it.
import * as tf from '@tensorflow/tfjs-core';
import { type BucketReceiver, BucketSink, type GradientBucket } from './gradient-buckets.ts';

export class DeviceGradientSum {
  private sum: tf.Tensor1D | null = null;
  /** Set for the last micro-batch when its buckets are handed over instead of added. */
  private handingOff: BucketSink | null = null;

  constructor(readonly length: number) {}

  /**
   * The next gradient (the step's last) is not added: each bucket of (sum + that gradient) is
   * written into `host` at its place as the backward pass finishes it, and `receiver` is told.
   * The backward pass records into `sink`.
   */
  handOffBuckets(buckets: readonly GradientBucket[], host: Float32Array, receiver: BucketReceiver): void {
    if (host.length !== this.length) throw new Error(`gradient buffer has length ${host.length}, expected ${this.length}`);
    this.handingOff = new BucketSink(buckets, this.sum, host, receiver);
  }

  /** Where the backward pass records per-parameter gradients while buckets are handed over; null otherwise. */
  get sink(): BucketSink | null {
    return this.handingOff;
  }

  /** Adds `grad` into the sum (or, when handing off, hands over what is left of it); takes ownership of `grad`. */
  add(grad: tf.Tensor1D): void {
    const sink = this.handingOff;
    if (sink?.complete) {
      grad.dispose();
      this.handedOver();
      return;
    }
    if (grad.size !== this.length) {
      grad.dispose();
      throw new Error(`gradient has ${grad.size} values, the sum ${this.length}`);
    }
    if (sink) {
      try {
        sink.finish(grad);
      } finally {
        grad.dispose();
        this.handedOver();
      }
      return;
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

  /** The last gradient's buckets are all out: the sum is spent. */
  private handedOver(): void {
    this.handingOff = null;
    this.dispose();
  }

  /** Frees the sum without reading it (a step that failed). */
  dispose(): void {
    this.sum?.dispose();
    this.sum = null;
  }
}
