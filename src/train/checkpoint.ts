// The checkpoint file format, and reading it: one self-checking file per saved step (the
// coordinator writes them, src/coordinator/checkpoint.ts; runs, teachers and soups read them).
//
// Layout: MAGIC (8 bytes) | format version u32 LE | header length u32 LE | header JSON | payload.
// The payload is the float32 tensors named in the header; its SHA-256 is in the header, so a
// truncated or altered file is refused on load. Tensors are named `params`, `optimizer.NAME` for
// each optimizer state tensor (Adam's m and v, SGD's momentum) and `ema` when the run keeps a
// moving average of the weights; every one is as long as the parameter vector.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../common/errors.ts';

const MAGIC = Buffer.from('VITDCKPT', 'ascii');
/** Version 2: named optimizer state tensors and an optional EMA (version 1 held only Adam's m and v). */
export const CHECKPOINT_FORMAT_VERSION = 2;
const OPTIMIZER_PREFIX = 'optimizer.';
const EMA_TENSOR = 'ema';
const PREAMBLE_BYTES = MAGIC.length + 8;
/** Checkpoint files are named step-<zero-padded step>.ckpt, so names sort by step. */
const FILE_PATTERN = /^step-(\d{9})\.ckpt$/;

export interface CheckpointMeta {
  runId: string;
  /** Number of optimizer steps completed: training resumes at this step. */
  step: number;
  /** The resolved recipe the run was started with. */
  recipe: unknown;
  numParams: number;
  /** Worker count when saved; a resume may use another, as the optimizer state is stored whole. */
  worldSize: number;
  optimizerStep: number;
  /** Sampler position and RNG seed: every random draw is a function of (seed, step), so these suffice. */
  sampler: { seed: number; step: number };
  /** The parameter digest that every worker reported for this step. */
  paramDigest: string;
}

export interface CheckpointState {
  params: Float32Array;
  /** The optimizer's named state tensors (e.g. Adam's m and v), gathered from every rank's shard. */
  optimizerState: Record<string, Float32Array>;
  /** The moving average of the weights, or null when the run keeps none. */
  ema: Float32Array | null;
}

interface Header extends CheckpointMeta {
  format: number;
  tensors: { name: string; offset: number; length: number }[];
  payloadBytes: number;
  payloadSha256: string;
}

export function checkpointFileName(step: number): string {
  return `step-${String(step).padStart(9, '0')}.ckpt`;
}

function asBytes(array: Float32Array): Buffer {
  return Buffer.from(array.buffer, array.byteOffset, array.byteLength);
}

/** The state's tensors under their file names, in the order they are written. */
function namedTensors(state: CheckpointState): [string, Float32Array][] {
  const named: [string, Float32Array][] = [['params', state.params]];
  for (const name of Object.keys(state.optimizerState).sort()) named.push([`${OPTIMIZER_PREFIX}${name}`, state.optimizerState[name]!]);
  if (state.ema) named.push([EMA_TENSOR, state.ema]);
  return named;
}

/** The bytes of a checkpoint file, in the order they are written: preamble, header, then each tensor. */
export function encodeCheckpoint(meta: CheckpointMeta, state: CheckpointState): Buffer[] {
  const named = namedTensors(state);
  const hash = createHash('sha256');
  const tensors: Header['tensors'] = [];
  let offset = 0;
  for (const [name, tensor] of named) {
    tensors.push({ name, offset, length: tensor.length });
    hash.update(asBytes(tensor));
    offset += tensor.byteLength;
  }
  const header: Header = { format: CHECKPOINT_FORMAT_VERSION, ...meta, tensors, payloadBytes: offset, payloadSha256: hash.digest('hex') };
  const headerBytes = Buffer.from(JSON.stringify(header), 'utf8');
  const preamble = Buffer.alloc(PREAMBLE_BYTES);
  MAGIC.copy(preamble, 0);
  preamble.writeUInt32LE(CHECKPOINT_FORMAT_VERSION, MAGIC.length);
  preamble.writeUInt32LE(headerBytes.length, MAGIC.length + 4);
  return [preamble, headerBytes, ...named.map(([, tensor]) => asBytes(tensor))];
}

/** Checkpoint files in `dir`, oldest first. */
export function listCheckpoints(dir: string): { step: number; path: string }[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((name) => ({ name, match: FILE_PATTERN.exec(name) }))
    .filter((e) => e.match !== null)
    .map((e) => ({ step: Number(e.match![1]), path: join(dir, e.name) }))
    .sort((a, b) => a.step - b.step);
}

export interface LoadedCheckpoint {
  path: string;
  meta: CheckpointMeta;
  state: CheckpointState;
}

/** Reads and verifies a checkpoint file; refuses foreign, truncated and altered files. */
export function readCheckpoint(path: string): LoadedCheckpoint {
  if (!existsSync(path)) throw new InputError('CHECKPOINT_NOT_FOUND', `checkpoint ${path}: file not found`);
  const bytes = readFileSync(path);
  if (bytes.length < PREAMBLE_BYTES || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new InputError('CHECKPOINT_INVALID', `checkpoint ${path}: not a vit-dist checkpoint (bad magic bytes)`);
  }
  const version = bytes.readUInt32LE(MAGIC.length);
  if (version !== CHECKPOINT_FORMAT_VERSION)
    throw new InputError(
      'CHECKPOINT_INVALID',
      `checkpoint ${path}: format version ${version}, this build reads ${CHECKPOINT_FORMAT_VERSION}`,
    );
  const headerLength = bytes.readUInt32LE(MAGIC.length + 4);
  if (PREAMBLE_BYTES + headerLength > bytes.length)
    throw new InputError('CHECKPOINT_INVALID', `checkpoint ${path}: truncated (header runs past the end of the file)`);
  let header: Header;
  try {
    header = JSON.parse(bytes.subarray(PREAMBLE_BYTES, PREAMBLE_BYTES + headerLength).toString('utf8')) as Header;
  } catch (err) {
    throw new InputError('CHECKPOINT_INVALID', `checkpoint ${path}: unreadable header (${(err as Error).message})`, { cause: err });
  }
  const payload = bytes.subarray(PREAMBLE_BYTES + headerLength);
  if (payload.length !== header.payloadBytes) {
    throw new InputError(
      'CHECKPOINT_INVALID',
      `checkpoint ${path}: truncated or padded: payload is ${payload.length} bytes, header says ${header.payloadBytes}`,
    );
  }
  if (createHash('sha256').update(payload).digest('hex') !== header.payloadSha256) {
    throw new InputError('CHECKPOINT_INVALID', `checkpoint ${path}: payload checksum mismatch (the file is corrupt)`);
  }
  // Copy into fresh, aligned buffers: the payload's byte offset in the file need not be a multiple of 4.
  const aligned = new Uint8Array(payload).buffer;
  const state: CheckpointState = { params: new Float32Array(0), optimizerState: {}, ema: null };
  let hasParams = false;
  for (const entry of header.tensors) {
    if (entry.length !== header.numParams)
      throw new InputError(
        'CHECKPOINT_INVALID',
        `checkpoint ${path}: tensor "${entry.name}" has ${entry.length} elements, the model ${header.numParams}`,
      );
    const tensor = new Float32Array(aligned, entry.offset, entry.length);
    if (entry.name === 'params') [state.params, hasParams] = [tensor, true];
    else if (entry.name === EMA_TENSOR) state.ema = tensor;
    else if (entry.name.startsWith(OPTIMIZER_PREFIX)) state.optimizerState[entry.name.slice(OPTIMIZER_PREFIX.length)] = tensor;
    else throw new InputError('CHECKPOINT_INVALID', `checkpoint ${path}: unknown tensor "${entry.name}"`);
  }
  if (!hasParams) throw new InputError('CHECKPOINT_INVALID', `checkpoint ${path}: missing tensor "params"`);
  const { format: _format, tensors: _tensors, payloadBytes: _payloadBytes, payloadSha256: _sha, ...meta } = header;
  return { path, meta, state };
}

/** The newest checkpoint under a run directory (OUT or OUT/checkpoints), or null when there is none. */
export function latestCheckpoint(runOrCheckpointDir: string): string | null {
  const candidates = [join(runOrCheckpointDir, 'checkpoints'), runOrCheckpointDir];
  for (const dir of candidates) {
    const all = listCheckpoints(dir);
    if (all.length > 0) return all[all.length - 1]!.path;
  }
  return null;
}
