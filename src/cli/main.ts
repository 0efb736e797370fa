// vit-dist's command line: coordinator, worker, launch (a local cluster), recipes, models and the
// ring benchmark. Every failure ends with one clear line on stderr and a non-zero exit code.
import { Command, Option } from 'commander';
import { runCoordinatorCommand, runLaunchCommand } from './run.ts';
import { runWorkerCommand } from './worker-command.ts';
import { runStatusCommand } from './status-command.ts';
import { registerDataBenchCommand } from './data-bench.ts';
import { registerDataCommands } from './data-commands.ts';
import { registerPlotCommand } from './plot-command.ts';
import { registerSoupCommands } from './soup-commands.ts';
import { registerSweepCommand } from './sweep.ts';
import { DEFAULT_PREDICT_BATCH, runExportCommand, runPredictCommand } from './weights-commands.ts';
import {
  addRunOptions,
  nonNegativeInt,
  port,
  positiveInt,
  positiveNumber,
  DEFAULT_COORDINATOR_PORT,
  BACKENDS,
  DEFAULT_DATA_THREADS,
  DEFAULT_HEARTBEAT_TIMEOUT_S,
  DEFAULT_RECONNECT_TIMEOUT_S,
  DEFAULT_STALL_TIMEOUT_S,
  TOKEN_ENV,
} from './options.ts';
import { listRecipes, loadRecipe } from '../train/recipe.ts';
import { WIRE_FORMATS, type WireFormat } from '../common/wire.ts';
import { RING_TRANSPORTS, type RingTransport } from '../comm/local-socket.ts';
import { listModels } from '../model/registry.ts';
import { quietTensorflowByDefault } from '../model/tensorflow-env.ts';

quietTensorflowByDefault();

const program = new Command('vit-dist')
  .description('Distributed data-parallel Vision Transformer training over a WebSocket ring')
  .showHelpAfterError();

addRunOptions(
  program
    .command('coordinator')
    .description('start the coordinator, wait for --workers workers, then train')
    .requiredOption('--workers <n>', 'number of workers to wait for', positiveInt)
    .option('--host <address>', 'address to bind', '0.0.0.0')
    .option('--port <port>', 'port to listen on', port, DEFAULT_COORDINATOR_PORT)
    .option('--tls-cert <file>', 'PEM certificate: serve wss:// (with --tls-key)')
    .option('--tls-key <file>', 'PEM private key for --tls-cert'),
).action(runCoordinatorCommand);

/** `--ring-transport` of `worker` and `launch` (src/comm/local-socket.ts). */
function ringTransportOption(description: string): Option {
  return new Option('--ring-transport <kind>', description).choices(RING_TRANSPORTS).default('auto');
}

program
  .command('worker')
  .description('join a coordinator as one worker (one per GPU)')
  .requiredOption('--coordinator <url>', 'the coordinator, e.g. ws://host:29500')
  .option('--gpu <k>', 'GPU index: the K-th WebGPU adapter (Dawn, Vulkan), and CUDA_VISIBLE_DEVICES=K for tfjs-node-gpu', nonNegativeInt)
  .addOption(new Option('--backend <name>', 'compute backend').choices(BACKENDS).default('auto'))
  .option(
    '--threads <n>',
    "TensorFlow's intra-op threads (TF_NUM_INTRAOP_THREADS; default: TensorFlow's, all cores); WebAssembly always runs one",
    positiveInt,
  )
  .option('--token <token>', `shared secret (default: $${TOKEN_ENV})`)
  .option('--ca <file>', 'PEM certificate authority to trust for a wss:// coordinator (e.g. its self-signed certificate)')
  .option('--ring-host <address>', 'address the ring server binds to', '127.0.0.1')
  .option('--ring-port <port>', 'port the ring server binds to (default: a free one)', port, 0)
  .option(
    '--advertise <host[:port]>',
    'address ring neighbours use to reach this worker (default: --ring-host, or the host name when --ring-host is 0.0.0.0 or ::, and the bound port); a port here is for NAT or a proxy in front of --ring-port',
  )
  .addOption(
    ringTransportOption(
      'auto: ring neighbours on this machine (same network namespace) connect over a Unix socket, others over TCP, unless --advertise names a port; tcp: always TCP',
    ),
  )
  .option('--data <dir>', "dataset directory on this host (overrides the recipe's data.path)")
  .option(
    '--data-threads <n>',
    'threads that decode and augment images ahead of the model (0: on the main thread)',
    nonNegativeInt,
    DEFAULT_DATA_THREADS,
  )
  .option(
    '--reconnect-timeout <seconds>',
    'how long to keep trying to reach a lost coordinator',
    positiveNumber,
    DEFAULT_RECONNECT_TIMEOUT_S,
  )
  .option(
    '--heartbeat-timeout <seconds>',
    'without a ping from the coordinator for this long, reconnect',
    positiveNumber,
    DEFAULT_HEARTBEAT_TIMEOUT_S,
  )
  .option(
    '--health-port <port>',
    'serve probes on this port: GET /healthz (liveness: 503 once the training loop is stuck, see --stall-timeout) and /readyz (200 while connected to the coordinator)',
    port,
  )
  .option(
    '--stall-timeout <seconds>',
    'a step or evaluation in flight this long counts as a stuck training loop (/healthz fails); above your slowest step plus --heartbeat-timeout',
    positiveNumber,
    DEFAULT_STALL_TIMEOUT_S,
  )
  .option('--log-dir <dir>', 'write JSON logs to DIR/NAME.log instead of stderr')
  .option('--log-name <name>', 'log file name', 'worker')
  .option('--log-level <level>', 'debug, info, warn or error', 'info')
  .action(runWorkerCommand);

addRunOptions(
  program
    .command('launch')
    .description('run a local cluster: the coordinator and --workers worker processes')
    .requiredOption('--workers <n>', 'number of local worker processes', positiveInt)
    .option(
      '--data-threads <n>',
      "each worker's threads that decode and augment images (0: on its main thread)",
      nonNegativeInt,
      DEFAULT_DATA_THREADS,
    )
    .addOption(new Option('--backend <name>', 'compute backend of the workers').choices(BACKENDS).default('auto'))
    .option('--threads <n>', "each worker's TensorFlow intra-op threads (default: the cores divided among the workers)", positiveInt)
    .addOption(ringTransportOption("auto: the workers' ring links go over Unix sockets; tcp: over loopback TCP")),
).action(runLaunchCommand);

program
  .command('status')
  .description("serve a run's status page (charts, workers, restarts) from its directory, e.g. a finished run")
  .argument('<run-dir>', 'the run directory (run.json, metrics.jsonl)')
  .option('--host <address>', 'address to bind', '127.0.0.1')
  .option('--port <port>', 'port to listen on (0: a free one)', port, 0)
  .option('--token <token>', `a token that may log in (default: $${TOKEN_ENV})`)
  .option('--status-token <token>', 'another token that may log in')
  .action(runStatusCommand);

program
  .command('export')
  .description("write a checkpoint's weights as safetensors with timm's tensor names and layouts")
  .requiredOption('--checkpoint <path>', 'a checkpoint file, or a run directory (its newest checkpoint)')
  .requiredOption('--out <file>', 'the .safetensors file to write')
  .option('--use-ema', "export the checkpoint's moving average of the weights instead of the weights")
  .action(runExportCommand);

program
  .command('predict')
  .description('run a model on images and write its logits as a float32 .npy array [n, classes]')
  .option(
    '--model <name>',
    "model name (see `vit-dist models`; default: the one the weights' metadata names, as `vit-dist export` writes it)",
  )
  .requiredOption('--weights <file>', 'a .safetensors file with timm tensor names (e.g. from `vit-dist export`)')
  .requiredOption(
    '--input <path>',
    'an idx file, a folder of images (jpg/png/webp, taken in file-name order) or a .npy float32 array [n, height, width, channels] used as it is',
  )
  .option(
    '--pipeline <ops>',
    "evaluation transforms for an idx file or a folder (default: the evaluation pipeline the weights' metadata records, else normalize(fashion-mnist) for idx; timm's resize_short_center_crop(SIZE,0.875)|normalize(imagenet) for RGB models, resize(SIZE,SIZE)|normalize(fashion-mnist) for one-channel ones)",
  )
  .requiredOption('--out <file>', 'the .npy file to write')
  .addOption(new Option('--backend <name>', 'compute backend').choices(BACKENDS).default('auto'))
  .option('--batch <n>', 'images per forward pass', positiveInt, DEFAULT_PREDICT_BATCH)
  .action(runPredictCommand);

program
  .command('recipes')
  .description('list the recipes')
  .action(() => {
    for (const name of listRecipes()) console.log(`${name.padEnd(28)} ${loadRecipe(name).description}`);
  });

program
  .command('models')
  .description('list the model variants with parameter counts and FLOPs per image')
  .action(() => {
    for (const m of listModels())
      console.log(
        `${m.name.padEnd(28)} ${(m.numParams / 1e6).toFixed(2).padStart(8)}M params ${(m.flopsPerImage / 1e9).toFixed(3).padStart(9)} GFLOPs`,
      );
  });

program
  .command('bench')
  .description('benchmarks')
  .command('allreduce')
  .description('time the ring all-reduce alone on this machine, N worker processes')
  .option('--workers <n>', 'ring size', positiveInt, 2)
  .option('--floats <s>', 'float32 elements per all-reduce', positiveInt, 5_000_000)
  .option('--iterations <k>', 'timed all-reduces', positiveInt, 10)
  .addOption(
    new Option('--wire <format>', 'reduce-scatter payloads: fp32, or bf16 added into fp32 sums').choices(WIRE_FORMATS).default('fp32'),
  )
  .addOption(ringTransportOption('auto: the ranks link over Unix sockets, as workers on one machine do; tcp: over loopback TCP'))
  .option('--json', 'print one JSON line')
  .action(
    async (opts: {
      workers: number;
      floats: number;
      iterations: number;
      wire: WireFormat;
      ringTransport: RingTransport;
      json?: boolean;
    }) => {
      const { benchAllreduce, formatResult } = await import('../comm/bench-allreduce.ts');
      const result = await benchAllreduce({
        workers: opts.workers,
        floats: opts.floats,
        iterations: opts.iterations,
        wire: opts.wire,
        transport: opts.ringTransport,
      });
      console.log(opts.json ? JSON.stringify(result) : formatResult(result));
    },
  );

registerDataCommands(program);
registerSoupCommands(program);
registerSweepCommand(program);
registerDataBenchCommand(program);
registerPlotCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  console.error(`vit-dist: error: ${(err as Error).message}`);
  process.exit(1);
}
