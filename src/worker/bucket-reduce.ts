// The overlapped step's reduce-scatter: the gradient's buckets go into the ring one at a time, in
// the plan's order, each as soon as the backward pass has handed it over (gradient-buckets.ts).
// A bucket handed over from inside the backward pass starts its collective there and then: its
// first chunks are written to the socket before the pass goes on.
import type { RingPeer } from '../comm/ring.ts';
import type { WireFormat } from '../common/wire.ts';
import type { BucketReceiver, GradientBucket } from '../model/gradient-buckets.ts';

export class BucketedReduceScatter implements BucketReceiver {
  /** Settles once every bucket has been reduce-scattered, or with the first failure. */
  readonly done: Promise<void>;
  private settle!: (err?: Error) => void;
  private readonly handedOver: boolean[];
  private next = 0;
  private running = false;
  private failure: Error | null = null;

  constructor(
    private readonly ring: RingPeer,
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
    this.startNext();
  }

  bucketReady(index: number): void {
    this.handedOver[index] = true;
    this.startNext();
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

  private startNext(): void {
    if (this.running || this.failure) return;
    if (this.next === this.buckets.length) {
      this.settle();
      return;
    }
    if (!this.handedOver[this.next]) return;
    const { start, end } = this.buckets[this.next++]!;
    this.running = true;
    this.ring.reduceScatter(this.grad, this.step, { range: { start, end }, wire: this.wire }).then(
      () => {
        this.running = false;
        this.startNext();
      },
      (err: Error) => this.abandon(err),
    );
  }
}
