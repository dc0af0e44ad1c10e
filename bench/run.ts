/**
 * `npm run bench`: charla against two references served by bench/ itself
 * (naive `ws`, and the bare "frame once, cork per turn" server), each pinned to
 * core 0 while load generators run pinned to core 1. Prints tables, writes
 * JSON and SVG charts under bench/out/; bench/RESULTS.md quotes a full run.
 *
 *   npm run bench                      every scenario, 3 runs each, medians
 *   npm run bench -- --quick           fewer points, 1 run: a smoke test
 *   npm run bench -- --only fanout,idle --runs 5
 *   npm run bench -- --only idle --servers charla   (a look at one server, no ratios)
 *   npm run bench -- --replot bench/out/results.json   (tables and charts of a saved run)
 *   npm run bench -- --only request --baseline main=/path/to/built/charla   (group commit against other builds;
 *       without --baseline, against REQUEST_BATCH_MAX=1; --request-databases sqlite,postgres --request-outbox off,on;
 *        --request-update-flush-ms 0,100,250 runs this build once per REQUEST_UPDATE_FLUSH_MS;
 *        --request-skip-paced leaves out the runs paced at 80%; --request-rate N paces the
 *        first runs at N acks/s instead of saturating;
 *        --request-cpu-prof DIR writes a CPU profile of each saturated run's server under DIR)
 *   npm run bench -- --only inbox --requests 100000 --messages 10000000   (the inbox at scale)
 *   npm run bench -- --only bigroom --servers bare,charla,charla-off --flush-ms 25 --cpu-prof
 *   npm run bench -- --only bigroom --bigroom-points 10000x50,10000x200   (chosen points)
 *       (--bigroom-generator native|node|node,native: the big room's viewers read by
 *        bench/native/viewers.c, built here with gcc -O2, or by the Node generator; native when
 *        gcc builds it; --bigroom-nap-us N: its pause after a small batch of reads, 0 for none)
 *   npm run bench -- --only churn --servers bare,charla,charla-nocache   (history on join from memory or the store)
 *   npm run bench -- --only join --join-rate 5000   (history on join alone, in-process, memory against store)
 *   npm run bench -- --only startup   (spawn to listening on SQLite, against node's own start)
 *   npm run bench -- --only limits   (stream rate limits counted in memory against Redis: 200 users
 *       posting on 20 streams, saturated and paced; and the take alone, in-process; --limits-posters N
 *       --limits-streams N --limits-window N --limits-rate N --limits-takes N; --limits-slow S: slow mode
 *       of S seconds on every stream; --limits-counters redis: Redis only; --limits-loads window,2000:
 *       saturated (window) and paced loads to run, none: the take alone only; --baseline NAME=DIR: other
 *       built trees too, interleaved; Redis at BENCH_REDIS_URL or 127.0.0.1:6379; --cpu-prof adds a CPU
 *       profile of the Redis runs, counted and not)
 *       (charla-off: charla with STREAM_FLUSH_MS=0; charla-nocache: STREAM_HISTORY_CACHE_STREAMS=0;
 *        --flush-ms sets charla's STREAM_FLUSH_MS;
 *        --cpu-prof writes a CPU profile of charla at the largest big-room point, and of the
 *        plain and moderated streams with --only moderated)
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import pg from 'pg';
import { inboxScenario } from './inbox.js';
import { joinScenario } from './join.js';
import type { LimitsJob } from './limits-load.js';
import type {
  ChurnReport,
  FanoutJob,
  FanoutReport,
  Job,
  LimitsReport,
  RequestReport,
} from './loadgen.js';
import { summariseProfile } from './profile.js';
import { fmt, latencyStats, lineChart, median, type Series, table } from './report.js';
import {
  BENCH_API_KEY,
  collectGarbage,
  cpuMsOf,
  LOADGEN_CORE,
  putRequests,
  putStreams,
  type RunningServer,
  rssOf,
  SERVER_CORE,
  type ServerKind,
  startServer,
  token,
} from './servers.js';
import { startupScenario } from './startup.js';
import { dropPrefix, type TakesPoint, type TakesSpec } from './takes.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const srcBench = join(here, '../../bench');
const args = process.argv.slice(2);
const flag = (name: string) => args.includes(`--${name}`);
const option = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i === -1 ? undefined : args[i + 1];
};
const quick = flag('quick');
const runs = Number(option('runs') ?? (quick ? 1 : 3));
const only = option('only')?.split(',');
/** The servers under test: the kinds of servers.ts, and charla with write coalescing off. */
type BenchKind = ServerKind | 'charla-off' | 'charla-nocache';
const KINDS = (option('servers')?.split(',') ?? ['naive', 'bare', 'charla']) as BenchKind[];
const flushMs = option('flush-ms');
/** Under the 20,000 open files a process may hold, with room for the rest. */
const MAX_CONNS_PER_GENERATOR = 15_000;
const LOCAL_ADDRESSES = Array.from({ length: 16 }, (_, i) => `127.0.0.${i + 2}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Row = Record<string, number | string>;
const results: Record<string, Row[]> = {};

/** What the server did during the first generator's measurement window. */
interface ServerWindow {
  cpuPercent: number;
  /** Called as the window opens and closes, to count what else happened in it. */
  onEdge?: (edge: 'start' | 'end') => void;
}

async function runGenerators(
  jobs: Job[],
  serverPid?: number,
  window: ServerWindow = { cpuPercent: Number.NaN },
  onReady: () => void = () => {},
): Promise<Array<FanoutReport | ChurnReport | RequestReport | LimitsReport>> {
  const procs = jobs.map((job) => {
    const child = spawn(
      'taskset',
      ['-c', LOADGEN_CORE, process.execPath, join(here, 'loadgen.js')],
      {
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      },
    );
    child.send(job);
    return child;
  });
  if (serverPid !== undefined) {
    let cpu0 = 0;
    let t0 = 0;
    procs[0]?.on('message', (m) => {
      if (m === 'window-start') {
        cpu0 = cpuMsOf(serverPid);
        t0 = performance.now();
        window.onEdge?.('start');
      } else if (m === 'window-end') {
        window.cpuPercent = ((cpuMsOf(serverPid) - cpu0) / (performance.now() - t0)) * 100;
        window.onEdge?.('end');
      }
    });
  }
  const ready = procs.map(
    (c) =>
      new Promise<void>((resolve, reject) => {
        c.on('message', (m) => m === 'ready' && resolve());
        c.once('exit', (code) => reject(new Error(`load generator exited with ${code}`)));
      }),
  );
  const reports = procs.map(
    (c) =>
      new Promise<FanoutReport | ChurnReport | RequestReport | LimitsReport>((resolve, reject) => {
        c.on('message', (m: unknown) => {
          if (typeof m !== 'object' || m === null) return;
          if ('report' in m) resolve((m as { report: FanoutReport | ChurnReport }).report);
          if ('error' in m) reject(new Error(String((m as { error: string }).error)));
        });
      }),
  );
  await Promise.all(ready);
  onReady();
  for (const c of procs) c.send('start');
  return Promise.all(reports);
}

/** Samples the server's RSS every 200 ms until `done` resolves; returns the peak. */
async function peakRss<T>(pid: number, done: Promise<T>): Promise<{ value: T; peak: number }> {
  let peak = 0;
  let finished = false;
  const value = done.finally(() => {
    finished = true;
  });
  while (!finished) {
    try {
      peak = Math.max(peak, rssOf(pid));
    } catch {}
    await Promise.race([sleep(200), value.catch(() => {})]);
  }
  return { value: await value, peak };
}

interface FanoutSpec {
  streams: number;
  viewersPerStream: number;
  posters: number;
  rate: number;
  window?: number;
  messageBytes?: number;
  slowFraction?: number;
  durationMs?: number;
  /** Each viewer decodes every n-th frame for latency (default 50). */
  sampleEvery?: number;
  /** charla's environment on top of the bench defaults. */
  env?: Record<string, string>;
  /** Token claims of the posters (e.g. a role). */
  posterClaims?: Record<string, unknown>;
  /** Called once the streams exist, before any client connects. */
  setup?: (server: RunningServer, keys: string[]) => Promise<void>;
  refusedPosters?: { count: number; rate: number };
  /** Extra flags for the server's node (a CPU profile). */
  nodeFlags?: string[];
  /** Who reads the viewers: the Node generator (default) or bench/native/viewers.c. */
  generator?: Generator;
}

type Generator = 'node' | 'native';

/** The native reader's pause after a small batch of events (its default: 200 µs). */
const napUs = option('bigroom-nap-us');
let viewersBinary: string | undefined;
/** Builds bench/native/viewers.c once per bench run; undefined when gcc cannot. */
function nativeViewers(): string | undefined {
  if (viewersBinary !== undefined) return viewersBinary || undefined;
  const out = join(srcBench, 'out', 'viewers');
  mkdirSync(join(srcBench, 'out'), { recursive: true });
  // Built aside and renamed: another bench run may be executing the previous binary.
  const built = `${out}.${process.pid}`;
  try {
    execFileSync('gcc', ['-O2', '-o', built, join(srcBench, 'native', 'viewers.c')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    renameSync(built, out);
    viewersBinary = out;
  } catch (err) {
    process.stderr.write(`  gcc could not build the native viewers: ${String(err)}\n`);
    viewersBinary = '';
  }
  return viewersBinary || undefined;
}

/** What the native viewers print: the viewers' part of a fan-out report, and more. */
type NativeReport = Pick<
  FanoutReport,
  | 'viewers'
  | 'framesInWindow'
  | 'windowMs'
  | 'cpuPercent'
  | 'latencies'
  | 'received'
  | 'readingViewers'
> & {
  /** Median latency at each tenth of the viewers in join order. */
  p50ByJoinTenth: number[];
};

/**
 * Every viewer of a fan-out in one native process pinned to the generators'
 * core: connected once `ready`, the window's edges are relayed to it on stdin,
 * and `report()` has it drain and answer with its counts.
 */
async function startNativeViewers(
  port: number,
  streams: string[],
  perStream: number,
  sampleEvery: number,
) {
  const binary = nativeViewers();
  if (!binary) throw new Error('no native viewers binary');
  const child: ChildProcess = spawn(
    'taskset',
    [
      '-c',
      LOADGEN_CORE,
      binary,
      ...['--port', String(port), '--streams', streams.join(',')],
      ...['--per-stream', String(perStream), '--sample-every', String(sampleEvery)],
      ...['--addresses', LOCAL_ADDRESSES.join(',')],
      ...(napUs === undefined ? [] : ['--nap-us', napUs]),
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  let out = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  child.stdout?.on('data', (c: Buffer) => {
    out += c.toString();
  });
  await new Promise<void>((resolve, reject) => {
    const check = () => {
      if (out.startsWith('ready\n')) {
        child.stdout?.off('data', check);
        resolve();
      }
    };
    child.stdout?.on('data', check);
    exited.then((code) => reject(new Error(`native viewers exited with ${code}`)));
  });
  return {
    command: (line: string) => child.stdin?.write(`${line}\n`),
    async report(): Promise<NativeReport> {
      child.stdin?.end('drain\n');
      const code = await exited;
      if (code !== 0) throw new Error(`native viewers exited with ${code}`);
      return JSON.parse(out.slice('ready\n'.length)) as NativeReport;
    },
    pid: child.pid as number,
    kill: () => child.kill(),
  };
}

function launch(kind: BenchKind, nodeFlags: string[] = [], extra: Record<string, string> = {}) {
  if (kind === 'charla-off') {
    return startServer('charla', { ...extra, STREAM_FLUSH_MS: '0' }, nodeFlags);
  }
  if (kind === 'charla-nocache') {
    return startServer('charla', { ...extra, STREAM_HISTORY_CACHE_STREAMS: '0' }, nodeFlags);
  }
  const env: Record<string, string> =
    kind === 'charla' && flushMs !== undefined ? { STREAM_FLUSH_MS: flushMs } : {};
  return startServer(kind, { ...extra, ...env }, nodeFlags);
}

/** Time a thread has waited on a run queue, ready to run (schedstat's second field), in ms. */
function runqueueWaitMs(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]) / 1e6;
  } catch {
    return Number.NaN;
  }
}

/** Viewers charla closed for not reading (NaN for the references): tells drops from a backlog. */
async function slowConsumers(server: { kind: ServerKind; port: number }): Promise<number> {
  if (server.kind !== 'charla') return Number.NaN;
  try {
    const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
    return Number(/charla_disconnects_total\{reason="slow_consumer"\} (\d+)/.exec(text)?.[1] ?? 0);
  } catch {
    return Number.NaN;
  }
}

async function fanout(kind: BenchKind, spec: FanoutSpec) {
  // On a shared machine the figures mean little without what else was running.
  const load1 = loadavg()[0] as number;
  const server = await launch(kind, spec.nodeFlags, spec.env);
  let native: Awaited<ReturnType<typeof startNativeViewers>> | undefined;
  try {
    const keys = Array.from({ length: spec.streams }, (_, i) => `s${i}`);
    await putStreams(server, keys);
    await spec.setup?.(server, keys);
    const tokens = await Promise.all(
      Array.from({ length: spec.posters }, (_, i) => token(`p${i}`, spec.posterClaims)),
    );
    const refusedTokens = await Promise.all(
      Array.from({ length: spec.refusedPosters?.count ?? 0 }, (_, i) => token(`banned${i}`)),
    );
    const total = spec.streams * spec.viewersPerStream;
    const nv =
      spec.generator === 'native'
        ? await startNativeViewers(server.port, keys, spec.viewersPerStream, spec.sampleEvery ?? 50)
        : undefined;
    native = nv;
    // With native viewers the Node generator keeps only the posters.
    const generators = nv ? 1 : Math.ceil(total / MAX_CONNS_PER_GENERATOR);
    const streamsPer = Math.ceil(spec.streams / generators);
    const jobs: FanoutJob[] = [];
    for (let g = 0; g < generators; g++) {
      const mine = spec.streams === 1 ? keys : keys.slice(g * streamsPer, (g + 1) * streamsPer);
      jobs.push({
        mode: 'fanout',
        port: server.port,
        streams: nv ? [] : mine,
        viewersPerStream: nv
          ? 0
          : spec.streams === 1
            ? Math.ceil(spec.viewersPerStream / generators)
            : spec.viewersPerStream,
        slowFraction: spec.slowFraction ?? 0,
        posters:
          g === 0
            ? tokens.map((t, i) => ({ stream: keys[i % keys.length] as string, token: t }))
            : [],
        rate: spec.rate,
        window: spec.window ?? 32,
        messageBytes: spec.messageBytes ?? 100,
        warmupMs: 1000,
        durationMs: spec.durationMs ?? (quick ? 3000 : 5000),
        sampleEvery: spec.sampleEvery ?? 50,
        localAddresses: LOCAL_ADDRESSES,
        ...(g === 0 && spec.refusedPosters
          ? { refusedPosters: { tokens: refusedTokens, rate: spec.refusedPosters.rate } }
          : {}),
      });
    }
    const waitAt = { start: 0, end: 0, startAt: 0, endAt: 0, viewersstart: 0, viewersend: 0 };
    const writesAt = { start: 0, end: 0 };
    const serverWindow: ServerWindow = {
      cpuPercent: Number.NaN,
      onEdge: (edge) => {
        if (nv) nv.command(edge === 'start' ? 'open' : 'close');
        waitAt[edge] = runqueueWaitMs(server.pid);
        writesAt[edge] = writeCallsOf(server.pid);
        waitAt[`${edge}At`] = performance.now();
        waitAt[`viewers${edge}`] = nv ? runqueueWaitMs(nv.pid) : Number.NaN;
      },
    };
    const generated = runGenerators(jobs, server.pid, serverWindow).then(async (r) => {
      if (!nv) return { reports: r as FanoutReport[], viewerCpu: Number.NaN, byJoin: [] };
      const posts = r[0] as FanoutReport;
      const seen = await nv.report();
      // One report as the Node generator's: the posters' counts, the native viewers' frames,
      // and the CPU of both (they share the generators' core).
      const merged: FanoutReport = {
        ...posts,
        ...seen,
        accepted: posts.accepted,
        cpuPercent: posts.cpuPercent + seen.cpuPercent,
      };
      return { reports: [merged], viewerCpu: seen.cpuPercent, byJoin: seen.p50ByJoinTenth };
    });
    const {
      value: { reports, viewerCpu, byJoin },
      peak,
    } = await peakRss(server.pid, generated);
    const windowMs = median(reports.map((r) => r.windowMs));
    const deliveries = reports.reduce((n, r) => n + r.framesInWindow, 0) / (windowMs / 1000);
    const lat = latencyStats(reports.flatMap((r) => r.latencies));
    const slowClosed = await slowConsumers(server);
    const accepted = reports[0]?.accepted ?? {};
    let lost = 0;
    for (const r of reports) {
      for (const [stream, got] of Object.entries(r.received)) {
        // Each viewer's first frame is its `auth` answer, not a chat.
        const readers = r.readingViewers[stream] ?? 0;
        lost += (accepted[stream] ?? 0) * readers - (got - readers);
      }
    }
    return {
      deliveries,
      p50: lat.p50,
      p99: lat.p99,
      max: lat.max,
      lost,
      rssMB: peak / 2 ** 20,
      genCpu: Math.max(...reports.map((r) => r.cpuPercent)),
      // The native viewers' own share of genCpu (NaN with the Node generator).
      viewerCpu,
      // The first and the last tenth of the viewers to join (native only): the time a chat
      // waits before its fan-out starts, and that plus the fan-out itself.
      p50FirstTenth: byJoin[0] ?? Number.NaN,
      p50LastTenth: byJoin.at(-1) ?? Number.NaN,
      serverCpu: serverWindow.cpuPercent,
      // Share of the window the server's event loop was ready to run but another process had
      // its core: on a shared machine, latency that is neither the server's work nor its waits.
      serverRunqueue: ((waitAt.end - waitAt.start) / (waitAt.endAt - waitAt.startAt)) * 100,
      // The same of the native viewers: a frame they are ready to read but cannot is late too.
      viewerRunqueue:
        ((waitAt.viewersend - waitAt.viewersstart) / (waitAt.endAt - waitAt.startAt)) * 100,
      // write(2)-family calls of the server per second: with one stream, about viewers × writes
      // per viewer, so their ratio to the viewers tells how often each viewer is written to.
      serverWritesPerSec:
        ((writesAt.end - writesAt.start) * 1000) / (waitAt.endAt - waitAt.startAt),
      // Server CPU time per delivery: comparable across runs on a loaded machine,
      // where a server that is not scheduled shows as latency, not as CPU.
      cpuUsPerDelivery: (serverWindow.cpuPercent * 10_000) / deliveries,
      sent: reports[0]?.sentInWindow ?? 0,
      slowClosed,
      refused: reports[0]?.posterErrors ?? 0,
      refusedSent: reports[0]?.refusedSent ?? 0,
      refusedAnswers: reports.reduce((n, r) => n + r.refusedAnswers, 0),
      load1,
    };
  } finally {
    native?.kill();
    await server.stop();
  }
}

async function idle(kind: BenchKind, viewers: number) {
  const server = await launch(kind);
  try {
    await putStreams(server, ['idle']);
    await sleep(500);
    await collectGarbage(server.pid);
    const before = rssOf(server.pid);
    const generators = Math.ceil(viewers / MAX_CONNS_PER_GENERATOR);
    const jobs: FanoutJob[] = Array.from({ length: generators }, () => ({
      mode: 'fanout',
      port: server.port,
      streams: ['idle'],
      viewersPerStream: Math.ceil(viewers / generators),
      slowFraction: 0,
      posters: [],
      rate: 1,
      window: 1,
      messageBytes: 10,
      warmupMs: 4000,
      durationMs: 1000,
      sampleEvery: 0,
      localAddresses: LOCAL_ADDRESSES,
    }));
    // Generators answer 'ready' once every connection is open and hold them
    // through the warm-up; memory is read in the middle of it, after a full GC.
    let connected: () => void = () => {};
    const allConnected = new Promise<void>((r) => {
      connected = r;
    });
    const done = runGenerators(jobs, undefined, undefined, connected);
    await allConnected;
    await sleep(1000);
    await collectGarbage(server.pid);
    const after = rssOf(server.pid);
    await done;
    return { perConnKB: (after - before) / viewers / 1024, rssMB: after / 2 ** 20 };
  } finally {
    await server.stop();
  }
}

async function churn(kind: BenchKind, concurrency: number) {
  const server = await launch(kind);
  try {
    await putStreams(server, ['churn']);
    const tokens = await Promise.all(Array.from({ length: 200 }, (_, i) => token(`c${i}`)));
    const serverWindow: ServerWindow = { cpuPercent: Number.NaN };
    const [report] = (await runGenerators(
      [
        {
          mode: 'churn',
          port: server.port,
          stream: 'churn',
          tokens,
          concurrency,
          warmupMs: 1000,
          durationMs: quick ? 3000 : 5000,
          localAddresses: LOCAL_ADDRESSES,
        },
      ],
      server.pid,
      serverWindow,
    )) as ChurnReport[];
    if (!report) throw new Error('no churn report');
    const lat = latencyStats(report.latencies);
    const hist = latencyStats(report.historyLatencies);
    const perSec = report.cyclesInWindow / (report.windowMs / 1000);
    return {
      perSec,
      p50: lat.p50,
      p99: lat.p99,
      historyP50: hist.p50,
      historyP99: hist.p99,
      failures: report.failures,
      genCpu: report.cpuPercent,
      serverCpu: serverWindow.cpuPercent,
      // Server CPU time per cycle: comparable across runs on a shared machine,
      // where a server that is not scheduled shows as fewer cycles, not as CPU.
      cpuMsPerCycle: (serverWindow.cpuPercent * 10) / perSec,
    };
  } finally {
    await server.stop();
  }
}

/** Redis for the limits scenario (the machine's own); every run takes a prefix of its own. */
const LIMITS_REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';

interface LimitsVariant {
  /** Counters (and fan-out) in Redis: REDIS_URL set. */
  redis: boolean;
  /** Posters with the MODERATOR role: never counted, the same chats otherwise. */
  moderators: boolean;
  /** Chats/s in all; 0: as fast as each poster's window allows. */
  rate: number;
}

/** Redis's own CPU time so far (INFO cpu), in ms: the whole server, whoever else uses it. */
async function redisCpuMs(client: Redis): Promise<number> {
  const info = await client.info('cpu');
  const field = (name: string) => Number(new RegExp(`${name}:([\\d.]+)`).exec(info)?.[1]);
  return (field('used_cpu_sys') + field('used_cpu_user')) * 1000;
}

/** write(2)-family system calls a process has made (`syscw` of /proc/PID/io). */
function writeCallsOf(pid: number): number {
  return Number(/syscw: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? Number.NaN);
}

/**
 * Scenario: stream rate limits on the hot path of posting. Users who are not
 * moderators post on several streams, each with a window of chats in flight,
 * a few viewers per stream read; every chat is one take of the rate limit.
 */
async function limitsRun(v: LimitsVariant, nodeFlags: string[] = [], build?: string) {
  const prefix = `charla_bench_${randomBytes(4).toString('hex')}:`;
  const redis = v.redis ? new Redis(LIMITS_REDIS_URL) : undefined;
  const server = await startServer(
    'charla',
    v.redis ? { REDIS_URL: LIMITS_REDIS_URL, REDIS_PREFIX: prefix } : {},
    nodeFlags,
    ...(build === undefined ? [] : [join(build, 'dist/src/main.js')]),
  );
  try {
    const streams = Number(option('limits-streams') ?? 20);
    const posters = Number(option('limits-posters') ?? 200);
    const keys = Array.from({ length: streams }, (_, i) => `l${i}`);
    await putStreams(server, keys);
    // `--limits-slow S`: slow mode on every stream, so each counted chat is a slow-mode take as well.
    const slow = Number(option('limits-slow') ?? 0);
    if (slow > 0) {
      for (const key of keys) {
        const res = await fetch(`http://127.0.0.1:${server.port}/api/streams/${key}`, {
          method: 'PATCH',
          headers: { 'x-api-key': BENCH_API_KEY, 'content-type': 'application/json' },
          body: JSON.stringify({ slowModeSeconds: slow }),
        });
        if (res.status >= 300) throw new Error(`PATCH ${key}: ${res.status}`);
      }
    }
    const tokens = await Promise.all(
      Array.from({ length: posters }, (_, i) =>
        token(`u${i}`, v.moderators ? { role: 'MODERATOR' } : {}),
      ),
    );
    const redisAt: Record<'start' | 'end', Promise<number>> = {
      start: Promise.resolve(Number.NaN),
      end: Promise.resolve(Number.NaN),
    };
    const writesAt = { start: 0, end: 0 };
    const serverWindow: ServerWindow = {
      cpuPercent: Number.NaN,
      onEdge: (edge) => {
        writesAt[edge] = writeCallsOf(server.pid);
        if (redis) redisAt[edge] = redisCpuMs(redis);
      },
    };
    const job: LimitsJob = {
      mode: 'limits',
      port: server.port,
      posters: tokens.map((t, i) => ({ stream: keys[i % keys.length] as string, token: t })),
      streams: keys,
      viewersPerStream: 2,
      window: Number(option('limits-window') ?? 8),
      rate: v.rate,
      messageBytes: 100,
      warmupMs: 1000,
      durationMs: quick ? 3000 : 5000,
      localAddresses: LOCAL_ADDRESSES,
    };
    const [report] = (await runGenerators([job], server.pid, serverWindow)) as LimitsReport[];
    if (!report) throw new Error('no limits report');
    const seconds = report.windowMs / 1000;
    const chatsPerSec = report.acceptedInWindow / seconds;
    const lat = latencyStats(report.latencies);
    const redisMs = (await redisAt.end) - (await redisAt.start);
    return {
      chatsPerSec,
      p50: lat.p50,
      p99: lat.p99,
      max: lat.max,
      refused: report.refusedInWindow,
      viewerFramesPerSec: report.viewerFramesInWindow / seconds,
      serverCpu: serverWindow.cpuPercent,
      genCpu: report.cpuPercent,
      // CPU per chat: comparable across runs on a shared machine, unlike chats/s.
      cpuUsPerChat: (serverWindow.cpuPercent * 10_000) / Math.max(1, chatsPerSec),
      redisCpuUsPerChat: (redisMs * 1000) / Math.max(1, report.acceptedInWindow),
      // write(2)-family system calls of the server: to viewers, to Redis, to SQLite.
      writesPerChat: (writesAt.end - writesAt.start) / Math.max(1, report.acceptedInWindow),
    };
  } finally {
    await server.stop();
    if (redis) {
      await dropPrefix(redis, prefix);
      redis.disconnect();
    }
  }
}

/** `StreamLimits.take` alone (bench/takes.ts), in a process pinned like a server. */
function takesRun(spec: TakesSpec): Promise<TakesPoint[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'taskset',
      ['-c', SERVER_CORE, process.execPath, join(here, 'takes.js'), JSON.stringify(spec)],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
    });
    child.once('exit', (code) =>
      code === 0
        ? resolve(JSON.parse(out) as TakesPoint[])
        : reject(new Error(`takes exited with ${code}`)),
    );
  });
}

/** Slow mode on `key` and `banned` users banned from it, through the server API. */
async function moderate(server: RunningServer, key: string, banned: number): Promise<void> {
  const call = async (method: string, path: string, body: unknown) => {
    const res = await fetch(`http://127.0.0.1:${server.port}${path}`, {
      method,
      headers: { 'x-api-key': BENCH_API_KEY, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status}`);
  };
  await call('PATCH', `/api/streams/${key}`, { slowModeSeconds: 30 });
  for (let i = 0; i < banned; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, banned - i) }, (_, j) =>
        call('PUT', `/api/streams/${key}/bans/banned${i + j}`, {}),
      ),
    );
  }
}

/** PostgreSQL for the request-chat scenario: the machine's server, a schema of the run's own. */
const BENCH_PG_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/**
 * Scenario 5: durable request-chat messages. 50 requests, a LAB socket sending
 * each message awaiting its acknowledgement before the next, the owning teacher receiving.
 */
async function requestChat(
  database: 'sqlite' | 'postgres',
  watchers = 0,
  options: {
    webhooks?: boolean;
    /** Paced at this many messages/s in all; absent: as fast as acknowledgements come. */
    rate?: number;
    env?: Record<string, string>;
    /** Another build's `dist/src/main.js`. */
    script?: string | undefined;
    /** With `--request-cpu-prof DIR`: the server's CPU profile goes to DIR/profile. */
    profile?: string;
  } = {},
) {
  const profDir = option('request-cpu-prof');
  const nodeFlags =
    profDir && options.profile
      ? ['--cpu-prof', `--cpu-prof-dir=${join(profDir, options.profile)}`]
      : [];
  const schema = `charla_bench_${randomBytes(4).toString('hex')}`;
  const env: Record<string, string> = { ...options.env };
  if (database === 'postgres') {
    const url = new URL(BENCH_PG_URL);
    url.searchParams.set('schema', schema);
    env.DATABASE_URL = url.toString();
  }
  const hooks = (options.webhooks ?? flag('webhooks')) ? await webhookSink() : undefined;
  if (hooks) {
    env.WEBHOOK_URL = hooks.url;
    env.WEBHOOK_SECRET = `whsec_${randomBytes(32).toString('base64')}`;
  }
  const server = await startServer('charla', env, nodeFlags, options.script);
  try {
    const requests = Array.from({ length: 50 }, () => randomBytes(12).toString('hex'));
    await putRequests(server, requests, 'bench-teacher');
    // Webhooks received in the window: below one per ack, delivery fell behind
    // and CPU per ack leaves out part of its cost.
    const hooksAt = { start: 0, end: 0 };
    const serverWindow: ServerWindow = {
      cpuPercent: Number.NaN,
      onEdge: (edge) => {
        hooksAt[edge] = hooks?.received() ?? 0;
      },
    };
    const [report] = (await runGenerators(
      [
        {
          mode: 'request',
          port: server.port,
          requests,
          labToken: await token('bench-lab', { role: 'LAB' }),
          teacherToken: await token('bench-teacher', { role: 'TEACHER' }),
          window: 1,
          runId: randomBytes(6).toString('hex'),
          warmupMs: 1000,
          durationMs: quick ? 3000 : 8000,
          watchers,
          ...(options.rate ? { rate: options.rate } : {}),
        },
      ],
      server.pid,
      serverWindow,
    )) as RequestReport[];
    if (!report) throw new Error('no request-chat report');
    const lat = latencyStats(report.latencies);
    const seconds = report.windowMs / 1000;
    return {
      acksPerSec: report.acksInWindow / seconds,
      p50: lat.p50,
      p99: lat.p99,
      max: lat.max,
      errors: report.errors,
      deliveredPerSec: report.deliveredInWindow / seconds,
      // Each message reaches its teacher's socket (and every watcher): with
      // nothing lost, deliveries per ack are 1 + watchers.
      deliveredPerAck: report.deliveredInWindow / Math.max(1, report.acksInWindow),
      // `requestUpdated` events per ack, over every socket of the run.
      updatesPerAck: report.updatesInWindow / Math.max(1, report.acksInWindow),
      genCpu: report.cpuPercent,
      serverCpu: serverWindow.cpuPercent,
      // CPU time per message: steadier than rates on a machine shared with other work.
      cpuUsPerAck:
        (serverWindow.cpuPercent * 10 * report.windowMs) / Math.max(1, report.acksInWindow),
      ...(hooks
        ? {
            webhooksReceived: hooks.received(),
            webhooksPerAck: (hooksAt.end - hooksAt.start) / Math.max(1, report.acksInWindow),
          }
        : {}),
    };
  } finally {
    await server.stop();
    await hooks?.close();
    if (database === 'postgres') {
      const client = new pg.Client({ connectionString: BENCH_PG_URL });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    }
  }
}

/** A webhook receiver that answers 204 to everything and counts; not pinned, it runs here. */
async function webhookSink() {
  let received = 0;
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      received++;
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`,
    received: () => received,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Runs `fn` for every server kind `runs` times, interleaved, and keeps the medians. */
async function compare<T extends Record<string, number>>(
  label: string,
  fn: (kind: BenchKind) => Promise<T>,
): Promise<Record<BenchKind, T>> {
  const all: Record<string, T[]> = {};
  for (let r = 0; r < runs; r++) {
    for (const kind of KINDS) {
      const res = await fn(kind);
      all[kind] = [...(all[kind] ?? []), res];
      process.stderr.write(
        `  ${label} ${kind} run ${r + 1}: ${JSON.stringify(res, (_k, v) => (typeof v === 'number' ? Number(v.toFixed(2)) : v))}\n`,
      );
    }
  }
  const out = {} as Record<BenchKind, T>;
  for (const kind of KINDS) {
    const list = all[kind] as T[];
    const keys = Object.keys(list[0] as T) as Array<keyof T>;
    out[kind] = Object.fromEntries(
      keys.map((k) => [k, median(list.map((x) => x[k] as number))]),
    ) as T;
  }
  return out;
}

function record(scenario: string, row: Row): void {
  results[scenario] = [...(results[scenario] ?? []), row];
}

const want = (name: string) => !only || only.includes(name);
const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(2)}×` : '—');

async function main(): Promise<void> {
  const replot = option('replot');
  if (replot !== undefined) {
    // Tables and charts again from a saved results.json, without running anything.
    Object.assign(results, JSON.parse(readFileSync(replot, 'utf8')).results);
    const outDir = join(srcBench, 'out');
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, 'tables.md'), renderTables());
    writeCharts(outDir);
    process.stdout.write(`tables and charts in ${outDir}\n`);
    return;
  }
  const started = new Date().toISOString();
  process.stderr.write(`charla bench: ${runs} run(s) per point, medians; quick=${quick}\n`);

  if (want('fanout')) {
    const only = option('fanout-viewers')?.split(',').map(Number);
    for (const viewers of only ?? (quick ? [2000] : [500, 1000, 2000, 4000])) {
      const m = await compare(`fanout ${viewers}`, (k) =>
        fanout(k, { streams: 1, viewersPerStream: viewers, posters: 4, rate: 0 }),
      );
      for (const kind of KINDS) record('fanout', { viewers, server: kind, ...m[kind] });
    }
  }
  if (want('latency')) {
    const m = await compare('latency 1000x100/s', (k) =>
      fanout(k, { streams: 1, viewersPerStream: 1000, posters: 2, rate: 100 }),
    );
    for (const kind of KINDS)
      record('latency', { viewers: 1000, rate: 100, server: kind, ...m[kind] });
  }
  if (want('streams')) {
    const m = await compare('500 streams x 20', (k) =>
      // A viewer of one of 500 streams sees ~5 chats/s: sample every one of them.
      fanout(k, { streams: 500, viewersPerStream: 20, posters: 500, rate: 2500, sampleEvery: 1 }),
    );
    for (const kind of KINDS)
      record('streams', { streams: 500, viewers: 10_000, server: kind, ...m[kind] });
  }
  if (want('idle')) {
    const n = quick ? 5000 : 15_000;
    const m = await compare(`idle ${n}`, (k) => idle(k, n));
    for (const kind of KINDS) record('idle', { connections: n, server: kind, ...m[kind] });
  }
  if (want('churn')) {
    const m = await compare('churn', (k) => churn(k, 64));
    for (const kind of KINDS) record('churn', { concurrency: 64, server: kind, ...m[kind] });
  }
  if (want('join')) {
    // History on join alone, in-process: from memory, and from the store as before.
    const rate = Number(option('join-rate') ?? 5000);
    for (const [variant, env] of [
      ['cache', {}],
      ['store', { STREAM_HISTORY_CACHE_STREAMS: '0' }],
    ] as const) {
      const list: Array<Record<string, number>> = [];
      for (let r = 0; r < runs; r++) {
        const res = await joinScenario({
          rate,
          chatRate: 100,
          durationMs: quick ? 3000 : 5000,
          env,
        });
        list.push(res);
        process.stderr.write(`  join ${variant} run ${r + 1}: ${JSON.stringify(res)}\n`);
      }
      const keys = Object.keys(list[0] ?? {});
      const m = Object.fromEntries(keys.map((k) => [k, median(list.map((x) => x[k] as number))]));
      record('join', { variant, rate, server: 'charla', ...m });
    }
  }
  if (want('startup')) {
    const { charla, node } = await startupScenario(quick ? 3 : 7);
    for (const [server, list] of [
      ['charla', charla],
      ['node', node],
    ] as const) {
      process.stderr.write(`  startup ${server}: ${JSON.stringify(list)}\n`);
      record('startup', {
        server,
        wallMs: median(list.map((x) => x.wallMs)),
        cpuMs: median(list.map((x) => x.cpuMs)),
      });
    }
  }
  if (want('slow')) {
    for (const slowFraction of [0, 0.1]) {
      const m = await compare(`slow ${slowFraction}`, (k) =>
        fanout(k, {
          streams: 1,
          viewersPerStream: 1000,
          posters: 2,
          rate: 200,
          messageBytes: 400,
          slowFraction,
          durationMs: quick ? 4000 : 8000,
        }),
      );
      for (const kind of KINDS) record('slow', { slowFraction, server: kind, ...m[kind] });
    }
  }

  if (want('moderated')) {
    // The classroom's cost: slow mode on, 1,000 banned users posting into the
    // stream they watch, moderators posting at full speed; against charla's
    // plain fan-out to as many viewers in the same run.
    const viewers = 2000;
    const plain = () =>
      fanout('charla', { streams: 1, viewersPerStream: viewers, posters: 4, rate: 0 });
    const moderated = (env: Record<string, string> = {}) =>
      fanout('charla', {
        streams: 1,
        viewersPerStream: viewers,
        posters: 4,
        rate: 0,
        env,
        posterClaims: { role: 'MODERATOR' },
        refusedPosters: { count: 1000, rate: 1000 },
        setup: (server, keys) => moderate(server, keys[0] as string, 1000),
      });
    const variants: Array<[string, () => Promise<Record<string, number>>]> = [
      ['plain', plain],
      ['moderated', () => moderated()],
    ];
    if (process.env.BENCH_REDIS_URL) {
      const redis = { REDIS_URL: process.env.BENCH_REDIS_URL, REDIS_PREFIX: `bench${Date.now()}:` };
      variants.push(['moderated, Redis limits', () => moderated(redis)]);
    }
    // Interleaved (plain, moderated, plain, …): on a shared machine neighbours'
    // load changes over minutes, and each run's ratio compares like with like.
    const lists = variants.map(() => [] as Array<Record<string, number>>);
    for (let r = 0; r < runs; r++) {
      for (const [i, [variant, run]] of variants.entries()) {
        const res = await run();
        lists[i]?.push(res);
        process.stderr.write(`  moderated ${variant} run ${r + 1}: ${JSON.stringify(res)}\n`);
      }
      const [plainRun, moderatedRun] = [lists[0]?.[r], lists[1]?.[r]];
      if (plainRun?.deliveries && moderatedRun?.deliveries) {
        const ratio = moderatedRun.deliveries / plainRun.deliveries;
        const cpu = (moderatedRun.cpuUsPerDelivery ?? 0) / (plainRun.cpuUsPerDelivery ?? 1);
        process.stderr.write(
          `  moderated / plain, run ${r + 1}: ${ratio.toFixed(2)} deliveries, ${cpu.toFixed(2)} CPU per delivery\n`,
        );
      }
    }
    for (const [i, [variant]] of variants.entries()) {
      const list = lists[i] ?? [];
      const keys = Object.keys(list[0] ?? {});
      const m = Object.fromEntries(keys.map((k) => [k, median(list.map((x) => x[k] as number))]));
      record('moderated', { variant, viewers, server: 'charla', ...m });
    }
    if (flag('cpu-prof')) {
      // Where the moderated stream's time goes, next to the plain fan-out's.
      for (const [variant, env] of [
        ['plain', undefined],
        ['moderated', {}],
      ] as const) {
        const dir = join(srcBench, 'out', `profile-${variant}`);
        rmSync(dir, { recursive: true, force: true });
        mkdirSync(dir, { recursive: true });
        const nodeFlags = ['--cpu-prof', `--cpu-prof-dir=${dir}`];
        const res = await fanout('charla', {
          streams: 1,
          viewersPerStream: viewers,
          posters: 4,
          rate: 0,
          nodeFlags,
          ...(env === undefined
            ? {}
            : {
                env,
                posterClaims: { role: 'MODERATOR' },
                refusedPosters: { count: 1000, rate: 1000 },
                setup: (server: RunningServer, keys: string[]) =>
                  moderate(server, keys[0] as string, 1000),
              }),
        });
        process.stderr.write(`  ${variant} profile run: ${JSON.stringify(res)}\n`);
        const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
        if (file) {
          const summary = summariseProfile(
            JSON.parse(readFileSync(join(dir, file), 'utf8')),
            `charla, ${variant} stream, ${viewers} viewers (whole process life)`,
            30,
          );
          writeFileSync(join(srcBench, 'out', `${variant}-profile.md`), summary);
          process.stderr.write(`${summary}\n`);
        }
      }
    }
  }

  if (want('limits')) {
    const rate = Number(option('limits-rate') ?? 2000);
    // `--baseline NAME=DIR,…`: other built trees, each variant run on them too, interleaved.
    const builds: Array<[string, string | undefined]> = [
      ['this build', undefined],
      ...(option('baseline') ?? '')
        .split(',')
        .filter((b) => b !== '')
        .map((b): [string, string] => {
          const eq = b.indexOf('=');
          return eq < 0 ? ['baseline', b] : [b.slice(0, eq), b.slice(eq + 1)];
        }),
    ];
    // `--limits-counters redis`: leave out the counting in memory.
    const counterKinds = (option('limits-counters') ?? 'memory,redis').split(',');
    const slowOption = Number(option('limits-slow') ?? 0);
    const variants: Array<[string, LimitsVariant]> = [];
    // `--limits-loads 1500`: paced only (`window`: as fast as each poster's window allows).
    const loads = (option('limits-loads') ?? `window,${rate}`)
      .split(',')
      .filter((l) => l !== 'none')
      .map((l) => (l === 'window' ? 0 : Number(l)));
    for (const load of loads) {
      for (const redis of [false, true]) {
        if (!counterKinds.includes(redis ? 'redis' : 'memory')) continue;
        for (const moderators of [false, true]) {
          variants.push([
            `${redis ? 'redis' : 'memory'}${moderators ? ', moderators' : ''}${load ? `, ${load}/s` : ''}`,
            { redis, moderators, rate: load },
          ]);
        }
      }
    }
    // Interleaved run by run, so that a noisy minute on the shared machine hits every variant.
    const runsOf = builds.flatMap(([build, dir]) =>
      variants.map(([name, v]): [string, string, LimitsVariant, string | undefined] => [
        build,
        name,
        v,
        dir,
      ]),
    );
    const lists = runsOf.map(() => [] as Array<Record<string, number>>);
    for (let r = 0; r < runs; r++) {
      for (const [i, [build, name, v, dir]] of runsOf.entries()) {
        const res = await limitsRun(v, [], dir);
        lists[i]?.push(res);
        process.stderr.write(`  limits ${build}, ${name} run ${r + 1}: ${JSON.stringify(res)}\n`);
      }
    }
    for (const [i, [build, name, v]] of runsOf.entries()) {
      const list = lists[i] ?? [];
      const keys = Object.keys(list[0] ?? {});
      const m = Object.fromEntries(keys.map((k) => [k, median(list.map((x) => x[k] as number))]));
      record('limits', {
        variant: name,
        build,
        counters: v.redis ? 'redis' : 'memory',
        posters: v.moderators ? 'moderators (not counted)' : 'users (counted)',
        slowModeSeconds: slowOption,
        rate: v.rate,
        server: 'charla',
        ...m,
      });
    }
    if (flag('cpu-prof')) {
      // Where a counted chat's time goes with Redis, next to a moderator's (not counted).
      for (const [name, v] of variants.filter(([, x]) => x.redis && x.rate === 0)) {
        const label = name.replace(/\W+/g, '-');
        const dir = join(srcBench, 'out', `profile-limits-${label}`);
        rmSync(dir, { recursive: true, force: true });
        mkdirSync(dir, { recursive: true });
        const res = await limitsRun(v, ['--cpu-prof', `--cpu-prof-dir=${dir}`]);
        process.stderr.write(`  limits ${name} profile run: ${JSON.stringify(res)}\n`);
        const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
        if (file) {
          const summary = summariseProfile(
            JSON.parse(readFileSync(join(dir, file), 'utf8')),
            `charla, limits ${name} (whole process life)`,
            30,
          );
          writeFileSync(join(srcBench, 'out', `limits-${label}-profile.md`), summary);
          process.stderr.write(`${summary}\n`);
        }
      }
    }
    // The limiter alone: what a take costs, without the fan-out Redis also carries.
    const takes = Number(option('limits-takes') ?? (quick ? 5000 : 20_000));
    const calls: Array<{
      counters: 'memory' | 'redis';
      slowSeconds?: number;
      fresh?: true;
      pipelined?: true;
    }> = [
      { counters: 'memory' },
      { counters: 'redis' },
      { counters: 'redis', pipelined: true },
      { counters: 'memory', slowSeconds: 30 },
      { counters: 'redis', slowSeconds: 30 },
      { counters: 'memory', slowSeconds: 30, fresh: true },
      { counters: 'redis', slowSeconds: 30, fresh: true },
    ].filter((c) => counterKinds.includes(c.counters)) as typeof calls;
    // Each call on every build back to back; auto-pipelining is a client setting, the same in every build.
    const takeRuns = calls.flatMap((c) =>
      builds
        .filter(([, dir]) => dir === undefined || !c.pipelined)
        .map(([build, dir]) => ({ build, dir, ...c })),
    );
    // Interleaved run by run as well: builds compared in the same minutes.
    const takeLists = takeRuns.map(() => [] as TakesPoint[][]);
    for (let r = 0; r < runs; r++) {
      for (const [
        i,
        { build, dir, counters, slowSeconds, fresh, pipelined },
      ] of takeRuns.entries()) {
        const points = await takesRun({
          ...(counters === 'redis' ? { redisUrl: LIMITS_REDIS_URL } : {}),
          prefix: `charla_bench_${randomBytes(4).toString('hex')}:`,
          users: 200,
          streams: 20,
          takes,
          inFlight: [1, 64],
          ...(slowSeconds === undefined ? {} : { slowSeconds }),
          ...(fresh ? { fresh } : {}),
          ...(pipelined ? { autoPipelining: true } : {}),
          ...(dir === undefined ? {} : { module: join(dir, 'dist/src/core/stream-limits.js') }),
        });
        takeLists[i]?.push(points);
        process.stderr.write(
          `  limits take ${build}, ${counters}${slowSeconds ? (fresh ? ' slow accepted' : ' slow') : ''}${pipelined ? ' pipelined' : ''} run ${r + 1}: ${JSON.stringify(points)}\n`,
        );
      }
    }
    for (const [i, { build, counters, slowSeconds, fresh, pipelined }] of takeRuns.entries()) {
      const all = takeLists[i] ?? [];
      for (const [j, p] of (all[0] ?? []).entries()) {
        const list = all.map((points) => points[j] as TakesPoint);
        const keys = Object.keys(p) as Array<keyof TakesPoint>;
        const m = Object.fromEntries(keys.map((k) => [k, median(list.map((x) => x[k]))]));
        record('limits-take', {
          build,
          counters: pipelined
            ? `${counters}, enableAutoPipelining (not charla's setting)`
            : counters,
          take:
            slowSeconds === undefined
              ? 'rate'
              : fresh
                ? `slow mode ${slowSeconds} s then rate (accepted)`
                : `slow mode ${slowSeconds} s (refused)`,
          server: 'charla',
          ...m,
        });
      }
    }
  }

  if (want('bigroom')) await bigroom();

  if (want('request-wide')) {
    // Does a request room fan out wide enough for write coalescing to pay?
    // Extra LAB sockets join all 50 rooms, so each message goes to 1 + N sockets.
    for (const watchers of (option('request-watchers') ?? '0,10,40').split(',').map(Number)) {
      const list: Array<Record<string, number>> = [];
      for (let r = 0; r < runs; r++) {
        const res = await requestChat('sqlite', watchers);
        list.push(res);
        process.stderr.write(`  request-wide ${watchers} run ${r + 1}: ${JSON.stringify(res)}\n`);
      }
      const keys = Object.keys(list[0] ?? {});
      const m = Object.fromEntries(keys.map((k) => [k, median(list.map((x) => x[k] as number))]));
      record('request-wide', { watchers, server: 'charla', ...m });
    }
  }

  if (want('request')) {
    // Group commit against a baseline build in the same run (`--baseline
    // DIR`, a built charla tree), or against one transaction per message
    // (REQUEST_BATCH_MAX=1). Each point: acks/s at saturation (one message in
    // flight per sender), then p99 with the senders paced at 80% of that.
    // `--baseline DIR` or `--baseline NAME=DIR,NAME=DIR`: other builds, first is the reference.
    const baselines = (option('baseline') ?? '')
      .split(',')
      .filter((b) => b !== '')
      .map((b): [string, string] => {
        const eq = b.indexOf('=');
        return eq < 0 ? ['baseline', b] : [b.slice(0, eq), b.slice(eq + 1)];
      });
    const variants: Array<[string, { env?: Record<string, string>; script?: string }]> = [
      ...(baselines.length > 0
        ? baselines.map(([name, dir]): [string, { script: string }] => [
            name,
            { script: join(dir, 'dist/src/main.js') },
          ])
        : [
            ['per-message', { env: { REQUEST_BATCH_MAX: '1' } }] as [
              string,
              { env: Record<string, string> },
            ],
          ]),
      // `--request-update-flush-ms 0,100,250`: this build once per REQUEST_UPDATE_FLUSH_MS.
      ...(option('request-update-flush-ms')
        ?.split(',')
        .map((ms): [string, { env: Record<string, string> }] => [
          `flush ${ms} ms`,
          { env: { REQUEST_UPDATE_FLUSH_MS: ms } },
        ]) ?? [['group commit', {}] as [string, { env?: Record<string, string> }]]),
    ];
    const databases = (option('request-databases') ?? 'sqlite,postgres').split(',') as Array<
      'sqlite' | 'postgres'
    >;
    const outboxes = (option('request-outbox') ?? 'off,on').split(',');
    for (const database of databases) {
      for (const outbox of outboxes) {
        const webhooks = outbox === 'on';
        const saturated = new Map<string, Array<Record<string, number>>>();
        const paced = new Map<string, Array<Record<string, number>>>();
        // Variants interleaved run by run, so that a noisy minute hits both.
        for (let r = 0; r < runs; r++) {
          for (const [name, v] of variants) {
            const profile = `${database}-outbox-${outbox}-${name.replace(/\W+/g, '-')}-${r + 1}`;
            // `--request-rate N`: every variant paced at the same N acks/s instead of saturated,
            // so that CPU per ack compares the same work on a machine too busy to saturate.
            const fixed = Number(option('request-rate') ?? 0);
            const res = await requestChat(database, 0, {
              ...v,
              webhooks,
              profile,
              ...(fixed > 0 ? { rate: fixed } : {}),
            });
            saturated.set(name, [...(saturated.get(name) ?? []), res]);
            process.stderr.write(
              `  request ${database} outbox ${outbox} ${name} run ${r + 1}: ${JSON.stringify(res)}\n`,
            );
          }
        }
        for (let r = 0; r < (flag('request-skip-paced') ? 0 : runs); r++) {
          for (const [name, v] of variants) {
            const top = median((saturated.get(name) ?? []).map((x) => x.acksPerSec as number));
            const res = await requestChat(database, 0, { ...v, webhooks, rate: 0.8 * top });
            paced.set(name, [...(paced.get(name) ?? []), res]);
            process.stderr.write(
              `  request ${database} outbox ${outbox} ${name} at 80% run ${r + 1}: ${JSON.stringify(res)}\n`,
            );
          }
        }
        for (const [name] of variants) {
          const sat = saturated.get(name) ?? [];
          const at80 = paced.get(name) ?? [];
          const keys = Object.keys(sat[0] ?? {});
          const m = Object.fromEntries(
            keys.map((k) => [k, median(sat.map((x) => x[k] as number))]),
          );
          record('request', {
            database,
            outbox,
            variant: name,
            server: 'charla',
            ...m,
            pacedRate: median(at80.map((x) => x.acksPerSec as number)),
            pacedP50: median(at80.map((x) => x.p50 as number)),
            pacedP99: median(at80.map((x) => x.p99 as number)),
            pacedCpuUsPerAck: median(at80.map((x) => x.cpuUsPerAck as number)),
            ...(webhooks
              ? { pacedWebhooksPerAck: median(at80.map((x) => x.webhooksPerAck as number)) }
              : {}),
          });
        }
      }
    }
  }

  if (want('inbox')) {
    const spec = {
      requests: Number(option('requests') ?? (quick ? 10_000 : 100_000)),
      messages: Number(option('messages') ?? (quick ? 100_000 : 1_000_000)),
      teachers: 1000,
      labUsers: 20,
      queries: quick ? 300 : 2000,
    };
    const databases = (option('inbox-databases') ?? 'sqlite,postgres').split(',') as Array<
      'sqlite' | 'postgres'
    >;
    for (const database of databases) {
      const res = await inboxScenario(database, spec, BENCH_PG_URL);
      process.stderr.write(`  inbox ${database}: ${JSON.stringify(res)}\n`);
      record('inbox', { database, server: 'charla', ...res });
    }
  }

  const outDir = join(srcBench, 'out');
  mkdirSync(outDir, { recursive: true });
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
  const json = { started, finished: new Date().toISOString(), machine, runs, quick, results };
  writeFileSync(join(outDir, 'results.json'), `${JSON.stringify(json, null, 2)}\n`);
  const markdown = renderTables();
  writeFileSync(join(outDir, 'tables.md'), markdown);
  writeCharts(outDir);
  process.stdout.write(`\n${machine}\n\n${markdown}\n`);
  process.stdout.write(`\nJSON, tables and charts in ${outDir}\n`);
}

/** The big-room points: [viewers on one stream, chats/s]; p99 against viewers and against rate. */
const BIGROOM_VIEWERS = [5_000, 10_000, 15_000];
const BIGROOM_RATES = [50, 100, 200];

/**
 * Scenario: one stream with thousands of viewers at a fixed chat rate (a class
 * or an assembly), where each chat arrives in its own event-loop turn.
 */
async function bigroom(): Promise<void> {
  const durationMs = quick ? 3000 : 5000;
  const chosen = option('bigroom-points')
    ?.split(',')
    .map((p) => p.split('x').map(Number) as [number, number]);
  const points: Array<[number, number]> = chosen
    ? chosen
    : quick
      ? [[10_000, 50]]
      : [
          ...BIGROOM_VIEWERS.map((v): [number, number] => [v, 50]),
          ...BIGROOM_RATES.filter((r) => r !== 50).map((r): [number, number] => [10_000, r]),
        ];
  const spec = (viewers: number, rate: number): FanoutSpec => ({
    streams: 1,
    viewersPerStream: viewers,
    posters: 4,
    rate,
    durationMs,
    // About 150,000 latency samples per run, spread over the whole window.
    sampleEvery: Math.max(1, Math.ceil((viewers * rate * durationMs) / 1000 / 150_000)),
  });
  // A Node generator cannot read 10,000 sockets fast enough on a small machine: by default
  // the viewers are read natively, where gcc can build the reader.
  const asked = option('bigroom-generator')?.split(',') as Generator[] | undefined;
  const generators: Generator[] = asked ?? [nativeViewers() ? 'native' : 'node'];
  if (generators.includes('native') && !nativeViewers()) {
    throw new Error('gcc could not build bench/native/viewers.c');
  }
  // Generators inner: on a shared machine a noisy moment hits both alike.
  for (const [viewers, rate] of points) {
    for (const generator of generators) {
      const m = await compare(`bigroom ${viewers}x${rate}/s ${generator}`, (k) =>
        fanout(k, { ...spec(viewers, rate), generator }),
      );
      for (const kind of KINDS) {
        record('bigroom', { viewers, rate, generator, server: kind, ...m[kind] });
      }
    }
  }
  if (flag('cpu-prof')) {
    // Where charla's time goes at the heaviest point: 10,000 viewers × the highest rate.
    const rate = quick ? 50 : (BIGROOM_RATES.at(-1) as number);
    const dir = join(srcBench, 'out', 'profile');
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    const res = await fanout('charla', {
      ...spec(10_000, rate),
      generator: generators.at(-1) as Generator,
      nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${dir}`],
    });
    process.stderr.write(`  bigroom profile run 10000x${rate}/s: ${JSON.stringify(res)}\n`);
    const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
    if (file) {
      const summary = summariseProfile(
        JSON.parse(readFileSync(join(dir, file), 'utf8')),
        `charla, 10,000 viewers × ${rate} chats/s (whole process life: connect, run, drain)`,
      );
      writeFileSync(join(srcBench, 'out', 'bigroom-profile.md'), summary);
      process.stderr.write(`${summary}\n`);
    }
  }
}

function by(
  scenario: string,
  kind: BenchKind,
  match: (r: Row) => boolean = () => true,
): Row | undefined {
  return results[scenario]?.find((r) => r.server === kind && match(r));
}

function renderTables(): string {
  const parts: string[] = [];
  const n = (r: Row | undefined, k: string) => Number(r?.[k] ?? Number.NaN);
  if (results.fanout) {
    const rows = results.fanout
      .filter((r) => r.server === 'charla')
      .map((c) => {
        const v = (r: Row) => r.viewers === c.viewers;
        const naive = by('fanout', 'naive', v);
        const bare = by('fanout', 'bare', v);
        return [
          String(c.viewers),
          fmt(n(naive, 'deliveries')),
          fmt(n(bare, 'deliveries')),
          fmt(n(c, 'deliveries')),
          ratio(n(c, 'deliveries'), n(naive, 'deliveries')),
          ratio(n(c, 'deliveries'), n(bare, 'deliveries')),
          `${fmt(n(c, 'p50'), 1)} / ${fmt(n(c, 'p99'), 1)}`,
          fmt(n(c, 'lost')),
          `${fmt(n(c, 'rssMB'))} (${fmt(n(naive, 'rssMB'))} / ${fmt(n(bare, 'rssMB'))})`,
          `${fmt(n(c, 'serverCpu'))}% / ${fmt(n(c, 'genCpu'))}%`,
        ];
      });
    parts.push(
      '### Fan-out, one stream, 4 posters as fast as a window of 32 each allows\n',
      table(
        [
          'viewers',
          'naive ws /s',
          'bare /s',
          'charla /s',
          'vs naive',
          'vs bare',
          'charla p50 / p99 ms',
          'lost',
          'peak RSS MB charla (naive / bare)',
          'CPU server / generator',
        ],
        rows,
      ),
    );
  }
  const simple = (title: string, scenario: string, cols: Array<[string, string, number?]>) => {
    if (!results[scenario]) return;
    const rows = KINDS.map((kind) => {
      const r = by(scenario, kind);
      return [kind, ...cols.map(([, k, d]) => fmt(n(r, k), d ?? 0))];
    });
    parts.push(`\n### ${title}\n`, table(['server', ...cols.map(([h]) => h)], rows));
  };
  simple('Latency: 1,000 viewers, 100 chats/s', 'latency', [
    ['deliveries/s', 'deliveries'],
    ['p50 ms', 'p50', 2],
    ['p99 ms', 'p99', 2],
    ['max ms', 'max', 1],
    ['lost', 'lost'],
  ]);
  simple('Many streams: 500 streams × 20 viewers, 2,500 chats/s in all', 'streams', [
    ['deliveries/s', 'deliveries'],
    ['p50 ms', 'p50', 2],
    ['p99 ms', 'p99', 2],
    ['lost', 'lost'],
    ['peak RSS MB', 'rssMB'],
  ]);
  simple('Idle viewers', 'idle', [
    ['KB of RSS per connection', 'perConnKB', 2],
    ['RSS MB', 'rssMB'],
  ]);
  simple('Churn: connect + auth + first chat echoed, 64 at a time', 'churn', [
    ['cycles/s', 'perSec'],
    ['p50 ms', 'p50', 1],
    ['p99 ms', 'p99', 1],
    ['auth → history p50 ms', 'historyP50', 2],
    ['auth → history p99 ms', 'historyP99', 2],
    ['server CPU ms per cycle', 'cpuMsPerCycle', 3],
    ['failures', 'failures'],
  ]);
  if (results.slow) {
    const rows = KINDS.flatMap((kind) =>
      [0, 0.1].map((f) => {
        const r = by('slow', kind, (x) => x.slowFraction === f);
        return [
          kind,
          `${f * 100}%`,
          fmt(n(r, 'p50'), 2),
          fmt(n(r, 'p99'), 2),
          fmt(n(r, 'lost')),
          fmt(n(r, 'rssMB')),
        ];
      }),
    );
    parts.push(
      '\n### Slow viewers: 1,000 viewers, 200 chats/s of 400 bytes, a share never reads\n',
      table(
        ['server', 'slow', 'p50 ms (readers)', 'p99 ms (readers)', 'lost (readers)', 'peak RSS MB'],
        rows,
      ),
    );
  }
  if (results.inbox) {
    const rows = results.inbox.map((r) => [
      String(r.database),
      fmt(n(r, 'requests')),
      fmt(n(r, 'messages')),
      fmt(n(r, 'labFirstP50'), 2),
      fmt(n(r, 'labFirstP99'), 2),
      fmt(n(r, 'labDeepP99'), 2),
      `${fmt(n(r, 'teacherP50'), 2)} / ${fmt(n(r, 'teacherP99'), 2)}`,
      `${fmt(n(r, 'unreadTeacherP50'), 2)} / ${fmt(n(r, 'unreadTeacherP99'), 2)}`,
      `${fmt(n(r, 'unreadLabP50'), 1)} / ${fmt(n(r, 'unreadLabP99'), 1)}`,
      `${fmt(n(r, 'storeFirstP50'), 2)} / ${fmt(n(r, 'storeFirstP99'), 2)} / ${fmt(n(r, 'storeDeepP99'), 2)}`,
    ]);
    parts.push(
      '\n### Inbox: `listRequests` (50 a page) and the unread API, one at a time from outside\n',
      table(
        [
          'storage',
          'requests',
          'messages',
          'lab page 1 p50 ms',
          'lab page 1 p99 ms',
          'lab later page p99 ms',
          'teacher p50 / p99 ms',
          'teacher unread API p50 / p99 ms',
          'lab unread API p50 / p99 ms',
          'store only: page 1 p50 / p99, later page p99 ms',
        ],
        rows,
      ),
    );
  }
  if (results.startup) {
    const rows = results.startup.map((r) => [
      r.server === 'node' ? '`node -e ""` (baseline)' : 'charla on SQLite, to "listening"',
      fmt(Number(r.wallMs)),
      r.server === 'node' ? '—' : fmt(Number(r.cpuMs)),
    ]);
    parts.push(
      '\n### Start-up: spawn to listening (medians)\n',
      table(['process', 'wall ms', 'CPU ms'], rows),
    );
  }
  if (results.join) {
    const rows = results.join.map((r) => [
      String(r.variant),
      fmt(Number(r.rate)),
      fmt(Number(r.joinsPerSec)),
      fmt(Number(r.p50), 3),
      fmt(Number(r.p99), 3),
      fmt(Number(r.max), 2),
      fmt(Number(r.unanswered)),
    ]);
    parts.push(
      '\n### History on join alone: join → `stream` and `history` encoded, in-process, 100 chats/s meanwhile\n',
      table(
        [
          'history from',
          'joins/s asked',
          'joins/s done',
          'p50 ms',
          'p99 ms',
          'max ms',
          'unanswered',
        ],
        rows,
      ),
    );
  }
  if (results.moderated) {
    const plain = results.moderated.find((r) => r.variant === 'plain');
    const rows = results.moderated.map((r) => [
      String(r.variant),
      fmt(n(r, 'deliveries')),
      ratio(n(r, 'deliveries'), n(plain, 'deliveries')),
      `${fmt(n(r, 'p50'), 1)} / ${fmt(n(r, 'p99'), 1)}`,
      fmt(n(r, 'lost')),
      fmt(n(r, 'refusedSent')),
      fmt(n(r, 'refusedAnswers')),
      `${fmt(n(r, 'serverCpu'))}% / ${fmt(n(r, 'genCpu'))}%`,
    ]);
    parts.push(
      '\n### Moderated stream: 2,000 viewers, 4 moderators posting as fast as a window of 32 allows; slow mode 30 s, 1,000 of the viewers banned and posting 1,000 chats/s in all\n',
      table(
        [
          'charla',
          'deliveries/s',
          'vs plain',
          'p50 / p99 ms',
          'lost',
          'banned chats sent',
          'refusals received',
          'CPU server / generator',
        ],
        rows,
      ),
    );
  }
  if (results.limits) {
    const rows = results.limits.map((r) => [
      String(r.build ?? 'this build'),
      r.slowModeSeconds ? `${r.slowModeSeconds} s` : 'off',
      String(r.counters),
      String(r.posters),
      Number(r.rate) > 0 ? fmt(Number(r.rate)) : 'window',
      fmt(n(r, 'chatsPerSec')),
      fmt(n(r, 'p50'), 2),
      fmt(n(r, 'p99'), 2),
      fmt(n(r, 'cpuUsPerChat'), 1),
      r.counters === 'redis' ? fmt(n(r, 'redisCpuUsPerChat'), 1) : '—',
      fmt(n(r, 'writesPerChat'), 2),
      fmt(n(r, 'refused')),
      `${fmt(n(r, 'serverCpu'))}% / ${fmt(n(r, 'genCpu'))}%`,
    ]);
    parts.push(
      '\n### Stream rate limits: 200 users on 20 streams (2 viewers each), chats in flight per user as the window allows or paced; counters (and fan-out) in memory or in Redis\n',
      table(
        [
          'build',
          'slow mode',
          'counters and fan-out',
          'posters',
          'load',
          'chats accepted/s',
          'ack p50 ms',
          'ack p99 ms',
          'server CPU µs per chat',
          'Redis CPU µs per chat',
          'server writes per chat',
          'refused',
          'CPU server / generator',
        ],
        rows,
      ),
    );
  }
  if (results['limits-take']) {
    const rows = results['limits-take'].map((r) => [
      String(r.build ?? 'this build'),
      String(r.counters),
      String(r.take),
      fmt(n(r, 'inFlight')),
      fmt(n(r, 'takesPerSec')),
      fmt(n(r, 'cpuUsPerTake'), 2),
      fmt(n(r, 'p50Us'), 1),
      fmt(n(r, 'p99Us'), 1),
    ]);
    parts.push(
      '\n### Stream rate limit alone: `StreamLimits` in-process, 200 users × 20 streams\n',
      table(
        [
          'build',
          'counters',
          'take',
          'in flight',
          'takes/s',
          'CPU µs per take',
          'p50 µs',
          'p99 µs',
        ],
        rows,
      ),
    );
  }
  if (results.request) {
    const rows = results.request.map((r) => {
      // The reference is the first variant of the same storage and outbox.
      const base = results.request?.find((b) => b.database === r.database && b.outbox === r.outbox);
      const off = results.request?.find(
        (b) => b.database === r.database && b.variant === r.variant && b.outbox === 'off',
      );
      return [
        String(r.database),
        String(r.outbox ?? ''),
        String(r.variant ?? ''),
        fmt(n(r, 'acksPerSec')),
        base && base !== r ? `${fmt(n(r, 'acksPerSec') / n(base, 'acksPerSec'), 2)}×` : '',
        r.outbox === 'on' && off
          ? `${fmt((100 * n(r, 'acksPerSec')) / n(off, 'acksPerSec'))}%`
          : '',
        fmt(n(r, 'p50'), 2),
        fmt(n(r, 'p99'), 2),
        fmt(n(r, 'pacedRate')),
        fmt(n(r, 'pacedP99'), 2),
        fmt(n(r, 'errors')),
        `${fmt(n(r, 'serverCpu'))}% / ${fmt(n(r, 'genCpu'))}%`,
        fmt(n(r, 'cpuUsPerAck')),
        fmt(n(r, 'deliveredPerAck'), 2),
        fmt(n(r, 'updatesPerAck'), 1),
        r.outbox === 'on' ? fmt(n(r, 'webhooksPerAck'), 2) : '',
        fmt(n(r, 'pacedCpuUsPerAck')),
        r.outbox === 'on' ? fmt(n(r, 'pacedWebhooksPerAck'), 2) : '',
      ];
    });
    parts.push(
      '\n### Request chat: 50 requests, one LAB socket each with one message awaiting its acknowledgement, the teacher receiving\n',
      table(
        [
          'storage',
          'outbox',
          'server',
          'acks/s at saturation',
          'vs other',
          'vs outbox off',
          'ack p50 ms',
          'ack p99 ms',
          'paced at 80%: acks/s',
          'paced at 80%: p99 ms',
          'errors',
          'CPU server / generator',
          'server CPU µs per ack',
          'delivered per ack',
          'requestUpdated per ack',
          'webhooks per ack',
          'paced at 80%: CPU µs per ack',
          'paced at 80%: webhooks per ack',
        ],
        rows,
      ),
    );
  }
  if (results['request-wide']) {
    const rows = results['request-wide'].map((r) => [
      String(r.watchers),
      fmt(n(r, 'acksPerSec')),
      fmt(n(r, 'p50'), 2),
      fmt(n(r, 'p99'), 2),
      fmt(n(r, 'deliveredPerSec')),
      `${fmt(n(r, 'serverCpu'))}% / ${fmt(n(r, 'genCpu'))}%`,
    ]);
    parts.push(
      '\n### Request chat, wide rooms: 50 requests on SQLite, N more LAB sockets in every room\n',
      table(
        [
          'extra sockets per room',
          'acknowledged messages/s',
          'ack p50 ms',
          'ack p99 ms',
          'delivered/s',
          'CPU server / generator',
        ],
        rows,
      ),
    );
  }
  if (results.bigroom) {
    const rows = (results.bigroom ?? [])
      .filter((r) => r.server === KINDS[0])
      .flatMap((p) =>
        KINDS.map((kind) => {
          const same = (x: Row) =>
            x.viewers === p.viewers && x.rate === p.rate && x.generator === p.generator;
          const r = by('bigroom', kind, same);
          const bare = by('bigroom', 'bare', same);
          const viewerCpu = n(r, 'viewerCpu');
          return [
            String(p.viewers),
            String(p.rate),
            String(p.generator ?? 'node'),
            kind,
            fmt(n(r, 'deliveries')),
            fmt(n(r, 'p50'), 1),
            fmt(n(r, 'p99'), 1),
            fmt(n(r, 'max'), 1),
            fmt(n(r, 'lost')),
            ratio(n(r, 'p99'), n(bare, 'p99')),
            fmt(n(r, 'cpuUsPerDelivery'), 2),
            fmt(n(r, 'rssMB')),
            `${fmt(n(r, 'serverCpu'))}% / ${fmt(n(r, 'genCpu'))}%` +
              (Number.isFinite(viewerCpu) ? ` (viewers ${fmt(viewerCpu)}%)` : ''),
            `${fmt(n(r, 'serverRunqueue'))}%` +
              (Number.isFinite(n(r, 'viewerRunqueue')) ? ` / ${fmt(n(r, 'viewerRunqueue'))}%` : ''),
            `${fmt(n(r, 'p50FirstTenth'), 1)} / ${fmt(n(r, 'p50LastTenth'), 1)}`,
            fmt(n(r, 'load1'), 1),
          ];
        }),
      );
    parts.push(
      '\n### Big room: one stream, thousands of viewers, chats at a fixed rate (4 posters)\n',
      table(
        [
          'viewers',
          'chats/s',
          'viewers read by',
          'server',
          'deliveries/s',
          'p50 ms',
          'p99 ms',
          'max ms',
          'lost',
          'p99 vs bare',
          'server CPU µs / delivery',
          'peak RSS MB',
          'CPU server / generator',
          'waiting for a core: server / viewers',
          'p50 ms, first / last tenth to join',
          'load average',
        ],
        rows,
      ),
    );
  }
  return `${parts.join('\n')}\n`;
}

function writeBigroomCharts(outDir: string): void {
  if (!results.bigroom) return;
  // One generator's figures: the last one run (native when both were).
  const generator = results.bigroom.at(-1)?.generator;
  const series = (match: (r: Row) => boolean, x: string): Series[] =>
    KINDS.map((kind) => ({
      name: NAMES[kind],
      color: COLORS[kind],
      points: (results.bigroom ?? [])
        .filter((r) => r.server === kind && r.generator === generator && match(r))
        .map((r) => [Number(r[x]), Number(r.p99)] as [number, number]),
    }));
  writeFileSync(
    join(outDir, 'bigroom-p99-viewers.svg'),
    lineChart(
      'Big room at 50 chats/s: p99 post → receipt',
      'viewers on one stream',
      'p99 latency (ms, log scale)',
      series((r) => r.rate === 50, 'viewers'),
      { log: true },
    ),
  );
  writeFileSync(
    join(outDir, 'bigroom-p99-rate.svg'),
    lineChart(
      'Big room, 10,000 viewers: p99 post → receipt',
      'chats per second',
      'p99 latency (ms, log scale)',
      series((r) => r.viewers === 10_000, 'rate'),
      { log: true },
    ),
  );
}

const COLORS: Record<BenchKind, string> = {
  naive: '#9ca3af',
  bare: '#2563eb',
  charla: '#db2777',
  'charla-off': '#f59e0b',
  'charla-nocache': '#10b981',
};
const NAMES: Record<BenchKind, string> = {
  naive: 'naive ws',
  bare: 'bare (frame once, cork)',
  charla: 'charla',
  'charla-off': 'charla, STREAM_FLUSH_MS=0',
  'charla-nocache': 'charla, STREAM_HISTORY_CACHE_STREAMS=0',
};

function writeCharts(outDir: string): void {
  writeBigroomCharts(outDir);
  if (!results.fanout) return;
  const series = (key: string): Series[] =>
    KINDS.map((kind) => ({
      name: NAMES[kind],
      color: COLORS[kind],
      points: (results.fanout ?? [])
        .filter((r) => r.server === kind)
        .map((r) => [Number(r.viewers), Number(r[key])] as [number, number]),
    }));
  writeFileSync(
    join(outDir, 'fanout-deliveries.svg'),
    lineChart(
      'Fan-out: deliveries per second',
      'viewers on one stream',
      'deliveries/s',
      series('deliveries'),
    ),
  );
  writeFileSync(
    join(outDir, 'fanout-p99.svg'),
    lineChart(
      'Fan-out at max rate: p99 post → receipt',
      'viewers on one stream',
      'p99 latency (ms, log scale)',
      series('p99'),
      { log: true },
    ),
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
