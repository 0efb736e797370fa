// `vit-dist coordinator` and `vit-dist launch`: resolve the recipe and the run directory, start the
// coordinator, and for launch also the local worker processes.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readCheckpoint, type LoadedCheckpoint } from '../coordinator/checkpoint.ts';
import { Coordinator, type RunSummary } from '../coordinator/coordinator.ts';
import { validateRecipe } from '../train/recipe.ts';
import { createLogger } from './logging.ts';
import { defaultOutDir, resolveRecipe, resolveResume, resolveToken, TOKEN_ENV, type RunFlags } from './options.ts';

const BIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'vit-dist.js');
/** How long `launch` gives its workers to exit on their own after the run before killing them. */
const WORKER_EXIT_GRACE_MS = 10_000;

interface CoordinatorFlags extends RunFlags {
  workers: number;
  host: string;
  port: number;
}

interface LaunchFlags extends RunFlags {
  workers: number;
  backend: string;
}

function prepareRun(flags: RunFlags & { workers: number }, host: string, port: number, generateToken: boolean): Coordinator {
  const resumePath = flags.resume ? resolveResume(flags.resume) : null;
  const resume: LoadedCheckpoint | null = resumePath ? readCheckpoint(resumePath) : null;
  const recipe = resolveRecipe(flags, resume ? validateRecipe(resume.meta.recipe, `the recipe in ${resumePath}`) : null);
  // Resuming a run directory continues writing into it.
  const outDir = flags.out ?? (flags.resume && existsSync(flags.resume) && statSync(flags.resume).isDirectory() ? flags.resume : defaultOutDir(recipe.name));
  const logger = createLogger('coordinator', join(outDir, 'logs'), flags.logLevel);
  logger.info({ recipe, outDir, resume: resumePath }, 'run configured');
  return new Coordinator({
    workers: flags.workers, recipe, outDir: resolve(outDir), token: resolveToken(flags.token, generateToken), host, port,
    joinTimeoutMs: flags.joinTimeout * 1000, stepTimeoutMs: flags.stepTimeout * 1000, resume, logger, progress: true,
  });
}

function printSummary(summary: RunSummary, outDir: string): void {
  const accuracy = summary.testAccuracy === null ? 'not evaluated' : `${(summary.testAccuracy * 100).toFixed(2)}%`;
  console.log(`done: ${summary.steps} steps, final test accuracy ${accuracy}, parameter digest ${summary.paramDigest}`);
  console.log(`run directory: ${outDir} (metrics.jsonl, checkpoints/, logs/)`);
}

export async function runCoordinatorCommand(flags: CoordinatorFlags): Promise<void> {
  const coordinator = prepareRun(flags, flags.host, flags.port, false);
  const address = await coordinator.listen();
  console.log(`coordinator listening on ws://${address.address}:${address.port}, waiting for ${flags.workers} workers (run dir ${coordinator.outDir})`);
  printSummary(await coordinator.run(), coordinator.outDir);
}

export async function runLaunchCommand(flags: LaunchFlags): Promise<void> {
  const coordinator = prepareRun(flags, '127.0.0.1', 0, true);
  const address = await coordinator.listen();
  const url = `ws://127.0.0.1:${address.port}`;
  console.log(`launching ${flags.workers} local workers against ${url} (run dir ${coordinator.outDir})`);
  const children: ChildProcess[] = [];
  let finished = false;
  const workerDied = new Promise<never>((_, reject) => {
    for (let i = 0; i < flags.workers; i++) {
      const child = spawn(process.execPath, [BIN, 'worker', '--coordinator', url, '--backend', flags.backend, '--log-dir', join(coordinator.outDir, 'logs'), '--log-name', `worker-${i}`, '--log-level', flags.logLevel], {
        // The token goes through the environment, not argv, so `ps` does not show it.
        env: { ...process.env, [TOKEN_ENV]: coordinator.token },
        stdio: ['ignore', 'inherit', 'inherit'],
      });
      child.on('exit', (code, signal) => {
        if (!finished && (code !== 0 || signal)) reject(new Error(`local worker ${i} (pid ${child.pid}) exited with ${signal ?? `code ${code}`} before the run finished; see ${join(coordinator.outDir, 'logs', `worker-${i}.log`)}`));
      });
      children.push(child);
    }
  });
  try {
    const summary = await Promise.race([coordinator.run(), workerDied]);
    finished = true;
    await Promise.all(children.map((c) => waitForExit(c, WORKER_EXIT_GRACE_MS)));
    printSummary(summary, coordinator.outDir);
  } finally {
    finished = true;
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await coordinator.close();
  }
}

function waitForExit(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve(); }, graceMs);
    child.once('exit', () => { clearTimeout(timer); resolve(); });
  });
}
