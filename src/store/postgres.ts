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
  NewRequestMessage,
  Page,
  PageQuery,
  ReceiptKind,
  RequestMessage,
  StreamMessage,
} from '../core/messages.js';
import type { Logger } from '../observability/log.js';
import type { PutRequestResult, RequestRecord, Store, StreamRecord } from './store.js';

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
];

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
}
interface RequestMessageRow {
  id: string;
  request_id: string;
  sender_id: string;
  sender_username: string;
  sender_role: string | null;
  message: string;
  created_at: Date;
}
interface ReceiptRow {
  message_id: string;
  kind: ReceiptKind;
  user_id: string;
  at: Date;
}

const STREAM_COLUMNS = 'id, stream_key, user_id, username, message, sent_at';
const REQUEST_COLUMNS =
  'id, request_id, sender_id, sender_username, sender_role, message, created_at';

/**
 * The newest `limit + 1` rows of one scope, before the row `before` names.
 * A `before` that names no row of this scope compares with NULL: no rows.
 */
const pageQuery = (table: string, columns: string, scope: string) =>
  `SELECT ${columns} FROM ${table}
   WHERE ${scope} = $1
     AND ($2::text IS NULL OR seq < (SELECT seq FROM ${table} WHERE id = $2 AND ${scope} = $1))
   ORDER BY seq DESC LIMIT $3`;

export class PostgresStore implements Store {
  private readonly pool: pg.Pool;
  private readonly schema: string | undefined;
  private migrated: Promise<void> | undefined;
  private closed = false;

  constructor(options: PostgresOptions) {
    const { connectionString, schema } = parsePostgresUrl(options.url);
    this.schema = schema;
    this.pool = new pg.Pool({
      connectionString,
      max: options.max ?? 10,
      // Fail a call when the server is unreachable instead of queueing it forever.
      connectionTimeoutMillis: 5_000,
      application_name: 'charla',
      ...(schema === undefined ? {} : { options: `-c search_path=${schema}` }),
    });
    // An idle client loses its server (restart, failover): the pool drops it and
    // the next call connects again. Without a listener this would crash the node.
    this.pool.on('error', (err) => options.log?.warn({ err }, 'postgres connection lost'));
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

  async endStream(key: string): Promise<boolean> {
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
      `INSERT INTO stream_messages (id, stream_key, user_id, username, message, sent_at)
       SELECT id, stream_key, user_id, username, message, sent_at
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
         WITH ORDINALITY AS m(id, stream_key, user_id, username, message, sent_at, n)
       ORDER BY n`,
      [
        messages.map((m) => m.id),
        messages.map((m) => m.streamKey),
        messages.map((m) => m.userId),
        messages.map((m) => m.username),
        messages.map((m) => m.message),
        messages.map((m) => m.sentAt),
      ],
    );
  }

  async streamHistory(key: string, query: PageQuery): Promise<Page<StreamMessage>> {
    const rows = await this.query<StreamMessageRow>(
      pageQuery('stream_messages', STREAM_COLUMNS, 'stream_key'),
      [key, query.before ?? null, query.limit + 1],
    );
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
        sentAt: r.sent_at.toISOString(),
      }));
    return { messages, hasMore };
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
        `INSERT INTO requests (id, owner_id, created_at, updated_at) VALUES ($1, $2, $3, $3)
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
  ): Promise<{ message: RequestMessage; duplicate: boolean }> {
    // Only a repeated clientMessageId is a duplicate: a taken id must fail.
    const inserted = await this.query(
      `INSERT INTO request_messages
         (id, request_id, sender_id, sender_username, sender_role, message, created_at,
          client_message_id)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
       ON CONFLICT (request_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL
       DO NOTHING
       RETURNING seq`,
      [
        m._id,
        m.requestId,
        m.sender.id,
        m.sender.username,
        m.sender.role,
        m.message,
        m.createdAt,
        m.clientMessageId,
      ],
    );
    if (inserted.length > 0) {
      const { clientMessageId: _, ...message } = m;
      return { message: { ...message, deliveredTo: [], readBy: [] }, duplicate: false };
    }
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

  async requestHistory(requestId: string, query: PageQuery): Promise<Page<RequestMessage>> {
    const rows = await this.query<RequestMessageRow>(
      pageQuery('request_messages', REQUEST_COLUMNS, 'request_id'),
      [requestId, query.before ?? null, query.limit + 1],
    );
    const hasMore = rows.length > query.limit;
    return { messages: await this.withReceipts(rows.slice(0, query.limit).reverse()), hasMore };
  }

  async addReceipts(
    requestId: string,
    kind: ReceiptKind,
    userId: string,
    messageIds: readonly string[],
    at: string,
  ): Promise<string[]> {
    if (messageIds.length === 0) return [];
    // One statement: the receipts of `kind` and, for a read, the implied
    // deliveries are stored together or not at all.
    const rows = await this.query<{ id: string }>(
      `WITH eligible AS (
         SELECT id, seq FROM request_messages
         WHERE request_id = $1 AND sender_id <> $2 AND id = ANY($3::text[])
       ), fresh AS (
         INSERT INTO receipts (message_id, kind, user_id, at)
         SELECT id, $4, $2, $5 FROM eligible
         ON CONFLICT DO NOTHING RETURNING message_id
       ), implied AS (
         INSERT INTO receipts (message_id, kind, user_id, at)
         SELECT id, 'delivered', $2, $5 FROM eligible WHERE $4 = 'read'
         ON CONFLICT DO NOTHING
       )
       SELECT e.id FROM eligible e JOIN fresh f ON f.message_id = e.id ORDER BY e.seq`,
      [requestId, userId, messageIds, kind, at],
    );
    return rows.map((r) => r.id);
  }

  async ping(): Promise<void> {
    await this.query('SELECT 1');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.migrated?.catch(() => {});
    await this.pool.end();
  }

  /** Every call waits for the migrations; a failed attempt is retried by the next call. */
  private async query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    text: string,
    values: unknown[] = [],
  ): Promise<R[]> {
    if (this.closed) throw new Error('the PostgreSQL store is closed');
    this.migrated ??= this.migrate();
    try {
      await this.migrated;
    } catch (err) {
      this.migrated = undefined;
      throw err;
    }
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

  private async withReceipts(rows: RequestMessageRow[]): Promise<RequestMessage[]> {
    const messages = rows.map(
      (r): RequestMessage => ({
        _id: r.id,
        requestId: r.request_id,
        sender: { id: r.sender_id, username: r.sender_username, role: r.sender_role },
        message: r.message,
        createdAt: r.created_at.toISOString(),
        deliveredTo: [],
        readBy: [],
      }),
    );
    if (messages.length === 0) return messages;
    const byId = new Map(messages.map((m) => [m._id, m]));
    const receipts = await this.query<ReceiptRow>(
      `SELECT message_id, kind, user_id, at FROM receipts
       WHERE message_id = ANY($1::text[]) ORDER BY at, user_id`,
      [[...byId.keys()]],
    );
    for (const r of receipts) {
      const m = byId.get(r.message_id);
      const receipt = { userId: r.user_id, at: r.at.toISOString() };
      if (m) (r.kind === 'read' ? m.readBy : m.deliveredTo).push(receipt);
    }
    return messages;
  }
}
