// The overlapped step's reduce-scatter: the gradient's buckets go into the ring in the plan's
// order, each as soon as the backward pass has handed it over (gradient-buckets.ts). The ring
// thread (comm/ring-thread.ts) runs them one after another and moves their data while the pass
// goes on: a bucket is requested without waiting for the one before it to settle, since the
// main thread, busy in the pass, would hear of that only once the pass is over.
import type { GradientRing } from '../comm/ring-thread.ts';
import type { WireFormat } from '../common/wire.ts';
import type { BucketReceiver, GradientBucket } from '../model/gradient-buckets.ts';

export class BucketedReduceScatter implements BucketReceiver {
  /** Settles once every bucket has been reduce-scattered, or with the first failure. */
  readonly done: Promise<void>;
  private settle!: (err?: Error) => void;
  private readonly handedOver: boolean[];
  private next = 0;
  private readonly requested: Promise<void>[] = [];
  private failure: Error | null = null;

  constructor(
    private readonly ring: GradientRing,
    private readonly grad: Float32Array,
    private readonly step: number,
    private readonly buckets: readonly GradientBucket[],
    private readonly wire: WireFormat,
  ) {
    this.handedOver = buckets.map(() => false);
    this.done = new Promise<void>((resolve, reject) => {
      this.settle = (err) => (err ? reject(err) : resolve());
    });
    // Awaited by the step once its compute is over; a failure before then must not be unhandled.
    this.done.catch(() => {});
    this.requestReady();
  }

  bucketReady(index: number): void {
    this.handedOver[index] = true;
    this.requestReady();
  }

  bucketFailed(_index: number, err: Error): void {
    this.abandon(err);
  }

  /** The step failed before every bucket was handed over: settle with its error. */
  abandon(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.settle(err);
  }

  /** Requests every bucket handed over whose predecessors in the plan have all been requested. */
  private requestReady(): void {
    while (!this.failure && this.next < this.buckets.length && this.handedOver[this.next]) {
      const { start, end } = this.buckets[this.next++]!;
      const reduced = this.ring.reduceScatter(this.grad, this.step, { range: { start, end }, wire: this.wire });
      reduced.catch((err: Error) => this.abandon(err));
      this.requested.push(reduced);
    }
    if (this.next === this.buckets.length)
      Promise.all(this.requested).then(
        () => this.settle(),
        () => {},
      );
  }
}
