/**
 * Tools for the hostile-client suites: a real charla process whose memory and
 * file descriptors can be read from /proc, raw TCP sockets, and hand-built
 * WebSocket frames and upgrade requests.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { get } from 'node:http';
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
    // spawnServer waits for the info-level "listening" line.
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

/** A raw TCP connection to the server, with an error listener so resets stay quiet. */
export function rawSocket(
  server: { host: string; port: number },
  opts: { allowHalfOpen?: boolean } = {},
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // allowHalfOpen: the peer never sends its FIN, even after the server's.
    const socket = connect({
      port: server.port,
      host: server.host,
      allowHalfOpen: opts.allowHalfOpen ?? false,
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
  opts: { allowHalfOpen?: boolean } = {},
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

/** One frame the server sent (server frames are never masked). */
export interface ServerFrame {
  fin: boolean;
  opcode: number;
  payload: Buffer;
}

/**
 * Decodes the server's frames in `bytes` (after the HTTP response, if
 * `bytes` starts with one). A trailing partial frame is ignored.
 */
export function serverFrames(bytes: Buffer): ServerFrame[] {
  let off = 0;
  if (bytes.subarray(0, 5).toString('latin1') === 'HTTP/') {
    const end = bytes.indexOf('\r\n\r\n');
    if (end === -1) return [];
    off = end + 4;
  }
  const out: ServerFrame[] = [];
  while (bytes.length - off >= 2) {
    const b0 = bytes[off] as number;
    let len = (bytes[off + 1] as number) & 0x7f;
    let head = 2;
    if (len === 126) {
      if (bytes.length - off < 4) break;
      len = bytes.readUInt16BE(off + 2);
      head = 4;
    } else if (len === 127) {
      if (bytes.length - off < 10) break;
      len = Number(bytes.readBigUInt64BE(off + 2));
      head = 10;
    }
    if (bytes.length - off < head + len) break;
    out.push({
      fin: (b0 & 0x80) !== 0,
      opcode: b0 & 0x0f,
      payload: bytes.subarray(off + head, off + head + len),
    });
    off += head + len;
  }
  return out;
}

/** The code of the first close frame in `bytes`, 1005 for an empty one, undefined when none. */
export function closeCodeIn(bytes: Buffer): number | undefined {
  const close = serverFrames(bytes).find((f) => f.opcode === Op.close);
  if (close === undefined) return undefined;
  return close.payload.length >= 2 ? close.payload.readUInt16BE(0) : 1005;
}

/** Resolves with everything received once the server has sent a close frame (or rejects after `ms`). */
export function waitForClose(socket: Socket, ms = 3_000): Promise<{ code: number; bytes: Buffer }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const onData = (c: Buffer) => {
      chunks.push(c);
      const bytes = Buffer.concat(chunks);
      const code = closeCodeIn(bytes);
      if (code !== undefined) {
        cleanup();
        resolve({ code, bytes });
      }
    };
    const onClose = () => {
      cleanup();
      reject(
        new Error(`socket closed with no close frame; got ${Buffer.concat(chunks).length} bytes`),
      );
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(
        new Error(`no close frame within ${ms} ms; got ${Buffer.concat(chunks).length} bytes`),
      );
    }, ms);
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.once('close', onClose);
  });
}

/** Resolves once `socket` is closed (by either side). */
export function closedOf(socket: Socket): Promise<void> {
  if (socket.destroyed) return Promise.resolve();
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

/** Writes `chunk`, waiting for the socket to drain; false once the socket is gone. */
export function writeDrained(socket: Socket, chunk: Buffer | string): Promise<boolean> {
  if (socket.destroyed || !socket.writable) return Promise.resolve(false);
  if (socket.write(chunk)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      socket.off('drain', onDrain);
      socket.off('close', onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}

/** CPU time (user + system) the process has used, in milliseconds, from /proc/<pid>/stat. */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name may hold spaces; the fields after it are fixed.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks * 10; // USER_HZ is 100 on Linux.
}

/** The value of the Prometheus sample `name{labels}` at `/metrics`, 0 when absent. */
export async function metricValue(base: string, sample: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  for (const line of text.split('\n')) {
    if (line.startsWith(`${sample} `)) return Number(line.slice(sample.length + 1));
  }
  return 0;
}

/** The server's disconnect count for `reason`, over a connection of its own that is closed after. */
export function disconnects(server: { url: string }, reason: string): Promise<number> {
  // No keep-alive: a pooled connection would hold a descriptor the fd checks count.
  return new Promise((resolve, reject) => {
    get(`${server.url}/metrics`, { agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        text += c;
      });
      res.on('end', () => {
        const m = new RegExp(`charla_disconnects_total\\{reason="${reason}"\\} (\\d+)`).exec(text);
        resolve(m ? Number(m[1]) : 0);
      });
    }).on('error', reject);
  });
}
