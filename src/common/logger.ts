// The logger every room writes to; src/cli/logging.ts makes one (pino JSON lines in a file).
import type { pino } from 'pino';

export type Logger = pino.Logger;
