/**
 * The rate-limit load, run inside a load-generator process: many users who
 * are not moderators, each on its own connection to one of several streams,
 * posting with a bounded window of chats in flight (sent, not yet seen coming
 * back), and a few viewers per stream who only read. Every chat of such a user
 * is counted by the stream's rate limit, so chats/s here is limiter takes/s.
 *
 * A poster's ack is its own chat coming back to it through the fan-out
 * (`chat` frame with its tag); refusals come back as `error` frames.
 */

import { paced } from './pace.js';
import { measureWindow, sleep } from './window.js';
import { nowMs, RawClient } from './wsraw.js';

export interface LimitsJob {
  mode: 'limits';
  port: number;
  posters: Array<{ stream: string; token: string }>;
  streams: string[];
  viewersPerStream: number;
  /** Chats in flight per poster. */
  window: number;
  /** Chats/s over all posters, each never above `window` in flight; 0: as fast as echoes come. */
  rate: number;
  messageBytes: number;
  warmupMs: number;
  durationMs: number;
  localAddresses: string[];
}

export interface LimitsReport {
  mode: 'limits';
  /** Echoes (accepted chats) the posters saw inside the window. */
  acceptedInWindow: number;
  /** `error` frames the posters received inside the window (refusals). */
  refusedInWindow: number;
  windowMs: number;
  /** Send → own echo, ms, for chats sent inside the window. */
  latencies: number[];
  /** Chat frames the viewers received inside the window. */
  viewerFramesInWindow: number;
  cpuPercent: number;
}

const MAX_SAMPLES = 200_000;
const MESSAGE = Buffer.from('"message":"');

class Poster {
  sent = 0;
  echoes = 0;
  errors = 0;
  running = false;
  measuring = false;
  readonly client: RawClient;
  private seq = 0;
  private readonly tag: Buffer;
  private readonly pad: string;

  constructor(
    id: number,
    job: LimitsJob,
    stream: string,
    token: string,
    private readonly latencies: number[],
  ) {
    this.tag = Buffer.from(`p${id}:`);
    this.pad = 'x'.repeat(Math.max(0, job.messageBytes - 30));
    const paced = job.rate > 0;
    this.client = new RawClient({
      port: job.port,
      path: `/ws/streams/${stream}/?token=${token}`,
      localAddress: job.localAddresses[id % job.localAddresses.length] as string,
      // Every chat frame: the poster's own are its acks, among the other posters' chats.
      sampleEvery: 1,
      onSample: (payload) => {
        const at = payload.indexOf(MESSAGE);
        if (at === -1) return;
        const start = at + MESSAGE.length;
        if (payload.compare(this.tag, 0, this.tag.length, start, start + this.tag.length) !== 0) {
          return;
        }
        this.echoes++;
        if (this.measuring && this.latencies.length < MAX_SAMPLES) {
          const from = payload.indexOf(0x7c, start) + 1;
          const to = payload.indexOf(0x7c, from);
          const t = Number(payload.toString('latin1', from, to));
          if (Number.isFinite(t)) this.latencies.push(nowMs() - t);
        }
        if (this.running && !paced) this.fill(job.window);
      },
      onOther: (payload) => {
        if (payload.toString('latin1', 9, 14) !== 'error') return;
        this.errors++;
        if (this.running && !paced) this.fill(job.window);
      },
    });
  }

  inFlight(): number {
    return this.sent - this.echoes - this.errors;
  }

  send(): void {
    this.sent++;
    this.client.send(
      `{"type":"chat","data":{"message":"${this.tag}${this.seq++}|${nowMs().toFixed(3)}|${this.pad}"}}`,
    );
  }

  fill(window: number): void {
    while (this.inFlight() < window) this.send();
  }
}

export async function runLimits(
  job: LimitsJob,
  waitForStart: () => Promise<void>,
): Promise<LimitsReport> {
  const latencies: number[] = [];
  const viewers: RawClient[] = [];
  let i = 0;
  for (const stream of job.streams) {
    for (let v = 0; v < job.viewersPerStream; v++, i++) {
      viewers.push(
        new RawClient({
          port: job.port,
          path: `/ws/streams/${stream}/`,
          localAddress: job.localAddresses[i % job.localAddresses.length] as string,
        }),
      );
    }
  }
  const posters = job.posters.map((p, id) => new Poster(id, job, p.stream, p.token, latencies));
  const all = [...viewers, ...posters.map((p) => p.client)];
  for (let k = 0; k < all.length; k += 200) {
    await Promise.all(all.slice(k, k + 200).map((c) => c.opened()));
  }
  // Each connection's `auth` frame (and the posters' `stream`/`history`) before the start.
  await sleep(500);
  await waitForStart();

  for (const p of posters) p.running = true;
  let ticker: NodeJS.Timeout | undefined;
  if (job.rate === 0) {
    for (const p of posters) p.fill(job.window);
  } else {
    // Round-robin over posters; a poster at its window skips its turn (the
    // chat is not sent: the offered rate drops).
    let next = 0;
    ticker = paced(job.rate, () => {
      const p = posters[next++ % posters.length] as Poster;
      if (p.inFlight() < job.window) p.send();
    });
  }
  const echoes = () => posters.reduce((n, p) => n + p.echoes, 0);
  const errors = () => posters.reduce((n, p) => n + p.errors, 0);
  const viewerFrames = () => viewers.reduce((n, v) => n + v.frames, 0);
  let acceptedInWindow = 0;
  let refusedInWindow = 0;
  let viewerFramesInWindow = 0;
  const { windowMs, cpuPercent } = await measureWindow(
    job.warmupMs,
    job.durationMs,
    () => {
      for (const p of posters) p.measuring = true;
      acceptedInWindow = -echoes();
      refusedInWindow = -errors();
      viewerFramesInWindow = -viewerFrames();
    },
    () => {
      for (const p of posters) p.measuring = false;
      acceptedInWindow += echoes();
      refusedInWindow += errors();
      viewerFramesInWindow += viewerFrames();
    },
  );
  for (const p of posters) p.running = false;
  clearInterval(ticker);
  for (let k = 0; k < 40 && posters.some((p) => p.inFlight() > 0); k++) await sleep(250);
  for (const c of all) c.destroy();
  return {
    mode: 'limits',
    acceptedInWindow,
    refusedInWindow,
    windowMs,
    latencies,
    viewerFramesInWindow,
    cpuPercent,
  };
}
