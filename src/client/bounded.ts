/**
 * Bounded helpers shared by both chats: a set that forgets its oldest entries,
 * and the reconnect/retry delay with exponential backoff and jitter.
 */

/** A set of at most `capacity` keys; adding past it forgets the oldest. */
export class BoundedSet<T> {
  private readonly items = new Set<T>();

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError('capacity must be a positive integer');
    }
  }

  has(key: T): boolean {
    return this.items.has(key);
  }

  /** Adds `key`; false when it was already there. */
  add(key: T): boolean {
    if (this.items.has(key)) return false;
    this.items.add(key);
    if (this.items.size > this.capacity) {
      // A Set iterates in insertion order: the first key is the oldest.
      const oldest = this.items.values().next().value as T;
      this.items.delete(oldest);
    }
    return true;
  }

  get size(): number {
    return this.items.size;
  }

  clear(): void {
    this.items.clear();
  }
}

export interface BackoffOptions {
  /** Delay before the first retry, in ms. Default 500. */
  initialDelayMs?: number;
  /** Ceiling of the delay, in ms. Default 30 000. */
  maxDelayMs?: number;
  /** Fraction of each delay that is random (0–1). Default 0.5. */
  jitter?: number;
}

/**
 * The delay before retry number `attempt` (0 for the first): doubling from
 * `initialDelayMs` up to `maxDelayMs`, of which the `jitter` fraction is
 * random, so that clients cut off together do not all come back at once.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}): number {
  const initial = opts.initialDelayMs ?? 500;
  const max = opts.maxDelayMs ?? 30_000;
  const jitter = Math.min(1, Math.max(0, opts.jitter ?? 0.5));
  const base = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.round(base * (1 - jitter) + base * jitter * Math.random());
}

/** A random id for `clientMessageId`: a UUID where the platform has one. */
export function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (typeof c?.randomUUID === 'function') return c.randomUUID();
  let s = '';
  for (let i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
  return s;
}
