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
 *   `timeoutMs`; in memory, at most as many rows again claimed to be sent
 *   next, and the ids of those delivered until they are removed (a few
 *   times `concurrency` at most, for `REMOVE_AFTER_MS` at most).
 *
 * Cost: a node claims rows ahead, up to `concurrency` beyond those it is
 * sending, so that a send that ends is followed by the next one in the same
 * turn, and claims only once it holds `concurrency` rows or fewer, so each
 * claim takes at least that many; while sends are under way, claims come at
 * most every `CLAIM_GAP_MS`, so that the events of several commits go in one.
 * Delivered rows leave the outbox together,
 * once `concurrency` of them are waiting or the oldest has waited
 * `REMOVE_AFTER_MS`, in one statement (the next claim's, when one is due
 * then): a removal is a commit, which on SQLite cost more than the send when
 * made for each event or two. A node that dies sends the rows delivered in
 * that last moment again, as a death between answer and removal always could.
 *
 * Lease: a row claimed ahead waits for a free slot, which comes within
 * `timeoutMs` (every send under way ends by then), then is sent within
 * `timeoutMs`: the lease of 2 × `timeoutMs` + a margin covers both.
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

/** Longest a delivered row waits for others to be removed with. */
export const REMOVE_AFTER_MS = 100;

/**
 * Least time between two claims while sends are under way: a busy node
 * commits events every few milliseconds, and claiming on each commit took a
 * few rows per claim, each claim costing about as much as a whole batch.
 * A node with nothing to send claims at once.
 */
export const CLAIM_GAP_MS = 5;

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
  /** Claimed, leased, not yet sent: sent as slots free up, oldest first. */
  private ready: OutboxEvent[] = [];
  /** Delivered ids waiting to be removed together; see `removalDue`. */
  private delivered: string[] = [];
  /** When the oldest of `delivered` was delivered. */
  private deliveredSince = 0;
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
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
    this.claimSoon();
  }

  /**
   * A claim now when no send is under way, else `CLAIM_GAP_MS` after the
   * last one, so that the events committed meanwhile go in one claim.
   */
  private claimSoon(): void {
    const wait = this.inFlight.size > 0 ? this.lastClaimAt + CLAIM_GAP_MS - Date.now() : 0;
    if (wait <= 0) this.schedule(0);
    else if (this.polling) this.again = true;
    else if (!this.immediate && Date.now() + wait < this.timerAt) this.schedule(wait);
  }

  /** Rows this node has yet to send or is sending. */
  private queued(): number {
    return this.ready.length + this.inFlight.size;
  }

  /**
   * Whether a claim is worth its transaction: `concurrency` rows or fewer
   * are queued here, so the claim can take at least that many. Otherwise the
   * rows queued keep every slot busy until then.
   */
  private worthClaiming(): boolean {
    return this.queued() <= this.deps.config.concurrency;
  }

  /**
   * Stops claiming, cuts the sends under way and gives their rows back
   * (without counting an attempt), as well as those claimed and not sent, so
   * another node or the next start sends them. Delivered rows are removed.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    this.abort.abort();
    while (this.inFlight.size > 0 || this.polling) {
      await Promise.allSettled([...this.inFlight]);
      if (this.polling) await new Promise((r) => setTimeout(r, 5));
    }
    const { store, log } = this.deps;
    const unsent = this.ready;
    this.ready = [];
    await Promise.all(
      unsent.map((e) =>
        store
          .releaseWebhook(e.id)
          .catch((err) => log.warn({ err, id: e.id }, 'lease not released')),
      ),
    );
    await this.removeDelivered().catch((err) =>
      log.warn({ err }, 'delivered webhooks not removed; they will be sent again'),
    );
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

  /** Polls in `ms`; 0: after this turn's I/O, so that the turn's deliveries go together. */
  private schedule(ms: number): void {
    if (this.stopping) return;
    if (this.polling) {
      this.again = true;
      return;
    }
    // A poll due after this turn's I/O comes first; it schedules the next one.
    if (this.immediate) return;
    clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    this.immediate = undefined;
    this.timerAt = Date.now() + ms;
    if (ms <= 0) {
      this.immediate = setImmediate(() => void this.poll());
      this.immediate.unref();
    } else {
      this.timer = setTimeout(() => void this.poll(), ms);
      this.timer.unref();
    }
  }

  /** When the pending poll timer fires. */
  private timerAt = Number.POSITIVE_INFINITY;

  /**
   * One store call: removes the rows delivered since the last one and, when
   * this node holds few enough rows, claims due ones in the same transaction.
   */
  private async poll(): Promise<void> {
    this.immediate = undefined;
    this.timerAt = Number.POSITIVE_INFINITY;
    this.polling = true;
    this.again = false;
    let full = false;
    const done = this.removalDue() ? this.delivered : [];
    if (done.length > 0) this.delivered = [];
    try {
      const { config, store, metrics } = this.deps;
      const limit = 2 * config.concurrency - this.queued();
      if (this.worthClaiming() && limit > 0) {
        const now = Date.now();
        this.lastClaimAt = now;
        const lease = 2 * config.timeoutMs + LEASE_MARGIN_MS;
        const batch = await store.claimWebhooks(
          limit,
          new Date(now).toISOString(),
          new Date(now + lease).toISOString(),
          done,
        );
        metrics.webhookDeliveries.inc({ result: 'delivered' }, done.length);
        this.ready.push(...batch);
        full = batch.length === limit;
      } else if (done.length > 0) {
        await store.completeWebhooks(done);
        metrics.webhookDeliveries.inc({ result: 'delivered' }, done.length);
      }
    } catch (err) {
      // Delivered rows not removed are sent again when their lease runs out:
      // at least once still holds.
      this.deps.log.warn({ err }, 'webhook claim failed');
    } finally {
      this.polling = false;
    }
    this.pump();
    // More may be due when the batch was full, and delivered rows may be
    // due for removal; otherwise wait for the poll, a nudge, this node's next
    // retry or the removal of delivered rows, whichever comes first.
    if (this.removalDue()) this.schedule(0);
    else if (full && this.worthClaiming()) this.schedule(0);
    else if (this.again && this.worthClaiming()) this.claimSoon();
    else this.schedule(this.untilNextPoll());
  }

  /** Removes the delivered rows on their own (at shutdown). */
  private async removeDelivered(): Promise<void> {
    const done = this.delivered;
    this.delivered = [];
    if (done.length === 0) return;
    await this.deps.store.completeWebhooks(done);
    this.deps.metrics.webhookDeliveries.inc({ result: 'delivered' }, done.length);
  }

  /** Whether the delivered rows waiting are many or old enough to remove now. */
  private removalDue(): boolean {
    const n = this.delivered.length;
    return (
      n >= this.deps.config.concurrency ||
      (n > 0 && Date.now() - this.deliveredSince >= REMOVE_AFTER_MS)
    );
  }

  private untilNextPoll(): number {
    const { pollMs } = this.deps.config;
    const removal =
      this.delivered.length > 0
        ? Math.max(1, this.deliveredSince + REMOVE_AFTER_MS - Date.now())
        : pollMs;
    // Enough rows held: a send that ends asks for the next claim itself.
    if (!this.worthClaiming()) return Math.min(pollMs, removal);
    // Forgotten only once a claim has looked at or after it: a timer may fire a little early.
    if (this.nextRetryAt <= this.lastClaimAt) this.nextRetryAt = Number.POSITIVE_INFINITY;
    return Math.min(pollMs, removal, Math.max(1, this.nextRetryAt - Date.now()));
  }

  /** Starts sends for ready rows while slots are free. */
  private pump(): void {
    const { concurrency } = this.deps.config;
    while (!this.stopping && this.inFlight.size < concurrency && this.ready.length > 0) {
      this.dispatch(this.ready.shift() as OutboxEvent);
    }
  }

  private dispatch(event: OutboxEvent): void {
    const p = this.deliver(event).finally(() => {
      this.inFlight.delete(p);
      if (this.stopping) return;
      // The slot is free: the next ready row goes out in this same turn.
      this.pump();
      if (this.removalDue()) this.schedule(0);
      else if (this.worthClaiming()) this.claimSoon();
      else {
        // A retry this send just recorded, or the removal of the row it
        // delivered, may be due before the pending poll.
        const ms = this.untilNextPoll();
        if (!this.polling && Date.now() + ms < this.timerAt) this.schedule(ms);
      }
    });
    this.inFlight.add(p);
  }

  private async deliver(event: OutboxEvent): Promise<void> {
    const { store, sender, metrics, log, config } = this.deps;
    let error: string;
    try {
      await sender.send(event.id, webhookBody(event), this.abort.signal);
      // Removed with the others answered in this turn, by the next store call;
      // a crash before that sends it again, as a crash between answer and
      // delete always could.
      if (this.delivered.length === 0) this.deliveredSince = Date.now();
      this.delivered.push(event.id);
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
