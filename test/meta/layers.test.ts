/**
 * Rooms import only downward: the layer order is the "Layers:" line of docs/architecture.md, and
 * every relative import in src/ must go to its own room or to a room in a lower layer. A new room
 * must be placed in that line before it can import anything.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';

const root = join(import.meta.dirname, '..', '..');
const src = join(root, 'src');

/** Each room's layer, lowest 0, from a line such as "Layers: common < comm, data < train". */
function parseLayers(line: string): Map<string, number> {
  const layers = new Map<string, number>();
  line
    .replace(/^Layers:/, '')
    .split('<')
    .forEach((group, layer) => {
      for (const room of group.split(',')) layers.set(room.trim(), layer);
    });
  return layers;
}

interface Import {
  file: string;
  line: number;
  specifier: string;
}

/** The relative module specifiers of `import ... from`, `export ... from`, `import '...'` and `import('...')`. */
function relativeImports(file: string, text: string): Import[] {
  const found: Import[] = [];
  const pattern =
    /^\s*(?:import|export)\b[^;]*?\bfrom\s*['"](\.[^'"]+)['"]|^\s*import\s*['"](\.[^'"]+)['"]|\bimport\(\s*['"](\.[^'"]+)['"]\s*\)/gm;
  for (const match of text.matchAll(pattern)) {
    const specifier = match[1] ?? match[2] ?? match[3]!;
    const line = text.slice(0, match.index + match[0].length).split('\n').length;
    found.push({ file, line, specifier });
  }
  return found;
}

/** The imports that go up or sideways, each described with its file, line and target. */
function arrowsUp(imports: Import[], layers: Map<string, number>): string[] {
  const problems: string[] = [];
  for (const { file, line, specifier } of imports) {
    const from = file.split('/')[1]!;
    const to = relative(root, join(root, dirname(file), specifier)).split('/')[1]!;
    if (from === to) continue;
    const fromLayer = layers.get(from);
    const toLayer = layers.get(to);
    if (fromLayer === undefined || toLayer === undefined) {
      problems.push(
        `${file}:${line} imports '${specifier}': room "${fromLayer === undefined ? from : to}" is not in the layer order of docs/architecture.md`,
      );
    } else if (toLayer >= fromLayer) {
      problems.push(
        `${file}:${line} imports '${specifier}': ${from} (layer ${fromLayer}) may not import ${to} (layer ${toLayer}) ${toLayer === fromLayer ? 'sideways' : 'upward'}`,
      );
    }
  }
  return problems;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return /\.(ts|mjs)$/.test(entry.name) ? [relative(root, path)] : [];
  });
}

function layersOfDoc(): Map<string, number> {
  const line = readFileSync(join(root, 'docs', 'architecture.md'), 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Layers:'));
  assert.ok(line, 'docs/architecture.md has no "Layers:" line');
  return parseLayers(line);
}

test('every room of src/ has a layer in docs/architecture.md', () => {
  const layers = layersOfDoc();
  const rooms = readdirSync(src, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => e.name);
  assert.deepEqual(
    rooms.filter((room) => !layers.has(room)),
    [],
  );
});

test('no import in src/ goes up or sideways', () => {
  const layers = layersOfDoc();
  const imports = sourceFiles(src).flatMap((file) => relativeImports(file, readFileSync(join(root, file), 'utf8')));
  assert.ok(imports.length > 100, `found only ${imports.length} imports: the parser lost them`);
  assert.deepEqual(arrowsUp(imports, layers), []);
});

test('the check names the file, line and import of an arrow up or sideways', () => {
  const layers = parseLayers('Layers: common < comm, data < model < cli');
  const text =
    "import { x } from './x.ts';\nimport type {\n  Logger,\n} from '../cli/logging.ts';\nexport { y } from '../data/y.ts';\nconst m = await import('../common/z.ts');\n";
  const imports = relativeImports('src/comm/a.ts', text);
  assert.deepEqual(
    imports.map((i) => i.specifier),
    ['./x.ts', '../cli/logging.ts', '../data/y.ts', '../common/z.ts'],
  );
  assert.deepEqual(arrowsUp(imports, layers), [
    "src/comm/a.ts:4 imports '../cli/logging.ts': comm (layer 1) may not import cli (layer 3) upward",
    "src/comm/a.ts:5 imports '../data/y.ts': comm (layer 1) may not import data (layer 1) sideways",
  ]);
});
