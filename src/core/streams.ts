/**
 * Live-stream chat (CONTRACT section 2), independent of any transport:
 * which streams exist, who may post, and fan-out through the Broker.
 *
 * Ordering: a chat is published to the stream's broker topic and delivered
 * to local viewers only when it comes back from the broker, so every viewer
 * on every node sees the broker's one order, the sender included.
 *
 * Storage: chats are stored in batches, one transaction per event-loop turn,
 * off the fan-out path; `flush()` waits for what was accepted (shutdown).
 */
import type { Broker, Unsubscribe } from '../broker/broker.js';
import type { Limits } from '../config.js';
import type { Logger } from '../observability/log.js';
import { type Metrics, preciseNow } from '../observability/metrics.js';
import type { Store } from '../store/store.js';
import { ChatError } from './errors.js';
import type { Identity } from './identity.js';
import { newId } from './ids.js';
import { checkMessageText, RateLimiter } from './limits.js';
import type { Page, PageQuery, StreamMessage } from './messages.js';

export const STREAM_KEY = /^[A-Za-z0-9_-]{1,64}$/;

export type StreamStatus = 'open' | 'ended' | 'unknown';

/**
 * What flows on a stream's broker topic. `at` is when the chat was accepted
 * (epoch ms, sub-millisecond), for the delivery latency metric.
 */
export type StreamEvent = { kind: 'chat'; message: StreamMessage; at?: number } | { kind: 'ended' };

/**
 * A connection watching a stream, as the transport implements it. `F` is the
 * transport's encoded frame: built once per event, handed to every viewer.
 */
export interface StreamViewer<F> {
  /** Queues the frame; false when this viewer was skipped (closing, or dropped for being slow). */
  deliver(frame: F): boolean;
  /** The stream was ended through the API: tell the client and close. */
  streamEnded(): void;
}

interface Audience<F> {
  viewers: Set<StreamViewer<F>>;
  unsubscribe: Unsubscribe;
}

export interface StreamsDeps<F> {
  store: Store;
  broker: Broker;
  limits: Limits;
  metrics: Metrics;
  log: Logger;
  /** Encodes a chat for the wire, once per fan-out. */
  encode: (message: StreamMessage) => F;
}

const topicOf = (key: string) => `stream:${key}`;

export class Streams<F> {
  private readonly audiences = new Map<string, Audience<F>>();
  private readonly rate: RateLimiter;
  private pending: StreamMessage[] = [];
  private flushing: Promise<void> = Promise.resolve();
  private flushScheduled = false;
  /** When each chat fanned out in this event-loop turn was accepted. */
  private deliveredThisTurn: number[] = [];

  constructor(private readonly deps: StreamsDeps<F>) {
    this.rate = new RateLimiter(deps.limits.streamRate);
  }

  static isValidKey(key: string): boolean {
    return STREAM_KEY.test(key);
  }

  async status(key: string): Promise<StreamStatus> {
    if (!STREAM_KEY.test(key)) return 'unknown';
    const stream = await this.deps.store.getStream(key);
    if (!stream) return 'unknown';
    return stream.endedAt === null ? 'open' : 'ended';
  }

  /** Creates or updates a stream (and reopens an ended one). */
  async put(
    key: string,
    fields: { title?: string | null; ownerId?: string | null },
  ): Promise<{ created: boolean }> {
    return this.deps.store.putStream(key, fields);
  }

  /** Ends a stream: its viewers on every node are told and closed. */
  async end(key: string): Promise<boolean> {
    const ended = await this.deps.store.endStream(key);
    if (ended) this.publish(key, { kind: 'ended' });
    return ended;
  }

  join(key: string, viewer: StreamViewer<F>): void {
    let audience = this.audiences.get(key);
    if (!audience) {
      const viewers = new Set<StreamViewer<F>>();
      const unsubscribe = this.deps.broker.subscribe(topicOf(key), (payload) =>
        this.onEvent(key, payload),
      );
      audience = { viewers, unsubscribe };
      this.audiences.set(key, audience);
    }
    audience.viewers.add(viewer);
  }

  leave(key: string, viewer: StreamViewer<F>): void {
    const audience = this.audiences.get(key);
    if (!audience?.viewers.delete(viewer)) return;
    if (audience.viewers.size === 0) {
      audience.unsubscribe();
      this.audiences.delete(key);
    }
  }

  /**
   * Accepts a chat from `identity` (null: anonymous) or throws the ChatError
   * that refuses it. Nothing is stored or sent when it throws.
   */
  post(key: string, identity: Identity | null, text: string): StreamMessage {
    if (identity === null) throw new ChatError('not_authenticated');
    checkMessageText(text, this.deps.limits.streamMessageMaxChars);
    this.rate.take(`${identity.userId}\u0000${key}`);
    const message: StreamMessage = {
      id: newId(),
      streamKey: key,
      userId: identity.userId,
      username: identity.username,
      message: text,
      sentAt: new Date().toISOString(),
    };
    this.deps.metrics.messagesIn.inc({ chat: 'stream' });
    this.enqueue(message);
    this.publish(key, { kind: 'chat', message, at: preciseNow() });
    return message;
  }

  history(key: string, query: PageQuery): Promise<Page<StreamMessage>> {
    return this.deps.store.streamHistory(key, query);
  }

  /** Resolves when every chat accepted so far is stored (or failed and was logged). */
  async flush(): Promise<void> {
    this.flushScheduled = false;
    const batch = this.pending;
    this.pending = [];
    if (batch.length > 0) {
      this.flushing = this.flushing.then(() => this.write(batch));
    }
    await this.flushing;
  }

  private enqueue(message: StreamMessage): void {
    this.pending.push(message);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => void this.flush());
    }
  }

  private async write(batch: StreamMessage[]): Promise<void> {
    try {
      await this.deps.metrics.timeCommit('stream_messages', () =>
        this.deps.store.appendStreamMessages(batch),
      );
    } catch (err) {
      // Already delivered: the chats stay visible to those watching but are
      // missing from stored history. Logged once per batch, with its size.
      this.deps.log.error({ err, count: batch.length }, 'storing stream chats failed');
    }
  }

  private publish(key: string, event: StreamEvent): void {
    this.deps.broker.publish(topicOf(key), JSON.stringify(event));
  }

  private onEvent(key: string, payload: string): void {
    const audience = this.audiences.get(key);
    if (!audience) return;
    const event = parseEvent(payload);
    if (event === undefined) {
      // Another deployment's prefix, or a node of another version: never fatal here.
      this.deps.log.warn({ key, bytes: payload.length }, 'ignored a malformed stream event');
      return;
    }
    if (event.kind === 'ended') {
      this.audiences.delete(key);
      audience.unsubscribe();
      for (const viewer of audience.viewers) viewer.streamEnded();
      return;
    }
    const frame = this.deps.encode(event.message);
    let delivered = 0;
    for (const viewer of audience.viewers) if (viewer.deliver(frame)) delivered++;
    this.deps.metrics.messagesOut.inc({ chat: 'stream' }, delivered);
    const acceptedAt = event.at ?? Date.parse(event.message.sentAt);
    if (delivered > 0 && Number.isFinite(acceptedAt)) this.observeDelivery(acceptedAt);
  }

  /**
   * Delivery latency, once per chat rather than per viewer, to keep the fan-out
   * loop as it is. Observed at the end of the turn: the transport writes what
   * it corked for this turn first (its callback was queued before this one).
   */
  private observeDelivery(acceptedAt: number): void {
    if (this.deliveredThisTurn.length === 0) setImmediate(this.observeTurn);
    this.deliveredThisTurn.push(acceptedAt);
  }

  private readonly observeTurn = (): void => {
    const now = preciseNow();
    for (const at of this.deliveredThisTurn) {
      // Clocks of two nodes may disagree by a little: never a negative latency.
      this.deps.metrics.deliveryLatency.observe({ chat: 'stream' }, Math.max(0, now - at) / 1000);
    }
    this.deliveredThisTurn = [];
  };

  /** Connections watching, on this node. */
  get viewerCount(): number {
    let n = 0;
    for (const a of this.audiences.values()) n += a.viewers.size;
    return n;
  }
}

const isString = (v: unknown): v is string => typeof v === 'string';

/**
 * A broker payload as a StreamEvent, or undefined when it is not one. The
 * broker is shared infrastructure: what arrives on a topic is checked like
 * anything else that crosses a process boundary.
 */
export function parseEvent(payload: string): StreamEvent | undefined {
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const event = value as { kind?: unknown; message?: Record<string, unknown> };
  if (event.kind === 'ended') return { kind: 'ended' };
  const m = event.message;
  if (event.kind !== 'chat' || typeof m !== 'object' || m === null) return undefined;
  const fields = [m.id, m.streamKey, m.userId, m.username, m.message, m.sentAt];
  if (!fields.every(isString)) return undefined;
  // A missing or bad `at` (an older node, a foreign publisher) falls back to `sentAt`.
  const at = (value as { at?: unknown }).at;
  const chat = { kind: 'chat', message: m as unknown as StreamMessage } as const;
  return typeof at === 'number' && Number.isFinite(at) ? { ...chat, at } : chat;
}
