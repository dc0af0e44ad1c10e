/**
 * Each watched stream's newest chats, kept by a node so that a viewer joining
 * (or resuming with `since`) gets its `history` frame without reading the
 * store. The streams' broker topics keep it current: every chat heard on a
 * stream's topic, from any node, is appended in the broker's order, and every
 * deletion heard there removes the chat, so a deleted chat never comes back in
 * a later history.
 *
 * A stream's cache starts cold: it is seeded once from the store, after the
 * node's subscription to the stream's topic took effect and every node stored
 * what it had published by then (`stream-settle.ts`), merging what it heard
 * meanwhile. It holds a suffix of the stream's chats that are not deleted, so
 * it answers "the newest n" when it holds n (or the whole stream), and "the
 * chats after id" when it holds that chat; otherwise the store must.
 *
 * Bounds: per stream, what one `history` frame can carry (HISTORY_MAX_PAGE
 * chats and SEND_BUFFER_MAX_BYTES); at most STREAM_HISTORY_CACHE_STREAMS
 * streams, the one joined longest ago dropped first. A stream nobody on this
 * node watches is dropped at once (its topic is left, so it would go stale).
 *
 * No chat is missing: one published before the subscription took effect is
 * stored before the seed is read; one published after it is heard. When a
 * node does not confirm its chats stored within STREAM_HISTORY_SETTLE_MS, the
 * seed is not kept (the cache stays cold) and that join's history is a gap.
 */
import type { StreamMessage } from './messages.js';

export interface RecentLimits {
  /** Chats per stream. */
  chats: number;
  /** Approximate bytes of chat data per stream. */
  bytes: number;
  /** Streams cached at once; 0 turns the cache off. */
  streams: number;
}

/** What the store answered for the newest chats (`Store.streamRecent` without `after`). */
export interface Seed {
  messages: StreamMessage[];
  /** Older chats exist that are not in `messages`. */
  more: boolean;
}

/** Room for the fields around the text, name and user id in a chat's encoded data. */
const CHAT_OVERHEAD_BYTES = 128;

// Each chat heard from the broker is parsed on its own, so each holds its own
// copy of the strings: every one of them counts.
const sizeOf = (m: StreamMessage) =>
  m.message.length + m.username.length + m.userId.length + CHAT_OVERHEAD_BYTES;

/** One stream's newest chats, oldest first. */
export class RecentChats {
  private chats: StreamMessage[] = [];
  private bytes = 0;
  /** Nothing older than `chats` is left that is not deleted: they are the whole stream. */
  private complete = false;
  private state: 'seeding' | 'ready' | 'failed' = 'seeding';
  /** While seeding: what was heard while the store was read. */
  private heard: StreamMessage[] = [];
  private deletedWhileSeeding = new Set<string>();

  constructor(private readonly limits: RecentLimits) {}

  get ready(): boolean {
    return this.state === 'ready';
  }

  /**
   * Merges the store's newest chats, read after the topic was subscribed, with
   * the chats heard since: the store's first, then those it did not have yet.
   * False when too much happened meanwhile to be sure (the cache stays cold).
   */
  seed(seed: Seed): boolean {
    if (this.state !== 'seeding') return false;
    const heard = this.heard;
    const deleted = this.deletedWhileSeeding;
    this.state = 'ready';
    this.heard = [];
    this.deletedWhileSeeding = new Set();
    const ids = new Set(seed.messages.map((m) => m.id));
    this.complete = !seed.more;
    this.chats = [];
    this.bytes = 0;
    for (const m of seed.messages) if (!deleted.has(m.id)) this.push(m);
    for (const m of heard) if (!ids.has(m.id) && !deleted.has(m.id)) this.push(m);
    return true;
  }

  /** A chat heard on the stream's topic. */
  add(message: StreamMessage): void {
    if (this.state === 'ready') {
      this.push(message);
      return;
    }
    if (this.state === 'failed') return;
    // Only the newest `chats` heard can matter; the store has the older ones.
    if (this.heard.length >= this.limits.chats) this.heard.shift();
    this.heard.push(message);
  }

  /** A deletion heard on the stream's topic. */
  remove(id: string): void {
    if (this.state === 'seeding') {
      // A flood of deletions during one read: give up this seed rather than hold them all.
      if (this.deletedWhileSeeding.size >= this.limits.chats) this.fail();
      else this.deletedWhileSeeding.add(id);
      return;
    }
    const i = this.indexOf(id);
    if (i === -1) return;
    this.bytes -= sizeOf(this.chats[i] as StreamMessage);
    this.chats.splice(i, 1);
  }

  /** The newest `n`, oldest first; undefined when older chats the answer needs are not here. */
  newest(n: number): StreamMessage[] | undefined {
    if (this.state !== 'ready' || (this.chats.length < n && !this.complete)) return undefined;
    return n >= this.chats.length ? this.chats.slice() : this.chats.slice(this.chats.length - n);
  }

  /** The chats after the chat `id`, oldest first; undefined when that chat is not here. */
  after(id: string): StreamMessage[] | undefined {
    if (this.state !== 'ready') return undefined;
    const i = this.indexOf(id);
    return i === -1 ? undefined : this.chats.slice(i + 1);
  }

  /** The seed failed or was given up: this cache answers nothing. */
  fail(): void {
    this.state = 'failed';
    this.heard = [];
    this.deletedWhileSeeding = new Set();
    this.chats = [];
    this.bytes = 0;
  }

  get size(): number {
    return this.chats.length;
  }

  /** The ids of the chats held, for telling which of them were deleted meanwhile. */
  ids(): Set<string> {
    return new Set(this.chats.map((m) => m.id));
  }

  private push(message: StreamMessage): void {
    this.chats.push(message);
    this.bytes += sizeOf(message);
    while (
      this.chats.length > this.limits.chats ||
      (this.bytes > this.limits.bytes && this.chats.length > 1)
    ) {
      this.bytes -= sizeOf(this.chats.shift() as StreamMessage);
      this.complete = false;
    }
  }

  /** Newest first: deletions and resumes are usually about recent chats. */
  private indexOf(id: string): number {
    for (let i = this.chats.length - 1; i >= 0; i--) if (this.chats[i]?.id === id) return i;
    return -1;
  }
}

/** The caches of the streams watched on this node, at most `limits.streams` of them. */
export class RecentCache {
  /** In the order they were last joined, the oldest first. */
  private readonly streams = new Map<string, RecentChats>();

  constructor(readonly limits: RecentLimits) {}

  get enabled(): boolean {
    return this.limits.streams > 0;
  }

  get(key: string): RecentChats | undefined {
    return this.streams.get(key);
  }

  /** A new, cold cache for `key`; the stream joined longest ago makes room. */
  open(key: string): RecentChats {
    this.streams.delete(key);
    if (this.streams.size >= this.limits.streams) {
      const oldest = this.streams.keys().next();
      if (!oldest.done) this.streams.delete(oldest.value);
    }
    const recent = new RecentChats(this.limits);
    this.streams.set(key, recent);
    return recent;
  }

  /** `key` was joined now: it is dropped last. */
  touch(key: string, recent: RecentChats): void {
    this.streams.delete(key);
    this.streams.set(key, recent);
  }

  /** Nobody here watches `key` any more (or it failed to seed, or it ended). */
  drop(key: string, recent?: RecentChats): void {
    if (recent === undefined || this.streams.get(key) === recent) this.streams.delete(key);
  }

  get streamCount(): number {
    return this.streams.size;
  }
}
