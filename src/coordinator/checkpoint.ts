// Writing checkpoints (the format is src/train/checkpoint.ts): atomically (temp file, fsync,
// rename, fsync of the directory), so a crash at any moment leaves either the previous set of
// checkpoints or the previous set plus one complete new file, never a torn one.
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { checkpointFileName, encodeCheckpoint, listCheckpoints, type CheckpointMeta, type CheckpointState } from '../train/checkpoint.ts';

/** Older checkpoints beyond this many are deleted after a new one is safely written. */
export const DEFAULT_KEEP_CHECKPOINTS = 3;

/** Writes a checkpoint into `dir` atomically and prunes old ones; returns the file's path. */
export function writeCheckpoint(dir: string, meta: CheckpointMeta, state: CheckpointState, keep = DEFAULT_KEEP_CHECKPOINTS): string {
  mkdirSync(dir, { recursive: true });
  const finalPath = join(dir, checkpointFileName(meta.step));
  const tempPath = join(dir, `.${checkpointFileName(meta.step)}.${process.pid}.tmp`);
  const fd = openSync(tempPath, 'w');
  try {
    for (const chunk of encodeCheckpoint(meta, state)) {
      let written = 0;
      while (written < chunk.length) written += writeSync(fd, chunk, written, chunk.length - written);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tempPath, finalPath);
  syncDirectory(dir);
  pruneCheckpoints(dir, keep);
  return finalPath;
}

function syncDirectory(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function pruneCheckpoints(dir: string, keep: number): void {
  const all = listCheckpoints(dir);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) rmSync(old.path);
}
