// `vit-dist status RUN_DIR`: the live status page, served for a run read back from its directory
// (run.json and metrics.jsonl), e.g. a finished one. It serves until interrupted.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { HttpRoute } from '../coordinator/coordinator.ts';
import { MetricsLog } from '../coordinator/metrics.ts';
import { readRunInfo, RunStatus } from '../coordinator/run-status.ts';
import { routeStatusPage } from '../coordinator/status-page.ts';
import { InputError } from '../common/errors.ts';
import { TOKEN_ENV } from './options.ts';

export interface StatusFlags {
  host: string;
  port: number;
  token?: string;
  statusToken?: string;
}

/** Starts serving the page of `runDir`; resolves with the server once it listens. */
export async function serveRunStatus(runDir: string, flags: StatusFlags): Promise<Server> {
  const tokens = [flags.token ?? process.env[TOKEN_ENV], flags.statusToken].filter((t): t is string => Boolean(t));
  if (tokens.length === 0)
    throw new InputError('USAGE', `the status page needs a token to log in with: pass --token or --status-token, or set ${TOKEN_ENV}`);
  const info = readRunInfo(runDir);
  const status = new RunStatus(info, false, new MetricsLog(join(runDir, 'metrics.jsonl')).read());
  const routes = new Map<string, HttpRoute>();
  routeStatusPage((path, handler) => routes.set(path, handler), status, { tokens, secureCookie: false });
  const server = createServer((req, res) => {
    const route = routes.get(new URL(req.url ?? '/', 'http://status').pathname);
    if (route) return route(req, res);
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(flags.port, flags.host, () => resolve());
  });
  const { address, port } = server.address() as AddressInfo;
  const view = status.view();
  console.log(
    `status page of ${runDir} (step ${view.step}/${view.totalSteps ?? '?'}, ${view.phase}) at http://${address}:${port}/; Ctrl-C stops it`,
  );
  return server;
}

export async function runStatusCommand(runDir: string, flags: StatusFlags): Promise<void> {
  const server = await serveRunStatus(runDir, flags);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      server.closeAllConnections();
      server.close(() => resolve());
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
