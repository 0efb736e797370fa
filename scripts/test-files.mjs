// Prints every test file under test/, at any depth, one per line, for `npm test`: Node 20's `--test`
// takes explicit files and sh has no `**`, so a glob such as test/*/*.test.ts silently skips nested folders.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

const files = readdirSync('test', { recursive: true, withFileTypes: true })
  .filter((entry) => entry.isFile() && entry.name.endsWith('.test.ts'))
  .map((entry) => join(entry.parentPath ?? entry.path, entry.name))
  .sort();
process.stdout.write(`${files.join('\n')}\n`);
