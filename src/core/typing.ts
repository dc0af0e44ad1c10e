/**
 * The `typing` throttle (protocol section 8): a user's typing in a request is
 * forwarded at most once per interval. Nothing is stored; what a node
 * remembers is bounded, and forgetting a pair early only lets one more
 * `userTyping` through. With Redis the interval holds across nodes too (a
 * user with tabs on two nodes), through one `SET NX PX` per forwarded typing.
 */
import type { SharedCounterOptions } from './stream-limits.js';

export class TypingThrottle {
  /** Insertion order is forwarding order: the oldest entries come first. */
  private readonly last = new Map<string, number>();

  constructor(
    private readonly intervalMs: number,
    private readonly max: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** True when `userId`'s typing in `requestId` is to be forwarded now. */
  allow(userId: string, requestId: string): boolean {
    const now = this.now();
    const key = `${userId}\u0000${requestId}`;
    const at = this.last.get(key);
    if (at !== undefined && now - at < this.intervalMs) return false;
    this.last.delete(key);
    this.last.set(key, now);
    this.expire(now);
    return true;
  }

  get size(): number {
    return this.last.size;
  }

  private expire(now: number): void {
    for (const [key, at] of this.last) {
      if (now - at < this.intervalMs && this.last.size <= this.max) break;
      this.last.delete(key);
    }
  }
}

/** The node's throttle first (repeats cost no round trip), then Redis's when configured. */
export class SharedTypingThrottle {
  constructor(
    private readonly local: TypingThrottle,
    private readonly intervalMs: number,
    private readonly redis?: SharedCounterOptions['redis'],
  ) {}

  async allow(userId: string, requestId: string): Promise<boolean> {
    if (!this.local.allow(userId, requestId)) return false;
    if (!this.redis) return true;
    const key = `${this.redis.prefix}typing:${requestId}:${userId}`;
    try {
      const ms = Math.max(1, Math.round(this.intervalMs));
      return (await this.redis.client.set(key, '1', 'PX', ms, 'NX')) === 'OK';
    } catch {
      // Redis away: each node throttles alone, as without it.
      return true;
    }
  }
}
