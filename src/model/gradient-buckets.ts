// Gradient buckets for overlapping the ring with the backward pass, as DDP does: the flat gradient
// cut into contiguous buckets from the head down to the patch embedding (the order in which the
// backward pass finishes them). On a step's last micro-batch the backward pass records each
// parameter's gradient into a BucketSink; once every parameter of a bucket is there, the bucket
// (the step's sum so far plus this gradient, the same float32 addition as DeviceGradientSum.add)
// is read to the host and handed over, while the backward pass goes on with the layers below.
import * as tf from '@tensorflow/tfjs-core';
import type { ParamSpec } from './model.ts';

export interface GradientBucket {
  /** Elements [start, end) of the flat gradient. */
  start: number;
  end: number;
  /** Its parameters, in flat order. */
  params: ParamSpec[];
}

/**
 * Buckets of whole parameters of about `bucketElements` elements each (a parameter larger than
 * that is a bucket of its own), from the last parameter of the flat layout (the head) down to the
 * first, so that they fill in the order the backward pass produces gradients.
 */
export function planGradientBuckets(params: readonly ParamSpec[], bucketElements: number): GradientBucket[] {
  if (!Number.isSafeInteger(bucketElements) || bucketElements < 1)
    throw new RangeError(`bucketElements must be a positive integer, got ${bucketElements}`);
  const buckets: GradientBucket[] = [];
  let current: ParamSpec[] = [];
  let size = 0;
  const close = () => {
    const first = current[current.length - 1]!;
    const last = current[0]!;
    buckets.push({ start: first.offset, end: last.offset + last.size, params: current.reverse() });
    current = [];
    size = 0;
  };
  for (let i = params.length - 1; i >= 0; i--) {
    current.push(params[i]!);
    size += params[i]!.size;
    if (size >= bucketElements) close();
  }
  if (current.length > 0) close();
  return buckets;
}

/** Told when each bucket has landed in the host buffer, or could not be read. */
export interface BucketReceiver {
  bucketReady(index: number): void;
  bucketFailed(index: number, err: Error): void;
}

/**
 * Where the last micro-batch's backward pass records its parameters' gradients (it is the Map the
 * pass collects them in). Each finished bucket is written into `host` at its place and reported
 * to the receiver: synchronously, from inside the backward pass, on backends that can read
 * synchronously, so the ring can take it at once; after an asynchronous read on 'webgpu'.
 */
export class BucketSink extends Map<string, tf.Tensor> {
  private readonly bucketOf = new Map<string, number>();
  private readonly missing: number[];
  private readonly handedOff: boolean[];
  private remaining: number;

  constructor(
    private readonly buckets: readonly GradientBucket[],
    /** The step's gradient sum over the earlier micro-batches (kept by its owner), or null for none. */
    private readonly previousSum: tf.Tensor1D | null,
    private readonly host: Float32Array,
    private readonly receiver: BucketReceiver,
  ) {
    super();
    buckets.forEach((bucket, i) => {
      for (const spec of bucket.params) this.bucketOf.set(spec.name, i);
    });
    this.missing = buckets.map((bucket) => bucket.params.length);
    this.handedOff = buckets.map(() => false);
    this.remaining = buckets.length;
  }

  /** Every bucket has been handed over: the pass need not build a flat gradient. */
  get complete(): boolean {
    return this.remaining === 0;
  }

  override set(name: string, grad: tf.Tensor): this {
    const seen = this.has(name);
    super.set(name, grad);
    const index = this.bucketOf.get(name);
    if (!seen && index !== undefined && --this.missing[index]! === 0) {
      this.handOff(index, () => {
        const parts = this.buckets[index]!.params.map((spec) => tf.reshape(this.get(spec.name)!, [spec.size]));
        return parts.length === 1 ? parts[0]! : tf.concat(parts);
      });
    }
    return this;
  }

  /**
   * Hands over, from slices of the backward pass's flat gradient, the buckets whose gradients were
   * not all recorded here (a model whose backward pass has no hook hands over everything here).
   */
  finish(flat: tf.Tensor1D): void {
    for (const [index, bucket] of this.buckets.entries()) {
      if (!this.handedOff[index]) tf.tidy(() => this.handOff(index, () => tf.slice(flat, bucket.start, bucket.end - bucket.start)));
    }
  }

  /** Reads the bucket `values()` (plus the earlier micro-batches' sum) into the host buffer. Runs in the caller's tidy scope. */
  private handOff(index: number, values: () => tf.Tensor): void {
    this.handedOff[index] = true;
    this.remaining--;
    const { start, end } = this.buckets[index]!;
    const receiver = this.receiver;
    try {
      let sum = values();
      if (this.previousSum) sum = tf.add(tf.slice(this.previousSum, start, end - start), sum);
      if (tf.getBackend() !== 'webgpu') {
        this.host.set(sum.dataSync(), start);
        receiver.bucketReady(index);
        return;
      }
      const kept = tf.keep(sum);
      kept.data().then(
        (data) => {
          kept.dispose();
          this.host.set(data as Float32Array, start);
          receiver.bucketReady(index);
        },
        (err: Error) => {
          kept.dispose();
          receiver.bucketFailed(index, err);
        },
      );
    } catch (err) {
      receiver.bucketFailed(index, err as Error);
      throw err;
    }
  }
}
