/**
 * Stream rate limits and slow mode, counted where every node sees the same
 * count (protocol section 7: "everything here holds across nodes").
 *
 * With Redis configured the counters live there: one script per chat checks
 * the user's slow-mode wait and rate window and takes both or neither, so a
 * chat in slow mode costs one round trip, not one per counter, and a chat
 * either counter refuses spends nothing of the other. Each counter is a fixed
 * window of whole seconds (`N/<seconds>s` rounded up), in the keys and values
 * `rate-limiter-flexible`'s RateLimiterRedis kept, so nodes of either kind
 * count together during a rolling upgrade. Without Redis, and on a node while
 * Redis is away, they are counted in this process: the same fixed window in
 * `limits.ts` for the rate, RateLimiterMemory for slow mode. Slow mode allows
 * one chat per `slowModeSeconds`.
 *
 * The request chat's REQUEST_RATE_LIMIT is counted by this same class, under
 * `request:<id>` keys, so it is one budget across nodes too.
 */
import type { ClientContext, Redis, Result } from 'ioredis';
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
import { ChatError } from './errors.js';
import { type Rate, RateLimiter } from './limits.js';

export interface SharedCounterOptions {
  /** Unset: counted in this process. */
  redis?: { client: Redis; prefix: string } | undefined;
}

/**
 * KEYS[1]: the user's rate counter; KEYS[2], in slow mode only: the user's
 * slow-mode counter. ARGV: the rate's points, its window and slow mode's
 * window, in seconds. Slow mode is checked first; nothing is written for a
 * refused chat. Answers {0} when taken, {1, ms} refused by slow mode and
 * {2, ms} refused by the rate, ms being what is left of that window. A
 * window without an expiry (never written so here) is given one, as
 * RateLimiterRedis did, rather than refusing for ever.
 */
const TAKE_SCRIPT = `
local function left(key, seconds)
  local ms = redis.call('pttl', key)
  if ms == -1 then
    redis.call('expire', key, seconds)
    ms = 1000 * seconds
  end
  return ms
end
if #KEYS == 2 and tonumber(redis.call('get', KEYS[2]) or '0') >= 1 then
  return {1, left(KEYS[2], ARGV[3])}
end
if tonumber(redis.call('get', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
  return {2, left(KEYS[1], ARGV[2])}
end
redis.call('set', KEYS[1], 0, 'EX', ARGV[2], 'NX')
redis.call('incr', KEYS[1])
if #KEYS == 2 then
  redis.call('set', KEYS[2], 1, 'EX', ARGV[3])
end
return {0}
`;

type TakeReply = [0] | [1 | 2, number];

declare module 'ioredis' {
  interface RedisCommander<Context extends ClientContext = { type: 'default' }> {
    charlaStreamTake(
      numberOfKeys: number,
      ...keysAndArgs: Array<string | number>
    ): Result<TakeReply, Context>;
  }
}

/** Redis counts whole seconds (EX); a shorter window is rounded up. */
const wholeSeconds = (seconds: number) => Math.max(1, Math.ceil(seconds));

export class StreamLimits {
  private readonly rate: RateLimiter;
  /** One limiter per slow-mode length in use; at most 3,601 (0–3,600 s). */
  private readonly slow = new Map<number, RateLimiterAbstract>();
  private readonly rateCount: number;
  private readonly rateSeconds: number;

  constructor(
    rate: Rate,
    private readonly options: SharedCounterOptions = {},
  ) {
    this.rate = new RateLimiter(rate);
    this.rateCount = rate.count;
    this.rateSeconds = wholeSeconds(rate.windowMs / 1000);
    const client = options.redis?.client;
    if (client && typeof client.charlaStreamTake !== 'function') {
      client.defineCommand('charlaStreamTake', { lua: TAKE_SCRIPT });
    }
  }

  /**
   * Counts one chat of `userId` in `key` under slow mode of `slowSeconds`
   * (0: off) and the rate, or throws `slow_mode` or `rate_limited` with the
   * wait. Slow mode is checked first; a chat either refuses spends nothing
   * of the other, so a rate refusal's retry_after_ms is the whole wait.
   */
  async take(key: string, userId: string, slowSeconds = 0): Promise<void> {
    const redis = this.options.redis;
    if (redis === undefined || redis.client.status !== 'ready') {
      return this.takeHere(key, userId, slowSeconds);
    }
    const user = `${key}\u0000${userId}`;
    const keys = [`${redis.prefix}limit:rate:${user}`];
    if (slowSeconds > 0) keys.push(`${redis.prefix}limit:slow${slowSeconds}:${user}`);
    let reply: TakeReply;
    try {
      reply = await redis.client.charlaStreamTake(
        keys.length,
        ...keys,
        this.rateCount,
        this.rateSeconds,
        wholeSeconds(slowSeconds),
      );
    } catch {
      // While Redis is away, chats are counted on this node instead of waiting or failing.
      return this.takeHere(key, userId, slowSeconds);
    }
    if (reply[0] === 0) return;
    throw new ChatError(reply[0] === 1 ? 'slow_mode' : 'rate_limited', undefined, {
      retryAfterMs: Math.max(1, Math.ceil(reply[1])),
    });
  }

  /**
   * The count in this process, by the script's rule: slow mode's wait is
   * looked at first and started only once the rate took the chat. Two chats
   * of one user at the same moment can both pass the look; the second is
   * then refused by slow mode after the rate counted it.
   */
  private async takeHere(key: string, userId: string, slowSeconds: number): Promise<void> {
    const user = `${key}\u0000${userId}`;
    const slow = slowSeconds > 0 ? this.slowLimiter(slowSeconds) : undefined;
    const waiting = await slow?.get(user);
    if (waiting && waiting.consumedPoints >= 1) throw slowMode(waiting.msBeforeNext);
    this.rate.take(`${userId}\u0000${key}`);
    try {
      await slow?.consume(user);
    } catch (err) {
      throw err instanceof RateLimiterRes ? slowMode(err.msBeforeNext) : err;
    }
  }

  private slowLimiter(seconds: number): RateLimiterAbstract {
    let limiter = this.slow.get(seconds);
    if (!limiter) {
      limiter = new RateLimiterMemory({
        keyPrefix: `slow${seconds}`,
        points: 1,
        duration: wholeSeconds(seconds),
      });
      this.slow.set(seconds, limiter);
    }
    return limiter;
  }
}

const slowMode = (msLeft: number) =>
  new ChatError('slow_mode', undefined, { retryAfterMs: Math.max(1, Math.ceil(msLeft)) });
