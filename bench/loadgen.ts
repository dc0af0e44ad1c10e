/**
 * A load-generator process (forked by bench/run.ts, pinned to its own core).
 * It holds raw viewer connections, optionally the posters, and reports what
 * it saw: frames, latency samples, losses, and its own CPU use.
 */
import { WebSocket } from 'ws';
import { type LimitsJob, type LimitsReport, runLimits } from './limits-load.js';
import { paced } from './pace.js';
import { type RequestJob, type RequestReport, runRequest } from './request-load.js';
import { measureWindow, sleep } from './window.js';
import { nowMs, RawClient, stampOf } from './wsraw.js';

export interface FanoutJob {
  mode: 'fanout';
  port: number;
  /** Stream keys this worker's viewers watch, `viewersPerStream` each. */
  streams: string[];
  viewersPerStream: number;
  /** Share of viewers that never read (slow-viewer scenario). */
  slowFraction: number;
  posters: Array<{ stream: string; token: string }>;
  /** Total chats per second over this worker's posters; 0: as fast as a bounded window allows. */
  rate: number;
  window: number;
  messageBytes: number;
  warmupMs: number;
  durationMs: number;
  sampleEvery: number;
  localAddresses: string[];
  /**
   * Viewers that also post, with these tokens (one viewer each), `rate`
   * chats per second in all: users the server refuses (banned), so their
   * chats come back as errors and are never fanned out.
   */
  refusedPosters?: { tokens: string[]; rate: number };
}

export interface ChurnJob {
  mode: 'churn';
  port: number;
  stream: string;
  tokens: string[];
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  localAddresses: string[];
}

export type Job = FanoutJob | ChurnJob | RequestJob | LimitsJob;
export type { LimitsReport, RequestReport };

export interface FanoutReport {
  mode: 'fanout';
  viewers: number;
  framesInWindow: number;
  windowMs: number;
  latencies: number[];
  /** Accepted chats per stream (from the posters' own echoes), after the drain. */
  accepted: Record<string, number>;
  /** Frames received per stream, summed over the reading viewers, after the drain. */
  received: Record<string, number>;
  readingViewers: Record<string, number>;
  sentInWindow: number;
  cpuPercent: number;
  posterErrors: number;
  /** Chats sent by `refusedPosters`, and the non-chat frames all viewers received. */
  refusedSent: number;
  refusedAnswers: number;
}

export interface ChurnReport {
  mode: 'churn';
  cyclesInWindow: number;
  windowMs: number;
  latencies: number[];
  /** From `auth` to `history` (charla only): what history on join adds to a connect. */
  historyLatencies: number[];
  failures: number;
  cpuPercent: number;
}

const MAX_SAMPLES = 200_000;

async function connectViewers(job: FanoutJob, latencies: number[]) {
  const viewers: Array<{ client: RawClient; stream: string; slow: boolean }> = [];
  const onSample = (payload: Buffer) => {
    const t = stampOf(payload);
    if (t !== undefined && latencies.length < MAX_SAMPLES) latencies.push(nowMs() - t);
  };
  let i = 0;
  const batch: Promise<void>[] = [];
  for (const stream of job.streams) {
    for (let v = 0; v < job.viewersPerStream; v++, i++) {
      const slow = job.slowFraction > 0 && i % Math.round(1 / job.slowFraction) === 0;
      const refusedToken = job.refusedPosters?.tokens[i];
      const client = new RawClient({
        port: job.port,
        path: `/ws/streams/${stream}/${refusedToken === undefined ? '' : `?token=${refusedToken}`}`,
        localAddress: job.localAddresses[i % job.localAddresses.length] as string,
        sampleEvery: slow ? 0 : job.sampleEvery,
        onSample,
      });
      viewers.push({ client, stream, slow });
      batch.push(client.opened().then(() => (slow ? void client.socket.pause() : undefined)));
      // Bounded concurrency keeps the server's accept queue from overflowing.
      if (batch.length >= 200) await Promise.all(batch.splice(0));
    }
  }
  await Promise.all(batch);
  return viewers;
}

class Poster {
  echoes = 0;
  errors = 0;
  sent = 0;
  private seq = 0;
  readonly ws: WebSocket;
  readonly open: Promise<void>;
  private pad: string;
  private readonly tag: string;

  constructor(
    id: number,
    port: number,
    readonly stream: string,
    token: string,
    messageBytes: number,
    private readonly window: number,
    private readonly maxRate: boolean,
  ) {
    this.pad = 'x'.repeat(Math.max(0, messageBytes - 30));
    this.tag = `${id}:`;
    this.ws = new WebSocket(`ws://127.0.0.1:${port}/ws/streams/${stream}/`, {
      headers: { authorization: `Bearer ${token}` },
      perMessageDeflate: false,
    });
    this.open = new Promise((resolve, reject) => {
      this.ws.once('error', reject);
      this.ws.on('message', (data) => {
        const text = String(data);
        if (text.startsWith('{"type":"auth"')) return resolve();
        if (text.startsWith('{"type":"chat"')) {
          // Every poster watches the stream too: only its own chats are echoes.
          if (text.startsWith(this.tag, text.indexOf('"message":"') + 11)) {
            this.echoes++;
            if (this.maxRate && this.running) this.fill();
          }
        } else if (text.startsWith('{"type":"error"')) {
          this.errors++;
        }
      });
    });
  }

  running = false;

  send(): void {
    this.sent++;
    this.ws.send(
      `{"type":"chat","data":{"message":"${this.tag}${this.seq++}|${nowMs().toFixed(3)}|${this.pad}"}}`,
    );
  }

  /** Keeps `window` chats in flight: sent but not yet seen coming back. */
  fill(): void {
    while (this.sent - this.echoes - this.errors < this.window) this.send();
  }
}

async function runFanout(job: FanoutJob, waitForStart: () => Promise<void>): Promise<FanoutReport> {
  const latencies: number[] = [];
  const viewers = await connectViewers(job, latencies);
  const maxRate = job.rate === 0;
  const posters = job.posters.map(
    (p, i) => new Poster(i, job.port, p.stream, p.token, job.messageBytes, job.window, maxRate),
  );
  await Promise.all(posters.map((p) => p.open));
  await waitForStart();

  const countFrames = () => viewers.reduce((n, v) => n + v.client.frames, 0);
  for (const p of posters) p.running = true;
  let ticker: NodeJS.Timeout | undefined;
  if (maxRate) {
    for (const p of posters) p.fill();
  } else if (posters.length > 0) {
    // Fixed rate, spread round-robin over posters.
    let next = 0;
    ticker = paced(job.rate, () => (posters[next++ % posters.length] as Poster).send());
  }
  let refusedTicker: NodeJS.Timeout | undefined;
  const refused = job.refusedPosters;
  let refusedSent = 0;
  if (refused && refused.tokens.length > 0) {
    const senders = viewers.slice(0, refused.tokens.length);
    refusedTicker = paced(refused.rate, () => {
      const v = senders[refusedSent++ % senders.length];
      v?.client.send(`{"type":"chat","data":{"message":"refused ${refusedSent}"}}`);
    });
  }
  let framesInWindow = 0;
  let sentInWindow = 0;
  const sentSoFar = () => posters.reduce((n, p) => n + p.sent, 0);
  const { windowMs, cpuPercent: cpu } = await measureWindow(
    job.warmupMs,
    job.durationMs,
    () => {
      latencies.length = 0;
      framesInWindow = -countFrames();
      sentInWindow = -sentSoFar();
    },
    () => {
      framesInWindow += countFrames();
      sentInWindow += sentSoFar();
    },
  );
  const measured = latencies.slice();
  for (const p of posters) p.running = false;
  clearInterval(ticker);
  clearInterval(refusedTicker);

  // Drain: wait until every poster has its answers and every reading viewer stops receiving.
  const answered = () => posters.every((p) => p.sent === p.echoes + p.errors);
  let last = -1;
  for (let i = 0; i < 40; i++) {
    const n = countFrames();
    if (n === last && answered()) break;
    last = n;
    await sleep(250);
  }
  const accepted: Record<string, number> = {};
  for (const p of posters) accepted[p.stream] = (accepted[p.stream] ?? 0) + p.echoes;
  const received: Record<string, number> = {};
  const readingViewers: Record<string, number> = {};
  for (const v of viewers) {
    if (v.slow) continue;
    received[v.stream] = (received[v.stream] ?? 0) + v.client.frames;
    readingViewers[v.stream] = (readingViewers[v.stream] ?? 0) + 1;
  }
  for (const p of posters) p.ws.terminate();
  for (const v of viewers) v.client.destroy();
  return {
    mode: 'fanout',
    viewers: viewers.length,
    framesInWindow,
    windowMs,
    latencies: measured,
    accepted,
    received,
    readingViewers,
    sentInWindow,
    cpuPercent: cpu,
    posterErrors: posters.reduce((n, p) => n + p.errors, 0),
    refusedSent,
    refusedAnswers: viewers.reduce((n, v) => n + v.client.others, 0),
  };
}

const HISTORY_PREFIX = Buffer.from('{"type":"history"');
const startsWith = (payload: Buffer, prefix: Buffer) =>
  payload.subarray(0, prefix.length).equals(prefix);

/** One churn cycle: connect with a token, see `auth`, send a chat, see it come back, hang up. */
function cycle(
  job: ChurnJob,
  token: string,
  localAddress: string,
): Promise<{ ms: number; historyMs: number }> {
  const start = nowMs();
  return new Promise((resolve, reject) => {
    let sent = false;
    let authAt = 0;
    let historyMs = Number.NaN;
    const client: RawClient = new RawClient({
      port: job.port,
      path: `/ws/streams/${job.stream}/?token=${token}`,
      localAddress,
      onFrame: () => {
        if (!sent) {
          sent = true;
          authAt = nowMs();
          client.send('{"type":"chat","data":{"message":"hi"}}');
        } else {
          client.destroy();
          resolve({ ms: nowMs() - start, historyMs });
        }
      },
      onOther: (payload) => {
        if (sent && startsWith(payload, HISTORY_PREFIX)) historyMs = nowMs() - authAt;
      },
      onClose: () => reject(new Error('closed early')),
    });
    client.opened().catch(reject);
  });
}

async function runChurn(job: ChurnJob, waitForStart: () => Promise<void>): Promise<ChurnReport> {
  await waitForStart();
  let measuring = false;
  let stop = false;
  let cycles = 0;
  let failures = 0;
  const latencies: number[] = [];
  const historyLatencies: number[] = [];
  let k = 0;
  const loop = async () => {
    while (!stop) {
      const i = k++;
      try {
        const { ms, historyMs } = await cycle(
          job,
          job.tokens[i % job.tokens.length] as string,
          job.localAddresses[i % job.localAddresses.length] as string,
        );
        if (measuring) {
          cycles++;
          if (latencies.length < MAX_SAMPLES) latencies.push(ms);
          if (historyLatencies.length < MAX_SAMPLES && !Number.isNaN(historyMs)) {
            historyLatencies.push(historyMs);
          }
        }
      } catch {
        if (measuring) failures++;
      }
    }
  };
  const loops = Array.from({ length: job.concurrency }, loop);
  const { windowMs, cpuPercent: cpu } = await measureWindow(
    job.warmupMs,
    job.durationMs,
    () => {
      measuring = true;
    },
    () => {
      measuring = false;
    },
  );
  stop = true;
  await Promise.all(loops);
  return {
    mode: 'churn',
    cyclesInWindow: cycles,
    windowMs,
    latencies,
    historyLatencies,
    failures,
    cpuPercent: cpu,
  };
}

// Protocol with the parent: it sends the job, we answer 'ready', it sends 'start', we send the report.
process.once('message', (job: Job) => {
  let started: () => void = () => {};
  const start = new Promise<void>((r) => {
    started = r;
  });
  process.on('message', (m) => {
    if (m === 'start') started();
  });
  const waitForStart = () => {
    process.send?.('ready');
    return start;
  };
  const run =
    job.mode === 'fanout'
      ? runFanout(job, waitForStart)
      : job.mode === 'churn'
        ? runChurn(job, waitForStart)
        : job.mode === 'limits'
          ? runLimits(job, waitForStart)
          : runRequest(job, waitForStart);
  run.then(
    (report) => process.send?.({ report }, () => process.exit(0)),
    (err: unknown) => process.send?.({ error: String(err) }, () => process.exit(1)),
  );
});
