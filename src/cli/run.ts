// `vit-dist coordinator` and `vit-dist launch`: resolve the recipe and the run directory, start the
// coordinator, and for launch also the local worker processes, restarting any that die (as
// torchrun does) while the coordinator takes the replacement into the ring.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { createInterface } from 'node:readline';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { latestCheckpoint, readCheckpoint, type LoadedCheckpoint } from '../train/checkpoint.ts';
import { Coordinator } from '../coordinator/coordinator.ts';
import { observeRun } from '../coordinator/observe.ts';
import { routeStatusPage } from '../coordinator/status-page.ts';
import type { RunSummary } from '../coordinator/generation.ts';
import { createModelConfig } from '../model/registry.ts';
import { readSafetensors } from '../model/safetensors.ts';
import { createModel } from '../model/model.ts';
import { initialParams } from '../model/init.ts';
import { importTimmState } from '../model/weights.ts';
import { validateRecipe, type Recipe } from '../train/recipe.ts';
import { createLogger } from './logging.ts';
import { defaultOutDir, resolveRecipe, resolveResume, resolveToken, tlsFiles, TOKEN_ENV, type RunFlags } from './options.ts';
import type { RingTransport } from '../comm/local-socket.ts';

const BIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'vit-dist.js');
/** How long `launch` gives its workers to exit on their own after the run before killing them. */
const WORKER_EXIT_GRACE_MS = 10_000;
/**
 * How long a worker the coordinator declared lost gets to end on SIGTERM before SIGKILL. A stopped
 * process handles SIGTERM only once continued; SIGKILL ends it either way.
 */
const LOST_WORKER_KILL_GRACE_MS = 5_000;

interface CoordinatorFlags extends RunFlags {
  workers: number;
  host: string;
  port: number;
  tlsCert?: string;
  tlsKey?: string;
}

interface LaunchFlags extends RunFlags {
  workers: number;
  backend: string;
  threads?: number;
  dataThreads: number;
  /** Unset (`sweep`): the workers' default, auto. */
  ringTransport?: RingTransport;
}

/**
 * TF 2.21 logs "oneDNN custom operations are on" through absl before TF_CPP_MIN_LOG_LEVEL applies,
 * with absl's notice before it: INFO lines (glog format) that launch keeps off its console unless
 * asked for with TF_CPP_MIN_LOG_LEVEL=0. Only TF_ENABLE_ONEDNN_OPTS=0 silences it at the source,
 * and that changes TensorFlow's kernels.
 */
const TENSORFLOW_INFO_LINE =
  /^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR|I\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] .*)$/;

function forwardWorkerStderr(child: ChildProcess): void {
  createInterface({ input: child.stderr!, crlfDelay: Infinity }).on('line', (line) => {
    if (!TENSORFLOW_INFO_LINE.test(line)) process.stderr.write(`${line}\n`);
  });
}

/** TensorFlow threads per local worker: --threads, or the cores shared evenly, at least one each. */
function threadsPerWorker(flags: LaunchFlags): { threads: number; why: string } {
  const cores = availableParallelism();
  if (flags.threads !== undefined) return { threads: flags.threads, why: `--threads, on ${cores} cores` };
  return {
    threads: Math.max(1, Math.floor(cores / flags.workers)),
    why: `${cores} cores shared among ${flags.workers} workers; --threads overrides`,
  };
}

/** The checkpoint to continue from: --resume, or the newest one already in --out (a restarted coordinator). */
function findResume(flags: RunFlags): string | null {
  if (flags.resume) return resolveResume(flags.resume);
  return flags.out ? latestCheckpoint(flags.out) : null;
}

/**
 * --init: the recipe's model with the file's weights, read once here and sent to every worker. A
 * head of another class count (fine-tuning) keeps the fresh initialization a run from the recipe's
 * seed would have; a position embedding of another patch grid is resampled to the model's.
 */
function readInitialParams(path: string, recipe: Recipe): Float32Array {
  const model = createModel(createModelConfig(recipe.model, recipe.modelArgs));
  try {
    const {
      params,
      replaced,
      posEmbedResampled: resampled,
    } = importTimmState(model.params, readSafetensors(path).tensors, { allowHeadMismatch: true, init: initialParams(model, recipe) });
    for (const r of replaced)
      console.log(
        `--init: ${r.name} is [${r.fileShape.join(', ')}] in ${path}, the model's is [${r.modelShape.join(', ')}]: freshly initialized`,
      );
    if (resampled) {
      const { fileShape, modelShape, fromGrid, toGrid } = resampled;
      console.log(
        `--init: pos_embed is [${fileShape.join(', ')}] in ${path}, the model's is [${modelShape.join(', ')}]: its ${fromGrid.join('x')} patch grid resampled bicubically to ${toGrid.join('x')}, the prefix tokens kept`,
      );
    }
    return params;
  } catch (err) {
    throw new Error(`--init ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * A configured coordinator, and `release` to drop its SIGTERM handler and flush its TensorBoard
 * scalars once the run is over (a sweep runs many in one process).
 */
function prepareRun(
  flags: RunFlags & { workers: number },
  host: string,
  port: number,
  generateToken: boolean,
  tls: Coordinator['tls'] = null,
): { coordinator: Coordinator; release: () => Promise<void> } {
  const resumePath = findResume(flags);
  const resume: LoadedCheckpoint | null = resumePath ? readCheckpoint(resumePath) : null;
  const recipe = resolveRecipe(flags, resume ? validateRecipe(resume.meta.recipe, `the recipe in ${resumePath}`) : null, flags.workers);
  // Resuming a run directory continues writing into it.
  const outDir =
    flags.out ??
    (flags.resume && existsSync(flags.resume) && statSync(flags.resume).isDirectory() ? flags.resume : defaultOutDir(recipe.name));
  if (resume) console.log(`resuming from ${resumePath} (step ${resume.meta.step})${flags.init ? `; --init ${flags.init} is ignored` : ''}`);
  const initialParams = flags.init && !resume ? readInitialParams(flags.init, recipe) : null;
  if (initialParams) console.log(`starting from the weights in ${flags.init}`);
  const logger = createLogger('coordinator', join(outDir, 'logs'), flags.logLevel);
  logger.info({ recipe, outDir, resume: resumePath, init: initialParams ? flags.init : null }, 'run configured');
  const coordinator = new Coordinator({
    workers: flags.workers,
    minWorkers: Math.min(flags.minWorkers ?? flags.workers, flags.workers),
    spares: flags.spares ?? 0,
    recipe,
    outDir: resolve(outDir),
    token: resolveToken(flags.token, generateToken),
    host,
    port,
    joinTimeoutMs: flags.joinTimeout * 1000,
    rejoinTimeoutMs: flags.rejoinTimeout * 1000,
    roundDeadlineMs: flags.roundDeadline === undefined ? null : flags.roundDeadline * 1000,
    stepTimeoutMs: flags.stepTimeout * 1000,
    heartbeatTimeoutMs: flags.heartbeatTimeout * 1000,
    maxRestarts: flags.maxRestarts,
    resume,
    initialParams,
    tls,
    logger,
    progress: true,
  });
  // The page and /metrics take the run's token or the read-only status token.
  const statusTokens = [coordinator.token, ...(flags.statusToken ? [flags.statusToken] : [])];
  const observers = observeRun(coordinator, recipe, logger, statusTokens);
  // SIGTERM (docker stop, a Kubernetes pod deletion): checkpoint at the next step, then exit 0.
  const onSigterm = (): void => {
    console.log('SIGTERM: stopping after the next step and a checkpoint');
    coordinator.requestStop();
  };
  process.once('SIGTERM', onSigterm);
  routeStatusPage((path, handler) => coordinator.route(path, handler), coordinator.status, {
    tokens: statusTokens,
    secureCookie: tls !== null,
  });
  const release = async (): Promise<void> => {
    process.off('SIGTERM', onSigterm);
    await observers.close();
  };
  return { coordinator, release };
}

function printSummary(summary: RunSummary, outDir: string): void {
  const accuracy = summary.testAccuracy === null ? 'not evaluated' : `${(summary.testAccuracy * 100).toFixed(2)}%`;
  const restarts = summary.restarts > 0 ? `, ${summary.restarts} restart${summary.restarts === 1 ? '' : 's'}` : '';
  if (summary.stopped)
    console.log(`stopped at step ${summary.steps} of ${summary.totalSteps}${restarts}; continue with --resume ${outDir}`);
  else console.log(`done: ${summary.steps} steps${restarts}, final test accuracy ${accuracy}, parameter digest ${summary.paramDigest}`);
  console.log(`run directory: ${outDir} (metrics.jsonl, checkpoints/, logs/)`);
}

export async function runCoordinatorCommand(flags: CoordinatorFlags): Promise<void> {
  const { coordinator, release } = prepareRun(flags, flags.host, flags.port, false, tlsFiles(flags));
  try {
    const address = await coordinator.listen();
    console.log(
      `coordinator listening on ${coordinator.tls ? 'wss' : 'ws'}://${address.address}:${address.port}, waiting for ${flags.workers} workers (run dir ${coordinator.outDir})`,
    );
    console.log(
      `status page: ${coordinator.tls ? 'https' : 'http'}://${address.address}:${address.port}/ (log in with the run's token${flags.statusToken ? ' or --status-token' : ''})`,
    );
    printSummary(await coordinator.run(), coordinator.outDir);
  } finally {
    await release();
  }
}

export async function runLaunchCommand(flags: LaunchFlags): Promise<void> {
  const { coordinator, release } = prepareRun(flags, '127.0.0.1', 0, true);
  const address = await coordinator.listen();
  const url = `ws://127.0.0.1:${address.port}`;
  const logDir = join(coordinator.outDir, 'logs');
  const { threads, why } = threadsPerWorker(flags);
  const engineThreads =
    flags.backend === 'wasm' || flags.backend === 'cpu' ? '' : ` x ${threads} TensorFlow thread${threads === 1 ? '' : 's'} each (${why})`;
  const spareCount = flags.spares ?? 0;
  const spares = spareCount > 0 ? ` and ${spareCount} spare${spareCount === 1 ? '' : 's'}` : '';
  console.log(`launching ${flags.workers} local workers${spares}${engineThreads} against ${url} (run dir ${coordinator.outDir})`);
  const madeToken = !flags.token && !process.env[TOKEN_ENV];
  const login = [...(madeToken ? [] : [`$${TOKEN_ENV}`]), ...(flags.statusToken ? ['--status-token'] : [])];
  console.log(
    `status page: http://127.0.0.1:${address.port}/ (${login.length > 0 ? `log in with ${login.join(' or ')}` : `pass --status-token or set ${TOKEN_ENV} to log in`})`,
  );
  const showTensorflowInfo = process.env.TF_CPP_MIN_LOG_LEVEL === '0';
  const children = new Map<number, ChildProcess>();
  /** Processes the coordinator declared lost: being killed, already replaced. */
  const retired = new Set<ChildProcess>();
  let finished = false;
  let respawns = 0;
  let giveUp: (err: Error) => void = () => undefined;
  const gaveUp = new Promise<never>((_, reject) => (giveUp = reject));

  const spawnWorker = (slot: number): void => {
    const child = spawn(
      process.execPath,
      [
        BIN,
        'worker',
        '--coordinator',
        url,
        '--backend',
        flags.backend,
        '--threads',
        String(threads),
        '--heartbeat-timeout',
        String(flags.heartbeatTimeout),
        '--data-threads',
        String(flags.dataThreads),
        ...(flags.ringTransport ? ['--ring-transport', flags.ringTransport] : []),
        '--log-dir',
        logDir,
        '--log-name',
        `worker-${slot}`,
        '--log-level',
        flags.logLevel,
      ],
      {
        // The token goes through the environment, not argv, so `ps` does not show it.
        env: { ...process.env, [TOKEN_ENV]: coordinator.token },
        stdio: ['ignore', 'inherit', showTensorflowInfo ? 'inherit' : 'pipe'],
      },
    );
    if (!showTensorflowInfo) forwardWorkerStderr(child);
    children.set(slot, child);
    child.on('exit', (code, signal) => {
      const how = signal ?? `code ${code}`;
      if (retired.delete(child)) {
        console.log(`local worker ${slot}'s lost process (pid ${child.pid}) ended with ${how}`);
        return;
      }
      if (finished || (code === 0 && !signal)) return;
      if (!withinBudget(slot, child, `exited with ${how}`)) return;
      console.log(`local worker ${slot} (pid ${child.pid}) exited with ${how}; starting a replacement (${respawns}/${flags.maxRestarts})`);
      spawnWorker(slot);
    });
  };
  /** Counts one more replacement for `slot`; when --max-restarts are used up, the launch gives up instead. */
  const withinBudget = (slot: number, child: ChildProcess, what: string): boolean => {
    if (respawns >= flags.maxRestarts) {
      giveUp(
        new Error(
          `local worker ${slot} (pid ${child.pid}) ${what}, and --max-restarts ${flags.maxRestarts} restarts are used up; see ${join(logDir, `worker-${slot}.log`)}`,
        ),
      );
      return false;
    }
    respawns += 1;
    return true;
  };
  // A worker the coordinator declared lost may be stopped or hung rather than dead: nothing else
  // would ever end it. Kill it and start the replacement at once, so that it joins while the
  // coordinator waits for the rejoin.
  coordinator.onWorkerLost(({ pid, reason }) => {
    const entry = [...children].find(([, child]) => child.pid === pid);
    if (finished || !entry) return;
    const [slot, child] = entry;
    if (!withinBudget(slot, child, `was declared lost (${reason})`)) return;
    retired.add(child);
    // A stopped process would hold SIGTERM until continued: it gets no grace.
    const stopped = isStopped(pid);
    const how = stopped ? 'it is stopped: SIGKILL' : `SIGTERM, SIGKILL after ${LOST_WORKER_KILL_GRACE_MS / 1000} s`;
    console.log(
      `local worker ${slot} (pid ${pid}) was declared lost (${reason}); killing it (${how}) and starting a replacement (${respawns}/${flags.maxRestarts})`,
    );
    void (stopped ? waitForExit(child, 0) : waitForExit(child, LOST_WORKER_KILL_GRACE_MS, 'SIGTERM'));
    spawnWorker(slot);
  });
  for (let slot = 0; slot < flags.workers + spareCount; slot++) spawnWorker(slot);

  try {
    const summary = await Promise.race([coordinator.run(), gaveUp]);
    finished = true;
    await Promise.all([...children.values()].map((c) => waitForExit(c, WORKER_EXIT_GRACE_MS)));
    printSummary(summary, coordinator.outDir);
  } finally {
    finished = true;
    for (const child of [...children.values(), ...retired]) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await coordinator.close();
    await release();
  }
}

/** True when `pid` is a stopped process (SIGSTOP, a debugger); Linux's /proc tells, elsewhere false. */
function isStopped(pid: number): boolean {
  try {
    // The state follows the command name in parentheses, which may itself hold spaces or parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return /^[Tt]/.test(stat.slice(stat.lastIndexOf(')') + 2));
  } catch {
    return false;
  }
}

/** Resolves once `child` has exited; sends it `signal` first, if given, and SIGKILL after `graceMs`. */
function waitForExit(child: ChildProcess, graceMs: number, signal?: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  if (signal) child.kill(signal);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve();
    }, graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
