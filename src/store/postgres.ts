/**
 * The Store on PostgreSQL, for deployments of several nodes. Same semantics
 * as `sqlite.ts`: a bigserial per table orders messages, a unique partial
 * index makes `clientMessageId` idempotent, receipts have a primary key and
 * `ON CONFLICT DO NOTHING` so the first one wins under any concurrency.
 *
 * Durability: a call resolves after COMMIT, which PostgreSQL (with its default
 * `synchronous_commit = on`) has flushed to its WAL.
 *
 * Schema: `?schema=<name>` in DATABASE_URL puts every table in that schema
 * (created if missing), so deployments or test runs can share a database;
 * without it, the server's `search_path` applies (usually `public`).
 */
import pg from 'pg';
import type {
  Attachment,
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
import type { OutboxEntry, OutboxEvent, WebhookType } from '../core/webhook-events.js';
import type { Logger } from '../observability/log.js';
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
 * per-request counters add up, all on shard 0: that migration's fill, and
 * `bulkLoad`'s.
 */
const UNREAD_TOTALS_FILL = `INSERT INTO unread_messages (shard, messages)
     SELECT s, CASE WHEN s = 0 THEN (SELECT coalesce(sum(message_count), 0) FROM requests) ELSE 0 END
     FROM generate_series(0, 15) s;
   INSERT INTO unread_owners (owner_id, shard, messages)
     SELECT owner_id, 0, sum(message_count) FROM requests GROUP BY owner_id;
   INSERT INTO unread_users (user_id, shard, seen, seen_own)
     SELECT rr.user_id, 0, sum(rr.sent + rr.read),
       sum(CASE WHEN r.owner_id = rr.user_id THEN rr.sent + rr.read ELSE 0 END)
     FROM request_readers rr LEFT JOIN requests r ON r.id = rr.request_id
     GROUP BY rr.user_id;`;

/** Each request's `owner_seen` from its owner's counters: the migration's fill, and `bulkLoad`'s. */
const OWNER_SEEN_FILL = `UPDATE requests r SET owner_seen = s.n
     FROM (SELECT q.id, coalesce(rr.sent + rr.read, 0) AS n FROM requests q
           LEFT JOIN request_readers rr ON rr.request_id = q.id AND rr.user_id = q.owner_id) s
     WHERE s.id = r.id AND r.owner_seen <> s.n;`;

/** Append-only: a released migration is never edited, a new one is added. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE streams (
     key        text PRIMARY KEY,
     title      text,
     owner_id   text,
     ended_at   timestamptz,
     created_at timestamptz NOT NULL,
     updated_at timestamptz NOT NULL
   );
   CREATE TABLE stream_messages (
     seq        bigserial PRIMARY KEY,
     id         text NOT NULL UNIQUE,
     stream_key text NOT NULL,
     user_id    text NOT NULL,
     username   text NOT NULL,
     message    text NOT NULL,
     sent_at    timestamptz NOT NULL
   );
   CREATE INDEX stream_messages_by_stream ON stream_messages (stream_key, seq);
   CREATE TABLE requests (
     id         text PRIMARY KEY,
     owner_id   text NOT NULL,
     created_at timestamptz NOT NULL,
     updated_at timestamptz NOT NULL
   );
   CREATE TABLE request_messages (
     seq               bigserial PRIMARY KEY,
     id                text NOT NULL UNIQUE,
     request_id        text NOT NULL,
     sender_id         text NOT NULL,
     sender_username   text NOT NULL,
     sender_role       text,
     message           text NOT NULL,
     created_at        timestamptz NOT NULL,
     client_message_id text
   );
   CREATE INDEX request_messages_by_request ON request_messages (request_id, seq);
   CREATE UNIQUE INDEX request_messages_client_id
     ON request_messages (request_id, sender_id, client_message_id)
     WHERE client_message_id IS NOT NULL;
   CREATE TABLE receipts (
     message_id text NOT NULL,
     kind       text NOT NULL CHECK (kind IN ('delivered', 'read')),
     user_id    text NOT NULL,
     at         timestamptz NOT NULL,
     PRIMARY KEY (message_id, kind, user_id)
   );`,
  `CREATE TABLE webhook_outbox (
     id              text PRIMARY KEY,
     type            text NOT NULL,
     payload         text NOT NULL,
     created_at      timestamptz NOT NULL,
     next_attempt_at timestamptz NOT NULL,
     attempts        integer NOT NULL DEFAULT 0,
     last_error      text,
     last_attempt_at timestamptz,
     state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
     lease_until     timestamptz,
     unless_read     text
   );
   CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
   CREATE INDEX webhook_outbox_failed ON webhook_outbox (last_attempt_at) WHERE state = 'failed';`,
  // The lab desk: attachments, edits and deletions; per-request counters and
  // per-(request, user) sent/read counters so that unread counts never count
  // messages; the inbox paged by (activity_at, id) on an index.
  `ALTER TABLE request_messages
     ADD COLUMN attachments jsonb NOT NULL DEFAULT '[]',
     ADD COLUMN edited_at timestamptz,
     ADD COLUMN deleted_at timestamptz;
   ALTER TABLE requests
     ADD COLUMN message_count integer NOT NULL DEFAULT 0,
     ADD COLUMN last_message_seq bigint,
     ADD COLUMN last_message_id text,
     ADD COLUMN activity_at timestamptz;
   UPDATE requests r SET message_count = s.n, last_message_seq = s.last
     FROM (SELECT request_id, count(*) AS n, max(seq) AS last
           FROM request_messages GROUP BY request_id) s
     WHERE s.request_id = r.id;
   UPDATE requests r SET last_message_id = m.id, activity_at = m.created_at
     FROM request_messages m WHERE m.seq = r.last_message_seq;
   UPDATE requests SET activity_at = created_at WHERE activity_at IS NULL;
   ALTER TABLE requests ALTER COLUMN activity_at SET NOT NULL;
   CREATE TABLE request_readers (
     request_id text NOT NULL,
     user_id    text NOT NULL,
     sent       integer NOT NULL DEFAULT 0,
     read       integer NOT NULL DEFAULT 0,
     PRIMARY KEY (request_id, user_id)
   );
   CREATE INDEX request_readers_by_user ON request_readers (user_id);
   INSERT INTO request_readers (request_id, user_id, sent, read)
     SELECT request_id, sender_id, count(*), 0 FROM request_messages GROUP BY request_id, sender_id;
   INSERT INTO request_readers (request_id, user_id, sent, read)
     SELECT m.request_id, r.user_id, 0, count(*)
     FROM receipts r JOIN request_messages m ON m.id = r.message_id
     WHERE r.kind = 'read' AND r.user_id <> m.sender_id
     GROUP BY m.request_id, r.user_id
     ON CONFLICT (request_id, user_id) DO UPDATE SET read = excluded.read;
   CREATE INDEX requests_by_activity ON requests (activity_at, id)
     WHERE last_message_id IS NOT NULL;
   CREATE INDEX requests_by_owner_activity ON requests (owner_id, activity_at, id);`,
  `ALTER TABLE stream_messages ADD COLUMN badges text NOT NULL DEFAULT '[]';
   ALTER TABLE stream_messages ADD COLUMN deleted_at timestamptz;
   ALTER TABLE stream_messages ADD COLUMN deleted_by text;
   ALTER TABLE streams ADD COLUMN moderators text NOT NULL DEFAULT '[]';
   ALTER TABLE streams ADD COLUMN slow_mode_seconds integer NOT NULL DEFAULT 0;
   ALTER TABLE streams ADD COLUMN members_only boolean NOT NULL DEFAULT false;
   ALTER TABLE streams ADD COLUMN paused boolean NOT NULL DEFAULT false;
   ALTER TABLE streams ADD COLUMN pinned_id text;
   CREATE TABLE stream_bans (
     stream_key text NOT NULL,
     user_id    text NOT NULL,
     until      timestamptz,
     reason     text,
     by_user    text NOT NULL,
     at         timestamptz NOT NULL,
     PRIMARY KEY (stream_key, user_id)
   );
   CREATE TABLE stream_members (
     stream_key text NOT NULL,
     user_id    text NOT NULL,
     PRIMARY KEY (stream_key, user_id)
   );
   CREATE TABLE stream_moderation_log (
     id         bigserial PRIMARY KEY,
     stream_key text NOT NULL,
     action     text NOT NULL,
     user_id    text,
     message_id text,
     by_user    text NOT NULL,
     at         timestamptz NOT NULL,
     reason     text
   );
   CREATE INDEX stream_moderation_log_by_stream ON stream_moderation_log (stream_key, id);`,
  // Running unread totals, so that a user's total reads a few counters, never
  // one row per request: per owner the messages of the requests they own;
  // per user what they sent or read everywhere (seen) and in their own
  // requests (seen_own); and every message of every request. A lab user's
  // total is messages - seen, a teacher's owned messages - seen_own. The
  // triggers move them in the transaction of the counter change they follow.
  // Each counter is split in 16 rows picked by backend pid and summed on
  // read, so that commits on different connections never wait on one hot row.
  `CREATE TABLE unread_messages (
     shard    integer PRIMARY KEY,
     messages bigint NOT NULL DEFAULT 0
   );
   CREATE TABLE unread_owners (
     owner_id text NOT NULL,
     shard    integer NOT NULL,
     messages bigint NOT NULL DEFAULT 0,
     PRIMARY KEY (owner_id, shard)
   );
   CREATE TABLE unread_users (
     user_id  text NOT NULL,
     shard    integer NOT NULL,
     seen     bigint NOT NULL DEFAULT 0,
     seen_own bigint NOT NULL DEFAULT 0,
     PRIMARY KEY (user_id, shard)
   );
   LOCK TABLE requests, request_readers IN SHARE MODE;
   ${UNREAD_TOTALS_FILL}
   CREATE FUNCTION unread_request_changed() RETURNS trigger LANGUAGE plpgsql AS $$
   DECLARE
     me integer := pg_backend_pid() % 16;
   BEGIN
     IF new.message_count <> coalesce(old.message_count, 0) THEN
       UPDATE unread_messages
         SET messages = messages + new.message_count - coalesce(old.message_count, 0)
         WHERE shard = me;
     END IF;
     IF TG_OP = 'UPDATE' AND new.owner_id = old.owner_id THEN
       IF new.message_count <> old.message_count THEN
         INSERT INTO unread_owners (owner_id, shard, messages)
           VALUES (new.owner_id, me, new.message_count - old.message_count)
           ON CONFLICT (owner_id, shard)
           DO UPDATE SET messages = unread_owners.messages + excluded.messages;
       END IF;
       RETURN NULL;
     END IF;
     IF TG_OP = 'UPDATE' THEN
       INSERT INTO unread_owners (owner_id, shard, messages)
         VALUES (old.owner_id, me, - old.message_count)
         ON CONFLICT (owner_id, shard)
         DO UPDATE SET messages = unread_owners.messages + excluded.messages;
     END IF;
     INSERT INTO unread_owners (owner_id, shard, messages) VALUES (new.owner_id, me, new.message_count)
       ON CONFLICT (owner_id, shard)
       DO UPDATE SET messages = unread_owners.messages + excluded.messages;
     -- FOR UPDATE waits for a reader's counters still being changed and then
     -- reads them as committed: that change saw the old owner.
     INSERT INTO unread_users (user_id, shard, seen, seen_own)
       SELECT user_id, me, 0, CASE WHEN user_id = new.owner_id THEN n ELSE - n END
       FROM (SELECT user_id, sent + read AS n FROM request_readers
             WHERE request_id = new.id
               AND (user_id = new.owner_id OR (TG_OP = 'UPDATE' AND user_id = old.owner_id))
             ORDER BY user_id FOR UPDATE) x
       ON CONFLICT (user_id, shard)
       DO UPDATE SET seen_own = unread_users.seen_own + excluded.seen_own;
     RETURN NULL;
   END $$;
   CREATE TRIGGER unread_request_changed AFTER INSERT OR UPDATE OF owner_id, message_count
     ON requests FOR EACH ROW EXECUTE FUNCTION unread_request_changed();
   CREATE FUNCTION unread_reader_changed() RETURNS trigger LANGUAGE plpgsql AS $$
   DECLARE
     delta bigint := new.sent + new.read
       - CASE WHEN TG_OP = 'UPDATE' THEN old.sent + old.read ELSE 0 END;
     own bigint := 0;
   BEGIN
     IF delta = 0 THEN RETURN NULL; END IF;
     IF EXISTS (SELECT 1 FROM requests WHERE id = new.request_id AND owner_id = new.user_id) THEN
       own := delta;
     END IF;
     INSERT INTO unread_users (user_id, shard, seen, seen_own)
       VALUES (new.user_id, pg_backend_pid() % 16, delta, own)
       ON CONFLICT (user_id, shard) DO UPDATE SET
         seen = unread_users.seen + excluded.seen, seen_own = unread_users.seen_own + excluded.seen_own;
     RETURN NULL;
   END $$;
   CREATE TRIGGER unread_reader_changed AFTER INSERT OR UPDATE OF sent, read
     ON request_readers FOR EACH ROW EXECUTE FUNCTION unread_reader_changed();`,
  // What each request's owner sent or read there (owner_seen), beside its
  // message count: the requests with messages their owner has not read are
  // then one partial index, so a teacher's unread list reads only those,
  // however many of their requests are read. The triggers keep it equal to
  // the owner's sent + read in the transaction of any change to either.
  `ALTER TABLE requests ADD COLUMN owner_seen integer NOT NULL DEFAULT 0;
   LOCK TABLE request_readers IN SHARE MODE;
   ${OWNER_SEEN_FILL}
   CREATE INDEX requests_owner_unread ON requests (owner_id, activity_at, id)
     WHERE message_count > owner_seen;
   CREATE FUNCTION owner_seen_request_changed() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
     IF TG_OP = 'UPDATE' AND new.owner_id = old.owner_id THEN RETURN new; END IF;
     -- FOR UPDATE waits for the new owner's counters still being changed and
     -- reads them as committed: that change saw the old owner.
     new.owner_seen := coalesce((SELECT sent + read FROM request_readers
       WHERE request_id = new.id AND user_id = new.owner_id FOR UPDATE), 0);
     RETURN new;
   END $$;
   CREATE TRIGGER owner_seen_request_changed BEFORE INSERT OR UPDATE OF owner_id
     ON requests FOR EACH ROW EXECUTE FUNCTION owner_seen_request_changed();
   CREATE FUNCTION owner_seen_reader_changed() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
     UPDATE requests SET owner_seen = new.sent + new.read
       WHERE id = new.request_id AND owner_id = new.user_id AND owner_seen <> new.sent + new.read;
     RETURN NULL;
   END $$;
   CREATE TRIGGER owner_seen_reader_changed AFTER INSERT OR UPDATE OF sent, read
     ON request_readers FOR EACH ROW EXECUTE FUNCTION owner_seen_reader_changed();`,
  // A group commit's one statement moves the running totals and owner_seen
  // itself, once per request and user instead of once per message: the
  // triggers stand aside while its transaction says so (LOCK_REQUESTS_SQL).
  // Every other writer still counts through them.
  `DROP TRIGGER unread_request_changed ON requests;
   CREATE TRIGGER unread_request_changed AFTER INSERT OR UPDATE OF owner_id, message_count
     ON requests FOR EACH ROW
     WHEN (current_setting('charla.counters', true) IS DISTINCT FROM 'batch')
     EXECUTE FUNCTION unread_request_changed();
   DROP TRIGGER unread_reader_changed ON request_readers;
   CREATE TRIGGER unread_reader_changed AFTER INSERT OR UPDATE OF sent, read
     ON request_readers FOR EACH ROW
     WHEN (current_setting('charla.counters', true) IS DISTINCT FROM 'batch')
     EXECUTE FUNCTION unread_reader_changed();
   DROP TRIGGER owner_seen_reader_changed ON request_readers;
   CREATE TRIGGER owner_seen_reader_changed AFTER INSERT OR UPDATE OF sent, read
     ON request_readers FOR EACH ROW
     WHEN (current_setting('charla.counters', true) IS DISTINCT FROM 'batch')
     EXECUTE FUNCTION owner_seen_reader_changed();`,
];

/**
 * A bulk load the way a migration fills, on `client` (a connection of its
 * own, search_path set): `load` writes the tables with triggers off for this
 * session (`session_replication_role = replica`, a superuser's setting), then
 * every counter the triggers keep is filled from the per-request counters
 * with the migrations' own fills. For importing or seeding millions of rows,
 * where a trigger per row would cost more than the rows; all of it commits
 * together or not at all.
 */
export async function bulkLoad(client: pg.ClientBase, load: () => Promise<void>): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query('SET LOCAL session_replication_role = replica');
    await load();
    await client.query('SET LOCAL session_replication_role = origin');
    // Statistics of what was just loaded: without them the fills' joins are
    // planned for empty tables, as nested loops over millions of rows.
    await client.query(
      `LOCK TABLE requests, request_readers IN SHARE MODE;
       ANALYZE requests, request_readers;
       DELETE FROM unread_messages; DELETE FROM unread_owners; DELETE FROM unread_users;
       ${UNREAD_TOTALS_FILL}
       ${OWNER_SEEN_FILL}`,
    );
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  }
}

/**
 * One key for every charla migration on the server: nodes starting at once
 * queue behind the first, which applies what is missing; the others find
 * nothing left to do. Cheap enough to share across schemas.
 */
const MIGRATION_LOCK = 0x636861726c61; // "charla"

// Lower case only: search_path folds unquoted names, CREATE SCHEMA "…" would not.
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

export interface PostgresOptions {
  /** `postgres://…`, optionally with `?schema=<name>`. */
  url: string;
  log?: Logger | undefined;
  /** Pool size per node. */
  max?: number;
}

/** Splits charla's `schema` parameter off the URL; pg would not understand it. */
export function parsePostgresUrl(url: string): { connectionString: string; schema?: string } {
  const parsed = new URL(url);
  const schema = parsed.searchParams.get('schema') ?? undefined;
  parsed.searchParams.delete('schema');
  if (schema === undefined) return { connectionString: parsed.toString() };
  if (!SCHEMA_NAME.test(schema)) {
    throw new Error(`DATABASE_URL: schema must match ${SCHEMA_NAME.source}`);
  }
  return { connectionString: parsed.toString(), schema };
}

interface StreamMessageRow {
  id: string;
  stream_key: string;
  user_id: string;
  username: string;
  message: string;
  sent_at: Date;
  badges: string;
  deleted_at: Date | null;
  deleted_by: string | null;
}

function streamMessageOf(r: StreamMessageRow): StreamMessage {
  const m: StreamMessage = {
    id: r.id,
    streamKey: r.stream_key,
    userId: r.user_id,
    username: r.username,
    message: r.message,
    sentAt: r.sent_at.toISOString(),
    badges: JSON.parse(r.badges) as StreamMessage['badges'],
  };
  if (r.deleted_at !== null) {
    m.deletedAt = r.deleted_at.toISOString();
    m.deletedBy = r.deleted_by ?? '';
  }
  return m;
}

interface LogRow {
  id: string;
  action: ModerationAction['action'];
  user_id: string | null;
  message_id: string | null;
  by_user: string;
  at: Date;
  reason: string | null;
}
interface RequestMessageRow {
  id: string;
  request_id: string;
  sender_id: string;
  sender_username: string;
  sender_role: string | null;
  message: string;
  created_at: Date;
  attachments: Attachment[];
  edited_at: Date | null;
  deleted_at: Date | null;
}
interface InboxRow {
  id: string;
  owner_id: string;
  message_count: number;
  last_message_id: string | null;
  activity_at: Date;
  sent: number;
  read: number;
}
interface Counted {
  owner_id: string;
  message_count: number;
  readers: Array<{ userId: string; sent: number; read: number }>;
}
interface ReceiptRow {
  message_id: string;
  kind: ReceiptKind;
  user_id: string;
  at: Date;
}

interface OutboxRow {
  id: string;
  type: WebhookType;
  payload: string;
  created_at: Date;
  attempts: number;
  last_error: string | null;
  last_attempt_at: Date | null;
}
const OUTBOX_COLUMNS = 'id, type, payload, created_at, attempts, last_error, last_attempt_at';
const outboxEvent = (r: OutboxRow): OutboxEvent => ({
  id: r.id,
  type: r.type,
  data: r.payload,
  createdAt: r.created_at.toISOString(),
  attempts: r.attempts,
  lastError: r.last_error,
  lastAttemptAt: r.last_attempt_at?.toISOString() ?? null,
});

/**
 * Inserts outbox rows given as arrays from parameter `$n` on (id, type,
 * payload, created_at, due, unless_read), when `condition` holds: a CTE step
 * that commits them with the statement's own write.
 */
const insertOutbox = (n: number, condition = 'true') =>
  `INSERT INTO webhook_outbox (id, type, payload, created_at, next_attempt_at, unless_read)
   SELECT * FROM unnest($${n}::text[], $${n + 1}::text[], $${n + 2}::text[],
                        $${n + 3}::timestamptz[], $${n + 4}::timestamptz[], $${n + 5}::text[])
   WHERE ${condition}`;
/**
 * `insertOutbox` for rows that share one payload (a message's `created` and
 * `unread` events): the payload is one text parameter, `$n + 2`, sent and
 * parsed once, not an array literal with every quote in it escaped, per row.
 */
const insertOutboxShared = (n: number, condition = 'true') =>
  `INSERT INTO webhook_outbox (id, type, payload, created_at, next_attempt_at, unless_read)
   SELECT e.id, e.type, $${n + 2}::text, e.created_at, e.due, e.unless_read
   FROM unnest($${n}::text[], $${n + 1}::text[], $${n + 3}::timestamptz[],
               $${n + 4}::timestamptz[], $${n + 5}::text[]) AS e(id, type, created_at, due, unless_read)
   WHERE ${condition}`;
const sharesPayload = (entries: readonly OutboxEntry[]) =>
  entries.length > 0 && entries.every((e) => e.data === entries[0]?.data);
const outboxParamsShared = (entries: readonly OutboxEntry[]) => [
  entries.map((e) => e.id),
  entries.map((e) => e.type),
  entries[0]?.data,
  entries.map((e) => e.createdAt),
  entries.map((e) => e.dueAt),
  entries.map((e) => e.unlessRead),
];
const outboxParams = (entries: readonly OutboxEntry[]) => [
  entries.map((e) => e.id),
  entries.map((e) => e.type),
  entries.map((e) => e.data),
  entries.map((e) => e.createdAt),
  entries.map((e) => e.dueAt),
  entries.map((e) => e.unlessRead),
];

/** A reader's counters as JSON, for `readers` arrays built inside one statement. */
const READER_JSON = "json_build_object('userId', user_id, 'sent', sent, 'read', read)";

/**
 * Stores one request message: only a repeated clientMessageId is a duplicate
 * (no row returned), a taken id fails. The other readers' counters are read
 * from the statement's snapshot, the sender's from the row it updated.
 */
/** How a message's outbox rows are passed: none, with one shared payload, or each its own. */
type OutboxShape = 'none' | 'shared' | 'each';
const outboxShape = (outbox: readonly OutboxEntry[]): OutboxShape =>
  outbox.length === 0 ? 'none' : sharesPayload(outbox) ? 'shared' : 'each';
const EVENTS_SQL: Record<OutboxShape, string> = {
  none: '',
  shared: `, events AS (${insertOutboxShared(10, 'EXISTS (SELECT 1 FROM ins)')})`,
  each: `, events AS (${insertOutbox(10, 'EXISTS (SELECT 1 FROM ins)')})`,
};
const addMessageSql = (outbox: OutboxShape) => `WITH ins AS (
     INSERT INTO request_messages
       (id, request_id, sender_id, sender_username, sender_role, message, created_at,
        client_message_id, attachments)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
     ON CONFLICT (request_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL
     DO NOTHING
     RETURNING seq, id, request_id, sender_id, created_at
   ), req AS (
     UPDATE requests r SET
       message_count = r.message_count + 1,
       last_message_seq = greatest(r.last_message_seq, ins.seq),
       last_message_id = CASE WHEN r.last_message_seq > ins.seq THEN r.last_message_id
                              ELSE ins.id END,
       activity_at = CASE WHEN r.last_message_seq > ins.seq THEN r.activity_at
                          ELSE ins.created_at END
     FROM ins WHERE r.id = ins.request_id
     RETURNING r.owner_id, r.message_count
   ), me AS (
     INSERT INTO request_readers (request_id, user_id, sent, read)
     SELECT request_id, sender_id, 1, 0 FROM ins
     ON CONFLICT (request_id, user_id) DO UPDATE SET sent = request_readers.sent + 1
     RETURNING user_id, sent, read
   )${EVENTS_SQL[outbox]}
   SELECT ins.seq, req.owner_id, req.message_count,
     (SELECT coalesce(json_agg(${READER_JSON}), '[]') FROM (
        SELECT user_id, sent, read FROM me
        UNION ALL
        SELECT user_id, sent, read FROM request_readers WHERE request_id = $2 AND user_id <> $3
      ) x) AS readers
   FROM ins LEFT JOIN req ON true`;

const addMessageParams = (
  m: NewRequestMessage,
  outbox: readonly OutboxEntry[],
  shape: OutboxShape,
): unknown[] => [
  m._id,
  m.requestId,
  m.sender.id,
  m.sender.username,
  m.sender.role,
  m.message,
  m.createdAt,
  m.clientMessageId,
  JSON.stringify(m.attachments ?? []),
  ...(shape === 'none'
    ? []
    : shape === 'shared'
      ? outboxParamsShared(outbox)
      : outboxParams(outbox)),
];

type AddedRow = Partial<Counted>;

const ADD_MESSAGE_STATEMENT: Record<OutboxShape, string> = {
  none: 'charla_add_message',
  shared: 'charla_add_message_outbox_shared',
  each: 'charla_add_message_outbox',
};

/** A stored message as `addMessageSql` reported it. */
function added(m: NewRequestMessage, row: AddedRow): AddedRequestMessage {
  const { clientMessageId: _, ...fields } = m;
  const attachments = m.attachments ?? [];
  const message: RequestMessage = { ...fields, attachments, deliveredTo: [], readBy: [] };
  if (row.owner_id == null || row.message_count == null) return { message, duplicate: false };
  return { message, duplicate: false, activity: activityOf(m.requestId, row as Counted, message) };
}

/**
 * A batch's first statement: it locks the running unread totals its messages
 * will move on its connection's shard (the message total, the owners of its
 * requests, its senders), in one order shared by every batch, before any
 * request's row. Two connections rarely share a shard, but when they do,
 * counters taken message by message in request order could each be held by
 * the batch the other waits for. `$1` request ids, `$2` sender ids.
 */
const LOCK_UNREAD_SQL = `SELECT
    (SELECT count(*) FROM (SELECT 1 FROM unread_messages WHERE shard = pg_backend_pid() % 16
       FOR UPDATE) m)
  + (SELECT count(*) FROM (SELECT 1 FROM unread_owners
       WHERE owner_id IN (SELECT owner_id FROM requests WHERE id = ANY($1::text[]))
         AND shard = pg_backend_pid() % 16
       ORDER BY owner_id FOR UPDATE) o)
  + (SELECT count(*) FROM (SELECT 1 FROM unread_users
       WHERE user_id = ANY($2::text[]) AND shard = pg_backend_pid() % 16
       ORDER BY user_id FOR UPDATE) u) AS locked`;

/**
 * A batch's second statement: the rows of its requests, in the order of their
 * ids, as every batch takes them; and the triggers that count message by
 * message stand aside for the rest of the transaction (see the migration
 * that adds their WHEN), since `BATCH_SQL` counts for the whole batch.
 * `$1` request ids.
 */
const LOCK_REQUESTS_SQL = `SELECT set_config('charla.counters', 'batch', true),
    (SELECT count(*) FROM (SELECT 1 FROM requests WHERE id = ANY($1::text[])
       ORDER BY id FOR NO KEY UPDATE) r) AS locked`;

/**
 * A whole group commit in one statement, from one array per column: the
 * messages (`$1`…`$9`, in the batch's order; a repeated clientMessageId,
 * even one earlier in the same batch, is not inserted), each request's
 * counters once, each (request, sender)'s `sent` once, the running unread
 * totals once per owner and per sender, and the webhook rows of the
 * messages inserted (`$10`…`$17`: the message id each belongs to, then as
 * `insertOutbox`, with the payload an index into `$14`, so that a payload
 * shared by several rows is sent once). Its statement-level sums are what
 * the triggers would have added row by row.
 *
 * One row per request of the batch: its owner (null without a request row),
 * message count and readers' counters as they were before the batch (the
 * statement's snapshot, taken after the request rows were locked), and the
 * ids of the messages inserted, from which each message's own counters
 * follow in order.
 */
const BATCH_SQL = `WITH m AS (
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                          $6::text[], $7::timestamptz[], $8::text[], $9::text[]) WITH ORDINALITY
       AS m(id, request_id, sender_id, sender_username, sender_role, message, created_at,
            client_message_id, attachments, ord)
   ), ins AS (
     INSERT INTO request_messages
       (id, request_id, sender_id, sender_username, sender_role, message, created_at,
        client_message_id, attachments)
     SELECT id, request_id, sender_id, sender_username, sender_role, message, created_at,
       client_message_id, attachments::jsonb
     FROM m ORDER BY ord
     ON CONFLICT (request_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL
     DO NOTHING
     RETURNING seq, id, request_id, sender_id, created_at
   ), sent AS (
     SELECT request_id, sender_id, count(*)::int AS n FROM ins GROUP BY request_id, sender_id
   ), me AS (
     INSERT INTO request_readers (request_id, user_id, sent, read)
     SELECT request_id, sender_id, n, 0 FROM sent ORDER BY request_id, sender_id
     ON CONFLICT (request_id, user_id) DO UPDATE SET sent = request_readers.sent + excluded.sent
     RETURNING request_id, user_id, sent, read
   ), last AS (
     SELECT DISTINCT ON (request_id) request_id, seq, id, created_at,
       count(*) OVER (PARTITION BY request_id) AS n
     FROM ins ORDER BY request_id, seq DESC
   ), req AS (
     UPDATE requests r SET
       message_count = r.message_count + l.n,
       last_message_seq = greatest(r.last_message_seq, l.seq),
       last_message_id = CASE WHEN r.last_message_seq > l.seq THEN r.last_message_id
                              ELSE l.id END,
       activity_at = CASE WHEN r.last_message_seq > l.seq THEN r.activity_at
                          ELSE l.created_at END,
       owner_seen = coalesce((SELECT me.sent + me.read FROM me
                              WHERE me.request_id = r.id AND me.user_id = r.owner_id), r.owner_seen)
     FROM last l WHERE r.id = l.request_id
     RETURNING r.id, r.owner_id, l.n
   ), total AS (
     UPDATE unread_messages u SET messages = u.messages + t.n
     FROM (SELECT sum(n) AS n FROM req) t
     WHERE u.shard = pg_backend_pid() % 16 AND t.n > 0
   ), owners AS (
     INSERT INTO unread_owners (owner_id, shard, messages)
     SELECT owner_id, pg_backend_pid() % 16, sum(n) FROM req GROUP BY owner_id ORDER BY owner_id
     ON CONFLICT (owner_id, shard)
     DO UPDATE SET messages = unread_owners.messages + excluded.messages
   ), users AS (
     INSERT INTO unread_users (user_id, shard, seen, seen_own)
     SELECT s.sender_id, pg_backend_pid() % 16, sum(s.n),
       sum(CASE WHEN s.sender_id = req.owner_id THEN s.n ELSE 0 END)
     FROM sent s LEFT JOIN req ON req.id = s.request_id
     GROUP BY s.sender_id ORDER BY s.sender_id
     ON CONFLICT (user_id, shard) DO UPDATE SET
       seen = unread_users.seen + excluded.seen, seen_own = unread_users.seen_own + excluded.seen_own
   ), events AS (
     INSERT INTO webhook_outbox (id, type, payload, created_at, next_attempt_at, unless_read)
     SELECT e.id, e.type, ($14::text[])[e.p], e.created_at, e.due, e.unless_read
     FROM unnest($10::text[], $11::text[], $12::text[], $13::int[], $15::timestamptz[],
                 $16::timestamptz[], $17::text[]) WITH ORDINALITY
       AS e(message_id, id, type, p, created_at, due, unless_read, ord)
     WHERE e.message_id IN (SELECT id FROM ins)
     ORDER BY e.ord
   )
   SELECT q.request_id AS id, r.owner_id, r.message_count,
     (SELECT coalesce(json_agg(${READER_JSON}), '[]') FROM request_readers rr
      WHERE rr.request_id = q.request_id) AS readers,
     (SELECT coalesce(array_agg(ins.id), '{}') FROM ins WHERE ins.request_id = q.request_id) AS inserted
   FROM (SELECT DISTINCT request_id FROM m) q LEFT JOIN requests r ON r.id = q.request_id`;

interface BatchRow {
  id: string;
  owner_id: string | null;
  message_count: number | null;
  readers: Array<{ userId: string; sent: number; read: number }>;
  inserted: string[];
}

/** `BATCH_SQL`'s parameters for `writes`. */
function batchParams(writes: readonly RequestMessageWrite[]): unknown[] {
  const ms = writes.map((w) => w.message);
  const outbox = { message: [] as string[], id: [] as string[], type: [] as string[] };
  const payloadOf: number[] = [];
  const payloads: string[] = [];
  const at = { created: [] as string[], due: [] as string[], unlessRead: [] as (string | null)[] };
  for (const w of writes) {
    let last: string | undefined;
    for (const e of w.outbox ?? []) {
      // A message's events mostly share their payload: sent once.
      if (e.data !== last) payloads.push(e.data);
      last = e.data;
      payloadOf.push(payloads.length);
      outbox.message.push(w.message._id);
      outbox.id.push(e.id);
      outbox.type.push(e.type);
      at.created.push(e.createdAt);
      at.due.push(e.dueAt);
      at.unlessRead.push(e.unlessRead);
    }
  }
  return [
    ms.map((m) => m._id),
    ms.map((m) => m.requestId),
    ms.map((m) => m.sender.id),
    ms.map((m) => m.sender.username),
    ms.map((m) => m.sender.role),
    ms.map((m) => m.message),
    ms.map((m) => m.createdAt),
    ms.map((m) => m.clientMessageId),
    ms.map((m) => JSON.stringify(m.attachments ?? [])),
    outbox.message,
    outbox.id,
    outbox.type,
    payloadOf,
    payloads,
    at.created,
    at.due,
    at.unlessRead,
  ];
}

/**
 * Each write's row as `addMessageSql` would have returned it, had the writes
 * been stored one by one in this order: counts and readers' counters move on
 * with each message inserted (undefined: not inserted, a repeat).
 */
function batchRows(
  writes: readonly RequestMessageWrite[],
  rows: readonly BatchRow[],
): Array<AddedRow | undefined> {
  const state = new Map(
    rows.map((r) => [
      r.id,
      {
        row: r,
        count: r.message_count ?? 0,
        inserted: new Set(r.inserted),
        readers: new Map(r.readers.map((x) => [x.userId, { sent: x.sent, read: x.read }])),
      },
    ]),
  );
  return writes.map(({ message: m }) => {
    const s = state.get(m.requestId);
    if (!s?.inserted.delete(m._id)) return undefined;
    s.count++;
    let mine = s.readers.get(m.sender.id);
    if (!mine) {
      mine = { sent: 0, read: 0 };
      s.readers.set(m.sender.id, mine);
    }
    mine.sent++;
    if (s.row.owner_id === null) return {};
    const readers = [{ userId: m.sender.id, sent: mine.sent, read: mine.read }];
    for (const [userId, c] of s.readers) {
      if (userId !== m.sender.id) readers.push({ userId, sent: c.sent, read: c.read });
    }
    return { owner_id: s.row.owner_id, message_count: s.count, readers };
  });
}

/** Connections of the group-commit pool; more batches than this wait for one. */
const WRITER_CONNECTIONS = 2;

/**
 * A single write to a request's messages or receipts takes the request's row
 * first: its triggers update that row and the readers' counters in different
 * orders, and would otherwise meet another writer's locks the other way round.
 */
/** The unread counters of a batch's requests and senders, locked in their order. */
function lockUnread(
  client: pg.PoolClient,
  requestIds: string[],
  writes: readonly RequestMessageWrite[],
): Promise<unknown> {
  return client.query({
    name: 'charla_lock_unread',
    text: LOCK_UNREAD_SQL,
    values: [requestIds, [...new Set(writes.map((w) => w.message.sender.id))]],
  });
}

async function lockRequest(client: pg.PoolClient, requestId: string): Promise<void> {
  await client.query('SELECT 1 FROM requests WHERE id = $1 FOR NO KEY UPDATE', [requestId]);
}

/** A deadlock or serialization failure: the whole transaction is worth another try. */
const RETRYABLE = new Set(['40P01', '40001']);
const retryable = (err: unknown) => RETRYABLE.has((err as { code?: string }).code ?? '');

/**
 * A group-commit batch: committed, with each write's row (none for a repeated
 * clientMessageId), or rolled back, naming the write that failed if one did.
 */
type BatchOutcome =
  | { committed: true; rows: Array<AddedRow | undefined> }
  | { committed: false; failed: number | undefined; error: unknown; retry?: boolean };

const STREAM_COLUMNS =
  'id, stream_key, user_id, username, message, sent_at, badges, deleted_at, deleted_by';
const REQUEST_COLUMNS =
  'id, request_id, sender_id, sender_username, sender_role, message, created_at, attachments, edited_at, deleted_at';

/** `$1` message ids: those messages, by their unique id (an inbox page's last messages). */
export const MESSAGES_BY_ID = `SELECT ${REQUEST_COLUMNS} FROM request_messages WHERE id = ANY($1::text[])`;
/** `$1` message ids: their receipts. */
export const RECEIPTS_OF = `SELECT message_id, kind, user_id, at FROM receipts
  WHERE message_id = ANY($1::text[]) ORDER BY at, user_id`;

/** One line per request of a user's inbox, with `unread` from the counters; `$1` is the user. */
export const INBOX_SELECT = `SELECT r.id, r.owner_id, r.message_count, r.last_message_id, r.activity_at,
    coalesce(rr.sent, 0) AS sent, coalesce(rr.read, 0) AS read
  FROM requests r
  LEFT JOIN request_readers rr ON rr.request_id = r.id AND rr.user_id = $1`;

/** Request `id` is in the lab's inbox, or in the teacher's `ownerId`'s (both SQL). */
const inInbox = (owner: boolean, id: string, ownerId: string) =>
  `id = ${id} AND ${owner ? `owner_id = ${ownerId}` : 'last_message_id IS NOT NULL'}`;

/**
 * The lab's inbox (every request with messages) or a teacher's (`$2`), from
 * `before` on. A `before` that names no request of this inbox compares with
 * NULL: no rows.
 */
export const inboxQuery = (owner: boolean, before: boolean) => {
  const n = owner ? 3 : 2;
  const where = [owner ? 'r.owner_id = $2' : 'r.last_message_id IS NOT NULL'];
  if (before) {
    where.push(
      `(r.activity_at, r.id) < (SELECT activity_at, id FROM requests WHERE ${inInbox(owner, `$${n + 1}`, '$2')})`,
    );
  }
  return `${INBOX_SELECT} WHERE ${where.join(' AND ')}
    ORDER BY r.activity_at DESC, r.id DESC LIMIT $${n}`;
};

/** `$1` the user, `$2` the owner: the sum over the owner's requests, for any other pair. The lab's reads running totals. */
export const unreadTotalQuery = (owner: boolean) =>
  owner
    ? `SELECT (SELECT coalesce(sum(message_count), 0) FROM requests WHERE owner_id = $2)
         - (SELECT coalesce(sum(rr.sent + rr.read), 0) FROM request_readers rr
            JOIN requests r ON r.id = rr.request_id
            WHERE rr.user_id = $1 AND r.owner_id = $2) AS total`
    : `SELECT (SELECT coalesce(sum(messages), 0) FROM unread_messages)
         - (SELECT coalesce(sum(seen), 0) FROM unread_users WHERE user_id = $1)
         AS total`;

/** `$1` a teacher asking about their own requests: running totals only. */
export const ownUnreadTotalQuery = `SELECT
    (SELECT coalesce(sum(messages), 0) FROM unread_owners WHERE owner_id = $1)
    - (SELECT coalesce(sum(seen_own), 0) FROM unread_users WHERE user_id = $1) AS total`;

export const unreadListQuery = (owner: boolean) => `SELECT id, unread FROM (
    SELECT r.id, r.activity_at, r.message_count - coalesce(rr.sent, 0) - coalesce(rr.read, 0) AS unread
    FROM requests r
    LEFT JOIN request_readers rr ON rr.request_id = r.id AND rr.user_id = $1
    WHERE ${owner ? 'r.owner_id = $3' : 'r.last_message_id IS NOT NULL'}
    ORDER BY r.activity_at DESC, r.id DESC) x
  WHERE unread > 0 LIMIT $2`;

/** `$1` a teacher, `$2` the limit: their requests with messages they have not read, from the partial index. */
export const ownUnreadListQuery = `SELECT id, message_count - owner_seen AS unread FROM requests
  WHERE owner_id = $1 AND message_count > owner_seen
  ORDER BY activity_at DESC, id DESC LIMIT $2`;

/** The lab's next request with unread messages for `$1`, newest first, below `bound`. */
const nextLabUnread = (bound: string) => `SELECT r.id, r.activity_at,
      r.message_count - coalesce(rr.sent, 0) - coalesce(rr.read, 0) AS unread
    FROM requests r
    LEFT JOIN request_readers rr ON rr.request_id = r.id AND rr.user_id = $1
    WHERE r.last_message_id IS NOT NULL AND ${bound}
      AND r.message_count - coalesce(rr.sent, 0) - coalesce(rr.read, 0) > 0
    ORDER BY r.activity_at DESC, r.id DESC LIMIT 1`;

/**
 * `$1` a lab user, `$2` the limit: their running total and, newest first,
 * their requests with unread messages, in one statement (one snapshot). A lab
 * user may act in every request, so no index holds theirs: the walk goes one
 * request at a time and stops once the requests found add up to the total,
 * so the requests they have read that are older than their last unread one
 * are never read; none at all when nothing is unread. One row with a null id
 * when the list is empty.
 */
export const labUnreadQuery = `WITH RECURSIVE total AS (
    SELECT (SELECT coalesce(sum(messages), 0) FROM unread_messages)
      - (SELECT coalesce(sum(seen), 0) FROM unread_users WHERE user_id = $1) AS n
  ), walk AS (
    SELECT u.id, u.activity_at, u.unread, u.unread::bigint AS found, 1 AS k
    FROM total t, LATERAL (${nextLabUnread('true')}) u
    WHERE t.n > 0 AND $2 > 0
    UNION ALL
    SELECT u.id, u.activity_at, u.unread, w.found + u.unread, w.k + 1
    FROM walk w, total t,
      LATERAL (${nextLabUnread('(r.activity_at, r.id) < (w.activity_at, w.id)')}) u
    WHERE w.found < t.n AND w.k < $2
  )
  SELECT t.n AS total, w.id, w.unread FROM total t LEFT JOIN walk w ON true ORDER BY w.k`;

/**
 * The newest `limit + 1` rows of one scope, before the row `before` names.
 * A `before` that names no row of this scope compares with NULL: no rows.
 */
const pageQuery = (table: string, columns: string, scope: string) =>
  `SELECT ${columns} FROM ${table}
   WHERE ${scope} = $1
     AND ($2::text IS NULL OR seq < (SELECT seq FROM ${table} WHERE id = $2 AND ${scope} = $1))
   ORDER BY seq DESC LIMIT $3`;

/** `$1` names a row of scope `$2`: asked of a `before` only when its page came back empty. */
const cursorQuery = (table: string, scope: string) =>
  `SELECT 1 FROM ${table} WHERE id = $1 AND ${scope} = $2`;

export class PostgresStore implements Store {
  private readonly pool: pg.Pool;
  private readonly writer: pg.Pool;
  private readonly schema: string | undefined;
  private migrated: Promise<void> | undefined;
  private closed = false;

  constructor(options: PostgresOptions) {
    const { connectionString, schema } = parsePostgresUrl(options.url);
    this.schema = schema;
    const common = {
      connectionString,
      // Fail a call when the server is unreachable instead of queueing it forever.
      connectionTimeoutMillis: 5_000,
      application_name: 'charla',
      ...(schema === undefined ? {} : { options: `-c search_path=${schema}` }),
    };
    this.pool = new pg.Pool({ ...common, max: options.max ?? 10 });
    // Group commits: each connection pipelines a whole batch, so a few suffice.
    this.writer = new pg.Pool({
      ...common,
      max: WRITER_CONNECTIONS,
      pipeline: true,
    } as pg.PoolConfig);
    // An idle client loses its server (restart, failover): the pool drops it and
    // the next call connects again. Without a listener this would crash the node.
    // A client checked out for a call is not listened to by the pool: its loss
    // fails the call (which says so), and this listener keeps it from also
    // raising an 'error' event nobody handles.
    for (const pool of [this.pool, this.writer]) {
      pool.on('error', (err) => options.log?.warn({ err }, 'postgres connection lost'));
      pool.on('connect', (client) =>
        client.on('error', (err) =>
          options.log?.debug({ err }, 'postgres connection lost during a call'),
        ),
      );
    }
    this.migrated = this.migrate();
    // Surfaced by the first call (and by ping at start-up), not as an unhandled rejection.
    this.migrated.catch(() => {});
  }

  async putStream(
    key: string,
    fields: { title?: string | null; ownerId?: string | null },
  ): Promise<{ created: boolean }> {
    // `xmax = 0` holds only for a row this statement inserted.
    const rows = await this.query<{ created: boolean }>(
      `INSERT INTO streams (key, title, owner_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
       ON CONFLICT (key) DO UPDATE SET
         title = coalesce(excluded.title, streams.title),
         owner_id = coalesce(excluded.owner_id, streams.owner_id),
         ended_at = NULL, updated_at = excluded.updated_at
       RETURNING (xmax = 0) AS created`,
      [key, fields.title ?? null, fields.ownerId ?? null, new Date()],
    );
    return { created: rows[0]?.created === true };
  }

  async endStream(key: string, outbox: readonly OutboxEntry[] = []): Promise<boolean> {
    if (outbox.length > 0) {
      // The row lock makes "was it open" and "end it" one step: of concurrent
      // calls, only the one that ended the stream commits the events.
      const rows = await this.query(
        `WITH old AS (SELECT key, ended_at FROM streams WHERE key = $1 FOR UPDATE),
         ended AS (
           UPDATE streams s SET ended_at = coalesce(s.ended_at, $2), updated_at = $2
           FROM old WHERE s.key = old.key RETURNING s.key
         ), events AS (${insertOutbox(3, 'EXISTS (SELECT 1 FROM old WHERE ended_at IS NULL)')})
         SELECT key FROM ended`,
        [key, new Date(), ...outboxParams(outbox)],
      );
      return rows.length > 0;
    }
    const rows = await this.query(
      `UPDATE streams SET ended_at = coalesce(ended_at, $2), updated_at = $2 WHERE key = $1
       RETURNING key`,
      [key, new Date()],
    );
    return rows.length > 0;
  }

  async getStream(key: string): Promise<StreamRecord | undefined> {
    const [row] = await this.query<{
      key: string;
      title: string | null;
      owner_id: string | null;
      ended_at: Date | null;
    }>('SELECT key, title, owner_id, ended_at FROM streams WHERE key = $1', [key]);
    return (
      row && {
        key: row.key,
        title: row.title,
        ownerId: row.owner_id,
        endedAt: row.ended_at?.toISOString() ?? null,
      }
    );
  }

  async appendStreamMessages(messages: readonly StreamMessage[]): Promise<void> {
    if (messages.length === 0) return;
    // One statement is one transaction: the whole batch or none of it, in array order.
    await this.query(
      `INSERT INTO stream_messages (id, stream_key, user_id, username, message, sent_at, badges)
       SELECT id, stream_key, user_id, username, message, sent_at, badges
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                   $7::text[])
         WITH ORDINALITY AS m(id, stream_key, user_id, username, message, sent_at, badges, n)
       ORDER BY n`,
      [
        messages.map((m) => m.id),
        messages.map((m) => m.streamKey),
        messages.map((m) => m.userId),
        messages.map((m) => m.username),
        messages.map((m) => m.message),
        messages.map((m) => m.sentAt),
        messages.map((m) => JSON.stringify(m.badges)),
      ],
    );
  }

  streamHistory(key: string, query: NewestPage): Promise<Page<StreamMessage>>;
  streamHistory(key: string, query: PageQuery): Promise<Page<StreamMessage> | undefined>;
  async streamHistory(key: string, query: PageQuery): Promise<Page<StreamMessage> | undefined> {
    const rows = await this.query<StreamMessageRow>(
      pageQuery('stream_messages', STREAM_COLUMNS, 'stream_key'),
      [key, query.before ?? null, query.limit + 1],
    );
    const anchor = cursorQuery('stream_messages', 'stream_key');
    if (!(await this.cursorFound(rows, query.before, anchor, [key]))) return undefined;
    const hasMore = rows.length > query.limit;
    const messages = rows.slice(0, query.limit).reverse().map(streamMessageOf);
    return { messages, hasMore };
  }

  async getStreamControl(key: string): Promise<StreamControl | undefined> {
    const [r] = await this.query<{
      key: string;
      title: string | null;
      owner_id: string | null;
      moderators: string;
      slow_mode_seconds: number;
      members_only: boolean;
      paused: boolean;
      pinned_id: string | null;
    }>(
      `SELECT key, title, owner_id, moderators, slow_mode_seconds, members_only, paused, pinned_id
       FROM streams WHERE key = $1`,
      [key],
    );
    return (
      r && {
        key: r.key,
        title: r.title,
        ownerId: r.owner_id,
        moderators: JSON.parse(r.moderators) as string[],
        slowModeSeconds: r.slow_mode_seconds,
        membersOnly: r.members_only,
        paused: r.paused,
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
    const values: unknown[] = [key, new Date()];
    const sets = ['updated_at = $2'];
    const column = (name: string, value: unknown) => {
      values.push(value);
      sets.push(`${name} = $${values.length}`);
    };
    if (patch.title !== undefined) column('title', patch.title);
    if (patch.moderators !== undefined) column('moderators', JSON.stringify(patch.moderators));
    if (patch.slowModeSeconds !== undefined) column('slow_mode_seconds', patch.slowModeSeconds);
    if (patch.membersOnly !== undefined) column('members_only', patch.membersOnly);
    if (patch.paused !== undefined) column('paused', patch.paused);
    if (patch.pinnedId !== undefined) column('pinned_id', patch.pinnedId);
    const rows = await this.query(
      `UPDATE streams SET ${sets.join(', ')} WHERE key = $1 RETURNING key`,
      values,
    );
    return rows.length > 0;
  }

  async unpinStreamMessage(key: string, id: string): Promise<boolean> {
    const rows = await this.query(
      'UPDATE streams SET pinned_id = NULL, updated_at = $2 WHERE key = $1 AND pinned_id = $3 RETURNING key',
      [key, new Date(), id],
    );
    return rows.length > 0;
  }

  async setStreamMembers(key: string, userIds: readonly string[]): Promise<void> {
    // One statement is one transaction: the old list is replaced whole or not at all.
    await this.query(
      `WITH gone AS (
         DELETE FROM stream_members WHERE stream_key = $1 AND NOT (user_id = ANY($2::text[]))
       )
       INSERT INTO stream_members (stream_key, user_id)
       SELECT DISTINCT $1, u FROM unnest($2::text[]) AS u
       ON CONFLICT DO NOTHING`,
      [key, [...userIds]],
    );
  }

  async streamMembers(key: string): Promise<string[]> {
    const rows = await this.query<{ user_id: string }>(
      'SELECT user_id FROM stream_members WHERE stream_key = $1 ORDER BY user_id',
      [key],
    );
    return rows.map((r) => r.user_id);
  }

  async streamBans(key: string, now: string): Promise<StreamBan[]> {
    const rows = await this.query<{
      user_id: string;
      until: Date | null;
      reason: string | null;
      by_user: string;
      at: Date;
    }>(
      `SELECT user_id, until, reason, by_user, at FROM stream_bans
       WHERE stream_key = $1 AND (until IS NULL OR until > $2) ORDER BY at, user_id`,
      [key, now],
    );
    return rows.map((r) => ({
      userId: r.user_id,
      until: r.until?.toISOString() ?? null,
      reason: r.reason,
      by: r.by_user,
      at: r.at.toISOString(),
    }));
  }

  async getStreamMessage(key: string, id: string): Promise<StreamMessage | undefined> {
    const [row] = await this.query<StreamMessageRow>(
      `SELECT ${STREAM_COLUMNS} FROM stream_messages WHERE stream_key = $1 AND id = $2`,
      [key, id],
    );
    return row && streamMessageOf(row);
  }

  async streamRecent(
    key: string,
    query: { after?: string | undefined; limit: number },
  ): Promise<{ messages: StreamMessage[]; more: boolean; known: boolean }> {
    let lower = '0';
    let known = true;
    if (query.after !== undefined) {
      const [row] = await this.query<{ seq: string }>(
        'SELECT seq FROM stream_messages WHERE id = $1 AND stream_key = $2',
        [query.after, key],
      );
      if (row === undefined) known = false;
      else lower = row.seq;
    }
    const rows = await this.query<StreamMessageRow>(
      `SELECT ${STREAM_COLUMNS} FROM stream_messages
       WHERE stream_key = $1 AND seq > $2 AND deleted_at IS NULL
       ORDER BY seq DESC LIMIT $3`,
      [key, lower, query.limit + 1],
    );
    const more = rows.length > query.limit;
    return { messages: rows.slice(0, query.limit).reverse().map(streamMessageOf), more, known };
  }

  async addModerationAction(
    key: string,
    a: NewModerationAction,
    outbox: readonly OutboxEntry[] = [],
    effect?: ModerationEffect,
  ): Promise<ModerationAction | undefined> {
    return this.transaction(async (client) => {
      if (effect?.kind === 'delete') {
        const { rowCount } = await client.query(
          `UPDATE stream_messages SET deleted_at = $3, deleted_by = $4
           WHERE stream_key = $1 AND id = $2 AND deleted_at IS NULL`,
          [key, effect.id, effect.at, effect.by],
        );
        if (!rowCount) return undefined;
      } else if (effect?.kind === 'ban') {
        const { ban } = effect;
        await client.query(
          `INSERT INTO stream_bans (stream_key, user_id, until, reason, by_user, at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (stream_key, user_id) DO UPDATE SET until = excluded.until,
             reason = excluded.reason, by_user = excluded.by_user, at = excluded.at`,
          [key, ban.userId, ban.until, ban.reason, ban.by, ban.at],
        );
      } else if (effect?.kind === 'unban') {
        const { rowCount } = await client.query(
          'DELETE FROM stream_bans WHERE stream_key = $1 AND user_id = $2',
          [key, effect.userId],
        );
        if (!rowCount) return undefined;
      }
      const { rows } = await client.query<{ id: string }>(
        `INSERT INTO stream_moderation_log (stream_key, action, user_id, message_id, by_user, at, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`,
        [key, a.action, a.userId, a.messageId, a.by, a.at, a.reason],
      );
      if (outbox.length > 0) {
        await client.query(insertOutbox(1), outboxParams(outbox));
      }
      return { id: String(rows[0]?.id), ...a };
    });
  }

  moderationLog(key: string, query: NewestPage): Promise<ModerationLogPage>;
  moderationLog(key: string, query: PageQuery): Promise<ModerationLogPage | undefined>;
  async moderationLog(key: string, query: PageQuery): Promise<ModerationLogPage | undefined> {
    // Ids are one sequence over every stream: only this stream's are its cursors.
    if (query.before !== undefined && !/^[0-9]{1,18}$/.test(query.before)) return undefined;
    const rows = await this.query<LogRow>(
      `SELECT id, action, user_id, message_id, by_user, at, reason FROM stream_moderation_log
       WHERE stream_key = $1 AND ($2::bigint IS NULL OR id < (
         SELECT id FROM stream_moderation_log WHERE id = $2 AND stream_key = $1))
       ORDER BY id DESC LIMIT $3`,
      [key, query.before ?? null, query.limit + 1],
    );
    const anchor = cursorQuery('stream_moderation_log', 'stream_key');
    if (!(await this.cursorFound(rows, query.before, anchor, [key]))) return undefined;
    const hasMore = rows.length > query.limit;
    const actions = rows.slice(0, query.limit).map((r) => ({
      id: String(r.id),
      action: r.action,
      userId: r.user_id,
      messageId: r.message_id,
      by: r.by_user,
      at: r.at.toISOString(),
      reason: r.reason,
    }));
    return { actions, hasMore };
  }

  async putRequest(id: string, ownerId: string): Promise<PutRequestResult> {
    // ON CONFLICT's RETURNING sees only the new row. The row lock taken in the
    // subquery makes "read the old owner, write the new" one step under
    // concurrency; a request inserted by someone else between our two
    // statements sends us round again, to replace that owner.
    for (;;) {
      const now = new Date();
      const [updated] = await this.query<{ previous: string }>(
        `UPDATE requests r SET owner_id = $2, updated_at = $3
         FROM (SELECT id, owner_id FROM requests WHERE id = $1 FOR UPDATE) old
         WHERE r.id = old.id
         RETURNING old.owner_id AS previous`,
        [id, ownerId, now],
      );
      if (updated) return { created: false, previousOwnerId: updated.previous };
      const inserted = await this.query(
        `INSERT INTO requests (id, owner_id, created_at, updated_at, activity_at)
         VALUES ($1, $2, $3, $3, $3)
         ON CONFLICT (id) DO NOTHING RETURNING id`,
        [id, ownerId, now],
      );
      if (inserted.length > 0) return { created: true, previousOwnerId: null };
    }
  }

  async getRequest(id: string): Promise<RequestRecord | undefined> {
    const [row] = await this.query<{ id: string; owner_id: string }>(
      'SELECT id, owner_id FROM requests WHERE id = $1',
      [id],
    );
    return row && { id: row.id, ownerId: row.owner_id };
  }

  async addRequestMessage(
    m: NewRequestMessage,
    outbox: readonly OutboxEntry[] = [],
  ): Promise<AddedRequestMessage> {
    // One statement is one transaction: the message, every counter it moves
    // and the webhook events it causes; a deadlock rolls it back whole.
    const shape = outboxShape(outbox);
    const [row] = await this.retried(() =>
      this.transaction(async (client) => {
        await lockRequest(client, m.requestId);
        return (
          await client.query<AddedRow>(addMessageSql(shape), [
            ...addMessageParams(m, outbox, shape),
          ])
        ).rows;
      }),
    );
    return row ? added(m, row) : this.original(m);
  }

  async addRequestMessages(
    writes: readonly RequestMessageWrite[],
  ): Promise<PromiseSettledResult<AddedRequestMessage>[]> {
    await this.ready();
    const results: Array<PromiseSettledResult<AddedRequestMessage> | undefined> = writes.map(
      () => undefined,
    );
    // Every batch takes its row locks in the order of request ids, so two
    // batches (of this node or another) wait for each other, never deadlock.
    // The sort is stable: messages of one request keep their order.
    let pending = writes
      .map((w, i) => ({ w, i }))
      .sort((a, b) =>
        a.w.message.requestId < b.w.message.requestId
          ? -1
          : a.w.message.requestId > b.w.message.requestId
            ? 1
            : 0,
      );
    let whole = true;
    while (pending.length > 0) {
      let outcome: BatchOutcome;
      try {
        outcome = await this.retried(async () => {
          const batch = pending.map((p) => p.w);
          const o = whole ? await this.statementBatch(batch) : await this.pipelineBatch(batch);
          // Waiting for the counters, or one of the writes, met another
          // writer's locks the other way round: the batch as a whole goes again.
          if (!o.committed && (o.retry || o.failed !== undefined) && retryable(o.error)) {
            throw o.error;
          }
          return o;
        });
      } catch (error) {
        for (const { i } of pending) results[i] = { status: 'rejected', reason: error };
        break;
      }
      if (outcome.committed) {
        // A message not inserted repeats a committed clientMessageId, maybe
        // one of this batch: now committed, it is visible to any connection.
        await Promise.all(
          pending.map(async ({ w, i }, k) => {
            const row = outcome.rows[k];
            try {
              const value = row ? added(w.message, row) : await this.original(w.message);
              results[i] = { status: 'fulfilled', value };
            } catch (reason) {
              results[i] = { status: 'rejected', reason };
            }
          }),
        );
        break;
      }
      const { failed, error } = outcome;
      if (whole && failed !== undefined) {
        // The one statement cannot say which write failed: statement by
        // statement, the next attempt can.
        whole = false;
        continue;
      }
      if (failed === undefined) {
        // BEGIN or COMMIT failed (e.g. the connection was lost): nothing was committed.
        for (const { i } of pending) results[i] = { status: 'rejected', reason: error };
        break;
      }
      // One write failed and took the transaction with it: refuse it alone, retry the rest.
      const bad = pending[failed] as { i: number };
      results[bad.i] = { status: 'rejected', reason: error };
      pending = pending.filter((_, k) => k !== failed);
    }
    return results as PromiseSettledResult<AddedRequestMessage>[];
  }

  /**
   * BEGIN, the counters' and requests' locks, `BATCH_SQL` and COMMIT,
   * pipelined on one connection: one round trip, one WAL flush and one
   * statement for the batch however many messages it holds. A failure of
   * `BATCH_SQL` names the first write (`failed: 0`): the caller then finds
   * the culprit with `pipelineBatch`.
   */
  private statementBatch(writes: readonly RequestMessageWrite[]): Promise<BatchOutcome> {
    return this.pipelined(
      (client) => {
        const requestIds = [...new Set(writes.map((w) => w.message.requestId))];
        const locks = [
          lockUnread(client, requestIds, writes),
          client.query({
            name: 'charla_lock_requests',
            text: LOCK_REQUESTS_SQL,
            values: [requestIds],
          }),
        ];
        const batch = client.query<BatchRow>({
          name: 'charla_add_messages',
          text: BATCH_SQL,
          values: batchParams(writes),
        });
        return { locks, statements: [batch] };
      },
      ([batch]) => batchRows(writes, batch?.rows ?? []),
    );
  }

  /**
   * BEGIN, one statement per write and COMMIT, pipelined on one connection:
   * one round trip and one WAL flush for the batch. A statement that fails
   * aborts the transaction, which COMMIT then rolls back.
   */
  private pipelineBatch(writes: readonly RequestMessageWrite[]): Promise<BatchOutcome> {
    return this.pipelined(
      (client) => {
        // Sent in the order made: the lock goes before the writes.
        const locks = [
          lockUnread(client, [...new Set(writes.map((w) => w.message.requestId))], writes),
        ];
        const statements = writes.map((w) => {
          const outbox = w.outbox ?? [];
          const shape = outboxShape(outbox);
          return client.query<AddedRow>({
            name: ADD_MESSAGE_STATEMENT[shape],
            text: addMessageSql(shape),
            values: addMessageParams(w.message, outbox, shape),
          });
        });
        return { locks, statements };
      },
      (results) => results.map((r) => r.rows[0]),
    );
  }

  /**
   * BEGIN, the locks, the statements and COMMIT sent at once on one writer
   * connection, and their outcome: a lock that failed (a deadlock with a
   * single-statement writer) is worth another try of the whole batch; BEGIN
   * or COMMIT failing is the connection's problem, not a message's; a
   * statement that fails aborts the transaction (those after it fail too,
   * and COMMIT answers ROLLBACK), so the first failure is the culprit.
   */
  private async pipelined<R extends pg.QueryResultRow>(
    queue: (client: pg.PoolClient) => {
      locks: Array<Promise<unknown>>;
      statements: Array<Promise<pg.QueryResult<R>>>;
    },
    rowsOf: (results: Array<pg.QueryResult<R>>) => Array<AddedRow | undefined>,
  ): Promise<BatchOutcome> {
    const client = await this.writer.connect();
    let broken: Error | undefined;
    try {
      const begin = client.query('BEGIN');
      const { locks, statements } = queue(client);
      const commit = client.query('COMMIT');
      // Settled together: a statement refused before COMMIT answers would
      // otherwise be a rejection nobody handles yet.
      const [b, c, ...rest] = await Promise.allSettled([begin, commit, ...locks, ...statements]);
      const l = rest.slice(0, locks.length);
      const s = rest.slice(locks.length) as Array<PromiseSettledResult<pg.QueryResult<R>>>;
      const lockFailed = l.find((x) => x.status === 'rejected');
      if (b.status === 'fulfilled' && lockFailed) {
        return { committed: false, failed: undefined, error: lockFailed.reason, retry: true };
      }
      if (b.status === 'rejected' || c.status === 'rejected') {
        const error = b.status === 'rejected' ? b.reason : (c as PromiseRejectedResult).reason;
        broken = error instanceof Error ? error : new Error(String(error));
        return { committed: false, failed: undefined, error };
      }
      const failed = s.findIndex((r) => r.status === 'rejected');
      if (failed >= 0) {
        return { committed: false, failed, error: (s[failed] as PromiseRejectedResult).reason };
      }
      if (c.value.command !== 'COMMIT') {
        broken = new Error(`COMMIT answered ${c.value.command}`);
        return { committed: false, failed: undefined, error: broken };
      }
      return {
        committed: true,
        rows: rowsOf(s.map((r) => (r as PromiseFulfilledResult<pg.QueryResult<R>>).value)),
      };
    } finally {
      client.release(broken);
    }
  }

  /** The stored message a repeated clientMessageId stands for. */
  private async original(m: NewRequestMessage): Promise<AddedRequestMessage> {
    // The conflicting row is committed (the insert waited for it), so this sees it.
    const rows = await this.query<RequestMessageRow>(
      `SELECT ${REQUEST_COLUMNS} FROM request_messages
       WHERE request_id = $1 AND sender_id = $2 AND client_message_id = $3`,
      [m.requestId, m.sender.id, m.clientMessageId],
    );
    if (rows.length === 0) throw new Error('request message vanished after a conflicting insert');
    const [original] = await this.withReceipts(rows);
    return { message: original as RequestMessage, duplicate: true };
  }

  requestHistory(requestId: string, query: NewestPage): Promise<Page<RequestMessage>>;
  requestHistory(requestId: string, query: PageQuery): Promise<Page<RequestMessage> | undefined>;
  async requestHistory(
    requestId: string,
    query: PageQuery,
  ): Promise<Page<RequestMessage> | undefined> {
    const rows = await this.query<RequestMessageRow>(
      pageQuery('request_messages', REQUEST_COLUMNS, 'request_id'),
      [requestId, query.before ?? null, query.limit + 1],
    );
    const anchor = cursorQuery('request_messages', 'request_id');
    if (!(await this.cursorFound(rows, query.before, anchor, [requestId]))) return undefined;
    const hasMore = rows.length > query.limit;
    return { messages: await this.withReceipts(rows.slice(0, query.limit).reverse()), hasMore };
  }

  async getRequestMessage(
    requestId: string,
    messageId: string,
  ): Promise<RequestMessage | undefined> {
    const rows = await this.query<RequestMessageRow>(
      `SELECT ${REQUEST_COLUMNS} FROM request_messages WHERE id = $1 AND request_id = $2`,
      [messageId, requestId],
    );
    return (await this.withReceipts(rows))[0];
  }

  async changeRequestMessage(
    requestId: string,
    messageId: string,
    senderId: string,
    change: MessageChange,
  ): Promise<{ message: RequestMessage; activity?: RequestActivity } | undefined> {
    const mine = 'id = $1 AND request_id = $2 AND sender_id = $3 AND deleted_at IS NULL';
    if ('message' in change) {
      const rows = await this.query<RequestMessageRow>(
        `UPDATE request_messages SET message = $4, edited_at = $5 WHERE ${mine}
         RETURNING ${REQUEST_COLUMNS}`,
        [messageId, requestId, senderId, change.message, change.editedAt],
      );
      const [message] = await this.withReceipts(rows);
      return message && { message };
    }
    // Two statements in one transaction. The first locks the message: a read
    // receipt under way (which holds it FOR SHARE) finishes first, and later
    // ones wait and then see it deleted. The second, with a snapshot taken
    // after that, sees every receipt that counted the message, and uncounts it
    // for exactly those readers. A message's readers never include its sender,
    // so no counter row is updated twice.
    // Its counter updates can meet a receipt's or a batch's in the other
    // order: PostgreSQL then fails one side, rolled back whole, tried again.
    const rows = await this.retried(() =>
      this.transaction(async (client) => {
        await lockRequest(client, requestId);
        const deleted = await client.query<RequestMessageRow>(
          `UPDATE request_messages SET message = '', attachments = '[]', deleted_at = $4
         WHERE ${mine}
         RETURNING ${REQUEST_COLUMNS}`,
          [messageId, requestId, senderId, change.deletedAt],
        );
        const [row] = deleted.rows;
        if (!row) return [];
        const counted = await client.query<Partial<Counted> & { last: string | null }>(
          `WITH req AS (
           UPDATE requests r SET message_count = r.message_count - 1 WHERE r.id = $2
           RETURNING r.owner_id, r.message_count, r.last_message_id
         ), snt AS (
           UPDATE request_readers rr SET sent = rr.sent - 1
           WHERE rr.request_id = $2 AND rr.user_id = $3
           RETURNING rr.user_id, rr.sent, rr.read
         ), rd AS (
           UPDATE request_readers rr SET read = rr.read - 1
           WHERE rr.request_id = $2 AND rr.user_id IN
             (SELECT user_id FROM receipts WHERE message_id = $1 AND kind = 'read')
           RETURNING rr.user_id, rr.sent, rr.read
         )
         SELECT req.owner_id, req.message_count, req.last_message_id AS last,
           (SELECT coalesce(json_agg(${READER_JSON}), '[]') FROM (
              SELECT user_id, sent, read FROM snt
              UNION ALL SELECT user_id, sent, read FROM rd
              UNION ALL SELECT user_id, sent, read FROM request_readers
                WHERE request_id = $2
                  AND user_id NOT IN (SELECT user_id FROM snt UNION ALL SELECT user_id FROM rd)
            ) x) AS readers
         FROM (SELECT 1) one LEFT JOIN req ON true`,
          [messageId, requestId, senderId],
        );
        return [{ ...row, ...counted.rows[0] }];
      }),
    );
    const [row] = rows;
    if (!row) return undefined;
    const [message] = (await this.withReceipts([row])) as [RequestMessage];
    if (row.owner_id == null || row.message_count == null) return { message };
    const lastMessage =
      row.last === messageId || row.last == null
        ? message
        : ((await this.getRequestMessage(requestId, row.last)) ?? null);
    return { message, activity: activityOf(requestId, row as Counted, lastMessage) };
  }

  listRequests(query: InboxQuery & NewestPage): Promise<InboxPage>;
  listRequests(query: InboxQuery): Promise<InboxPage | undefined>;
  async listRequests(query: InboxQuery): Promise<InboxPage | undefined> {
    const owner = query.ownerId !== undefined;
    const before = query.before !== undefined;
    const params: unknown[] = [query.userId];
    if (owner) params.push(query.ownerId);
    params.push(query.limit + 1);
    if (before) params.push(query.before);
    const rows = await this.query<InboxRow>(inboxQuery(owner, before), params);
    const anchor = `SELECT 1 FROM requests WHERE ${inInbox(owner, '$1', '$2')}`;
    if (!(await this.cursorFound(rows, query.before, anchor, owner ? [query.ownerId] : []))) {
      return undefined;
    }
    const hasMore = rows.length > query.limit;
    return { requests: await this.summaries(rows.slice(0, query.limit)), hasMore };
  }

  async requestSummary(requestId: string, userId: string): Promise<RequestSummary | undefined> {
    const rows = await this.query<InboxRow>(`${INBOX_SELECT} WHERE r.id = $2`, [userId, requestId]);
    return (await this.summaries(rows))[0];
  }

  async unreadTotals(
    userId: string,
    ownerId: string | undefined,
    limit: number,
  ): Promise<UnreadTotals> {
    const list = (rows: Array<{ id: string | null; unread: number | null }>) =>
      rows.flatMap((r) => (r.id === null ? [] : [{ requestId: r.id, unread: Number(r.unread) }]));
    if (ownerId === undefined) {
      const rows = await this.query<{ total: string; id: string | null; unread: number | null }>(
        labUnreadQuery,
        [userId, limit],
      );
      return { total: Math.max(0, Number(rows[0]?.total ?? 0)), requests: list(rows) };
    }
    // Running totals and the partial index serve a teacher asking about
    // their own requests; any other pair is summed over the owner's requests.
    const own = ownerId === userId;
    const [totals] = await this.query<{ total: string }>(
      own ? ownUnreadTotalQuery : unreadTotalQuery(true),
      own ? [userId] : [userId, ownerId],
    );
    const rows = await this.query<{ id: string; unread: number }>(
      own ? ownUnreadListQuery : unreadListQuery(true),
      own ? [userId, limit] : [userId, limit, ownerId],
    );
    return { total: Math.max(0, Number(totals?.total ?? 0)), requests: list(rows) };
  }

  async addReceipts(
    requestId: string,
    kind: ReceiptKind,
    userId: string,
    messageIds: readonly string[],
    at: string,
    outbox?: (fresh: string[]) => OutboxEntry,
  ): Promise<string[]> {
    if (messageIds.length === 0) return [];
    // One statement: the receipts of `kind` and, for a read, the implied
    // deliveries are stored together or not at all.
    const text = `WITH eligible AS (
         SELECT id, seq FROM request_messages
         WHERE request_id = $1 AND sender_id <> $2 AND id = ANY($3::text[])
           AND deleted_at IS NULL
         -- A deletion under way is waited for and then seen: a read never
         -- counts a message its deletion has already taken out of the counters.
         FOR SHARE
       ), fresh AS (
         INSERT INTO receipts (message_id, kind, user_id, at)
         SELECT id, $4, $2, $5 FROM eligible
         ON CONFLICT DO NOTHING RETURNING message_id
       ), implied AS (
         INSERT INTO receipts (message_id, kind, user_id, at)
         SELECT id, 'delivered', $2, $5 FROM eligible WHERE $4 = 'read'
         ON CONFLICT DO NOTHING
       ), counted AS (
         INSERT INTO request_readers (request_id, user_id, sent, read)
         SELECT $1, $2, 0, count(*) FROM fresh WHERE $4 = 'read' HAVING count(*) > 0
         ON CONFLICT (request_id, user_id)
         DO UPDATE SET read = request_readers.read + excluded.read
       )
       SELECT e.id FROM eligible e JOIN fresh f ON f.message_id = e.id ORDER BY e.seq`;
    const values = [requestId, userId, messageIds, kind, at];
    // A receipt can meet a group commit's counter locks in the other order
    // (the same user's message and read at the same moment): PostgreSQL then
    // fails one side, which rolled back whole and is tried again.
    return this.retried(() => this.storeReceipts(text, values, outbox));
  }

  /**
   * Runs `work` (one whole transaction) again while it fails with a deadlock
   * or serialization failure, up to 8 times, after a short random pause so
   * that the two sides do not meet again at once.
   */
  private async retried<T>(work: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await work();
      } catch (err) {
        if (!retryable(err) || attempt >= 8) throw err;
        await new Promise((resolve) => setTimeout(resolve, Math.random() * 10 * attempt));
      }
    }
  }

  private async storeReceipts(
    text: string,
    values: unknown[],
    outbox: ((fresh: string[]) => OutboxEntry) | undefined,
  ): Promise<string[]> {
    // The request's row is locked first, as a message's insert and deletion
    // do: the owner's receipts update it too (`owner_seen`), after the
    // readers' counters, and in that order would deadlock with them. The
    // event's data names the fresh ids, known only after the insert.
    return this.transaction(async (client) => {
      await lockRequest(client, values[0] as string);
      const fresh = (await client.query<{ id: string }>(text, values)).rows.map((r) => r.id);
      if (outbox && fresh.length > 0) {
        await client.query(insertOutbox(1), outboxParams([outbox(fresh)]));
      }
      return fresh;
    });
  }

  async enqueueWebhooks(entries: readonly OutboxEntry[]): Promise<void> {
    if (entries.length === 0) return;
    await this.query(insertOutbox(1), outboxParams(entries));
  }

  async claimWebhooks(
    limit: number,
    now: string,
    leaseUntil: string,
    completed: readonly string[] = [],
  ): Promise<OutboxEvent[]> {
    // SKIP LOCKED: nodes claiming at the same moment take different rows
    // instead of waiting for each other; the lease keeps a row theirs after
    // the commit, until it is sent or the lease runs out (a node that died).
    // The delivered rows go in the same statement; `due` leaves them out, so
    // that no row is both deleted and leased by it.
    const rows = await this.query<OutboxRow & { unless_read: string | null; fresh: boolean }>(
      `WITH done AS (
         DELETE FROM webhook_outbox WHERE id = ANY($4::text[])
       ), due AS (
         SELECT o.id, (o.unless_read IS NOT NULL AND o.attempts = 0 AND (EXISTS (
                  SELECT 1 FROM receipts r WHERE r.message_id = o.unless_read AND r.kind = 'read'
                ) OR EXISTS (
                  SELECT 1 FROM request_messages m
                  WHERE m.id = o.unless_read AND m.deleted_at IS NOT NULL
                ))) AS seen,
           o.unless_read IS NOT NULL AND o.attempts = 0 AND o.lease_until IS NULL AS fresh
         FROM webhook_outbox o
         WHERE o.state = 'pending' AND o.next_attempt_at <= $1
           AND (o.lease_until IS NULL OR o.lease_until <= $1)
           AND o.id <> ALL($4::text[])
         ORDER BY o.next_attempt_at LIMIT $2
         FOR UPDATE SKIP LOCKED
       ), dropped AS (
         DELETE FROM webhook_outbox o USING due WHERE o.id = due.id AND due.seen
       )
       UPDATE webhook_outbox o SET lease_until = $3 FROM due
       WHERE o.id = due.id AND NOT due.seen
       RETURNING o.id, o.type, o.payload, o.created_at, o.attempts, o.last_error,
         o.last_attempt_at, o.unless_read, due.fresh`,
      [now, limit, leaseUntil, completed],
    );
    await this.refreshUnread(rows);
    return rows.map(outboxEvent);
  }

  /**
   * Unread reminders claimed for the first time carry their message as it is
   * now (edited or not): the payload is rewritten before any attempt, so that
   * every attempt sends the same bytes. The lease keeps the rows this node's.
   */
  private async refreshUnread(
    rows: Array<OutboxRow & { unless_read: string | null; fresh: boolean }>,
  ): Promise<void> {
    const fresh = rows.filter((r) => r.fresh && r.unless_read !== null);
    if (fresh.length === 0) return;
    const messages = await this.withReceipts(
      await this.query<RequestMessageRow>(MESSAGES_BY_ID, [fresh.map((r) => r.unless_read)]),
    );
    const byId = new Map(messages.map((m) => [m._id, m]));
    const changed = fresh.filter((r) => byId.has(r.unless_read as string));
    for (const r of changed) r.payload = JSON.stringify(byId.get(r.unless_read as string));
    await this.query(
      `UPDATE webhook_outbox o SET payload = x.payload
       FROM unnest($1::text[], $2::text[]) AS x(id, payload) WHERE o.id = x.id`,
      [changed.map((r) => r.id), changed.map((r) => r.payload)],
    );
  }

  async completeWebhooks(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.query('DELETE FROM webhook_outbox WHERE id = ANY($1::text[])', [ids]);
  }

  async recordWebhookFailure(
    id: string,
    failure: { error: string; at: string; nextAttemptAt: string | null },
  ): Promise<void> {
    await this.query(
      `UPDATE webhook_outbox SET attempts = attempts + 1, last_error = $2, last_attempt_at = $3,
         lease_until = NULL,
         state = CASE WHEN $4::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
         next_attempt_at = coalesce($4::timestamptz, next_attempt_at)
       WHERE id = $1`,
      [id, failure.error, failure.at, failure.nextAttemptAt],
    );
  }

  async releaseWebhook(id: string): Promise<void> {
    await this.query('UPDATE webhook_outbox SET lease_until = NULL WHERE id = $1', [id]);
  }

  async failedWebhooks(limit: number): Promise<OutboxEvent[]> {
    const rows = await this.query<OutboxRow>(
      `SELECT ${OUTBOX_COLUMNS} FROM webhook_outbox WHERE state = 'failed'
       ORDER BY last_attempt_at DESC LIMIT $1`,
      [limit],
    );
    return rows.map(outboxEvent);
  }

  async retryWebhook(id: string, now: string): Promise<boolean> {
    const rows = await this.query(
      `UPDATE webhook_outbox SET state = 'pending', next_attempt_at = $2, lease_until = NULL
       WHERE id = $1 AND state = 'failed' RETURNING id`,
      [id, now],
    );
    return rows.length > 0;
  }

  async webhookQueueDepth(now: string): Promise<number> {
    const [row] = await this.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM webhook_outbox
       WHERE state = 'pending' AND (unless_read IS NULL OR attempts > 0 OR next_attempt_at <= $1)`,
      [now],
    );
    return row?.n ?? 0;
  }

  async ping(): Promise<void> {
    await this.query('SELECT 1');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.migrated?.catch(() => {});
    await Promise.all([this.pool.end(), this.writer.end()]);
  }

  /** Runs `work` in one transaction on one client, committed when it resolves. */
  private async transaction<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    await this.ready();
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      // A client whose ROLLBACK fails is not given back to the pool for reuse.
      await client.query('ROLLBACK').catch((e: Error) => {
        broken = e;
      });
      throw err;
    } finally {
      client.release(broken);
    }
  }

  /** Every call waits for the migrations; a failed attempt is retried by the next call. */
  private async ready(): Promise<void> {
    if (this.closed) throw new Error('the PostgreSQL store is closed');
    this.migrated ??= this.migrate();
    try {
      await this.migrated;
    } catch (err) {
      this.migrated = undefined;
      throw err;
    }
  }

  /**
   * False when `before` names no row of the scope a page was read from. A
   * page with rows found it (it compares with NULL otherwise); only an empty
   * one costs a second statement, `anchor` with `before` as `$1` and then
   * `scope`. Chats, messages and log entries are never removed, so a cursor
   * the page found is found again; a request that left the inbox in between
   * is judged as it is now.
   */
  private async cursorFound(
    page: readonly unknown[],
    before: string | undefined,
    anchor: string,
    scope: unknown[],
  ): Promise<boolean> {
    if (before === undefined || page.length > 0) return true;
    return (await this.query(anchor, [before, ...scope])).length > 0;
  }

  private async query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    text: string,
    values: unknown[] = [],
  ): Promise<R[]> {
    await this.ready();
    return (await this.pool.query<R>(text, values)).rows;
  }

  private async migrate(): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      if (this.schema !== undefined) {
        await client.query(`CREATE SCHEMA IF NOT EXISTS "${this.schema}"`);
      }
      await client.query(
        `CREATE TABLE IF NOT EXISTS schema_migrations (
           version    integer PRIMARY KEY,
           applied_at timestamptz NOT NULL DEFAULT now()
         )`,
      );
      const { rows } = await client.query<{ v: number | null }>(
        'SELECT max(version) AS v FROM schema_migrations',
      );
      for (let v = rows[0]?.v ?? 0; v < MIGRATIONS.length; v++) {
        await client.query(MIGRATIONS[v] as string);
        await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [v + 1]);
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }

  private async summaries(rows: InboxRow[]): Promise<RequestSummary[]> {
    const ids = rows.map((r) => r.last_message_id).filter((id): id is string => id !== null);
    const messages =
      ids.length === 0
        ? []
        : await this.withReceipts(await this.query<RequestMessageRow>(MESSAGES_BY_ID, [ids]));
    const last = new Map(messages.map((m) => [m._id, m]));
    return rows.map((r) => ({
      requestId: r.id,
      ownerId: r.owner_id,
      lastMessage: (r.last_message_id && last.get(r.last_message_id)) || null,
      unread: Math.max(0, r.message_count - r.sent - r.read),
      updatedAt: r.activity_at.toISOString(),
    }));
  }

  private async withReceipts(rows: RequestMessageRow[]): Promise<RequestMessage[]> {
    const messages = rows.map((r): RequestMessage => {
      const m: RequestMessage = {
        _id: r.id,
        requestId: r.request_id,
        sender: { id: r.sender_id, username: r.sender_username, role: r.sender_role },
        message: r.message,
        createdAt: r.created_at.toISOString(),
        attachments: r.attachments,
        deliveredTo: [],
        readBy: [],
      };
      if (r.edited_at !== null) m.editedAt = r.edited_at.toISOString();
      if (r.deleted_at !== null) m.deletedAt = r.deleted_at.toISOString();
      return m;
    });
    if (messages.length === 0) return messages;
    const byId = new Map(messages.map((m) => [m._id, m]));
    const receipts = await this.query<ReceiptRow>(RECEIPTS_OF, [[...byId.keys()]]);
    for (const r of receipts) {
      const m = byId.get(r.message_id);
      const receipt = { userId: r.user_id, at: r.at.toISOString() };
      if (m) (r.kind === 'read' ? m.readBy : m.deliveredTo).push(receipt);
    }
    return messages;
  }
}

/** Every reader's unread count after a message was stored or deleted. */
function activityOf(
  requestId: string,
  counted: Counted,
  lastMessage: RequestMessage | null,
): RequestActivity {
  const count = counted.message_count;
  return {
    requestId,
    ownerId: counted.owner_id,
    messageCount: count,
    lastMessage,
    readers: counted.readers.map((r) => ({
      userId: r.userId,
      unread: Math.max(0, count - r.sent - r.read),
    })),
  };
}
