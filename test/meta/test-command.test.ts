/**
 * `npm test` must run every test file: a glob that stopped one level deep once skipped all of
 * test/data/transforms/ unnoticed. This expands the test command's file arguments with the shell npm
 * uses and compares them with every `*.test.ts` under test/.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = join(import.meta.dirname, '..', '..');

function testFilesOnDisk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return testFilesOnDisk(path);
    return entry.name.endsWith('.test.ts') ? [relative(root, path)] : [];
  });
}

/** The files the `test` script hands to `node --test`: its arguments after the flags, expanded by sh. */
function testFilesOfCommand(): string[] {
  const script: string = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts.test;
  const marker = '--test-concurrency=1 ';
  const at = script.indexOf(marker);
  assert.ok(at >= 0, `package.json's test script lacks "${marker.trim()}": ${script}`);
  const args = script.slice(at + marker.length);
  const expanded = execFileSync('sh', ['-c', `printf '%s\\n' ${args}`], { cwd: root, encoding: 'utf8' });
  return expanded
    .split('\n')
    .filter((line) => line !== '')
    .map((file) => relative(root, join(root, file)));
}

test('npm test runs every *.test.ts under test/, at any depth', () => {
  const onDisk = testFilesOnDisk(join(root, 'test')).sort();
  const run = new Set(testFilesOfCommand());
  const missed = onDisk.filter((file) => !run.has(file));
  assert.deepEqual(missed, [], `test files that npm test does not run: ${missed.join(', ')}`);
  assert.ok(onDisk.length > 0);
});
