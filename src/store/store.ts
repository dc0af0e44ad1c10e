/**
 * Persistence, as the core needs it. One implementation per backend
 * (`sqlite.ts`, later `postgres.ts`); `app.ts` picks one from DATABASE_URL.
 *
 * Guarantees every implementation gives:
 * - A promise that resolves means the write is durable (committed); one that
 *   rejects means nothing of that call was stored.
 * - Ordering: messages of one stream or request are returned in the order
 *   they were stored (a per-backend sequence, never the clock).
 * - Idempotency: `addRequestMessage` with a `clientMessageId` already stored
 *   for the same sender and request returns the original; receipts are
 *   recorded once per (message, user, kind) and the first time wins.
 */
import type {
  NewRequestMessage,
  Page,
  PageQuery,
  ReceiptKind,
  RequestMessage,
  StreamMessage,
} from '../core/messages.js';
import type {
  ModerationAction,
  NewModerationAction,
  StreamBan,
  StreamControl,
  StreamSettings,
} from '../core/stream-rules.js';

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
  /** Marks the stream ended; false when there is no such stream. */
  endStream(key: string): Promise<boolean>;
  getStream(key: string): Promise<StreamRecord | undefined>;
  /** Stores a batch in one transaction: all of it or none. */
  appendStreamMessages(messages: readonly StreamMessage[]): Promise<void>;
  streamHistory(key: string, query: PageQuery): Promise<Page<StreamMessage>>;

  /**
   * Registers a request and its owner; a new owner replaces the old. Reports
   * the owner this call replaced (null when it created the request), read
   * and replaced atomically: of concurrent calls, each reports the owner the
   * one before it set, so every owner that was replaced is reported once.
   */
  putRequest(id: string, ownerId: string): Promise<PutRequestResult>;
  getRequest(id: string): Promise<RequestRecord | undefined>;
  addRequestMessage(
    message: NewRequestMessage,
  ): Promise<{ message: RequestMessage; duplicate: boolean }>;
  requestHistory(requestId: string, query: PageQuery): Promise<Page<RequestMessage>>;
  /**
   * Records receipts of `userId` for those of `messageIds` that belong to the
   * request and were not sent by that user; ignores the rest. A read also
   * records delivered. Returns the ids whose `kind` receipt is new.
   */
  addReceipts(
    requestId: string,
    kind: ReceiptKind,
    userId: string,
    messageIds: readonly string[],
    at: string,
  ): Promise<string[]>;

  // Live classroom (CONTRACT section 7).

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
  /** Replaces the members-only allowlist. */
  setStreamMembers(key: string, userIds: readonly string[]): Promise<void>;
  streamMembers(key: string): Promise<string[]>;
  /** Creates or replaces the user's ban or timeout in this stream. */
  putStreamBan(key: string, ban: StreamBan): Promise<void>;
  /** Lifts a ban or timeout; false when there was none. */
  deleteStreamBan(key: string, userId: string): Promise<boolean>;
  /** Bans and timeouts still in force at `now` (ISO-8601), oldest first. */
  streamBans(key: string, now: string): Promise<StreamBan[]>;
  /** One chat of the stream, deleted or not. */
  getStreamMessage(key: string, id: string): Promise<StreamMessage | undefined>;
  /**
   * Marks a chat deleted (the first deletion wins and is kept); undefined
   * when the stream has no such chat.
   */
  deleteStreamMessage(
    key: string,
    id: string,
    by: string,
    at: string,
  ): Promise<StreamMessage | undefined>;
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
  addModerationAction(key: string, action: NewModerationAction): Promise<ModerationAction>;
  /** Newest first; `before` is an action id. */
  moderationLog(
    key: string,
    query: { before?: string | undefined; limit: number },
  ): Promise<{ actions: ModerationAction[]; hasMore: boolean }>;

  /** Resolves when the backend answers; for readiness. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
