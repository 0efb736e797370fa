// The status page's HTTP side: the page at `/` (a login form until the browser holds a session),
// its script, stylesheet and uPlot (served from node_modules: the page needs no internet), the login
// that sets an HttpOnly session cookie, and the live updates as server-sent events. The coordinator
// serves these on its port; `vit-dist status` serves them for a run read back from its directory.
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { HttpRoute } from './coordinator.ts';
import { requestAuthorized, SESSION_COOKIE, sessionValue, tokenAccepted } from './http-auth.ts';
import type { RunStatus, StatusEvent } from './run-status.ts';

export const EVENTS_PATH = '/status/events';
export const LOGIN_PATH = '/login';
/** A login form carries one token: anything longer is not one. */
const MAX_LOGIN_BYTES = 4096;
/** Comments keep idle connections (and proxies in between) from timing out. */
const KEEPALIVE_MS = 15_000;

const asset = (name: string) => new URL(`./status-page/${name}`, import.meta.url);
const uplot = (name: string) => createRequire(import.meta.url).resolve(`uplot/dist/${name}`);

/** Static files: [path, file, content type]; read once, on first request. */
const STATIC: [string, () => string | URL, string][] = [
  ['/status/page.js', () => asset('page.js'), 'text/javascript; charset=utf-8'],
  ['/status/page.css', () => asset('page.css'), 'text/css; charset=utf-8'],
  ['/status/uplot.js', () => uplot('uPlot.iife.min.js'), 'text/javascript; charset=utf-8'],
  ['/status/uplot.css', () => uplot('uPlot.min.css'), 'text/css; charset=utf-8'],
];

export interface StatusPageOptions {
  /** Tokens that may log in or send `Authorization: Bearer`: the run's and the read-only --status-token. */
  tokens: string[];
  /** Mark the session cookie Secure (the coordinator serves https). */
  secureCookie: boolean;
}

/** Registers the page's paths with `route` (Coordinator.route, or a plain server's table). */
export function routeStatusPage(route: (path: string, handler: HttpRoute) => void, status: RunStatus, options: StatusPageOptions): void {
  if (options.tokens.length === 0) throw new Error('the status page needs at least one token to accept');
  const authorized = (req: IncomingMessage) => requestAuthorized(req, options.tokens);
  route('/', (req, res) => {
    if (!allowMethod(req, res, 'GET')) return;
    sendHtml(res, 200, authorized(req) ? readCached(asset('index.html')) : loginPage(null));
  });
  route(LOGIN_PATH, (req, res) => {
    if (!allowMethod(req, res, 'POST')) return;
    login(req, res, options);
  });
  route(EVENTS_PATH, (req, res) => {
    if (!allowMethod(req, res, 'GET')) return;
    if (!authorized(req)) return sendText(res, 401, 'log in at / first, or send Authorization: Bearer TOKEN\n');
    streamEvents(req, res, status);
  });
  for (const [path, file, type] of STATIC) {
    route(path, (req, res) => {
      if (!allowMethod(req, res, 'GET')) return;
      res.writeHead(200, { 'content-type': type, 'cache-control': 'no-cache' });
      res.end(readCached(file()));
    });
  }
}

function allowMethod(req: IncomingMessage, res: ServerResponse, method: string): boolean {
  if (req.method === method) return true;
  res.writeHead(405, { allow: method, 'content-type': 'text/plain' });
  res.end(`${req.method} is not allowed here; use ${method}\n`);
  return false;
}

function login(req: IncomingMessage, res: ServerResponse, options: StatusPageOptions): void {
  let body = '';
  let tooLong = false;
  req.setEncoding('utf8');
  req.on('data', (chunk: string) => {
    body += chunk;
    if (body.length > MAX_LOGIN_BYTES && !tooLong) {
      tooLong = true;
      sendText(res, 413, 'login form too large\n');
      req.destroy();
    }
  });
  req.on('end', () => {
    if (tooLong) return;
    const token = new URLSearchParams(body).get('token');
    if (!tokenAccepted(token, options.tokens)) return sendHtml(res, 401, loginPage('That token is not accepted.'));
    const cookie = `${SESSION_COOKIE}=${sessionValue(token!)}; HttpOnly; SameSite=Strict; Path=/${options.secureCookie ? '; Secure' : ''}`;
    res.writeHead(303, { location: '/', 'set-cookie': cookie });
    res.end();
  });
}

/** The whole state first, then every change, as server-sent events. */
function streamEvents(req: IncomingMessage, res: ServerResponse, status: RunStatus): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  const send = (event: StatusEvent): void => {
    res.write(`event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`);
  };
  send(status.snapshot());
  const unsubscribe = status.subscribe(send);
  const keepalive = setInterval(() => res.write(': keepalive\n\n'), KEEPALIVE_MS);
  req.on('close', () => {
    clearInterval(keepalive);
    unsubscribe();
  });
}

const cache = new Map<string, string>();
function readCached(file: string | URL): string {
  const key = file.toString();
  let text = cache.get(key);
  if (text === undefined) {
    text = readFileSync(file, 'utf8');
    cache.set(key, text);
  }
  return text;
}

function loginPage(problem: string | null): string {
  const message = problem ? `<p class="problem">${problem}</p>` : '';
  return readCached(asset('login.html')).replace('<!--problem-->', message);
}

function sendHtml(res: ServerResponse, code: number, html: string): void {
  res.writeHead(code, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

function sendText(res: ServerResponse, code: number, text: string): void {
  res.writeHead(code, { 'content-type': 'text/plain; charset=utf-8' });
  res.end(text);
}
