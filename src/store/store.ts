/**
 * Persistence, as the core needs it. One implementation per backend
 * (`sqlite.ts`, later `postgres.ts`); `app.ts` picks one from DATABASE_URL.
 *
 * Guarantees every implementation gives:
 * - A promise that resolves means the write is durable (committed); one that
 *   rejects means nothing of that call was stored.
 * - Ordering: messages of one stream or request are returned in the order
 *   they were stored (a per-backend sequence, never the clock).
 * - Idempotency: `addRequestMessage(s)` with a `clientMessageId` already stored
 *   for the same sender and request returns the original; receipts are
 *   recorded once per (message, user, kind) and the first time wins.
 * - Paging: a read that takes `before` resolves to undefined, not to an
 *   empty page, when `before` names nothing in the scope it pages (another
 *   stream's chat, another request's message, an id never stored), so that
 *   a caller can tell "no such cursor" from "nothing older". Chats,
 *   messages and log entries are never removed (deleted ones are kept), so
 *   such a cursor once handed out stays valid; an inbox's cursor holds while
 *   its request stays in that inbox. Without `before` there is always a page.
 * - Unread counts: per request, the messages by others that a user has not
 *   read are `messageCount - sent - read`, three counters kept in the same
 *   transaction as the message, the receipt or the deletion that changes them.
 *   Deleted messages count for nobody. A user's unread total is kept running
 *   (per owner and per user) in the same transaction, owner changes included.
 */
import type {
  InboxQuery,
  MessageChange,
  NewRequestMessage,
  Page,
  PageQuery,
  ReceiptKind,
  RequestActivity,
  RequestMessage,
  RequestSummary,
  StreamMessage,
  UnreadTotals,
} from '../core/messages.js';
import type {
  ModerationAction,
  ModerationEffect,
  NewModerationAction,
  StreamBan,
  StreamControl,
  StreamSettings,
} from '../core/stream-rules.js';
import type { OutboxEntry, OutboxEvent } from '../core/webhook-events.js';

/** A paged read without a cursor: the newest page, which always exists. */
export interface NewestPage {
  before?: undefined;
  limit: number;
}

export interface InboxPage {
  requests: RequestSummary[];
  hasMore: boolean;
}

export interface ModerationLogPage {
  actions: ModerationAction[];
  hasMore: boolean;
}

export interface StreamRecord {
  key: string;
  title: string | null;
  ownerId: string | null;
  /** ISO-8601 when ended through the API; null while open. */
  endedAt: string | null;
}

export interface RequestRecord {
  id: string;
  ownerId: string;
}

/** What storing one request message did; see `Store.addRequestMessage`. */
export interface AddedRequestMessage {
  message: RequestMessage;
  duplicate: boolean;
  activity?: RequestActivity;
}

/** One message of a group commit and the webhook rows that go with it. */
export interface RequestMessageWrite {
  message: NewRequestMessage;
  outbox?: readonly OutboxEntry[] | undefined;
}

export interface PutRequestResult {
  created: boolean;
  /** The owner before this call; null when the call created the request. */
  previousOwnerId: string | null;
}

export interface Store {
  /** Creates the stream or updates its fields; reopens it when it had ended. */
  putStream(
    key: string,
    fields: { title?: string | null; ownerId?: string | null },
  ): Promise<{ created: boolean }>;
  /**
   * Marks the stream ended; false when there is no such stream. `outbox`
   * rows are committed with it when this call is the one that ended it.
   */
  endStream(key: string, outbox?: readonly OutboxEntry[]): Promise<boolean>;
  getStream(key: string): Promise<StreamRecord | undefined>;
  /** Stores a batch in one transaction: all of it or none. */
  appendStreamMessages(messages: readonly StreamMessage[]): Promise<void>;
  streamHistory(key: string, query: NewestPage): Promise<Page<StreamMessage>>;
  /** Undefined when `before` names no chat of this stream. */
  streamHistory(key: string, query: PageQuery): Promise<Page<StreamMessage> | undefined>;

  /**
   * Registers a request and its owner; a new owner replaces the old. Reports
   * the owner this call replaced (null when it created the request), read
   * and replaced atomically: of concurrent calls, each reports the owner the
   * one before it set, so every owner that was replaced is reported once.
   */
  putRequest(id: string, ownerId: string): Promise<PutRequestResult>;
  getRequest(id: string): Promise<RequestRecord | undefined>;
  /**
   * Stores a message and, in the same transaction, the request's counters
   * (its message count, last message and activity time, the sender's sent
   * count). `activity` tells what the message did to everyone's unread count;
   * absent for a duplicate, which changed nothing. `outbox` rows are
   * committed with the message, and dropped with a duplicate.
   */
  addRequestMessage(
    message: NewRequestMessage,
    outbox?: readonly OutboxEntry[],
  ): Promise<AddedRequestMessage>;
  /**
   * Group commit: stores each write as `addRequestMessage` would, in order
   * within each request, and commits them all in one transaction. Outcomes
   * come back one per write, in the order given: a write that fails (a taken
   * id, a constraint) is refused alone and leaves nothing behind, the others
   * are committed. Resolves only once the commit is durable; rejects (nothing
   * stored) only when the transaction as a whole could not be committed.
   */
  addRequestMessages(
    writes: readonly RequestMessageWrite[],
  ): Promise<PromiseSettledResult<AddedRequestMessage>[]>;
  requestHistory(requestId: string, query: NewestPage): Promise<Page<RequestMessage>>;
  /** Undefined when `before` names no message of this request. */
  requestHistory(requestId: string, query: PageQuery): Promise<Page<RequestMessage> | undefined>;
  /**
   * Records receipts of `userId` for those of `messageIds` that belong to the
   * request and were not sent by that user; ignores the rest. A read also
   * records delivered. Returns the ids whose `kind` receipt is new.
   * `outbox`, given those ids when there are any, returns a row committed
   * in the same transaction.
   */
  addReceipts(
    requestId: string,
    kind: ReceiptKind,
    userId: string,
    messageIds: readonly string[],
    at: string,
    outbox?: (fresh: string[]) => OutboxEntry,
  ): Promise<string[]>;

  /**
   * The webhook outbox (protocol section 9). Rows are pending until sent
   * (then removed) or out of attempts (then failed, kept for the API).
   */
  enqueueWebhooks(entries: readonly OutboxEntry[]): Promise<void>;
  /**
   * Leases up to `limit` pending rows due at `now` and not leased by anyone
   * until `leaseUntil` (ISO-8601), oldest due first. Concurrent callers, on
   * any node, never get the same row while its lease runs. A first attempt
   * of a row with `unlessRead` whose message has been read (or deleted) is
   * removed instead of returned; one claimed for the first time gets its
   * message as it is at that moment (edited text, `editedAt`, receipts) as
   * its data, stored, so every attempt sends the same body. `completed` rows
   * were delivered: they are removed in the same transaction (as by
   * `completeWebhooks`), so a busy worker makes one store call for both.
   */
  claimWebhooks(
    limit: number,
    now: string,
    leaseUntil: string,
    completed?: readonly string[],
  ): Promise<OutboxEvent[]>;
  /**
   * Rows were delivered: removes them, in one statement however many (the
   * worker completes a turn's deliveries together). Unknown ids are ignored.
   */
  completeWebhooks(ids: readonly string[]): Promise<void>;
  /**
   * Counts a failed attempt; the row is due again at `nextAttemptAt`, or
   * failed for good when that is null. Ends the lease.
   */
  recordWebhookFailure(
    id: string,
    failure: { error: string; at: string; nextAttemptAt: string | null },
  ): Promise<void>;
  /** Ends a lease without counting an attempt (a node stopping mid-send). */
  releaseWebhook(id: string): Promise<void>;
  /** Failed rows, most recently attempted first. */
  failedWebhooks(limit: number): Promise<OutboxEvent[]>;
  /** Makes a failed row due at `now` again; false when no failed row has this id. */
  retryWebhook(id: string, now: string): Promise<boolean>;
  /** Pending rows that are due or being retried (unread checks not yet due excluded). */
  webhookQueueDepth(now: string): Promise<number>;
  /** One message of the request, with its receipts; deleted ones too. */
  getRequestMessage(requestId: string, messageId: string): Promise<RequestMessage | undefined>;
  /**
   * Edits or deletes a message of `senderId` that is not deleted; undefined
   * when there is none. A deletion blanks the text and attachments and takes
   * the message out of every count (with `activity` as for a new message),
   * in one transaction.
   */
  changeRequestMessage(
    requestId: string,
    messageId: string,
    senderId: string,
    change: MessageChange,
  ): Promise<{ message: RequestMessage; activity?: RequestActivity } | undefined>;
  /**
   * A user's inbox, most recent activity first, paged by `(activity, id)` on
   * an index; `unread` comes from per-request counters, never from counting
   * messages.
   */
  listRequests(query: InboxQuery & NewestPage): Promise<InboxPage>;
  /**
   * Undefined when `before` names no request of this inbox: one that does not
   * exist, another owner's (a teacher's inbox), one without messages (the lab's).
   */
  listRequests(query: InboxQuery): Promise<InboxPage | undefined>;
  /** One line of `userId`'s inbox; undefined for an unknown request. */
  requestSummary(requestId: string, userId: string): Promise<RequestSummary | undefined>;
  /**
   * `userId`'s unread total over the requests they may act in (theirs with
   * `ownerId`, every request without), and the first `limit` requests with
   * unread messages. The total reads running totals kept with the counters
   * (its cost grows with neither requests nor messages). The list, newest
   * first: for an owner asking about their own requests, a partial index of
   * those with unread messages; otherwise a walk of requests until it has
   * `limit`, or (a lab user) until the requests found add up to the total.
   */
  unreadTotals(userId: string, ownerId: string | undefined, limit: number): Promise<UnreadTotals>;
  // Live classroom (protocol section 7).

  /** The stream's moderation state; undefined when there is no such stream. */
  getStreamControl(key: string): Promise<StreamControl | undefined>;
  /** Changes the given fields; false when there is no such stream. */
  updateStreamControl(
    key: string,
    patch: Partial<StreamSettings> & {
      title?: string | null;
      moderators?: string[];
      pinnedId?: string | null;
    },
  ): Promise<boolean>;
  /**
   * Unpins the chat `id` if it is still the pinned one (a pin of another
   * chat made meanwhile stays); true when it was unpinned.
   */
  unpinStreamMessage(key: string, id: string): Promise<boolean>;
  /** Replaces the members-only allowlist. */
  setStreamMembers(key: string, userIds: readonly string[]): Promise<void>;
  streamMembers(key: string): Promise<string[]>;
  /** Bans and timeouts still in force at `now` (ISO-8601), oldest first. */
  streamBans(key: string, now: string): Promise<StreamBan[]>;
  /** One chat of the stream, deleted or not. */
  getStreamMessage(key: string, id: string): Promise<StreamMessage | undefined>;
  /**
   * The newest `limit` chats that are not deleted, oldest first; with
   * `after`, only those stored after that chat. `more` says older ones (after
   * `after`) were left out; `known` is false when `after` names no chat of
   * this stream (then the newest `limit` are returned).
   */
  streamRecent(
    key: string,
    query: { after?: string | undefined; limit: number },
  ): Promise<{ messages: StreamMessage[]; more: boolean; known: boolean }>;
  /**
   * Logs an action; `effect` (a chat deleted, a ban put or lifted) and
   * `outbox` rows (its webhook events) are committed with it. Undefined, and
   * nothing stored, when the effect changes nothing: a chat already deleted
   * or not in the stream, a ban that was not there to lift.
   */
  addModerationAction(
    key: string,
    action: NewModerationAction,
    outbox?: readonly OutboxEntry[],
    effect?: ModerationEffect,
  ): Promise<ModerationAction | undefined>;
  /** Newest first; `before` is an action id. */
  moderationLog(key: string, query: NewestPage): Promise<ModerationLogPage>;
  /** Undefined when `before` names no action of this stream's log. */
  moderationLog(key: string, query: PageQuery): Promise<ModerationLogPage | undefined>;

  /** Resolves when the backend answers; for readiness. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
