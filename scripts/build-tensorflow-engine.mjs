#!/usr/bin/env node
// Makes @tensorflow/tfjs-node usable without its own install step, which downloads libtensorflow
// and a prebuilt addon from a host that machines without internet cannot reach (package.json's
// allowScripts denies that step, so `npm ci` never tries it). Run by the root package's postinstall,
// or by hand: `node scripts/build-tensorflow-engine.mjs`.
//
// 1. If tfjs-node already passes the smoke test (built before, or installed normally on a machine
//    with internet), nothing to do.
// 2. Otherwise build its binding from source against TensorFlow's C libraries and headers, taken
//    from the tensorflow-cpu wheel that pip serves (the local wheel index here, PyPI elsewhere).
//    They are unpacked into tfjs-node's own deps/ folder, where its normal install puts
//    libtensorflow and where the addon's rpath ($ORIGIN/../../deps/lib) looks: node_modules stays
//    self-contained, `rm -rf node_modules` removes it all, and no cache outside the checkout can go
//    stale. The price is a fresh unpack after each `npm ci`, which wipes node_modules anyway.
// 3. Smoke test in a child process (a matMul and a gradient), so a crashing addon is contained.
// 4. Compile the project's fused kernels (src/model/native/fused_ops.cc: LayerNorm, GELU and the
//    attention softmax, forward and backward) against the same libraries and headers, into
//    tfjs-node's folder, and smoke-test them the same way. They are optional: if they cannot be
//    built (no C++ compiler, no Node headers), the engine runs without them, saying so.
//
// The outcome is written to tfjs-node's folder (vit-dist-engine.json), which src/model/backend.ts
// reads: an engine that failed here is never loaded by a worker. Any failure prints what failed and
// exits 0, so `npm ci` still succeeds and workers fall back to WebAssembly, saying why.
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  readdirSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';

const TENSORFLOW_WHEEL = 'tensorflow-cpu==2.21.0';
/** The one folder of headers that the C kernel API (tensorflow/c/kernels.h) adds to the C API's. */
const KERNEL_API_HEADERS = 'tensorflow/include/tensorflow/core/common_runtime/next_pluggable_device/c/';
const WHEEL_PYTHON = '3.11';
/** Only the two libraries and the C API's header closure are needed (853 MB of the wheel's 1.27 GB). */
const WHEEL_MEMBERS = [
  'tensorflow/libtensorflow_cc.so.2',
  'tensorflow/libtensorflow_framework.so.2',
  'tensorflow/include/tensorflow/c/',
  'tensorflow/include/tensorflow/core/platform/',
  'tensorflow/include/tsl/platform/',
  'tensorflow/include/xla/tsl/c/',
  KERNEL_API_HEADERS,
];
const STATUS_FILE = 'vit-dist-engine.json';
const FUSED_KERNELS_SOURCE = 'src/model/native/fused_ops.cc';
const FUSED_KERNELS_MODULE = 'vit-dist-fused-ops.node';
const SMOKE_TIMEOUT_MS = 120_000;

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
const started = Date.now();
const say = (line) => console.log(`vit-dist engine: ${line}`);

class StepError extends Error {
  constructor(step, detail) {
    super(`${step}: ${detail}`);
  }
}

/** Runs a command, returning its stdout; throws a StepError with the tail of its output on failure. */
function runStep(step, command, args, options = {}) {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...options });
  if (result.error) throw new StepError(step, `${command} could not run (${result.error.message})`);
  if (result.status !== 0) {
    const tail = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim().split('\n').slice(-12).join('\n');
    throw new StepError(step, `${command} exited with ${result.status ?? result.signal}:\n${tail}`);
  }
  return result.stdout;
}

const SMOKE_TEST = `
const tf = require('@tensorflow/tfjs-node');
if (tf.getBackend() !== 'tensorflow') throw new Error('backend is ' + tf.getBackend());
const product = tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5, 6], [7, 8]])).arraySync().flat();
const grad = tf.grad((x) => tf.sum(tf.square(x)))(tf.tensor1d([1, -2, 3])).arraySync();
if (product.join() !== '19,22,43,50') throw new Error('matMul gave ' + product);
if (grad.join() !== '2,-4,6') throw new Error('gradient gave ' + grad);
console.log(JSON.stringify({ tensorflow: tf.backend().binding.TF_Version }));
`;

/** Loads tfjs-node in a child process and checks a matMul and a gradient; returns TF's version. */
function smokeTest() {
  const env = { ...process.env, TF_CPP_MIN_LOG_LEVEL: process.env.TF_CPP_MIN_LOG_LEVEL ?? '2' };
  const out = runStep('smoke test (a matMul and a gradient on tfjs-node)', process.execPath, ['-e', SMOKE_TEST], {
    cwd: root,
    env,
    timeout: SMOKE_TIMEOUT_MS,
  });
  return JSON.parse(out.trim().split('\n').at(-1)).tensorflow;
}

/** Written beside and renamed over: a node_modules hard-linked from another checkout keeps its own record. */
function writeStatus(packageDir, status) {
  const file = join(packageDir, STATUS_FILE);
  writeFileSync(`${file}.partial`, `${JSON.stringify({ ...status, checkedAt: new Date().toISOString() }, null, 2)}\n`);
  renameSync(`${file}.partial`, file);
}

function duSync(path) {
  let bytes = 0;
  for (const entry of readdirSync(path, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) bytes += statSync(join(entry.parentPath, entry.name)).size;
  }
  return bytes;
}

/** pip download of the wheel into a scratch folder; unpacks `members` of it into `dest`. */
function unpackFromWheel(members, dest) {
  const scratch = mkdtempSync(join(tmpdir(), 'vit-dist-tensorflow-'));
  try {
    // Only the C libraries are used, and they are the same in every Python version's wheel: ask
    // for one fixed version, so whichever python3 runs pip finds it.
    const pip = [
      '-m',
      'pip',
      'download',
      '--no-deps',
      '--only-binary=:all:',
      '--python-version',
      WHEEL_PYTHON,
      '--retries',
      '0',
      '--timeout',
      '2',
      '--disable-pip-version-check',
    ];
    runStep(`pip download ${TENSORFLOW_WHEEL}`, 'python3', [...pip, TENSORFLOW_WHEEL, '-d', scratch]);
    const wheel = readdirSync(scratch).find((f) => f.endsWith('.whl'));
    if (!wheel) throw new StepError(`pip download ${TENSORFLOW_WHEEL}`, `no wheel in ${scratch}`);
    const extract =
      'import sys, zipfile\nwheel, dest, *members = sys.argv[1:]\nwith zipfile.ZipFile(wheel) as z:\n    for name in z.namelist():\n        if any(name == m or (m.endswith("/") and name.startswith(m)) for m in members): z.extract(name, dest)\n';
    runStep('unpack the wheel', 'python3', ['-c', extract, join(scratch, wheel), dest, ...members]);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** pip download + selective unpack into a fresh deps/ laid out as tfjs-node's binding.gyp expects. */
function unpackWheel(packageDir) {
  const depsDir = join(packageDir, 'deps');
  const staged = join(packageDir, 'deps.partial');
  rmSync(staged, { recursive: true, force: true });
  unpackFromWheel(WHEEL_MEMBERS, staged);
  const lib = join(staged, 'lib');
  mkdirSync(lib);
  for (const so of ['libtensorflow_cc.so.2', 'libtensorflow_framework.so.2']) renameSync(join(staged, 'tensorflow', so), join(lib, so));
  renameSync(join(staged, 'tensorflow', 'include'), join(staged, 'include'));
  rmSync(join(staged, 'tensorflow'), { recursive: true });
  // The names binding.gyp links against (-ltensorflow -ltensorflow_framework); at run time the
  // addon asks for the libraries' own sonames, which are the real files.
  symlinkSync('libtensorflow_cc.so.2', join(lib, 'libtensorflow.so'));
  symlinkSync('libtensorflow_framework.so.2', join(lib, 'libtensorflow_framework.so'));
  writeFileSync(join(staged, 'SOURCE'), `${TENSORFLOW_WHEEL}\n`);
  rmSync(depsDir, { recursive: true, force: true });
  renameSync(staged, depsDir);
}

/** node-pre-gyp compiles the binding for this Node's N-API version into lib/napi-vN/. */
function compileBinding(packageDir) {
  const requireFromPackage = createRequire(join(packageDir, 'package.json'));
  const nodePreGyp = requireFromPackage.resolve('@mapbox/node-pre-gyp/bin/node-pre-gyp');
  const args = [nodePreGyp, 'install', '--build-from-source'];
  // node-gyp downloads Node's headers unless told where they are; use the installed ones when the
  // environment (npm's nodedir setting) does not already say.
  const prefix = resolve(dirname(process.execPath), '..');
  if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
  runStep('compile the tfjs-node binding (node-pre-gyp, needs make and a C++ compiler)', process.execPath, args, { cwd: packageDir });
  rmSync(join(packageDir, 'build'), { recursive: true, force: true });
}

const FUSED_SMOKE_TEST = `
const tf = require('@tensorflow/tfjs-node');
const ops = require(process.argv[1]);
if (ops.failure !== '') throw new Error(ops.failure);
const backend = tf.backend();
const b = backend.binding;
const x = tf.tensor2d([[1, 2, 3, 6]]);
const ids = backend.getInputTensorIds([x, tf.ones([4]), tf.zeros([4])]);
const [y] = b.executeOp('VitLayerNorm', [{ name: 'eps', type: b.TF_ATTR_FLOAT, value: 0 }], ids, 3).map((m) => backend.createOutputTensor(m));
const expected = [-1.069045, -0.5345225, 0, 1.6035675]; // (x - 3) / sqrt(3.5)
const got = y.dataSync();
if (expected.some((e, i) => Math.abs(got[i] - e) > 1e-6)) throw new Error('VitLayerNorm gave ' + Array.from(got));
console.log(JSON.stringify({ ops: ops.ops }));
`;

/** Where Node's own headers are (node_api.h), or null. */
function nodeIncludeDir() {
  for (const prefix of [process.env.npm_config_nodedir, resolve(dirname(process.execPath), '..')]) {
    if (prefix && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) return join(prefix, 'include', 'node');
  }
  return null;
}

/**
 * Compiles src/model/native/fused_ops.cc into tfjs-node's folder and smoke-tests it in a child
 * process; returns what src/model/tensorflow-ops.ts's loadFusedKernels reads (ok, file, the
 * source's SHA-256), or why it failed. Skips the work when the recorded build is of this source
 * and compile command.
 */
function buildFusedKernels(packageDir, previous) {
  const sourceFile = join(root, FUSED_KERNELS_SOURCE);
  const file = join(packageDir, FUSED_KERNELS_MODULE);
  const sourceSha256 = createHash('sha256').update(readFileSync(sourceFile)).digest('hex');
  const kernelsStarted = Date.now();
  try {
    const depsDir = join(packageDir, 'deps');
    // A deps/ unpacked before the kernels existed lacks the C kernel API's one extra header folder.
    if (!existsSync(join(depsDir, 'include', KERNEL_API_HEADERS.slice('tensorflow/include/'.length)))) {
      say('fetching the C kernel API headers from the wheel ...');
      const staged = join(packageDir, 'headers.partial');
      rmSync(staged, { recursive: true, force: true });
      unpackFromWheel([KERNEL_API_HEADERS], staged);
      const folder = KERNEL_API_HEADERS.slice('tensorflow/include/'.length);
      mkdirSync(dirname(join(depsDir, 'include', folder)), { recursive: true });
      renameSync(join(staged, KERNEL_API_HEADERS), join(depsDir, 'include', folder));
      rmSync(staged, { recursive: true, force: true });
    }
    const nodeInclude = nodeIncludeDir();
    if (nodeInclude === null)
      throw new StepError('find Node headers', 'no include/node/node_api.h beside this Node (set npm_config_nodedir)');
    // AVX2 and FMA where the CPU has them (x86-64-v3), not -march=native: node_modules may be copied
    // to a machine of another CPU generation. No FMA contraction, so each kernel rounds where the op
    // composition it replaces does (y = xHat weight + bias as a Mul then a BiasAdd). No errno and no
    // trapping float exceptions (neither changes a result): without them GCC keeps floor() and the
    // clamps of the exp and erf polynomials scalar, and GELU runs several times slower.
    const cpuFlags = existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'utf8') : '';
    const arch = process.arch === 'x64' && /\bavx2\b/.test(cpuFlags) && /\bfma\b/.test(cpuFlags) ? ['-march=x86-64-v3'] : [];
    const partial = `${file}.partial`;
    const compiler = process.env.CXX ?? 'c++';
    const flags = [
      '-std=c++17',
      '-O3',
      ...arch,
      '-ffp-contract=off',
      '-fno-math-errno',
      '-fno-trapping-math',
      '-fPIC',
      '-shared',
      '-fvisibility=hidden',
      `-I${join(depsDir, 'include')}`,
      `-I${nodeInclude}`,
      sourceFile,
      '-o',
      partial,
      `-L${join(depsDir, 'lib')}`,
      '-l:libtensorflow_framework.so.2',
      '-Wl,-rpath,$ORIGIN/deps/lib',
    ];
    const command = [compiler, ...flags].join(' ');
    if (previous?.ok && previous.sourceSha256 === sourceSha256 && previous.command === command && existsSync(file)) return previous;
    runStep('compile the fused kernels (needs a C++17 compiler)', compiler, flags);
    renameSync(partial, file);
    const env = { ...process.env, TF_CPP_MIN_LOG_LEVEL: process.env.TF_CPP_MIN_LOG_LEVEL ?? '2' };
    runStep('smoke test of the fused kernels (VitLayerNorm)', process.execPath, ['-e', FUSED_SMOKE_TEST, file], {
      cwd: root,
      env,
      timeout: SMOKE_TIMEOUT_MS,
    });
    say(`fused kernels compiled and checked in ${((Date.now() - kernelsStarted) / 1000).toFixed(1)} s (${file}).`);
    return { ok: true, file, sourceSha256, command };
  } catch (err) {
    const failure = err instanceof StepError ? err.message : String(err?.stack ?? err);
    say(`the fused kernels are NOT available (${failure}); the TensorFlow engine runs without them (slower on small models).`);
    return { ok: false, failure };
  }
}

function readStatus(packageDir) {
  const file = join(packageDir, STATUS_FILE);
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
}

function main() {
  let packageDir;
  try {
    packageDir = dirname(createRequire(join(root, 'package.json')).resolve('@tensorflow/tfjs-node/package.json'));
  } catch {
    say('@tensorflow/tfjs-node is not installed; workers will use the WebAssembly backend.');
    return;
  }
  try {
    const version = smokeTest();
    const source = join(packageDir, 'deps', 'SOURCE');
    const fromWheel = existsSync(source);
    writeStatus(packageDir, {
      ok: true,
      tensorflow: version,
      source: fromWheel ? readFileSync(source, 'utf8').trim() : "tfjs-node's own install",
      // Only against the wheel's libraries: tfjs-node's own install is TensorFlow 2.9's, which the kernels are not built for.
      ...(fromWheel && { fusedKernels: buildFusedKernels(packageDir, readStatus(packageDir)?.fusedKernels) }),
    });
    say(`TensorFlow ${version} loads and passes the smoke test (${((Date.now() - started) / 1000).toFixed(1)} s).`);
    return;
  } catch {
    // Not built yet (or broken): build it below.
  }
  try {
    const source = join(packageDir, 'deps', 'SOURCE');
    const unpacked = existsSync(source) && readFileSync(source, 'utf8').trim() === TENSORFLOW_WHEEL;
    if (!unpacked) {
      say(`building the TensorFlow engine: unpacking ${TENSORFLOW_WHEEL} into ${join(packageDir, 'deps')} ...`);
      unpackWheel(packageDir);
    }
    say('compiling the tfjs-node binding against it ...');
    compileBinding(packageDir);
    const version = smokeTest();
    const fusedKernels = buildFusedKernels(packageDir, null);
    writeStatus(packageDir, { ok: true, tensorflow: version, source: TENSORFLOW_WHEEL, fusedKernels });
    const megabytes = (duSync(join(packageDir, 'deps')) / 2 ** 20).toFixed(0);
    say(
      `TensorFlow ${version} built from the ${TENSORFLOW_WHEEL} wheel and passes the smoke test in ${((Date.now() - started) / 1000).toFixed(0)} s (${megabytes} MB in ${join(packageDir, 'deps')}).`,
    );
  } catch (err) {
    const reason = err instanceof StepError ? err.message : String(err?.stack ?? err);
    writeStatus(packageDir, { ok: false, failure: reason });
    console.log(`vit-dist engine: the TensorFlow engine is NOT available: ${reason}`);
    console.log(
      'vit-dist engine: workers will fall back to the WebAssembly backend (slower). See docs/operations.md, "The compute engine"; rerun with `node scripts/build-tensorflow-engine.mjs`.',
    );
  }
}

main();
