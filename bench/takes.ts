/**
 * The stream rate limit and slow mode alone, in-process: `StreamLimits.take`
 * called in a loop, counted in this process or in Redis, with no
 * socket, token, store or fan-out around it. Run as its own process, pinned
 * like a server (`node dist/bench/takes.js '<TakesSpec as JSON>'`); prints a
 * TakesResult as JSON.
 *
 * One take at a time gives the round trip a chat waits for; many in flight
 * (as on a busy server, where chats of many users overlap) give the CPU a take
 * costs this process when Redis answers in batches.
 */
import { Redis } from 'ioredis';
import { parseRate } from '../src/core/limits.js';
import { StreamLimits } from '../src/core/stream-limits.js';
import { latencyStats } from './report.js';

export interface TakesSpec {
  /** Unset: counted in this process. */
  redisUrl?: string;
  prefix: string;
  users: number;
  streams: number;
  /** Takes measured per point, after as many again to warm up. */
  takes: number;
  /** Takes in flight at once, one point each. */
  inFlight: number[];
  /** Slow mode of this many seconds as well as the rate: all but a user's first take refused. */
  slowSeconds?: number;
  /** Every take by a user of its own, so that each is accepted (slow mode then costs most). */
  fresh?: boolean;
  /**
   * `dist/src/core/stream-limits.js` of another build to measure instead of
   * this one's; one that has no `take` is called as its `Streams` did
   * (`takeSlow` in slow mode, then `takeRate`).
   */
  module?: string;
  /**
   * ioredis's `enableAutoPipelining` (commands of one event-loop turn in one
   * write), which charla's counter connection does not set: what it would save.
   */
  autoPipelining?: boolean;
}

export interface TakesPoint {
  inFlight: number;
  takesPerSec: number;
  cpuUsPerTake: number;
  p50Us: number;
  p99Us: number;
  refused: number;
}

/** What a chat's take is, in this build or in one from before `take` counted both at once. */
interface Limits {
  take?(key: string, userId: string, slowSeconds?: number): Promise<void>;
  takeSlow?(key: string, userId: string, seconds: number): Promise<void>;
  takeRate?(key: string, userId: string): Promise<void>;
}

function taker(limits: Limits): (key: string, user: string, slow: number) => Promise<void> {
  const { take, takeSlow, takeRate } = limits;
  // Such a build's own (private) `take` counted one limiter.
  if (takeSlow && takeRate) {
    return async (key, user, slow) => {
      if (slow > 0) await takeSlow.call(limits, key, user, slow);
      await takeRate.call(limits, key, user);
    };
  }
  if (!take) throw new Error('no take in that build');
  return (key, user, slow) => take.call(limits, key, user, slow);
}

let freshUsers = 0;

async function point(limits: Limits, spec: TakesSpec, inFlight: number, n: number) {
  const latencies: number[] = [];
  let refused = 0;
  let next = 0;
  const take = taker(limits);
  const one = (i: number): Promise<void> => {
    const key = `s${i % spec.streams}`;
    const user = spec.fresh ? `f${freshUsers++}` : `u${i % spec.users}`;
    return take(key, user, spec.slowSeconds ?? 0);
  };
  const worker = async () => {
    while (next < n) {
      const i = next++;
      const t0 = performance.now();
      try {
        await one(i);
      } catch {
        refused++;
      }
      latencies.push((performance.now() - t0) * 1000);
    }
  };
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: inFlight }, worker));
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const lat = latencyStats(latencies);
  return {
    inFlight,
    takesPerSec: (n / ms) * 1000,
    cpuUsPerTake: (cpu.user + cpu.system) / n,
    p50Us: lat.p50,
    p99Us: lat.p99,
    refused,
  };
}

export async function runTakes(spec: TakesSpec): Promise<TakesPoint[]> {
  // The server's counter connection (src/app.ts): nothing queues while Redis is away.
  const client =
    spec.redisUrl === undefined
      ? undefined
      : new Redis(spec.redisUrl, {
          protocol: 2,
          enableOfflineQueue: false,
          maxRetriesPerRequest: 1,
          enableAutoPipelining: spec.autoPipelining ?? false,
        });
  try {
    if (client && client.status !== 'ready') {
      await new Promise<void>((resolve, reject) => {
        client.once('ready', resolve);
        client.once('error', reject);
      });
    }
    const rate = parseRate('100000000/1s');
    if (!rate) throw new Error('bad rate');
    const Build: typeof StreamLimits =
      spec.module === undefined ? StreamLimits : (await import(spec.module)).StreamLimits;
    const limits: Limits = new Build(rate, {
      redis: client && { client, prefix: spec.prefix },
    });
    const out: TakesPoint[] = [];
    for (const inFlight of spec.inFlight) {
      await point(limits, spec, inFlight, spec.takes);
      out.push(await point(limits, spec, inFlight, spec.takes));
    }
    return out;
  } finally {
    if (client) {
      await dropPrefix(client, spec.prefix);
      client.disconnect();
    }
  }
}

/** Deletes every key under `prefix`: a run leaves nothing in Redis. */
export async function dropPrefix(client: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) await client.del(...keys);
  } while (cursor !== '0');
}

if (process.argv[1]?.endsWith('takes.js') && process.argv[2]) {
  runTakes(JSON.parse(process.argv[2]) as TakesSpec).then(
    (points) => process.stdout.write(`${JSON.stringify(points)}\n`),
    (err: unknown) => {
      process.stderr.write(`takes failed: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    },
  );
}
