/**
 * Tools for the hostile-client suites: a real charla process whose memory and
 * file descriptors can be read from /proc, raw TCP sockets, and hand-built
 * WebSocket frames and upgrade requests.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { API_KEY, type ChildServer, SECRET, sleep, spawnServer, tempDir } from './helpers.js';

export interface WatchedServer extends ChildServer {
  pid: number;
  host: string;
  port: number;
  wsUrl: string;
  /** Resident memory of the server process, in bytes. */
  rss(): number;
  /** Open file descriptors of the server process. */
  fds(): number;
  alive(): boolean;
  /** Stops the process (SIGTERM) and removes its data directory. */
  close(): Promise<void>;
}

/** Starts `node dist/src/main.js` on SQLite with the test key and API key. */
export async function startWatched(env: Record<string, string> = {}): Promise<WatchedServer> {
  const dir = tempDir('charla-hostile-');
  const server = await spawnServer({
    DATABASE_URL: `sqlite:${join(dir, 'charla.db')}`,
    JWT_SECRET: SECRET,
    API_KEY,
    LOG_LEVEL: 'info',
    ...env,
  });
  const pid = server.child.pid as number;
  const u = new URL(server.url);
  return {
    ...server,
    pid,
    host: u.hostname,
    port: Number(u.port),
    wsUrl: server.url.replace(/^http/, 'ws'),
    rss() {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      return Number(m?.[1] ?? 0) * 1024;
    },
    fds() {
      return readdirSync(`/proc/${pid}/fd`).length;
    },
    alive() {
      return server.child.exitCode === null && server.child.signalCode === null;
    },
    async close() {
      await server.stop('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `check` until it returns true, or fails with `what` after `ms`. */
export async function eventually(what: string, check: () => boolean, ms = 8_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await sleep(25);
  }
}

/**
 * Asserts the process is alive and that its descriptors come back to
 * `baseline` (within `slack`) once the attack's sockets are gone.
 */
export async function assertRecovered(
  server: WatchedServer,
  baseline: { fds: number; rss: number },
  opts: { fdSlack?: number; rssSlackBytes?: number; ms?: number } = {},
): Promise<void> {
  assert.ok(server.alive(), `the server exited:\n${server.output().slice(-2000)}`);
  const fdSlack = opts.fdSlack ?? 3;
  await eventually(
    `descriptors back near ${baseline.fds} (now ${server.fds()})`,
    () => server.fds() <= baseline.fds + fdSlack,
    opts.ms ?? 8_000,
  );
  const rssSlack = opts.rssSlackBytes ?? 64 * 1024 * 1024;
  assert.ok(
    server.rss() <= baseline.rss + rssSlack,
    `RSS grew from ${mb(baseline.rss)} to ${mb(server.rss())}`,
  );
}

export const mb = (bytes: number) => `${(bytes / 1048576).toFixed(1)} MB`;

/**
 * A raw TCP connection to the server, with an error listener so resets stay
 * quiet. `halfOpen`: the peer keeps its side open after the server's FIN, as
 * a careless or hostile client may.
 */
export function rawSocket(
  server: { host: string; port: number },
  opts: { halfOpen?: boolean } = {},
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      port: server.port,
      host: server.host,
      allowHalfOpen: opts.halfOpen ?? false,
    });
    socket.on('error', () => {});
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Resets the connection (RST), as a peer that crashes or loses its network does. */
export function reset(socket: Socket): void {
  socket.resetAndDestroy();
}

/** Everything the peer sends until it closes or `ms` passes. */
export function readAll(socket: Socket, ms = 3_000): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const done = () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    };
    const timer = setTimeout(done, ms);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('close', done);
  });
}

/** Resolves once `socket` has received `pattern` (or rejects after `ms`). */
export function waitFor(socket: Socket, pattern: string | RegExp, ms = 3_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const onData = (c: Buffer) => {
      seen += c.toString('latin1');
      if (typeof pattern === 'string' ? seen.includes(pattern) : pattern.test(seen)) {
        cleanup();
        resolve(seen);
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no ${String(pattern)} within ${ms} ms; got ${JSON.stringify(seen)}`));
    }, ms);
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData);
    };
    socket.on('data', onData);
  });
}

/** A WebSocket upgrade request for `path`, with `headers` replacing the defaults (null drops one). */
export function upgradeRequest(
  path: string,
  headers: Record<string, string | null> = {},
  host = '127.0.0.1',
): string {
  const all: Record<string, string | null> = {
    Host: host,
    Upgrade: 'websocket',
    Connection: 'Upgrade',
    'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
    'Sec-WebSocket-Version': '13',
    ...headers,
  };
  const lines = Object.entries(all)
    .filter((e): e is [string, string] => e[1] !== null)
    .map(([k, v]) => `${k}: ${v}`);
  return `GET ${path} HTTP/1.1\r\n${lines.join('\r\n')}\r\n\r\n`;
}

export const Op = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

/** One masked client frame (RFC 6455 section 5.2). */
export function clientFrame(
  opcode: number,
  payload: string | Buffer = Buffer.alloc(0),
  opts: { fin?: boolean; mask?: Buffer; rsv?: number } = {},
): Buffer {
  const data = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const mask = opts.mask ?? Buffer.from([0x12, 0x34, 0x56, 0x78]);
  const len = data.length;
  const head = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = Buffer.alloc(head + 4 + len);
  out[0] = ((opts.fin ?? true) ? 0x80 : 0) | ((opts.rsv ?? 0) << 4) | opcode;
  if (len < 126) out[1] = 0x80 | len;
  else if (len < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(len), 2);
  }
  mask.copy(out, head);
  for (let i = 0; i < len; i++) out[head + 4 + i] = (data[i] as number) ^ (mask[i & 3] as number);
  return out;
}

/** Opens a raw stream-chat WebSocket (upgrade answered with 101) and returns the socket. */
export async function rawStream(
  server: { host: string; port: number },
  key: string,
  headers: Record<string, string | null> = {},
  opts: { halfOpen?: boolean } = {},
): Promise<Socket> {
  const socket = await rawSocket(server, opts);
  socket.write(upgradeRequest(`/ws/streams/${key}/`, headers));
  const head = await waitFor(socket, '\r\n\r\n');
  if (!head.startsWith('HTTP/1.1 101')) throw new Error(`upgrade refused: ${head}`);
  return socket;
}

/** Waits until the process's descriptor count has settled (two equal readings). */
export async function baselineOf(server: WatchedServer): Promise<{ fds: number; rss: number }> {
  let last = -1;
  for (let i = 0; i < 40; i++) {
    const now = server.fds();
    if (now === last) break;
    last = now;
    await sleep(50);
  }
  return { fds: server.fds(), rss: server.rss() };
}
