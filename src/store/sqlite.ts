/**
 * The embedded default Store: one SQLite file in WAL mode. better-sqlite3 is
 * synchronous, so every call commits before its promise resolves.
 *
 * Durability: `synchronous = NORMAL` under WAL survives a crash or SIGKILL of
 * the process (the commit is in the OS before the call returns); only a power
 * loss can drop the last commits. PostgreSQL is the choice when that matters.
 */
import { once } from 'node:events';
import { mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import type {
  InboxQuery,
  MessageChange,
  NewRequestMessage,
  Page,
  PageQuery,
  Receipt,
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
import type { OutboxEntry, OutboxEvent, WebhookType } from '../core/webhook-events.js';
import type {
  AddedRequestMessage,
  InboxPage,
  ModerationLogPage,
  NewestPage,
  PutRequestResult,
  RequestMessageWrite,
  RequestRecord,
  Store,
  StreamRecord,
} from './store.js';

/**
 * The running unread totals (see the migration that adds them) as the
 * per-request counters add up: that migration's fill, and `refillCounters`'s.
 */
const UNREAD_TOTALS_FILL = `INSERT INTO unread_messages (shard, messages)
     SELECT 0, coalesce(sum(message_count), 0) FROM requests;
   INSERT INTO unread_owners (owner_id, messages)
     SELECT owner_id, sum(message_count) FROM requests WHERE true GROUP BY owner_id;
   INSERT INTO unread_users (user_id, seen, seen_own)
     SELECT rr.user_id, sum(rr.sent + rr.read),
       sum(CASE WHEN r.owner_id = rr.user_id THEN rr.sent + rr.read ELSE 0 END)
     FROM request_readers rr LEFT JOIN requests r ON r.id = rr.request_id
     WHERE true GROUP BY rr.user_id;`;

/** Each request's `owner_seen` from its owner's counters: the migration's fill, and `refillCounters`'s. */
const OWNER_SEEN_FILL = `UPDATE requests SET owner_seen = coalesce(
     (SELECT sent + read FROM request_readers rr
      WHERE rr.request_id = requests.id AND rr.user_id = requests.owner_id), 0);`;

/** Requests whose owner `getRequest` keeps in memory; past it the copy starts again. */
const OWNER_CACHE_MAX = 100_000;

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
  // The lab desk: attachments, edits and deletions; per-request counters and
  // per-(request, user) sent/read counters so that unread counts never count
  // messages; the inbox paged by (activity_at, id) on an index.
  `ALTER TABLE request_messages ADD COLUMN attachments TEXT NOT NULL DEFAULT '[]';
   ALTER TABLE request_messages ADD COLUMN edited_at TEXT;
   ALTER TABLE request_messages ADD COLUMN deleted_at TEXT;
   ALTER TABLE requests ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE requests ADD COLUMN last_message_seq INTEGER;
   ALTER TABLE requests ADD COLUMN last_message_id TEXT;
   ALTER TABLE requests ADD COLUMN activity_at TEXT;
   UPDATE requests SET
     message_count = (SELECT count(*) FROM request_messages m WHERE m.request_id = requests.id),
     last_message_seq = (SELECT max(seq) FROM request_messages m WHERE m.request_id = requests.id);
   UPDATE requests SET
     last_message_id = (SELECT id FROM request_messages m WHERE m.seq = requests.last_message_seq),
     activity_at = coalesce(
       (SELECT created_at FROM request_messages m WHERE m.seq = requests.last_message_seq),
       created_at);
   CREATE TABLE request_readers (
     request_id TEXT NOT NULL,
     user_id    TEXT NOT NULL,
     sent       INTEGER NOT NULL DEFAULT 0,
     read       INTEGER NOT NULL DEFAULT 0,
     PRIMARY KEY (request_id, user_id)
   ) WITHOUT ROWID;
   CREATE INDEX request_readers_by_user ON request_readers (user_id);
   INSERT INTO request_readers (request_id, user_id, sent, read)
     SELECT request_id, sender_id, count(*), 0 FROM request_messages WHERE true
     GROUP BY request_id, sender_id;
   INSERT INTO request_readers (request_id, user_id, sent, read)
     SELECT m.request_id, r.user_id, 0, count(*)
     FROM receipts r JOIN request_messages m ON m.id = r.message_id
     WHERE r.kind = 'read' AND r.user_id <> m.sender_id
     GROUP BY m.request_id, r.user_id
     ON CONFLICT (request_id, user_id) DO UPDATE SET read = excluded.read;
   CREATE INDEX requests_by_activity ON requests (activity_at, id)
     WHERE last_message_id IS NOT NULL;
   CREATE INDEX requests_by_owner_activity ON requests (owner_id, activity_at, id);`,
  `ALTER TABLE stream_messages ADD COLUMN badges TEXT NOT NULL DEFAULT '[]';
   ALTER TABLE stream_messages ADD COLUMN deleted_at TEXT;
   ALTER TABLE stream_messages ADD COLUMN deleted_by TEXT;
   ALTER TABLE streams ADD COLUMN moderators TEXT NOT NULL DEFAULT '[]';
   ALTER TABLE streams ADD COLUMN slow_mode_seconds INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE streams ADD COLUMN members_only INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE streams ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE streams ADD COLUMN pinned_id TEXT;
   CREATE TABLE stream_bans (
     stream_key TEXT NOT NULL,
     user_id    TEXT NOT NULL,
     until      TEXT,
     reason     TEXT,
     by_user    TEXT NOT NULL,
     at         TEXT NOT NULL,
     PRIMARY KEY (stream_key, user_id)
   ) WITHOUT ROWID;
   CREATE TABLE stream_members (
     stream_key TEXT NOT NULL,
     user_id    TEXT NOT NULL,
     PRIMARY KEY (stream_key, user_id)
   ) WITHOUT ROWID;
   CREATE TABLE stream_moderation_log (
     id         INTEGER PRIMARY KEY AUTOINCREMENT,
     stream_key TEXT NOT NULL,
     action     TEXT NOT NULL,
     user_id    TEXT,
     message_id TEXT,
     by_user    TEXT NOT NULL,
     at         TEXT NOT NULL,
     reason     TEXT
   );
   CREATE INDEX stream_moderation_log_by_stream ON stream_moderation_log (stream_key, id);`,
  // Running unread totals, so that a user's total reads a few counters, never
  // one row per request: per owner the messages of the requests they own;
  // per user what they sent or read everywhere (seen) and in their own
  // requests (seen_own); and every message of every request. A lab user's
  // total is messages - seen, a teacher's owned messages - seen_own. The
  // triggers move them in the transaction of the counter change they follow.
  `CREATE TABLE unread_messages (
     shard    INTEGER PRIMARY KEY,
     messages INTEGER NOT NULL DEFAULT 0
   );
   CREATE TABLE unread_owners (
     owner_id TEXT PRIMARY KEY,
     messages INTEGER NOT NULL DEFAULT 0
   ) WITHOUT ROWID;
   CREATE TABLE unread_users (
     user_id  TEXT PRIMARY KEY,
     seen     INTEGER NOT NULL DEFAULT 0,
     seen_own INTEGER NOT NULL DEFAULT 0
   ) WITHOUT ROWID;
   ${UNREAD_TOTALS_FILL}
   CREATE TRIGGER unread_request_added AFTER INSERT ON requests BEGIN
     UPDATE unread_messages SET messages = messages + new.message_count WHERE shard = 0;
     INSERT INTO unread_owners (owner_id, messages) VALUES (new.owner_id, new.message_count)
       ON CONFLICT (owner_id) DO UPDATE SET messages = messages + excluded.messages;
     INSERT INTO unread_users (user_id, seen, seen_own)
       SELECT user_id, 0, sent + read FROM request_readers
       WHERE request_id = new.id AND user_id = new.owner_id
       ON CONFLICT (user_id) DO UPDATE SET seen_own = seen_own + excluded.seen_own;
   END;
   CREATE TRIGGER unread_request_counted AFTER UPDATE OF message_count ON requests
   WHEN new.message_count <> old.message_count AND new.owner_id = old.owner_id BEGIN
     UPDATE unread_messages SET messages = messages + new.message_count - old.message_count
       WHERE shard = 0;
     UPDATE unread_owners SET messages = messages + new.message_count - old.message_count
       WHERE owner_id = new.owner_id;
   END;
   CREATE TRIGGER unread_request_owner AFTER UPDATE OF owner_id, message_count ON requests
   WHEN new.owner_id <> old.owner_id BEGIN
     UPDATE unread_messages SET messages = messages + new.message_count - old.message_count
       WHERE shard = 0;
     UPDATE unread_owners SET messages = messages - old.message_count
       WHERE owner_id = old.owner_id;
     INSERT INTO unread_owners (owner_id, messages) VALUES (new.owner_id, new.message_count)
       ON CONFLICT (owner_id) DO UPDATE SET messages = messages + excluded.messages;
     UPDATE unread_users SET seen_own = seen_own -
       (SELECT sent + read FROM request_readers WHERE request_id = old.id AND user_id = old.owner_id)
       WHERE user_id = old.owner_id
         AND EXISTS (SELECT 1 FROM request_readers WHERE request_id = old.id AND user_id = old.owner_id);
     INSERT INTO unread_users (user_id, seen, seen_own)
       SELECT user_id, 0, sent + read FROM request_readers
       WHERE request_id = new.id AND user_id = new.owner_id
       ON CONFLICT (user_id) DO UPDATE SET seen_own = seen_own + excluded.seen_own;
   END;
   CREATE TRIGGER unread_reader_added AFTER INSERT ON request_readers BEGIN
     INSERT INTO unread_users (user_id, seen, seen_own)
       VALUES (new.user_id, new.sent + new.read,
         CASE WHEN (SELECT owner_id FROM requests WHERE id = new.request_id) = new.user_id
           THEN new.sent + new.read ELSE 0 END)
       ON CONFLICT (user_id) DO UPDATE SET
         seen = seen + excluded.seen, seen_own = seen_own + excluded.seen_own;
   END;
   CREATE TRIGGER unread_reader_counted AFTER UPDATE OF sent, read ON request_readers BEGIN
     UPDATE unread_users SET
       seen = seen + (new.sent + new.read) - (old.sent + old.read),
       seen_own = seen_own + CASE
         WHEN (SELECT owner_id FROM requests WHERE id = new.request_id) = new.user_id
         THEN (new.sent + new.read) - (old.sent + old.read) ELSE 0 END
     WHERE user_id = new.user_id;
   END;`,
  // What each request's owner sent or read there (owner_seen), beside its
  // message count: the requests with messages their owner has not read are
  // then one partial index, so a teacher's unread list reads only those,
  // however many of their requests are read. The triggers keep it equal to
  // the owner's sent + read in the transaction of any change to either.
  `ALTER TABLE requests ADD COLUMN owner_seen INTEGER NOT NULL DEFAULT 0;
   ${OWNER_SEEN_FILL}
   CREATE INDEX requests_owner_unread ON requests (owner_id, activity_at, id)
     WHERE message_count > owner_seen;
   CREATE TRIGGER owner_seen_request_added AFTER INSERT ON requests BEGIN
     UPDATE requests SET owner_seen = coalesce((SELECT sent + read FROM request_readers
       WHERE request_id = new.id AND user_id = new.owner_id), 0)
     WHERE id = new.id;
   END;
   CREATE TRIGGER owner_seen_request_owner AFTER UPDATE OF owner_id ON requests
   WHEN new.owner_id <> old.owner_id BEGIN
     UPDATE requests SET owner_seen = coalesce((SELECT sent + read FROM request_readers
       WHERE request_id = new.id AND user_id = new.owner_id), 0)
     WHERE id = new.id;
   END;
   CREATE TRIGGER owner_seen_reader_added AFTER INSERT ON request_readers BEGIN
     UPDATE requests SET owner_seen = new.sent + new.read
     WHERE id = new.request_id AND owner_id = new.user_id;
   END;
   CREATE TRIGGER owner_seen_reader_counted AFTER UPDATE OF sent, read ON request_readers BEGIN
     UPDATE requests SET owner_seen = new.sent + new.read
     WHERE id = new.request_id AND owner_id = new.user_id;
   END;`,
];

/**
 * A bulk load the way a migration fills: `load` writes the tables with the
 * counters' triggers off (dropped, and created again as they were, in the
 * same transaction), then every counter the triggers keep is filled from the
 * per-request counters, as the migrations that added them do. For importing
 * or seeding millions of rows, where a trigger per row would cost more than
 * the rows; all of it commits together or not at all.
 */
export function bulkLoad(db: Database.Database, load: () => void): void {
  db.transaction(() => {
    const triggers = db
      .prepare<[], { name: string; sql: string }>(
        `SELECT name, sql FROM sqlite_schema
         WHERE type = 'trigger' AND tbl_name IN ('requests', 'request_readers') ORDER BY name`,
      )
      .all();
    for (const t of triggers) db.exec(`DROP TRIGGER "${t.name}"`);
    load();
    for (const t of triggers) db.exec(t.sql);
    refillCounters(db);
  }).immediate();
}

/**
 * Every counter the triggers keep, filled again from the per-request
 * counters with the migrations' own fills: after rows were written with the
 * triggers off. Call it inside a transaction, or it is one of its own.
 */
export function refillCounters(db: Database.Database): void {
  db.transaction(() => {
    db.exec(`DELETE FROM unread_messages; DELETE FROM unread_owners; DELETE FROM unread_users;
      ${UNREAD_TOTALS_FILL}
      ${OWNER_SEEN_FILL}`);
  })();
}

/** Above every ISO-8601 time: the inbox's first page starts below it. */
const TOP = '~';

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
  badges: string;
  deleted_at: string | null;
  deleted_by: string | null;
}
interface ControlRow {
  key: string;
  title: string | null;
  owner_id: string | null;
  moderators: string;
  slow_mode_seconds: number;
  members_only: number;
  paused: number;
  pinned_id: string | null;
}
interface BanRow {
  user_id: string;
  until: string | null;
  reason: string | null;
  by_user: string;
  at: string;
}
interface LogRow {
  id: number;
  action: ModerationAction['action'];
  user_id: string | null;
  message_id: string | null;
  by_user: string;
  at: string;
  reason: string | null;
}

function streamMessageOf(r: StreamMessageRow): StreamMessage {
  const m: StreamMessage = {
    id: r.id,
    streamKey: r.stream_key,
    userId: r.user_id,
    username: r.username,
    message: r.message,
    sentAt: r.sent_at,
    badges: JSON.parse(r.badges) as StreamMessage['badges'],
  };
  if (r.deleted_at !== null) {
    m.deletedAt = r.deleted_at;
    m.deletedBy = r.deleted_by ?? '';
  }
  return m;
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
  attachments: string;
  edited_at: string | null;
  deleted_at: string | null;
}
interface InboxRow {
  id: string;
  owner_id: string;
  message_count: number;
  last_message_id: string | null;
  activity_at: string;
  sent: number;
  read: number;
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
  lease_until?: string | null;
}
/** A `request.message.unread` row not attempted yet: its message is looked at before it is sent. */
const firstUnreadCheck = (r: OutboxRow) => r.unless_read !== null && r.attempts === 0;
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
  /**
   * Each request's owner, as every message's authorization reads it. One
   * process owns the file and `putRequest` is the only writer of owners, so
   * the copy is never stale; only requests that exist are kept, up to a bound.
   */
  private readonly owners = new Map<string, string>();
  private readonly checkpointer: Worker | undefined;

  constructor(path: string) {
    if (path !== ':memory:') makeDirs(dirname(path));
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
        `INSERT INTO stream_messages (id, stream_key, user_id, username, message, sent_at, badges)
         VALUES (@id, @streamKey, @userId, @username, @message, @sentAt, @badges)`,
      ),
      getControl: db.prepare<[string], ControlRow>(
        `SELECT key, title, owner_id, moderators, slow_mode_seconds, members_only, paused, pinned_id
         FROM streams WHERE key = ?`,
      ),
      members: db.prepare<[string], { user_id: string }>(
        'SELECT user_id FROM stream_members WHERE stream_key = ? ORDER BY user_id',
      ),
      clearMembers: db.prepare('DELETE FROM stream_members WHERE stream_key = ?'),
      addMember: db.prepare(
        'INSERT INTO stream_members (stream_key, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING',
      ),
      putBan: db.prepare(
        `INSERT INTO stream_bans (stream_key, user_id, until, reason, by_user, at)
         VALUES (@key, @userId, @until, @reason, @by, @at)
         ON CONFLICT (stream_key, user_id) DO UPDATE SET until = excluded.until,
           reason = excluded.reason, by_user = excluded.by_user, at = excluded.at`,
      ),
      deleteBan: db.prepare('DELETE FROM stream_bans WHERE stream_key = ? AND user_id = ?'),
      bans: db.prepare<[string, string], BanRow>(
        `SELECT user_id, until, reason, by_user, at FROM stream_bans
         WHERE stream_key = ? AND (until IS NULL OR until > ?) ORDER BY at, user_id`,
      ),
      getStreamMessage: db.prepare<[string, string], StreamMessageRow>(
        'SELECT * FROM stream_messages WHERE stream_key = ? AND id = ?',
      ),
      deleteStreamMessage: db.prepare(
        `UPDATE stream_messages SET deleted_at = @at, deleted_by = @by
         WHERE stream_key = @key AND id = @id AND deleted_at IS NULL`,
      ),
      recent: db.prepare<[string, number, number], StreamMessageRow>(
        `SELECT * FROM stream_messages WHERE stream_key = ? AND seq > ? AND deleted_at IS NULL
         ORDER BY seq DESC LIMIT ?`,
      ),
      addAction: db.prepare<
        [string, string, string | null, string | null, string, string, string | null]
      >(
        `INSERT INTO stream_moderation_log (stream_key, action, user_id, message_id, by_user, at, reason)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ),
      log: db.prepare<[string, number, number], LogRow>(
        `SELECT id, action, user_id, message_id, by_user, at, reason FROM stream_moderation_log
         WHERE stream_key = ? AND id < ? ORDER BY id DESC LIMIT ?`,
      ),
      logId: db.prepare<[bigint, string], { id: number }>(
        'SELECT id FROM stream_moderation_log WHERE id = ? AND stream_key = ?',
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
        `INSERT INTO requests (id, owner_id, created_at, updated_at, activity_at)
         VALUES (@id, @ownerId, @now, @now, @now)
         ON CONFLICT (id) DO UPDATE SET owner_id = excluded.owner_id, updated_at = excluded.updated_at`,
      ),
      // Only a repeated clientMessageId is a duplicate: any other conflict (an
      // id already taken) must fail the call, never look stored.
      insertRequestMessage: db.prepare(
        `INSERT INTO request_messages
           (id, request_id, sender_id, sender_username, sender_role, message, created_at, client_message_id,
            attachments)
         VALUES (@_id, @requestId, @senderId, @senderUsername, @senderRole, @message, @createdAt, @clientMessageId,
            @attachments)
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
           AND deleted_at IS NULL
         ORDER BY seq`,
      ),
      countMessage: db.prepare<
        { requestId: string; seq: number; id: string; createdAt: string },
        { owner_id: string; message_count: number }
      >(
        `UPDATE requests SET message_count = message_count + 1, last_message_seq = @seq,
           last_message_id = @id, activity_at = @createdAt
         WHERE id = @requestId RETURNING owner_id, message_count`,
      ),
      uncountMessage: db.prepare<[string], { owner_id: string; message_count: number }>(
        `UPDATE requests SET message_count = message_count - 1 WHERE id = ?
         RETURNING owner_id, message_count`,
      ),
      countSent: db.prepare(
        `INSERT INTO request_readers (request_id, user_id, sent, read) VALUES (?, ?, 1, 0)
         ON CONFLICT (request_id, user_id) DO UPDATE SET sent = sent + 1`,
      ),
      uncountSent: db.prepare(
        'UPDATE request_readers SET sent = sent - 1 WHERE request_id = ? AND user_id = ?',
      ),
      countRead: db.prepare(
        `INSERT INTO request_readers (request_id, user_id, sent, read) VALUES (?, ?, 0, ?)
         ON CONFLICT (request_id, user_id) DO UPDATE SET read = read + excluded.read`,
      ),
      uncountRead: db.prepare(
        `UPDATE request_readers SET read = read - 1
         WHERE request_id = ? AND user_id IN
           (SELECT user_id FROM receipts WHERE message_id = ? AND kind = 'read')`,
      ),
      readersOf: db.prepare<[string], { user_id: string; sent: number; read: number }>(
        'SELECT user_id, sent, read FROM request_readers WHERE request_id = ?',
      ),
      requestMessage: db.prepare<[string, string], RequestMessageRow>(
        'SELECT * FROM request_messages WHERE id = ? AND request_id = ?',
      ),
      messagesById: db.prepare<[string], RequestMessageRow>(
        'SELECT * FROM request_messages WHERE id IN (SELECT value FROM json_each(?))',
      ),
      editMessage: db.prepare(
        `UPDATE request_messages SET message = @message, edited_at = @editedAt
         WHERE id = @id AND request_id = @requestId AND sender_id = @senderId AND deleted_at IS NULL`,
      ),
      deleteMessage: db.prepare(
        `UPDATE request_messages SET message = '', attachments = '[]', deleted_at = @deletedAt
         WHERE id = @id AND request_id = @requestId AND sender_id = @senderId AND deleted_at IS NULL`,
      ),
      activityOf: db.prepare<
        [string],
        { activity_at: string; owner_id: string; last_message_id: string | null }
      >('SELECT activity_at, owner_id, last_message_id FROM requests WHERE id = ?'),
      labInbox: db.prepare<{ userId: string; at: string; id: string; limit: number }, InboxRow>(
        `SELECT r.id, r.owner_id, r.message_count, r.last_message_id, r.activity_at,
           coalesce(rr.sent, 0) AS sent, coalesce(rr.read, 0) AS read
         FROM requests r
         LEFT JOIN request_readers rr ON rr.request_id = r.id AND rr.user_id = @userId
         WHERE r.last_message_id IS NOT NULL AND (r.activity_at, r.id) < (@at, @id)
         ORDER BY r.activity_at DESC, r.id DESC LIMIT @limit`,
      ),
      teacherInbox: db.prepare<
        { userId: string; ownerId: string; at: string; id: string; limit: number },
        InboxRow
      >(
        `SELECT r.id, r.owner_id, r.message_count, r.last_message_id, r.activity_at,
           coalesce(rr.sent, 0) AS sent, coalesce(rr.read, 0) AS read
         FROM requests r
         LEFT JOIN request_readers rr ON rr.request_id = r.id AND rr.user_id = @userId
         WHERE r.owner_id = @ownerId AND (r.activity_at, r.id) < (@at, @id)
         ORDER BY r.activity_at DESC, r.id DESC LIMIT @limit`,
      ),
      oneInbox: db.prepare<{ userId: string; id: string }, InboxRow>(
        `SELECT r.id, r.owner_id, r.message_count, r.last_message_id, r.activity_at,
           coalesce(rr.sent, 0) AS sent, coalesce(rr.read, 0) AS read
         FROM requests r
         LEFT JOIN request_readers rr ON rr.request_id = r.id AND rr.user_id = @userId
         WHERE r.id = @id`,
      ),
      labUnreadList: db.prepare<{ userId: string; limit: number }, { id: string; unread: number }>(
        `SELECT r.id, r.message_count - coalesce(rr.sent, 0) - coalesce(rr.read, 0) AS unread
         FROM requests r
         LEFT JOIN request_readers rr ON rr.request_id = r.id AND rr.user_id = @userId
         WHERE r.last_message_id IS NOT NULL AND unread > 0
         ORDER BY r.activity_at DESC, r.id DESC LIMIT @limit`,
      ),
      teacherUnreadList: db.prepare<
        { userId: string; ownerId: string; limit: number },
        { id: string; unread: number }
      >(
        `SELECT r.id, r.message_count - coalesce(rr.sent, 0) - coalesce(rr.read, 0) AS unread
         FROM requests r
         LEFT JOIN request_readers rr ON rr.request_id = r.id AND rr.user_id = @userId
         WHERE r.owner_id = @ownerId AND unread > 0
         ORDER BY r.activity_at DESC, r.id DESC LIMIT @limit`,
      ),
      // Only requests whose owner has not read everything are in the partial index.
      ownUnreadList: db.prepare<{ userId: string; limit: number }, { id: string; unread: number }>(
        `SELECT id, message_count - owner_seen AS unread FROM requests
         WHERE owner_id = @userId AND message_count > owner_seen
         ORDER BY activity_at DESC, id DESC LIMIT @limit`,
      ),
      labUnreadTotal: db.prepare<{ userId: string }, { total: number }>(
        `SELECT (SELECT coalesce(sum(messages), 0) FROM unread_messages)
           - (SELECT coalesce(sum(seen), 0) FROM unread_users WHERE user_id = @userId)
           AS total`,
      ),
      ownUnreadTotal: db.prepare<{ userId: string }, { total: number }>(
        `SELECT (SELECT coalesce(sum(messages), 0) FROM unread_owners WHERE owner_id = @userId)
           - (SELECT coalesce(sum(seen_own), 0) FROM unread_users WHERE user_id = @userId)
           AS total`,
      ),
      teacherUnreadTotal: db.prepare<{ userId: string; ownerId: string }, { total: number }>(
        `SELECT (SELECT coalesce(sum(message_count), 0) FROM requests WHERE owner_id = @ownerId)
           - (SELECT coalesce(sum(rr.sent + rr.read), 0) FROM request_readers rr
              JOIN requests r ON r.id = rr.request_id
              WHERE rr.user_id = @userId AND r.owner_id = @ownerId)
           AS total`,
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
        `SELECT id, type, payload, created_at, attempts, last_error, last_attempt_at, unless_read,
           lease_until
         FROM webhook_outbox
         WHERE state = 'pending' AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?)
         ORDER BY next_attempt_at LIMIT ?`,
      ),
      // An unread reminder is dropped once the message was read, or deleted.
      isSettled: db.prepare<[string, string], { one: number }>(
        `SELECT 1 AS one FROM receipts WHERE message_id = ? AND kind = 'read'
         UNION ALL SELECT 1 FROM request_messages WHERE id = ? AND deleted_at IS NOT NULL
         LIMIT 1`,
      ),
      leaseOutbox: db.prepare('UPDATE webhook_outbox SET lease_until = ? WHERE id = ?'),
      setOutboxPayload: db.prepare('UPDATE webhook_outbox SET payload = ? WHERE id = ?'),
      deleteOutbox: db.prepare('DELETE FROM webhook_outbox WHERE id = ?'),
      // The ids as one JSON array parameter: one statement and one commit for any count.
      deleteOutboxMany: db.prepare(
        'DELETE FROM webhook_outbox WHERE id IN (SELECT value FROM json_each(?))',
      ),
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
    for (const m of messages) {
      this.q.insertStreamMessage.run({
        id: m.id,
        streamKey: m.streamKey,
        userId: m.userId,
        username: m.username,
        message: m.message,
        sentAt: m.sentAt,
        badges: JSON.stringify(m.badges),
      });
    }
  };

  async appendStreamMessages(messages: readonly StreamMessage[]): Promise<void> {
    this.db.transaction(this.insertStreamMessages)(messages);
  }

  streamHistory(key: string, query: NewestPage): Promise<Page<StreamMessage>>;
  streamHistory(key: string, query: PageQuery): Promise<Page<StreamMessage> | undefined>;
  async streamHistory(key: string, query: PageQuery): Promise<Page<StreamMessage> | undefined> {
    const upper = this.upperSeq(this.q.streamSeq, query.before, key);
    if (upper === undefined) return undefined;
    const rows = this.q.streamPage.all(key, upper, query.limit + 1);
    const hasMore = rows.length > query.limit;
    const messages = rows.slice(0, query.limit).reverse().map(streamMessageOf);
    return { messages, hasMore };
  }

  async getStreamControl(key: string): Promise<StreamControl | undefined> {
    const r = this.q.getControl.get(key);
    return (
      r && {
        key: r.key,
        title: r.title,
        ownerId: r.owner_id,
        moderators: JSON.parse(r.moderators) as string[],
        slowModeSeconds: r.slow_mode_seconds,
        membersOnly: r.members_only === 1,
        paused: r.paused === 1,
        pinnedId: r.pinned_id,
      }
    );
  }

  async updateStreamControl(
    key: string,
    patch: Partial<StreamSettings> & {
      title?: string | null;
      moderators?: string[];
      pinnedId?: string | null;
    },
  ): Promise<boolean> {
    const sets: string[] = [];
    const values: Record<string, unknown> = { key, now: new Date().toISOString() };
    const column = (name: string, value: unknown) => {
      sets.push(`${name} = @${name}`);
      values[name] = value;
    };
    if (patch.title !== undefined) column('title', patch.title);
    if (patch.moderators !== undefined) column('moderators', JSON.stringify(patch.moderators));
    if (patch.slowModeSeconds !== undefined) column('slow_mode_seconds', patch.slowModeSeconds);
    if (patch.membersOnly !== undefined) column('members_only', patch.membersOnly ? 1 : 0);
    if (patch.paused !== undefined) column('paused', patch.paused ? 1 : 0);
    if (patch.pinnedId !== undefined) column('pinned_id', patch.pinnedId);
    sets.push('updated_at = @now');
    const sql = `UPDATE streams SET ${sets.join(', ')} WHERE key = @key`;
    return this.db.prepare(sql).run(values).changes > 0;
  }

  async unpinStreamMessage(key: string, id: string): Promise<boolean> {
    const sql =
      'UPDATE streams SET pinned_id = NULL, updated_at = ? WHERE key = ? AND pinned_id = ?';
    return this.db.prepare(sql).run(new Date().toISOString(), key, id).changes > 0;
  }

  async setStreamMembers(key: string, userIds: readonly string[]): Promise<void> {
    this.db.transaction(() => {
      this.q.clearMembers.run(key);
      for (const id of userIds) this.q.addMember.run(key, id);
    })();
  }

  async streamMembers(key: string): Promise<string[]> {
    return this.q.members.all(key).map((r) => r.user_id);
  }

  async streamBans(key: string, now: string): Promise<StreamBan[]> {
    return this.q.bans.all(key, now).map((r) => ({
      userId: r.user_id,
      until: r.until,
      reason: r.reason,
      by: r.by_user,
      at: r.at,
    }));
  }

  async getStreamMessage(key: string, id: string): Promise<StreamMessage | undefined> {
    const row = this.q.getStreamMessage.get(key, id);
    return row && streamMessageOf(row);
  }

  async streamRecent(
    key: string,
    query: { after?: string | undefined; limit: number },
  ): Promise<{ messages: StreamMessage[]; more: boolean; known: boolean }> {
    let lower = 0;
    let known = true;
    if (query.after !== undefined) {
      const seq = this.q.streamSeq.get(query.after, key)?.seq;
      if (seq === undefined) known = false;
      else lower = seq;
    }
    const rows = this.q.recent.all(key, lower, query.limit + 1);
    const more = rows.length > query.limit;
    return { messages: rows.slice(0, query.limit).reverse().map(streamMessageOf), more, known };
  }

  async addModerationAction(
    key: string,
    a: NewModerationAction,
    outbox: readonly OutboxEntry[] = [],
    effect?: ModerationEffect,
  ): Promise<ModerationAction | undefined> {
    return this.db.transaction(() => {
      if (effect?.kind === 'delete') {
        const { id, by, at } = effect;
        if (this.q.deleteStreamMessage.run({ key, id, by, at }).changes === 0) return undefined;
      } else if (effect?.kind === 'ban') {
        this.q.putBan.run({ key, ...effect.ban });
      } else if (effect?.kind === 'unban') {
        if (this.q.deleteBan.run(key, effect.userId).changes === 0) return undefined;
      }
      const { lastInsertRowid } = this.q.addAction.run(
        key,
        a.action,
        a.userId,
        a.messageId,
        a.by,
        a.at,
        a.reason,
      );
      this.insertOutbox(outbox);
      return { id: String(lastInsertRowid), ...a };
    })();
  }

  moderationLog(key: string, query: NewestPage): Promise<ModerationLogPage>;
  moderationLog(key: string, query: PageQuery): Promise<ModerationLogPage | undefined>;
  async moderationLog(key: string, query: PageQuery): Promise<ModerationLogPage | undefined> {
    let upper = Number.MAX_SAFE_INTEGER;
    if (query.before !== undefined) {
      // Ids are one sequence over every stream: only this stream's are its cursors.
      const anchor = /^[0-9]{1,18}$/.test(query.before)
        ? this.q.logId.get(BigInt(query.before), key)
        : undefined;
      if (!anchor) return undefined;
      upper = anchor.id;
    }
    const rows = this.q.log.all(key, upper, query.limit + 1);
    const hasMore = rows.length > query.limit;
    const actions = rows.slice(0, query.limit).map((r) => ({
      id: String(r.id),
      action: r.action,
      userId: r.user_id,
      messageId: r.message_id,
      by: r.by_user,
      at: r.at,
      reason: r.reason,
    }));
    return { actions, hasMore };
  }

  async putRequest(id: string, ownerId: string): Promise<PutRequestResult> {
    const result = this.db.transaction(() => {
      const previous = this.q.getRequest.get(id);
      this.q.upsertRequest.run({ id, ownerId, now: new Date().toISOString() });
      return { created: previous === undefined, previousOwnerId: previous?.owner_id ?? null };
    })();
    this.owners.delete(id);
    return result;
  }

  async getRequest(id: string): Promise<RequestRecord | undefined> {
    const cached = this.owners.get(id);
    if (cached !== undefined) return { id, ownerId: cached };
    const row = this.q.getRequest.get(id);
    if (!row) return undefined;
    if (this.owners.size >= OWNER_CACHE_MAX) this.owners.clear();
    this.owners.set(id, row.owner_id);
    return { id: row.id, ownerId: row.owner_id };
  }

  async addRequestMessage(
    m: NewRequestMessage,
    outbox: readonly OutboxEntry[] = [],
  ): Promise<AddedRequestMessage> {
    return this.db.transaction(() => this.storeRequestMessage(m, outbox))();
  }

  async addRequestMessages(
    writes: readonly RequestMessageWrite[],
  ): Promise<PromiseSettledResult<AddedRequestMessage>[]> {
    // The common case, where every write succeeds, runs without savepoints:
    // a savepoint per write costs about as much as the write itself, since
    // SQLite journals the pages the batch already changed before each one.
    try {
      return this.db.transaction(() =>
        writes.map(
          (w): PromiseSettledResult<AddedRequestMessage> => ({
            status: 'fulfilled',
            value: this.storeRequestMessage(w.message, w.outbox ?? []),
          }),
        ),
      )();
    } catch {
      // One write threw and the whole batch rolled back: it goes again below,
      // each write in a savepoint of its own, so only the failing one fails.
    }
    // A nested better-sqlite3 transaction is a savepoint: a write that throws
    // rolls back to it alone, and the outer transaction commits the rest.
    const one = this.db.transaction((w: RequestMessageWrite) =>
      this.storeRequestMessage(w.message, w.outbox ?? []),
    );
    return this.db.transaction(() =>
      writes.map((w): PromiseSettledResult<AddedRequestMessage> => {
        try {
          return { status: 'fulfilled', value: one(w) };
        } catch (reason) {
          // SQLite rolled the whole transaction back (disk full, I/O error):
          // the batch fails as one, before a later write could commit alone.
          if (!this.db.inTransaction) throw reason;
          return { status: 'rejected', reason };
        }
      }),
    )();
  }

  /** One message and its counters, inside the caller's transaction. */
  private storeRequestMessage(
    m: NewRequestMessage,
    outbox: readonly OutboxEntry[],
  ): AddedRequestMessage {
    const attachments = m.attachments ?? [];
    const inserted = this.q.insertRequestMessage.run({
      _id: m._id,
      requestId: m.requestId,
      senderId: m.sender.id,
      senderUsername: m.sender.username,
      senderRole: m.sender.role,
      message: m.message,
      createdAt: m.createdAt,
      clientMessageId: m.clientMessageId,
      attachments: JSON.stringify(attachments),
    });
    if (inserted.changes > 0) {
      const { clientMessageId: _, ...fields } = m;
      const message: RequestMessage = { ...fields, attachments, deliveredTo: [], readBy: [] };
      const counted = this.q.countMessage.get({
        requestId: m.requestId,
        seq: Number(inserted.lastInsertRowid),
        id: m._id,
        createdAt: m.createdAt,
      });
      this.q.countSent.run(m.requestId, m.sender.id);
      if (outbox.length > 0) this.insertOutbox(outbox);
      if (!counted) return { message, duplicate: false };
      return {
        message,
        duplicate: false,
        activity: this.activity(m.requestId, counted, message),
      };
    }
    if (m.clientMessageId === null) throw new Error('request message insert stored nothing');
    const row = this.q.requestMessageByClientId.get(m.requestId, m.sender.id, m.clientMessageId);
    if (!row) throw new Error('request message vanished after a conflicting insert');
    const [original] = this.withReceipts([row]);
    return { message: original as RequestMessage, duplicate: true };
  }

  async getRequestMessage(
    requestId: string,
    messageId: string,
  ): Promise<RequestMessage | undefined> {
    const row = this.q.requestMessage.get(messageId, requestId);
    return row && this.withReceipts([row])[0];
  }

  async changeRequestMessage(
    requestId: string,
    messageId: string,
    senderId: string,
    change: MessageChange,
  ): Promise<{ message: RequestMessage; activity?: RequestActivity } | undefined> {
    return this.db.transaction(() => {
      const key = { id: messageId, requestId, senderId };
      if ('message' in change) {
        if (this.q.editMessage.run({ ...key, ...change }).changes === 0) return undefined;
        const row = this.q.requestMessage.get(messageId, requestId);
        return row && { message: this.withReceipts([row])[0] as RequestMessage };
      }
      if (this.q.deleteMessage.run({ ...key, ...change }).changes === 0) return undefined;
      this.q.uncountSent.run(requestId, senderId);
      this.q.uncountRead.run(requestId, messageId);
      const counted = this.q.uncountMessage.get(requestId);
      const row = this.q.requestMessage.get(messageId, requestId);
      if (!row) return undefined;
      const message = this.withReceipts([row])[0] as RequestMessage;
      if (!counted) return { message };
      const last = this.q.oneInbox.get({ userId: '', id: requestId })?.last_message_id;
      const lastMessage = last === messageId ? message : this.messagesById([last])[0];
      return { message, activity: this.activity(requestId, counted, lastMessage ?? null) };
    })();
  }

  listRequests(query: InboxQuery & NewestPage): Promise<InboxPage>;
  listRequests(query: InboxQuery): Promise<InboxPage | undefined>;
  async listRequests(query: InboxQuery): Promise<InboxPage | undefined> {
    let at = TOP;
    let id = '';
    if (query.before !== undefined) {
      const anchor = this.q.activityOf.get(query.before);
      const inInbox =
        anchor !== undefined &&
        (query.ownerId === undefined
          ? anchor.last_message_id !== null
          : anchor.owner_id === query.ownerId);
      if (!inInbox) return undefined;
      at = anchor.activity_at;
      id = query.before;
    }
    const limit = query.limit + 1;
    const rows =
      query.ownerId === undefined
        ? this.q.labInbox.all({ userId: query.userId, at, id, limit })
        : this.q.teacherInbox.all({ userId: query.userId, ownerId: query.ownerId, at, id, limit });
    const hasMore = rows.length > query.limit;
    return { requests: this.summaries(rows.slice(0, query.limit)), hasMore };
  }

  async requestSummary(requestId: string, userId: string): Promise<RequestSummary | undefined> {
    const row = this.q.oneInbox.get({ userId, id: requestId });
    return row && this.summaries([row])[0];
  }

  async unreadTotals(
    userId: string,
    ownerId: string | undefined,
    limit: number,
  ): Promise<UnreadTotals> {
    const lab = ownerId === undefined;
    // Running totals serve a lab user and a teacher asking about their own
    // requests; any other pair is summed over the owner's requests.
    const total = lab
      ? this.q.labUnreadTotal.get({ userId })
      : ownerId === userId
        ? this.q.ownUnreadTotal.get({ userId })
        : this.q.teacherUnreadTotal.get({ userId, ownerId });
    const left = Math.max(0, total?.total ?? 0);
    const rows = lab
      ? this.labUnreadList(userId, limit, left)
      : ownerId === userId
        ? this.q.ownUnreadList.all({ userId, limit })
        : this.q.teacherUnreadList.all({ userId, ownerId, limit });
    return { total: left, requests: rows.map((r) => ({ requestId: r.id, unread: r.unread })) };
  }

  /**
   * A lab user's requests with unread messages, newest first: a lab user may
   * act in every request, so no index holds theirs. The walk stops once the
   * requests found add up to the user's running total (`total`, read just
   * before on this one connection, nothing written between), so the requests
   * they have read that are older than their last unread one are never read;
   * none at all when nothing is unread.
   */
  private labUnreadList(userId: string, limit: number, total: number) {
    const rows: Array<{ id: string; unread: number }> = [];
    let found = 0;
    if (total === 0) return rows;
    for (const row of this.q.labUnreadList.iterate({ userId, limit })) {
      rows.push(row);
      found += row.unread;
      if (found >= total) break;
    }
    return rows;
  }

  requestHistory(requestId: string, query: NewestPage): Promise<Page<RequestMessage>>;
  requestHistory(requestId: string, query: PageQuery): Promise<Page<RequestMessage> | undefined>;
  async requestHistory(
    requestId: string,
    query: PageQuery,
  ): Promise<Page<RequestMessage> | undefined> {
    const upper = this.upperSeq(this.q.requestSeq, query.before, requestId);
    if (upper === undefined) return undefined;
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
      if (kind === 'read' && fresh.length > 0) {
        this.q.countRead.run(requestId, userId, fresh.length);
      }
      return fresh;
    })();
  }

  async enqueueWebhooks(entries: readonly OutboxEntry[]): Promise<void> {
    this.db.transaction(() => this.insertOutbox(entries))();
  }

  /**
   * Leases, in memory: one process owns a SQLite file (see the constructor),
   * so a lease only has to keep this process's worker from claiming a row
   * twice, and a claim is then a read, with no commit of its own.
   */
  private readonly leases = new Map<string, string>();

  async claimWebhooks(
    limit: number,
    now: string,
    leaseUntil: string,
    completed: readonly string[] = [],
  ): Promise<OutboxEvent[]> {
    if (completed.length > 0) await this.completeWebhooks(completed);
    for (const [id, until] of this.leases) if (until <= now) this.leases.delete(id);
    const due: OutboxRow[] = [];
    for (const row of this.q.dueOutbox.all(now, now, limit + this.leases.size)) {
      if (this.leases.has(row.id)) continue;
      due.push(row);
      if (due.length === limit) break;
    }
    const claimed = due.some(firstUnreadCheck)
      ? this.db.transaction(() => due.filter((row) => this.checkUnread(row, leaseUntil)))()
      : due;
    for (const row of claimed) this.leases.set(row.id, leaseUntil);
    return claimed.map(outboxEvent);
  }

  /**
   * An unread reminder's first attempt: false (and the row removed) when its
   * message was read or deleted meanwhile. One never claimed before carries
   * the message as it is now (edited or not), stored so that every attempt
   * sends the same bytes; its `lease_until` marks it claimed.
   */
  private checkUnread(row: OutboxRow, leaseUntil: string): boolean {
    if (!firstUnreadCheck(row)) return true;
    const message = row.unless_read as string;
    if (this.q.isSettled.get(message, message)) {
      this.q.deleteOutbox.run(row.id);
      return false;
    }
    if (row.lease_until === null) {
      const [current] = this.withReceipts(this.q.messagesById.all(JSON.stringify([message])));
      if (current) {
        row.payload = JSON.stringify(current);
        this.q.setOutboxPayload.run(row.payload, row.id);
      }
    }
    this.q.leaseOutbox.run(leaseUntil, row.id);
    return true;
  }

  async completeWebhooks(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    this.q.deleteOutboxMany.run(JSON.stringify(ids));
    for (const id of ids) this.leases.delete(id);
  }

  async recordWebhookFailure(
    id: string,
    failure: { error: string; at: string; nextAttemptAt: string | null },
  ): Promise<void> {
    this.q.failOutbox.run({ id, ...failure });
    this.leases.delete(id);
  }

  async releaseWebhook(id: string): Promise<void> {
    this.q.releaseOutbox.run(id);
    this.leases.delete(id);
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

  /** The counters after a message was stored or deleted, as every reader's unread count. */
  private activity(
    requestId: string,
    counted: { owner_id: string; message_count: number },
    lastMessage: RequestMessage | null,
  ): RequestActivity {
    const count = counted.message_count;
    return {
      requestId,
      ownerId: counted.owner_id,
      messageCount: count,
      lastMessage,
      readers: this.q.readersOf
        .all(requestId)
        .map((r) => ({ userId: r.user_id, unread: Math.max(0, count - r.sent - r.read) })),
    };
  }

  private messagesById(ids: Array<string | null | undefined>): RequestMessage[] {
    const wanted = ids.filter((id): id is string => typeof id === 'string');
    if (wanted.length === 0) return [];
    return this.withReceipts(this.q.messagesById.all(JSON.stringify(wanted)));
  }

  private summaries(rows: InboxRow[]): RequestSummary[] {
    const last = new Map(
      this.messagesById(rows.map((r) => r.last_message_id)).map((m) => [m._id, m]),
    );
    return rows.map((r) => ({
      requestId: r.id,
      ownerId: r.owner_id,
      lastMessage: (r.last_message_id && last.get(r.last_message_id)) || null,
      unread: Math.max(0, r.message_count - r.sent - r.read),
      updatedAt: r.activity_at,
    }));
  }

  private withReceipts(rows: RequestMessageRow[]): RequestMessage[] {
    const messages = rows.map((r): RequestMessage => {
      const m: RequestMessage = {
        _id: r.id,
        requestId: r.request_id,
        sender: { id: r.sender_id, username: r.sender_username, role: r.sender_role },
        message: r.message,
        createdAt: r.created_at,
        attachments: JSON.parse(r.attachments),
        deliveredTo: [],
        readBy: [],
      };
      if (r.edited_at !== null) m.editedAt = r.edited_at;
      if (r.deleted_at !== null) m.deletedAt = r.deleted_at;
      return m;
    });
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

/**
 * Creates `dir` and its missing parents, one level at a time. Node's own
 * `mkdirSync(dir, { recursive: true })` never returns for some paths that
 * cannot be made (under /proc), where start-up must fail with the reason.
 */
function makeDirs(dir: string): void {
  const found = statSync(dir, { throwIfNoEntry: false });
  if (found?.isDirectory()) return;
  if (found) throw new Error(`${dir} is not a directory`);
  const parent = dirname(dir);
  if (parent !== dir) makeDirs(parent);
  try {
    mkdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}
