/**
 * The embedded default Store: one SQLite file in WAL mode. better-sqlite3 is
 * synchronous, so every call commits before its promise resolves.
 *
 * Durability: `synchronous = NORMAL` under WAL survives a crash or SIGKILL of
 * the process (the commit is in the OS before the call returns); only a power
 * loss can drop the last commits. PostgreSQL is the choice when that matters.
 */
import { once } from 'node:events';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import type {
  NewRequestMessage,
  Page,
  PageQuery,
  Receipt,
  ReceiptKind,
  RequestMessage,
  StreamMessage,
} from '../core/messages.js';
import type { OutboxEntry, OutboxEvent, WebhookType } from '../core/webhook-events.js';
import type { PutRequestResult, RequestRecord, Store, StreamRecord } from './store.js';

/** Append-only: a released migration is never edited, a new one is added. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE streams (
     key        TEXT PRIMARY KEY,
     title      TEXT,
     owner_id   TEXT,
     ended_at   TEXT,
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL
   );
   CREATE TABLE stream_messages (
     seq        INTEGER PRIMARY KEY AUTOINCREMENT,
     id         TEXT NOT NULL UNIQUE,
     stream_key TEXT NOT NULL,
     user_id    TEXT NOT NULL,
     username   TEXT NOT NULL,
     message    TEXT NOT NULL,
     sent_at    TEXT NOT NULL
   );
   CREATE INDEX stream_messages_by_stream ON stream_messages (stream_key, seq);`,
  `CREATE TABLE requests (
     id         TEXT PRIMARY KEY,
     owner_id   TEXT NOT NULL,
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL
   );
   CREATE TABLE request_messages (
     seq               INTEGER PRIMARY KEY AUTOINCREMENT,
     id                TEXT NOT NULL UNIQUE,
     request_id        TEXT NOT NULL,
     sender_id         TEXT NOT NULL,
     sender_username   TEXT NOT NULL,
     sender_role       TEXT,
     message           TEXT NOT NULL,
     created_at        TEXT NOT NULL,
     client_message_id TEXT
   );
   CREATE INDEX request_messages_by_request ON request_messages (request_id, seq);
   CREATE UNIQUE INDEX request_messages_client_id
     ON request_messages (request_id, sender_id, client_message_id)
     WHERE client_message_id IS NOT NULL;
   CREATE TABLE receipts (
     message_id TEXT NOT NULL,
     kind       TEXT NOT NULL CHECK (kind IN ('delivered', 'read')),
     user_id    TEXT NOT NULL,
     at         TEXT NOT NULL,
     PRIMARY KEY (message_id, kind, user_id)
   ) WITHOUT ROWID;`,
  `CREATE TABLE webhook_outbox (
     id              TEXT PRIMARY KEY,
     type            TEXT NOT NULL,
     payload         TEXT NOT NULL,
     created_at      TEXT NOT NULL,
     next_attempt_at TEXT NOT NULL,
     attempts        INTEGER NOT NULL DEFAULT 0,
     last_error      TEXT,
     last_attempt_at TEXT,
     state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
     lease_until     TEXT,
     unless_read     TEXT
   );
   CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
   CREATE INDEX webhook_outbox_failed ON webhook_outbox (last_attempt_at) WHERE state = 'failed';`,
];

interface StreamRow {
  key: string;
  title: string | null;
  owner_id: string | null;
  ended_at: string | null;
}
interface StreamMessageRow {
  seq: number;
  id: string;
  stream_key: string;
  user_id: string;
  username: string;
  message: string;
  sent_at: string;
}
interface RequestMessageRow {
  seq: number;
  id: string;
  request_id: string;
  sender_id: string;
  sender_username: string;
  sender_role: string | null;
  message: string;
  created_at: string;
}
interface OutboxRow {
  id: string;
  type: WebhookType;
  payload: string;
  created_at: string;
  attempts: number;
  last_error: string | null;
  last_attempt_at: string | null;
  unless_read: string | null;
}
const outboxEvent = (r: OutboxRow): OutboxEvent => ({
  id: r.id,
  type: r.type,
  data: r.payload,
  createdAt: r.created_at,
  attempts: r.attempts,
  lastError: r.last_error,
  lastAttemptAt: r.last_attempt_at,
});

interface ReceiptRow {
  message_id: string;
  kind: ReceiptKind;
  user_id: string;
  at: string;
}

export function sqlitePath(databaseUrl: string): string {
  return databaseUrl.replace(/^sqlite:/, '');
}

export function migrate(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v] as string);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}

/** How often the checkpointer thread folds the WAL back into the database file. */
const CHECKPOINT_INTERVAL_MS = 250;

export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly q;
  private readonly checkpointer: Worker | undefined;

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('foreign_keys = ON');
    migrate(this.db);
    if (path !== ':memory:') {
      // Checkpoints (and their fsyncs) move off the event loop: see sqlite-checkpointer.ts.
      this.db.pragma('wal_autocheckpoint = 0');
      this.checkpointer = new Worker(new URL('./sqlite-checkpointer.js', import.meta.url), {
        workerData: { path, intervalMs: CHECKPOINT_INTERVAL_MS },
      });
      this.checkpointer.unref();
      // Without the thread, SQLite's own checkpoints take over again.
      this.checkpointer.on('error', () => {
        if (this.db.open) this.db.pragma('wal_autocheckpoint = 1000');
      });
    }
    // One process owns a SQLite file: a lease left in it is from a process that
    // died mid-delivery, and what it was sending is due again now.
    this.db
      .prepare('UPDATE webhook_outbox SET lease_until = NULL WHERE lease_until IS NOT NULL')
      .run();
    const db = this.db;
    this.q = {
      getStream: db.prepare<[string], StreamRow>(
        'SELECT key, title, owner_id, ended_at FROM streams WHERE key = ?',
      ),
      insertStream: db.prepare(
        `INSERT INTO streams (key, title, owner_id, created_at, updated_at)
         VALUES (@key, @title, @ownerId, @now, @now)`,
      ),
      updateStream: db.prepare(
        `UPDATE streams SET title = coalesce(@title, title), owner_id = coalesce(@ownerId, owner_id),
           ended_at = NULL, updated_at = @now WHERE key = @key`,
      ),
      endStream: db.prepare(
        'UPDATE streams SET ended_at = coalesce(ended_at, @now), updated_at = @now WHERE key = @key',
      ),
      insertStreamMessage: db.prepare(
        `INSERT INTO stream_messages (id, stream_key, user_id, username, message, sent_at)
         VALUES (@id, @streamKey, @userId, @username, @message, @sentAt)`,
      ),
      streamSeq: db.prepare<[string, string], { seq: number }>(
        'SELECT seq FROM stream_messages WHERE id = ? AND stream_key = ?',
      ),
      streamPage: db.prepare<[string, number, number], StreamMessageRow>(
        `SELECT * FROM stream_messages WHERE stream_key = ? AND seq < ?
         ORDER BY seq DESC LIMIT ?`,
      ),
      getRequest: db.prepare<[string], { id: string; owner_id: string }>(
        'SELECT id, owner_id FROM requests WHERE id = ?',
      ),
      upsertRequest: db.prepare(
        `INSERT INTO requests (id, owner_id, created_at, updated_at) VALUES (@id, @ownerId, @now, @now)
         ON CONFLICT (id) DO UPDATE SET owner_id = excluded.owner_id, updated_at = excluded.updated_at`,
      ),
      // Only a repeated clientMessageId is a duplicate: any other conflict (an
      // id already taken) must fail the call, never look stored.
      insertRequestMessage: db.prepare(
        `INSERT INTO request_messages
           (id, request_id, sender_id, sender_username, sender_role, message, created_at, client_message_id)
         VALUES (@_id, @requestId, @senderId, @senderUsername, @senderRole, @message, @createdAt, @clientMessageId)
         ON CONFLICT (request_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL
         DO NOTHING`,
      ),
      requestMessageByClientId: db.prepare<[string, string, string], RequestMessageRow>(
        `SELECT * FROM request_messages
         WHERE request_id = ? AND sender_id = ? AND client_message_id = ?`,
      ),
      requestSeq: db.prepare<[string, string], { seq: number }>(
        'SELECT seq FROM request_messages WHERE id = ? AND request_id = ?',
      ),
      requestPage: db.prepare<[string, number, number], RequestMessageRow>(
        `SELECT * FROM request_messages WHERE request_id = ? AND seq < ?
         ORDER BY seq DESC LIMIT ?`,
      ),
      receiptsOf: db.prepare<[string], ReceiptRow>(
        `SELECT message_id, kind, user_id, at FROM receipts
         WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY at, user_id`,
      ),
      eligibleForReceipt: db.prepare<[string, string, string], { id: string }>(
        `SELECT id FROM request_messages
         WHERE request_id = ? AND sender_id <> ? AND id IN (SELECT value FROM json_each(?))
         ORDER BY seq`,
      ),
      insertReceipt: db.prepare(
        `INSERT INTO receipts (message_id, kind, user_id, at) VALUES (?, ?, ?, ?)
         ON CONFLICT DO NOTHING`,
      ),
      insertOutbox: db.prepare(
        `INSERT INTO webhook_outbox (id, type, payload, created_at, next_attempt_at, unless_read)
         VALUES (@id, @type, @data, @createdAt, @dueAt, @unlessRead)`,
      ),
      dueOutbox: db.prepare<[string, string, number], OutboxRow>(
        `SELECT id, type, payload, created_at, attempts, last_error, last_attempt_at, unless_read
         FROM webhook_outbox
         WHERE state = 'pending' AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?)
         ORDER BY next_attempt_at LIMIT ?`,
      ),
      isRead: db.prepare<[string], { one: number }>(
        `SELECT 1 AS one FROM receipts WHERE message_id = ? AND kind = 'read' LIMIT 1`,
      ),
      leaseOutbox: db.prepare('UPDATE webhook_outbox SET lease_until = ? WHERE id = ?'),
      deleteOutbox: db.prepare('DELETE FROM webhook_outbox WHERE id = ?'),
      failOutbox: db.prepare(
        `UPDATE webhook_outbox SET attempts = attempts + 1, last_error = @error,
           last_attempt_at = @at, lease_until = NULL,
           state = CASE WHEN @nextAttemptAt IS NULL THEN 'failed' ELSE 'pending' END,
           next_attempt_at = coalesce(@nextAttemptAt, next_attempt_at)
         WHERE id = @id`,
      ),
      releaseOutbox: db.prepare('UPDATE webhook_outbox SET lease_until = NULL WHERE id = ?'),
      failedOutbox: db.prepare<[number], OutboxRow>(
        `SELECT id, type, payload, created_at, attempts, last_error, last_attempt_at, unless_read
         FROM webhook_outbox WHERE state = 'failed' ORDER BY last_attempt_at DESC LIMIT ?`,
      ),
      retryOutbox: db.prepare(
        `UPDATE webhook_outbox SET state = 'pending', next_attempt_at = ?, lease_until = NULL
         WHERE id = ? AND state = 'failed'`,
      ),
      outboxDepth: db.prepare<[string], { n: number }>(
        `SELECT count(*) AS n FROM webhook_outbox
         WHERE state = 'pending' AND (unless_read IS NULL OR attempts > 0 OR next_attempt_at <= ?)`,
      ),
    };
  }

  async putStream(
    key: string,
    fields: { title?: string | null; ownerId?: string | null },
  ): Promise<{ created: boolean }> {
    const params = {
      key,
      title: fields.title ?? null,
      ownerId: fields.ownerId ?? null,
      now: new Date().toISOString(),
    };
    return this.db.transaction(() => {
      if (this.q.getStream.get(key)) {
        this.q.updateStream.run(params);
        return { created: false };
      }
      this.q.insertStream.run(params);
      return { created: true };
    })();
  }

  async endStream(key: string, outbox: readonly OutboxEntry[] = []): Promise<boolean> {
    return this.db.transaction(() => {
      const open = this.q.getStream.get(key)?.ended_at === null;
      const ended = this.q.endStream.run({ key, now: new Date().toISOString() }).changes > 0;
      if (open) this.insertOutbox(outbox);
      return ended;
    })();
  }

  async getStream(key: string): Promise<StreamRecord | undefined> {
    const row = this.q.getStream.get(key);
    return row && { key: row.key, title: row.title, ownerId: row.owner_id, endedAt: row.ended_at };
  }

  private readonly insertStreamMessages = (messages: readonly StreamMessage[]) => {
    for (const m of messages) this.q.insertStreamMessage.run(m);
  };

  async appendStreamMessages(messages: readonly StreamMessage[]): Promise<void> {
    this.db.transaction(this.insertStreamMessages)(messages);
  }

  async streamHistory(key: string, query: PageQuery): Promise<Page<StreamMessage>> {
    const upper = this.upperSeq(this.q.streamSeq, query.before, key);
    if (upper === undefined) return { messages: [], hasMore: false };
    const rows = this.q.streamPage.all(key, upper, query.limit + 1);
    const hasMore = rows.length > query.limit;
    const messages = rows
      .slice(0, query.limit)
      .reverse()
      .map((r) => ({
        id: r.id,
        streamKey: r.stream_key,
        userId: r.user_id,
        username: r.username,
        message: r.message,
        sentAt: r.sent_at,
      }));
    return { messages, hasMore };
  }

  async putRequest(id: string, ownerId: string): Promise<PutRequestResult> {
    return this.db.transaction(() => {
      const previous = this.q.getRequest.get(id);
      this.q.upsertRequest.run({ id, ownerId, now: new Date().toISOString() });
      return { created: previous === undefined, previousOwnerId: previous?.owner_id ?? null };
    })();
  }

  async getRequest(id: string): Promise<RequestRecord | undefined> {
    const row = this.q.getRequest.get(id);
    return row && { id: row.id, ownerId: row.owner_id };
  }

  async addRequestMessage(
    m: NewRequestMessage,
    outbox: readonly OutboxEntry[] = [],
  ): Promise<{ message: RequestMessage; duplicate: boolean }> {
    if (outbox.length > 0) {
      return this.db.transaction(() => {
        const result = this.insertRequestMessage(m);
        if (!result.duplicate) this.insertOutbox(outbox);
        return result;
      })();
    }
    return this.insertRequestMessage(m);
  }

  private insertRequestMessage(m: NewRequestMessage): {
    message: RequestMessage;
    duplicate: boolean;
  } {
    const inserted = this.q.insertRequestMessage.run({
      _id: m._id,
      requestId: m.requestId,
      senderId: m.sender.id,
      senderUsername: m.sender.username,
      senderRole: m.sender.role,
      message: m.message,
      createdAt: m.createdAt,
      clientMessageId: m.clientMessageId,
    });
    if (inserted.changes > 0 || m.clientMessageId === null) {
      const { clientMessageId: _, ...message } = m;
      return { message: { ...message, deliveredTo: [], readBy: [] }, duplicate: false };
    }
    const row = this.q.requestMessageByClientId.get(m.requestId, m.sender.id, m.clientMessageId);
    if (!row) throw new Error('request message vanished after a conflicting insert');
    const [original] = this.withReceipts([row]);
    return { message: original as RequestMessage, duplicate: true };
  }

  async requestHistory(requestId: string, query: PageQuery): Promise<Page<RequestMessage>> {
    const upper = this.upperSeq(this.q.requestSeq, query.before, requestId);
    if (upper === undefined) return { messages: [], hasMore: false };
    const rows = this.q.requestPage.all(requestId, upper, query.limit + 1);
    const hasMore = rows.length > query.limit;
    return { messages: this.withReceipts(rows.slice(0, query.limit).reverse()), hasMore };
  }

  async addReceipts(
    requestId: string,
    kind: ReceiptKind,
    userId: string,
    messageIds: readonly string[],
    at: string,
    outbox?: (fresh: string[]) => OutboxEntry,
  ): Promise<string[]> {
    return this.db.transaction(() => {
      const eligible = this.q.eligibleForReceipt.all(requestId, userId, JSON.stringify(messageIds));
      const fresh: string[] = [];
      for (const { id } of eligible) {
        if (this.q.insertReceipt.run(id, kind, userId, at).changes > 0) fresh.push(id);
        if (kind === 'read') this.q.insertReceipt.run(id, 'delivered', userId, at);
      }
      if (outbox && fresh.length > 0) this.insertOutbox([outbox(fresh)]);
      return fresh;
    })();
  }

  async enqueueWebhooks(entries: readonly OutboxEntry[]): Promise<void> {
    this.db.transaction(() => this.insertOutbox(entries))();
  }

  async claimWebhooks(limit: number, now: string, leaseUntil: string): Promise<OutboxEvent[]> {
    return this.db.transaction(() => {
      const claimed: OutboxEvent[] = [];
      for (const row of this.q.dueOutbox.all(now, now, limit)) {
        if (row.unless_read !== null && row.attempts === 0 && this.q.isRead.get(row.unless_read)) {
          this.q.deleteOutbox.run(row.id);
          continue;
        }
        this.q.leaseOutbox.run(leaseUntil, row.id);
        claimed.push(outboxEvent(row));
      }
      return claimed;
    })();
  }

  async completeWebhook(id: string): Promise<void> {
    this.q.deleteOutbox.run(id);
  }

  async recordWebhookFailure(
    id: string,
    failure: { error: string; at: string; nextAttemptAt: string | null },
  ): Promise<void> {
    this.q.failOutbox.run({ id, ...failure });
  }

  async releaseWebhook(id: string): Promise<void> {
    this.q.releaseOutbox.run(id);
  }

  async failedWebhooks(limit: number): Promise<OutboxEvent[]> {
    return this.q.failedOutbox.all(limit).map(outboxEvent);
  }

  async retryWebhook(id: string, now: string): Promise<boolean> {
    return this.q.retryOutbox.run(now, id).changes > 0;
  }

  async webhookQueueDepth(now: string): Promise<number> {
    return this.q.outboxDepth.get(now)?.n ?? 0;
  }

  private insertOutbox(entries: readonly OutboxEntry[]): void {
    for (const e of entries) this.q.insertOutbox.run(e);
  }

  async ping(): Promise<void> {
    this.db.prepare('SELECT 1').get();
  }

  async close(): Promise<void> {
    const worker = this.checkpointer;
    if (worker && worker.threadId !== -1) {
      // The thread is unref'd while it runs; waiting for it must keep the process alive.
      worker.ref();
      const exited = once(worker, 'exit');
      worker.postMessage('stop');
      await exited;
    }
    // The last connection to close checkpoints what is left and removes the WAL.
    if (this.db.open) this.db.close();
  }

  /** The exclusive upper sequence for a page; undefined when `before` names no message here. */
  private upperSeq(
    lookup: Database.Statement<[string, string], { seq: number }>,
    before: string | undefined,
    scope: string,
  ): number | undefined {
    if (before === undefined) return Number.MAX_SAFE_INTEGER;
    return lookup.get(before, scope)?.seq;
  }

  private withReceipts(rows: RequestMessageRow[]): RequestMessage[] {
    const messages = rows.map(
      (r): RequestMessage => ({
        _id: r.id,
        requestId: r.request_id,
        sender: { id: r.sender_id, username: r.sender_username, role: r.sender_role },
        message: r.message,
        createdAt: r.created_at,
        deliveredTo: [],
        readBy: [],
      }),
    );
    if (messages.length === 0) return messages;
    const byId = new Map(messages.map((m) => [m._id, m]));
    for (const r of this.q.receiptsOf.all(JSON.stringify([...byId.keys()]))) {
      const receipt: Receipt = { userId: r.user_id, at: r.at };
      const m = byId.get(r.message_id);
      if (m) (r.kind === 'read' ? m.readBy : m.deliveredTo).push(receipt);
    }
    return messages;
  }
}
