/**
 * Stream rate limits and slow mode, counted where every node sees the same
 * count (protocol section 7: "everything here holds across nodes").
 *
 * With Redis configured the counters live there (`rate-limiter-flexible`'s
 * RateLimiterRedis: one atomic INCR+PEXPIRE script per chat, a fixed window
 * of `N/<seconds>s`); without it, in this process: the same fixed window in
 * `limits.ts` for the rate, RateLimiterMemory for slow mode. Slow mode allows
 * one chat per `slowModeSeconds`.
 */
import type { Redis } from 'ioredis';
import {
  type RateLimiterAbstract,
  RateLimiterMemory,
  RateLimiterRedis,
  RateLimiterRes,
} from 'rate-limiter-flexible';
import { ChatError } from './errors.js';
import { type Rate, RateLimiter } from './limits.js';

export interface SharedCounterOptions {
  /** Unset: counted in this process. */
  redis?: { client: Redis; prefix: string } | undefined;
}

export class StreamLimits {
  private readonly rate: RateLimiterAbstract | RateLimiter;
  /** One limiter per slow-mode length in use; at most 3,601 (0–3,600 s). */
  private readonly slow = new Map<number, RateLimiterAbstract>();

  constructor(
    rate: Rate,
    private readonly options: SharedCounterOptions = {},
  ) {
    this.rate =
      options.redis === undefined
        ? new RateLimiter(rate)
        : this.limiter('rate', rate.count, rate.windowMs / 1000);
  }

  /** Counts one chat of `userId` in `key`, or throws `rate_limited`. */
  async takeRate(key: string, userId: string): Promise<void> {
    if (this.rate instanceof RateLimiter) this.rate.take(`${userId}\u0000${key}`);
    else await this.take(this.rate, `${key}\u0000${userId}`, 'rate_limited');
  }

  /** Counts one chat under slow mode of `seconds`, or throws `slow_mode`. */
  async takeSlow(key: string, userId: string, seconds: number): Promise<void> {
    let limiter = this.slow.get(seconds);
    if (!limiter) {
      limiter = this.limiter(`slow${seconds}`, 1, seconds);
      this.slow.set(seconds, limiter);
    }
    await this.take(limiter, `${key}\u0000${userId}`, 'slow_mode');
  }

  private limiter(name: string, points: number, seconds: number): RateLimiterAbstract {
    // Redis counts whole seconds (EX); a shorter window is rounded up.
    const duration = Math.max(1, Math.ceil(seconds));
    const redis = this.options.redis;
    if (redis === undefined) return new RateLimiterMemory({ keyPrefix: name, points, duration });
    return new RateLimiterRedis({
      storeClient: redis.client,
      keyPrefix: `${redis.prefix}limit:${name}`,
      points,
      duration,
      // While Redis is away, chats are counted on this node instead of waiting or failing.
      rejectIfRedisNotReady: true,
      insuranceLimiter: new RateLimiterMemory({ keyPrefix: name, points, duration }),
    });
  }

  private async take(
    limiter: RateLimiterAbstract,
    key: string,
    code: 'rate_limited' | 'slow_mode',
  ): Promise<void> {
    try {
      await limiter.consume(key);
    } catch (err) {
      if (err instanceof RateLimiterRes) {
        throw new ChatError(code, undefined, {
          retryAfterMs: Math.max(1, Math.ceil(err.msBeforeNext)),
        });
      }
      throw err;
    }
  }
}
