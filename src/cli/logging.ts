// Logs: pino JSON lines in a file (OUT/logs/NAME.log) for machines, and, separately, the progress
// printer's readable lines on stdout for people.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Logger } from '../common/logger.ts';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/**
 * A logger writing synchronously (so a crash loses no line) to `dir/name.log`, or to stderr when
 * no directory is given (a worker on another host without the run directory).
 */
export function createLogger(name: string, dir: string | null, level: LogLevel = 'info'): Logger {
  if (dir === null) return pino({ name, level }, pino.destination({ dest: 2, sync: true }));
  mkdirSync(dir, { recursive: true });
  return pino({ name, level }, pino.destination({ dest: join(dir, `${name}.log`), sync: true }));
}
