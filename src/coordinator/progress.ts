// Readable progress for people on stdout: step, loss, learning rate, throughput and ETA, at most
// one line every PRINT_INTERVAL_MS, plus every evaluation.
import type { EvalRecord, StepRecord } from './metrics.ts';

const PRINT_INTERVAL_MS = 2000;

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(s % 60).padStart(2, '0')}s`;
}

export class ProgressPrinter {
  private lastPrint = 0;
  private startedAt = performance.now();
  private totalSteps = 0;
  private startStep = 0;

  constructor(private readonly enabled: boolean) {}

  /** Starts (or, after a restart, restarts) the ETA's clock at `startStep` of `totalSteps`. */
  begin(totalSteps: number, startStep: number): void {
    this.totalSteps = totalSteps;
    this.startStep = startStep;
    this.startedAt = performance.now();
  }

  note(text: string): void {
    if (this.enabled) console.log(text);
  }

  step(record: StepRecord): void {
    const now = performance.now();
    if (!this.enabled || (now - this.lastPrint < PRINT_INTERVAL_MS && record.step !== this.totalSteps)) return;
    this.lastPrint = now;
    const done = record.step - this.startStep;
    const eta = ((now - this.startedAt) / 1000 / done) * (this.totalSteps - record.step);
    const width = String(this.totalSteps).length;
    console.log(
      `step ${String(record.step).padStart(width)}/${this.totalSteps} | epoch ${record.epoch} | loss ${record.loss.toFixed(4)} | ` +
        (record.distillationLoss === undefined ? '' : `distillation loss ${record.distillationLoss.toFixed(4)} | `) +
        `acc ${(record.accuracy * 100).toFixed(1)}% | lr ${record.lr.toExponential(2)} | ${Math.round(record.imagesPerSec)} img/s | ETA ${formatDuration(eta)}`,
    );
  }

  evaluation(record: EvalRecord): void {
    if (!this.enabled) return;
    const percent = (accuracy: number) => `${(accuracy * 100).toFixed(2)}%`;
    const { testAccuracyClassHead: cls, testAccuracyDistHead: dist } = record;
    // A distilled model's testAccuracy is the joint classifier's; each head's follows.
    const accuracy =
      cls === undefined || dist === undefined
        ? percent(record.testAccuracy)
        : `joint ${percent(record.testAccuracy)}, class head ${percent(cls)}, distillation head ${percent(dist)}`;
    console.log(
      `eval after step ${record.step} (epoch ${record.epoch}): test accuracy ${accuracy}, test loss ${record.testLoss.toFixed(4)}`,
    );
  }
}
