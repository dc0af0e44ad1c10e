/** Rate limits, flood detection and message-text rules shared by both chats. */
import { ChatError } from './errors.js';

export interface Rate {
  count: number;
  windowMs: number;
}

/** Parses the protocol section 6 format `N/<seconds>s`, e.g. `20/30s`. */
/** The longest rate window: a day. Longer ones are typing mistakes, and `retry_after_ms` would say years. */
export const MAX_RATE_WINDOW_MS = 86_400_000;

export function parseRate(text: string): Rate | undefined {
  const m = /^\s*(\d+)\s*\/\s*(\d+(?:\.\d+)?)\s*s\s*$/.exec(text);
  if (!m) return undefined;
  const count = Number(m[1]);
  const windowMs = Math.round(Number(m[2]) * 1000);
  if (!Number.isSafeInteger(count) || count < 1 || windowMs < 1) return undefined;
  if (windowMs > MAX_RATE_WINDOW_MS) return undefined;
  return { count, windowMs };
}

/**
 * When to act on a peer that must be gone `deadlineMs` after it came, when
 * the act itself takes up to `leadMs` more (a periodic check, a close
 * handshake): that much earlier, but never before half the deadline.
 */
export function startEarly(deadlineMs: number, leadMs: number): number {
  return deadlineMs - Math.min(leadMs, deadlineMs / 2);
}

interface Window {
  /** When this key's current window began (its first message in it). */
  start: number;
  count: number;
}

/**
 * At most `count` messages per key in each window of `windowMs`, the window
 * starting at the key's first message after the last one ended: the
 * `count`+1th message within a window is refused with the wait until it ends
 * (protocol section 6, "N per <seconds>s"). A token bucket would let a burst
 * of `count` and then its refill through in the same window. This is the
 * window the Redis counters keep across nodes (`stream-limits.ts`), so one
 * node and several limit alike. Ended windows are dropped on sweep, which
 * keeps memory proportional to recently active keys. Counted per node.
 */
export class RateLimiter {
  private readonly windows = new Map<string, Window>();
  private lastSweep: number;

  constructor(
    private readonly rate: Rate,
    private readonly now: () => number = Date.now,
  ) {
    this.lastSweep = now();
  }

  /** Counts one message for `key`, or throws `rate_limited` with the wait until its window ends. */
  take(key: string): void {
    const now = this.now();
    if (now - this.lastSweep > this.rate.windowMs) this.sweep(now);
    let w = this.windows.get(key);
    if (!w) {
      w = { start: now, count: 0 };
      this.windows.set(key, w);
    } else if (now - w.start >= this.rate.windowMs) {
      w.start = now;
      w.count = 0;
    }
    if (w.count >= this.rate.count) {
      const retryAfterMs = Math.max(1, w.start + this.rate.windowMs - now);
      throw new ChatError('rate_limited', undefined, { retryAfterMs });
    }
    w.count += 1;
  }

  get size(): number {
    return this.windows.size;
  }

  private sweep(now: number): void {
    this.lastSweep = now;
    for (const [key, w] of this.windows) {
      if (now - w.start >= this.rate.windowMs) this.windows.delete(key);
    }
  }
}

export const FLOOD_WINDOW_MS = 10_000;

/**
 * Counts inbound frames of one connection in fixed 10 s windows (protocol
 * section 5). Two numbers per connection, nothing allocated per frame.
 */
export class FloodCounter {
  private windowStart = 0;
  private count = 0;

  constructor(private readonly limit: number) {}

  /** Records one frame; true when the connection passed the limit and must close. */
  hit(now: number): boolean {
    if (now - this.windowStart >= FLOOD_WINDOW_MS) {
      this.windowStart = now;
      this.count = 0;
    }
    this.count += 1;
    return this.count > this.limit;
  }
}

/**
 * What no store can keep as it is: U+0000 (PostgreSQL refuses it in text and
 * jsonb; one such chat would fail the batch it is written with, other users'
 * chats included) and unpaired surrogate halves (not valid UTF-8: stored,
 * they would differ from what was delivered). In `u` mode a surrogate pair is
 * one code point, so `\p{Cs}` matches only unpaired halves.
 */
const LONE_SURROGATE = /\p{Cs}/u;

/** Whether `text` can be stored and read back unchanged (no U+0000, no lone surrogate). */
export function isStorableText(text: string): boolean {
  return !text.includes('\u0000') && !LONE_SURROGATE.test(text);
}

/**
 * The longest user id, in UTF-16 units, from a token or the API alike: ids are
 * keys of the stores' indexes, whose entries PostgreSQL caps at about 2.7 KB.
 */
export const USER_ID_MAX_CHARS = 256;

/** The longest username kept from a token; a longer one is cut to this many code points. */
export const USERNAME_MAX_CHARS = 256;

/** The refusal of a field that `isStorableText` rejects, for every surface alike. */
export const UNSTORABLE_TEXT = 'must be valid Unicode text without U+0000';

/**
 * Text that shows as nothing: whitespace, invisible format characters
 * (zero-width space and joiners, direction marks, soft hyphen, tags) and the
 * characters fonts draw empty (Hangul fillers, Braille blank), which
 * `String.prototype.trim` keeps.
 */
const BLANK = /^[\s\p{Cf}\u115F\u1160\u2800\u3164\uFFA0]*$/u;

/** Whether `text` would show as nothing (empty, whitespace or invisible characters only). */
export function isBlank(text: string): boolean {
  return BLANK.test(text);
}

/**
 * Validates chat text: not blank (`isBlank`) unless `blankAllowed` (a message
 * with attachments), well-formed Unicode, at most `maxChars` characters
 * (Unicode code points, so an emoji counts once). Returns the text unchanged.
 */
export function checkMessageText(text: string, maxChars: number, blankAllowed = false): string {
  if (!blankAllowed && isBlank(text)) throw new ChatError('empty_message');
  if (!isStorableText(text)) {
    throw new ChatError('invalid_payload', 'The message is not valid Unicode text.');
  }
  // UTF-16 length bounds the code point count from above: only count when it matters.
  if (text.length > maxChars) {
    let chars = 0;
    for (const _ of text) {
      chars += 1;
      if (chars > maxChars) {
        throw new ChatError(
          'message_too_long',
          `The message is longer than ${maxChars} characters.`,
        );
      }
    }
  }
  return text;
}
