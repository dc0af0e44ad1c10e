/** Starting the servers under test, each pinned to core 0, and reading their memory. */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';

export type ServerKind = 'charla' | 'naive' | 'bare';

export const BENCH_SECRET = 'bench-secret-bench-secret-bench-secret';
export const BENCH_API_KEY = 'bench-api-key';
export const SERVER_CORE = '0';
export const LOADGEN_CORE = '1';

const root = fileURLToPath(new URL('..', import.meta.url));
const scripts: Record<ServerKind, string> = {
  charla: join(root, 'src/main.js'),
  naive: join(root, 'bench/servers/naive.js'),
  bare: join(root, 'bench/servers/bare.js'),
};

export interface RunningServer {
  kind: ServerKind;
  pid: number;
  port: number;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** charla with everything on: auth, rate limiting (limits raised so they do not refuse), storage, metrics. */
export function charlaEnv(dir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    DATABASE_URL: `sqlite:${join(dir, 'bench.db')}`,
    JWT_SECRET: BENCH_SECRET,
    API_KEY: BENCH_API_KEY,
    LOG_LEVEL: 'warn',
    STREAM_RATE_LIMIT: '100000000/1s',
    REQUEST_RATE_LIMIT: '100000000/1s',
    FLOOD_LIMIT: '100000000',
    ...extra,
  };
}

export async function startServer(
  kind: ServerKind,
  extraEnv: Record<string, string> = {},
  /** Extra flags for node, e.g. `--cpu-prof`. */
  nodeFlags: string[] = [],
  /** Another build's entry point instead of this one's (a baseline to compare with). */
  script: string = scripts[kind],
): Promise<RunningServer> {
  const dir = mkdtempSync(join(tmpdir(), 'charla-bench-'));
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    PORT: '0',
    ...(kind === 'charla' ? charlaEnv(dir, extraEnv) : {}),
  };
  // LOG_LEVEL=warn would hide the listening line; charla's is read at info.
  if (kind === 'charla') env.LOG_LEVEL = 'info';
  const preload = join(root, 'bench/gc-on-signal.js');
  const node = [process.execPath, ...nodeFlags, '--expose-gc', '--import', preload, script];
  const child = spawn('taskset', ['-c', SERVER_CORE, ...node], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`${kind} did not start: ${out}`)), 15_000);
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening (\d+)/.exec(out) ?? /"url":"http:\/\/[^:]+:(\d+)"/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code) => reject(new Error(`${kind} exited with ${code}: ${out}`)));
  });
  // Keep draining stdout so the server never blocks on a full pipe.
  child.stdout?.resume();
  return {
    kind,
    pid: child.pid as number,
    port,
    child,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 12_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Asks a server started by `startServer` for a full garbage collection, and lets it run. */
export async function collectGarbage(pid: number): Promise<void> {
  process.kill(pid, 'SIGUSR2');
  await new Promise((r) => setTimeout(r, 500));
}

/** Resident set size of a process, in bytes. */
export function rssOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return kb * 1024;
}

/** CPU time (user + system) a process has used, in milliseconds. */
export function cpuMsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15 of stat(5), in clock ticks (100 per second here).
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** Registers request-chat requests, each owned by `ownerId`. */
export async function putRequests(s: RunningServer, ids: string[], ownerId: string): Promise<void> {
  for (const id of ids) {
    const res = await fetch(`http://127.0.0.1:${s.port}/api/requests/${id}`, {
      method: 'PUT',
      headers: { 'x-api-key': BENCH_API_KEY, 'content-type': 'application/json' },
      body: JSON.stringify({ ownerId }),
    });
    if (res.status >= 300) throw new Error(`PUT request ${id}: ${res.status}`);
  }
}

export async function putStreams(s: RunningServer, keys: string[]): Promise<void> {
  if (s.kind !== 'charla') return;
  for (let i = 0; i < keys.length; i += 50) {
    await Promise.all(
      keys.slice(i, i + 50).map(async (key) => {
        const res = await fetch(`http://127.0.0.1:${s.port}/api/streams/${key}`, {
          method: 'PUT',
          headers: { 'x-api-key': BENCH_API_KEY, 'content-type': 'application/json' },
          body: '{}',
        });
        if (res.status >= 300) throw new Error(`PUT ${key}: ${res.status}`);
      }),
    );
  }
}

export function token(userId: string, claims: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT({ user_id: userId, username: `bench${userId}`, ...claims })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime('2h')
    .sign(new TextEncoder().encode(BENCH_SECRET));
}
