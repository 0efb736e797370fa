// Building a model's parameter table: each tensor gets the next stretch of the one flat buffer, and
// its PyTorch shape follows from the internal one by the permutation an exporter applies.
import type { ParamSpec } from './model.ts';

export class ParamTable {
  readonly specs: ParamSpec[] = [];
  private offset = 0;

  add(name: string, shape: number[], init: ParamSpec['init'], timmPerm: number[] | null = null): void {
    const size = shape.reduce((a, b) => a * b, 1);
    const timmShape = timmPerm === null ? shape : timmPerm.map((axis) => shape[axis]!);
    this.specs.push({ name, shape, offset: this.offset, size, init, timmShape, timmPerm });
    this.offset += size;
  }
}
