// Rendering deploy/k8s's kustomizations for the deployment tests: with `kubectl kustomize` where kubectl is
// installed, and always with a renderer of the subset of kustomize that deploy/k8s uses, which refuses anything
// else, so it cannot silently render a kustomization it does not understand. static.test.ts checks that both
// renderings agree where kubectl exists.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import yaml from 'js-yaml';

export type Obj = Record<string, any>;

export const K8S = fileURLToPath(new URL('../../deploy/k8s/', import.meta.url));
/** The overlays users apply. */
export const OVERLAYS = ['cpu', 'gpu'] as const;

const CLUSTER_SCOPED = new Set(['Namespace']);
const SUPPORTED_KEYS = ['apiVersion', 'kind', 'namespace', 'resources', 'replicas', 'patches'];

/** `--name=value` or `--name value` from an argument list. */
export function flag(args: string[], name: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === `--${name}`) return args[i + 1];
    if (args[i]!.startsWith(`--${name}=`)) return args[i]!.slice(name.length + 3);
  }
  return undefined;
}

/** One RFC 6902 operation (add, replace, remove) on `doc`, with JSON Pointer paths; `-` appends to an array. */
function applyJsonPatchOp(doc: Obj, op: Obj, where: string): void {
  assert.ok(['add', 'replace', 'remove'].includes(op.op), `${where}: the built-in renderer handles add, replace, remove; got ${op.op}`);
  const keys = (op.path as string)
    .split('/')
    .slice(1)
    .map((k) => k.replaceAll('~1', '/').replaceAll('~0', '~'));
  const last = keys.pop()!;
  let parent: any = doc;
  for (const k of keys) {
    parent = parent?.[Array.isArray(parent) ? Number(k) : k];
    assert.ok(parent !== undefined && parent !== null, `${where}: path ${op.path} does not exist`);
  }
  if (Array.isArray(parent)) {
    const index = last === '-' ? parent.length : Number(last);
    assert.ok(Number.isInteger(index) && index >= 0 && index <= parent.length, `${where}: bad index in ${op.path}`);
    if (op.op === 'add') parent.splice(index, 0, structuredClone(op.value));
    else {
      assert.ok(index < parent.length, `${where}: ${op.path} does not exist`);
      if (op.op === 'replace') parent[index] = structuredClone(op.value);
      else parent.splice(index, 1);
    }
  } else {
    assert.ok(op.op === 'add' || last in parent, `${where}: ${op.path} does not exist`);
    if (op.op === 'remove') delete parent[last];
    else parent[last] = structuredClone(op.value);
  }
}

/** Renders the kustomization in `dir` (namespace, resources as files or kustomization directories, replicas, inline JSON patches). */
export function renderSubset(dir: string): Obj[] {
  const k = yaml.load(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Obj;
  const unsupported = Object.keys(k).filter((key) => !SUPPORTED_KEYS.includes(key));
  assert.deepEqual(unsupported, [], `${dir}: the built-in renderer handles only ${SUPPORTED_KEYS.join(', ')}; use kubectl kustomize`);
  const objects = (k.resources as string[]).flatMap((entry) => {
    const path = join(dir, entry);
    if (existsSync(path) && statSync(path).isDirectory()) return renderSubset(path);
    return (yaml.loadAll(readFileSync(path, 'utf8')) as Obj[]).filter(Boolean);
  });
  for (const p of (k.patches ?? []) as Obj[]) {
    const targets = objects.filter((o) => o.kind === p.target?.kind && o.metadata.name === p.target?.name);
    assert.equal(targets.length, 1, `${dir}: patch target ${p.target?.kind}/${p.target?.name} matches ${targets.length} objects`);
    for (const op of yaml.load(p.patch) as Obj[]) applyJsonPatchOp(targets[0]!, op, `${dir}: patch of ${p.target.kind}/${p.target.name}`);
  }
  for (const r of (k.replicas ?? []) as Obj[]) {
    const targets = objects.filter((o) => o.metadata.name === r.name && o.spec?.replicas !== undefined);
    assert.equal(targets.length, 1, `${dir}: replicas of ${r.name} match ${targets.length} objects`);
    targets[0]!.spec.replicas = r.count;
  }
  if (k.namespace) for (const o of objects) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata = { ...o.metadata, namespace: k.namespace };
  return objects;
}

/** The objects `kubectl kustomize dir` renders, or why it cannot run here. */
export function renderKubectl(dir: string): Obj[] | string {
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 60_000 });
  if (r.error) return `kubectl is not installed (${(r.error as NodeJS.ErrnoException).code})`;
  assert.equal(r.status, 0, `kubectl kustomize ${dir} failed:\n${r.stderr}`);
  return (yaml.loadAll(r.stdout) as Obj[]).filter(Boolean);
}

export const byKindName = (a: Obj, b: Obj) => `${a.kind}/${a.metadata.name}`.localeCompare(`${b.kind}/${b.metadata.name}`);

/** The workloads (objects with a pod template). */
export const podsOf = (objects: Obj[]) => objects.filter((o) => ['Deployment', 'StatefulSet', 'Job'].includes(o.kind));

export const matches = (selector: Record<string, string>, labels: Record<string, string> = {}) =>
  Object.entries(selector).every(([key, value]) => labels[key] === value);
