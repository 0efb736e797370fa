/**
 * One collective in flight: the last stage of the ring's receive path (socket, FrameParser,
 * DataReceiver, here). The DataReceiver lands each frame expected from the predecessor in `target`
 * and reports it; the frames of every hop but the last are then forwarded to the successor, read
 * straight from where they landed. The collective is done once every expected frame has landed
 * and every frame sent has been written (or the successor has finished and needs no more).
 */
import type { FrameHeader } from './frame.ts';
import type { ReceivePlan } from './receiver.ts';
import type { SendLink } from './send-link.ts';

/** What the receiver needs (`ReceivePlan`), and which received frames are forwarded. */
export type CollectivePlan = Omit<ReceivePlan, 'onFrame'> & {
  /** frames[i] is forwarded to the successor once landed when i < forwardedFrames (all hops but the last). */
  forwardedFrames: number;
  /**
   * The payload to send for a frame when it is not `target`'s bytes (bf16 on the wire: the frame's
   * float32 values rounded into a staging buffer that outlives the write); null: read from `target`.
   */
  encode: ((frame: FrameHeader) => Uint8Array) | null;
};

export class Collective implements ReceivePlan {
  readonly frames: FrameHeader[];
  readonly target: Uint8Array;
  readonly accumulate: Float32Array | null;
  readonly elementBytes: number;
  private readonly forwardedFrames: number;
  private readonly encode: ((frame: FrameHeader) => Uint8Array) | null;
  private received = 0;
  private writesPending = 0;
  /** The successor closed normally: it has everything it needs, nothing more is sent. */
  private successorFinished = false;

  constructor(
    plan: CollectivePlan,
    private readonly sendLink: SendLink,
    /** Called when the collective may be complete (see `done`); may be called again after. */
    private readonly onProgress: () => void,
    private readonly onSendError: (err: Error) => void,
  ) {
    this.frames = plan.frames;
    this.target = plan.target;
    this.accumulate = plan.accumulate;
    this.elementBytes = plan.elementBytes;
    this.forwardedFrames = plan.forwardedFrames;
    this.encode = plan.encode;
  }

  onFrame(index: number): void {
    this.received++;
    if (index < this.forwardedFrames) this.send(this.frames[index]!);
    this.onProgress();
  }

  /** Sends `frame`, its payload read from `target` (a frame covers offset × elementBytes onwards) or encoded. */
  send(frame: FrameHeader): void {
    if (this.successorFinished) return;
    this.writesPending++;
    const start = frame.offset * this.elementBytes;
    const payload = this.encode ? this.encode(frame) : this.target.subarray(start, start + frame.count * this.elementBytes);
    this.sendLink.sendData(frame, payload, (err) => {
      this.writesPending--;
      if (err && !this.successorFinished) this.onSendError(err);
      else this.onProgress();
    });
  }

  successorHasFinished(): void {
    this.successorFinished = true;
    this.onProgress();
  }

  /** Frames are still expected from the predecessor. */
  get missingFrames(): boolean {
    return this.received < this.frames.length;
  }

  get done(): boolean {
    return !this.missingFrames && (this.writesPending === 0 || this.successorFinished);
  }
}
