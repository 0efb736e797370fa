// JSON reports (soup.json, sweep.json) written atomically: a temp file renamed over the old one, so
// a reader, or a sweep resumed after a crash, never sees half a file.
import { renameSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

export function writeJsonAtomic(path: string, value: unknown): void {
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  writeFileSync(temp, `${JSON.stringify(value, null, 2)}\n`);
  renameSync(temp, path);
}
