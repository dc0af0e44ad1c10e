/**
 * The `typing` throttle (protocol section 8): a user's typing in a request is
 * forwarded at most once per interval. Nothing is stored; what a node
 * remembers is bounded, and forgetting a pair early only lets one more
 * `userTyping` through.
 */
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
