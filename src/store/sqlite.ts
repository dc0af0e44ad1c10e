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
import type {
  ModerationAction,
  NewModerationAction,
  StreamBan,
  StreamControl,
  StreamSettings,
} from '../core/stream-rules.js';
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
}
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

  async endStream(key: string): Promise<boolean> {
    return this.q.endStream.run({ key, now: new Date().toISOString() }).changes > 0;
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

  async streamHistory(key: string, query: PageQuery): Promise<Page<StreamMessage>> {
    const upper = this.upperSeq(this.q.streamSeq, query.before, key);
    if (upper === undefined) return { messages: [], hasMore: false };
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

  async setStreamMembers(key: string, userIds: readonly string[]): Promise<void> {
    this.db.transaction(() => {
      this.q.clearMembers.run(key);
      for (const id of userIds) this.q.addMember.run(key, id);
    })();
  }

  async streamMembers(key: string): Promise<string[]> {
    return this.q.members.all(key).map((r) => r.user_id);
  }

  async putStreamBan(key: string, ban: StreamBan): Promise<void> {
    this.q.putBan.run({ key, ...ban });
  }

  async deleteStreamBan(key: string, userId: string): Promise<boolean> {
    return this.q.deleteBan.run(key, userId).changes > 0;
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

  async deleteStreamMessage(
    key: string,
    id: string,
    by: string,
    at: string,
  ): Promise<StreamMessage | undefined> {
    this.q.deleteStreamMessage.run({ key, id, by, at });
    return this.getStreamMessage(key, id);
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

  async addModerationAction(key: string, a: NewModerationAction): Promise<ModerationAction> {
    const { lastInsertRowid } = this.q.addAction.run(
      key,
      a.action,
      a.userId,
      a.messageId,
      a.by,
      a.at,
      a.reason,
    );
    return { id: String(lastInsertRowid), ...a };
  }

  async moderationLog(
    key: string,
    query: { before?: string | undefined; limit: number },
  ): Promise<{ actions: ModerationAction[]; hasMore: boolean }> {
    const upper = query.before === undefined ? Number.MAX_SAFE_INTEGER : Number(query.before);
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
  ): Promise<{ message: RequestMessage; duplicate: boolean }> {
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
  ): Promise<string[]> {
    return this.db.transaction(() => {
      const eligible = this.q.eligibleForReceipt.all(requestId, userId, JSON.stringify(messageIds));
      const fresh: string[] = [];
      for (const { id } of eligible) {
        if (this.q.insertReceipt.run(id, kind, userId, at).changes > 0) fresh.push(id);
        if (kind === 'read') this.q.insertReceipt.run(id, 'delivered', userId, at);
      }
      return fresh;
    })();
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
