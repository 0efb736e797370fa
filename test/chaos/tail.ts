// Reads the lines a process appends to a file, as they come, for the chaos runner's live view of
// metrics.jsonl and the JSON logs. A file that shrank (metrics.jsonl is rewritten when a run
// restarts from a checkpoint) is read again from its start.
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';

export class LineTail {
  private offset = 0;
  private partial = '';

  constructor(private readonly path: string) {}

  /** The complete lines appended since the last call, each parsed as JSON. */
  poll(): Record<string, unknown>[] {
    if (!existsSync(this.path)) return [];
    const size = statSync(this.path).size;
    if (size < this.offset) {
      this.offset = 0;
      this.partial = '';
    }
    if (size === this.offset) return [];
    const buffer = Buffer.alloc(size - this.offset);
    const fd = openSync(this.path, 'r');
    try {
      readSync(fd, buffer, 0, buffer.length, this.offset);
    } finally {
      closeSync(fd);
    }
    this.offset = size;
    const lines = (this.partial + buffer.toString('utf8')).split('\n');
    this.partial = lines.pop()!;
    return lines.filter((line) => line.trim() !== '').map((line) => JSON.parse(line) as Record<string, unknown>);
  }
}
