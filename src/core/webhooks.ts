/**
 * Webhook delivery (protocol section 9): events wait in the store's durable
 * outbox, committed with what caused them, and this worker sends them.
 *
 * Guarantees:
 * - At least once: a row leaves the outbox only after a 2xx answer. A node
 *   that dies mid-send leaves its lease to run out (PostgreSQL) or to be
 *   cleared at the next start (SQLite, one process), and the row is sent
 *   again, with the same `webhook-id`.
 * - One node per event in the normal case: rows are leased by one claim
 *   (`FOR UPDATE SKIP LOCKED` on PostgreSQL); a second send happens only
 *   when a lease runs out, i.e. a node died or stalled past it.
 * - Bounded: at most `concurrency` sends at a time per node, each cut at
 *   `timeoutMs`; nothing is held in memory beyond the rows being sent.
 *
 * Cost: the deliveries answered in one event-loop turn leave the outbox in
 * one statement, and freed slots are refilled in batches (half the
 * concurrency at least) rather than one claim per finished send.
 */
import type { WebhookConfig } from '../config.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import type { Store } from '../store/store.js';
import type { RequestMessage } from './messages.js';
import {
  type OutboxEntry,
  type OutboxEvent,
  outboxEntry,
  outboxEntryOf,
  type WebhookData,
  type WebhookType,
  webhookBody,
} from './webhook-events.js';

/** Sends one event; resolves on a 2xx answer, rejects with the reason otherwise. */
export interface WebhookSender {
  send(id: string, body: string, signal: AbortSignal): Promise<void>;
  close(): void;
}

export interface WebhooksDeps {
  store: Store;
  sender: WebhookSender;
  config: WebhookConfig;
  metrics: Metrics;
  log: Logger;
}

/** Extra lease time beyond a send's own timeout, for the store writes around it. */
const LEASE_MARGIN_MS = 5_000;

/** Most failed events one `GET /api/webhooks/failed` lists. */
export const FAILED_PAGE_MAX = 500;

/**
 * Delay before the attempt after `attempts` failed ones: base·2^(attempts-1),
 * times a jitter in [1, 1.25) so that events failed together spread out
 * (never earlier than the schedule promises), never more than `maxMs`.
 */
export function retryDelayMs(
  attempts: number,
  baseMs: number,
  maxMs: number,
  random = Math.random,
): number {
  const exponential = baseMs * 2 ** Math.min(attempts - 1, 40);
  return Math.min(maxMs, exponential * (1 + 0.25 * random()));
}

/** The sum of the delays without jitter: how long an event is retried before it fails. */
export function retryScheduleMs(maxAttempts: number, baseMs: number, maxMs: number): number {
  let total = 0;
  for (let n = 1; n < maxAttempts; n++) total += Math.min(maxMs, baseMs * 2 ** Math.min(n - 1, 40));
  return total;
}

export interface FailedWebhook {
  id: string;
  type: WebhookType;
  attempts: number;
  lastError: string | null;
  lastAttemptAt: string | null;
  /** The body as sent: `{type, timestamp, data}`. */
  payload: unknown;
}

export class Webhooks {
  private readonly inFlight = new Set<Promise<void>>();
  private readonly abort = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private polling = false;
  /** Another poll was asked for while one ran. */
  private again = false;
  private started = false;
  private stopping = false;

  constructor(private readonly deps: WebhooksDeps) {
    deps.metrics.webhookQueueSource = () => deps.store.webhookQueueDepth(new Date().toISOString());
  }

  /** The rows for a new request message: `created` now, `unread` (unless off) when it is due. */
  messageCreated(message: RequestMessage): OutboxEntry[] {
    const at = new Date(message.createdAt);
    const data = JSON.stringify(message);
    const created = outboxEntryOf('request.message.created', data, { at });
    const { unreadAfterMs } = this.deps.config;
    if (unreadAfterMs === 0) return [created];
    return [
      created,
      outboxEntryOf('request.message.unread', data, {
        at: new Date(at.getTime() + unreadAfterMs),
        unlessRead: message._id,
      }),
    ];
  }

  /** The row for read receipts, given the ids they newly marked read. */
  messagesRead(requestId: string, userId: string, at: string) {
    return (messages: string[]): OutboxEntry =>
      outboxEntry('request.message.read', { requestId, userId, messages, at });
  }

  /**
   * Commits one event with no write of its own to go with; prefer passing
   * the row to the store call that records the action, so both commit together.
   */
  async enqueue<T extends WebhookType>(type: T, data: WebhookData[T]): Promise<void> {
    await this.deps.store.enqueueWebhooks([outboxEntry(type, data)]);
    this.nudge();
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.schedule(0);
  }

  /** Looks for due events now rather than at the next poll: one was just committed here. */
  nudge(): void {
    if (!this.started || this.stopping || !this.worthClaiming()) return;
    this.schedule(0);
  }

  /**
   * Whether an early claim (before the poll) is worth its transaction: no
   * send under way, or half the slots free. Otherwise the sends under way
   * refill the slots when they finish, or the poll does if they stall, so
   * one claim takes several rows instead of each send costing one claim.
   */
  private worthClaiming(): boolean {
    const { concurrency } = this.deps.config;
    const busy = this.inFlight.size;
    return busy === 0 || concurrency - busy >= Math.ceil(concurrency / 2);
  }

  /**
   * Stops claiming, cuts the sends under way and gives their rows back
   * (without counting an attempt), so another node or the next start sends them.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    this.abort.abort();
    while (this.inFlight.size > 0 || this.polling) {
      await Promise.allSettled([...this.inFlight]);
      if (this.polling) await new Promise((r) => setTimeout(r, 5));
    }
    this.deps.sender.close();
  }

  async failed(limit: number): Promise<FailedWebhook[]> {
    const events = await this.deps.store.failedWebhooks(limit);
    return events.map((e) => ({
      id: e.id,
      type: e.type,
      attempts: e.attempts,
      lastError: e.lastError,
      lastAttemptAt: e.lastAttemptAt,
      payload: JSON.parse(webhookBody(e)),
    }));
  }

  /**
   * Makes a failed event due now; it keeps its attempts, so one more failure
   * returns it to the failed list. False when no failed event has this id.
   */
  async retry(id: string): Promise<boolean> {
    const queued = await this.deps.store.retryWebhook(id, new Date().toISOString());
    if (queued) this.nudge();
    return queued;
  }

  /** The soonest retry this node recorded, so that it is not left for the next poll. */
  private nextRetryAt = Number.POSITIVE_INFINITY;
  /** The time the last claim asked for due events at. */
  private lastClaimAt = 0;

  private schedule(ms: number): void {
    if (this.stopping) return;
    if (this.polling) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    this.timerAt = Date.now() + ms;
    this.timer = setTimeout(() => void this.poll(), ms);
    this.timer.unref();
  }

  /** When the pending poll timer fires. */
  private timerAt = Number.POSITIVE_INFINITY;

  private async poll(): Promise<void> {
    this.polling = true;
    this.again = false;
    let full = false;
    try {
      const free = this.deps.config.concurrency - this.inFlight.size;
      if (free > 0) {
        const now = Date.now();
        this.lastClaimAt = now;
        const lease = 2 * this.deps.config.timeoutMs + LEASE_MARGIN_MS;
        const batch = await this.deps.store.claimWebhooks(
          free,
          new Date(now).toISOString(),
          new Date(now + lease).toISOString(),
        );
        for (const event of batch) this.dispatch(event);
        full = batch.length === free;
      }
    } catch (err) {
      this.deps.log.warn({ err }, 'webhook claim failed');
    } finally {
      this.polling = false;
    }
    // More may be due when the batch was full; otherwise wait for the poll, a
    // nudge, or this node's next retry if that comes sooner than the poll.
    if (this.again) this.schedule(0);
    else if (full && this.inFlight.size < this.deps.config.concurrency) this.schedule(0);
    else this.schedule(this.untilNextPoll());
  }

  private untilNextPoll(): number {
    // Every slot busy: the next free one schedules a poll of its own.
    if (this.inFlight.size >= this.deps.config.concurrency) return this.deps.config.pollMs;
    // Forgotten only once a claim has looked at or after it: a timer may fire a little early.
    if (this.nextRetryAt <= this.lastClaimAt) this.nextRetryAt = Number.POSITIVE_INFINITY;
    return Math.min(this.deps.config.pollMs, Math.max(1, this.nextRetryAt - Date.now()));
  }

  private dispatch(event: OutboxEvent): void {
    const p = this.deliver(event).finally(() => {
      this.inFlight.delete(p);
      // Slots are free: pick up what the last full batch left behind.
      if (this.stopping) return;
      if (this.worthClaiming()) this.schedule(0);
      else {
        // A retry this send just recorded may be due before the pending poll.
        const ms = this.untilNextPoll();
        if (!this.polling && Date.now() + ms < this.timerAt) this.schedule(ms);
      }
    });
    this.inFlight.add(p);
  }

  /** Delivered ids waiting for the turn's one delete. */
  private completing: string[] = [];
  private completion: Promise<void> | undefined;

  /**
   * Removes a delivered row together with the others answered in this turn.
   * Each delivery still waits for the delete, so it counts as delivered (and
   * its slot as free) only once its row is gone; a crash before the delete
   * sends it again, as a crash between answer and delete always did.
   */
  private complete(id: string): Promise<void> {
    this.completing.push(id);
    this.completion ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      const ids = this.completing;
      this.completing = [];
      this.completion = undefined;
      return this.deps.store.completeWebhooks(ids);
    });
    return this.completion;
  }

  private async deliver(event: OutboxEvent): Promise<void> {
    const { store, sender, metrics, log, config } = this.deps;
    let error: string;
    try {
      await sender.send(event.id, webhookBody(event), this.abort.signal);
      await this.complete(event.id);
      metrics.webhookDeliveries.inc({ result: 'delivered' });
      return;
    } catch (err) {
      error = err instanceof Error ? err.message : String(err);
    }
    try {
      if (this.abort.signal.aborted) {
        await store.releaseWebhook(event.id);
        return;
      }
      const attempts = event.attempts + 1;
      const now = Date.now();
      const failed = attempts >= config.maxAttempts;
      const nextAttemptAt = failed
        ? null
        : new Date(
            now + retryDelayMs(attempts, config.retryBaseMs, config.retryMaxMs),
          ).toISOString();
      await store.recordWebhookFailure(event.id, {
        error: error.slice(0, 500),
        at: new Date(now).toISOString(),
        nextAttemptAt,
      });
      if (nextAttemptAt !== null) {
        this.nextRetryAt = Math.min(this.nextRetryAt, Date.parse(nextAttemptAt));
      }
      metrics.webhookDeliveries.inc({ result: failed ? 'failed' : 'retry' });
      if (failed) log.warn({ id: event.id, type: event.type, attempts, error }, 'webhook failed');
    } catch (err) {
      // The lease runs out and the event is tried again: at least once still holds.
      log.warn({ err, id: event.id }, 'webhook state not recorded');
    }
  }
}
