/**
 * Test helpers: a real charla on port 0 over a real SQLite file, real `ws`
 * clients, tokens signed the way the platform signs them.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import { pino } from 'pino';
import { WebSocket } from 'ws';
import { type App, createApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { newId } from '../src/core/ids.js';

export const SECRET = 'test-secret-that-is-long-enough-for-hs256';
export const API_KEY = 'test-api-key';
export const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));

export function tempDir(prefix = 'charla-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface TestServer {
  app: App;
  url: string;
  wsUrl: string;
  dir: string;
  close(): Promise<void>;
}

/** Starts charla in this process on an ephemeral port with its own SQLite file. */
export async function startServer(env: Record<string, string> = {}): Promise<TestServer> {
  const dir = env.DATA_DIR ?? tempDir();
  const config = loadConfig({
    PORT: '0',
    HOST: '127.0.0.1',
    DATABASE_URL: `sqlite:${join(dir, 'charla.db')}`,
    JWT_SECRET: SECRET,
    API_KEY,
    LOG_LEVEL: 'silent',
    ...env,
  });
  const app = await createApp(config, {
    log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  });
  const url = await app.listen();
  return {
    app,
    url,
    wsUrl: url.replace(/^http/, 'ws'),
    dir,
    async close() {
      await app.close();
      if (env.DATA_DIR === undefined) rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface TokenOptions {
  secret?: string;
  expiresIn?: string | number;
  notBefore?: string | number;
}

/** Signs an HS256 token; `claims` as the platform would put them. */
export function sign(claims: Record<string, unknown>, opts: TokenOptions = {}): Promise<string> {
  let jwt = new SignJWT(claims).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt();
  jwt = jwt.setExpirationTime(opts.expiresIn ?? '1h');
  if (opts.notBefore !== undefined) jwt = jwt.setNotBefore(opts.notBefore);
  return jwt.sign(new TextEncoder().encode(opts.secret ?? SECRET));
}

export const userToken = (id: string, extra: Record<string, unknown> = {}, opts?: TokenOptions) =>
  sign({ user_id: id, username: `user${id}`, ...extra }, opts);

/** Calls the server API with the test API key (unless `key` overrides it). */
export async function api(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  key: string | null = API_KEY,
): Promise<{ status: number; body: any }> {
  const headers: Record<string, string> = {};
  if (key !== null) headers['x-api-key'] = key;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return { status: res.status, body: parsed };
}

export interface Frame {
  type: string;
  data: any;
}

/** Frames a section-2 client ignores; `next()` and `rest()` pass over them. */
const CLASSROOM_FRAMES = new Set(['stream', 'history']);

/**
 * A `ws` client that records every frame, so a test can wait for the next
 * one matching a predicate and see everything it was sent.
 */
export class StreamClient {
  /** Every frame received, in order. */
  readonly all: Frame[] = [];
  /** The frames a section-2 client knows: `all` without `stream` and `history`. */
  readonly frames: Frame[] = [];
  private cursor = 0;
  private waiters: Array<() => void> = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<{ code: number; reason: string }>;

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data)) as Frame;
      this.all.push(frame);
      if (!CLASSROOM_FRAMES.has(frame.type)) this.frames.push(frame);
      this.wake();
    });
    this.opened = new Promise((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) =>
        reject(new Error(`unexpected response ${res.statusCode}`)),
      );
    });
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        resolve({ code, reason: String(reason) });
        this.wake();
      });
    });
    // Errors after open surface through `closed`.
    ws.on('error', () => {});
  }

  static async connect(
    wsUrl: string,
    key: string,
    opts: { token?: string; query?: string; headers?: Record<string, string> } = {},
  ): Promise<StreamClient> {
    const headers = { ...opts.headers };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    const client = new StreamClient(
      new WebSocket(`${wsUrl}/ws/streams/${key}/${opts.query ?? ''}`, { headers }),
    );
    await client.opened;
    return client;
  }

  send(value: unknown): void {
    this.ws.send(typeof value === 'string' ? value : JSON.stringify(value));
  }

  chat(message: unknown): void {
    this.send({ type: 'chat', data: { message } });
  }

  auth(token: string): void {
    this.send({ type: 'auth', data: { token } });
  }

  /**
   * The next frame not yet taken (optionally of `type`), or rejects after `ms`.
   * Without `type`, the classroom's `stream` and `history` frames are passed
   * over, as a client written for section 2 alone would.
   */
  async next(type?: string, ms = 3000): Promise<Frame> {
    const deadline = Date.now() + ms;
    for (;;) {
      while (this.cursor < this.all.length) {
        const f = this.all[this.cursor++] as Frame;
        if (type === undefined ? !CLASSROOM_FRAMES.has(f.type) : f.type === type) return f;
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.ws.readyState === WebSocket.CLOSED) {
        throw new Error(`no ${type ?? ''} frame within ${ms} ms; got ${JSON.stringify(this.all)}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits until `n` frames of `type` have arrived in total and returns them. */
  async collect(type: string, n: number, ms = 5000): Promise<Frame[]> {
    const deadline = Date.now() + ms;
    for (;;) {
      const got = this.all.filter((f) => f.type === type);
      if (got.length >= n) return got;
      if (Date.now() > deadline || this.ws.readyState === WebSocket.CLOSED) {
        throw new Error(`expected ${n} ${type} frames, got ${got.length}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Frames received so far that were not taken by `next` (`stream` and `history` left out). */
  rest(): Frame[] {
    return this.all.slice(this.cursor).filter((f) => !CLASSROOM_FRAMES.has(f.type));
  }

  close(): void {
    this.ws.close();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Connects a viewer to stream `key` (signed in as `userId` with `roles`, or
 * anonymous) and takes the frames every connect starts with: `auth`, then
 * `stream` and `history`, in that order.
 */
export async function joinStream(
  wsUrl: string,
  key: string,
  userId?: string,
  opts: { query?: string; roles?: string[] } = {},
): Promise<{ c: StreamClient; stream: Frame; history: Frame }> {
  const token =
    userId === undefined ? undefined : await userToken(userId, { roles: opts.roles ?? [] });
  const c = await StreamClient.connect(wsUrl, key, {
    ...(token ? { token } : {}),
    ...(opts.query ? { query: opts.query } : {}),
  });
  const auth = await c.next('auth');
  assert.deepEqual(auth.data, { authenticated: userId !== undefined });
  const stream = await c.next('stream');
  const history = await c.next('history');
  assert.deepEqual(
    c.all.slice(0, 3).map((f) => f.type),
    ['auth', 'stream', 'history'],
  );
  return { c, stream, history };
}

/** Sends chats one by one, each once the sender has seen it: they are in the stream's order. */
export async function postInOrder(c: StreamClient, texts: string[]): Promise<Frame[]> {
  const out: Frame[] = [];
  for (const t of texts) {
    c.chat(t);
    for (;;) {
      const f = await c.next('chat');
      if (f.data.message === t) {
        out.push(f);
        break;
      }
    }
  }
  return out;
}

/** Polls `cond` until it holds, or fails naming `what` after `ms`. */
export async function until(
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 10_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

export interface ChildServer {
  child: ChildProcess;
  url: string;
  output: () => string;
  /** Sends `signal` and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `node dist/src/main.js` as its own process and waits for it to listen. */
export function spawnServer(
  env: Record<string, string>,
  options: { cwd?: string } = {},
): Promise<ChildServer> {
  const child = spawn(process.execPath, [MAIN], {
    env: { PATH: process.env.PATH ?? '', PORT: '0', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
  });
  let out = '';
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      // A process that never listened must not outlive the test file.
      child.kill('SIGKILL');
      reject(new Error(`server did not start:\n${out}`));
    }, 30_000);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = /"url":"(http:\/\/[^"]+)".*"msg":"listening"/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({
          child,
          url: m[1] as string,
          output: () => out,
          stop(signal = 'SIGTERM') {
            if (child.exitCode === null && child.signalCode === null) child.kill(signal);
            return exited;
          },
        });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (c: Buffer) => {
      out += c.toString();
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${out}`));
    });
  });
}

/**
 * Starts `count` nodes with the same environment. If one fails to start, the
 * others are stopped before the error is thrown: a `before` that fails leaves
 * no process behind to keep the test file from exiting.
 */
export async function spawnServers(
  count: number,
  env: Record<string, string>,
): Promise<ChildServer[]> {
  const started = await Promise.allSettled(Array.from({ length: count }, () => spawnServer(env)));
  const failed = started.find((r) => r.status === 'rejected');
  if (failed === undefined) {
    return started.map((r) => (r as PromiseFulfilledResult<ChildServer>).value);
  }
  await Promise.all(
    started.map((r) => (r.status === 'fulfilled' ? r.value.stop('SIGKILL') : undefined)),
  );
  throw (failed as PromiseRejectedResult).reason;
}

/**
 * Records the name of every method called on a live store, which keeps doing
 * its work: how a test tells what was read from storage and what from memory.
 */
export function storeCalls(store: object): { names: string[]; reset(): void } {
  const names: string[] = [];
  const target = store as Record<string, unknown>;
  for (const name of Object.getOwnPropertyNames(Object.getPrototypeOf(store))) {
    const method = target[name];
    if (name === 'constructor' || typeof method !== 'function') continue;
    target[name] = function (this: unknown, ...args: unknown[]) {
      names.push(name);
      return (method as (...a: unknown[]) => unknown).apply(this, args);
    };
  }
  return {
    names,
    reset() {
      names.length = 0;
    },
  };
}

/** Registers a new request owned by `ownerId` through the server API; its id. */
export async function registerRequest(url: string, ownerId = '1'): Promise<string> {
  const id = newId();
  assert.equal((await api(url, 'PUT', `/api/requests/${id}`, { ownerId })).status, 201);
  return id;
}
