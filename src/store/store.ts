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

  /** Resolves when the backend answers; for readiness. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
