/**
 * The request chat's inbox at scale: `listRequests` and the unread API over
 * a store seeded with many requests and messages, asked from outside through
 * Socket.IO and HTTP, one question at a time, against charla pinned to its core.
 *
 * The data is written straight into the store's tables (after charla's own
 * migrations) with the counters the store keeps, so that seeding millions of
 * messages takes minutes, not hours of acknowledged sends: request r holds
 * messages r, r + R, r + 2R…, alternately from its owner teacher and a lab user;
 * its last message was delivered to (not read by) the other one. The per-request
 * counters are written with the rows; the running totals the triggers keep are
 * filled afterwards, as a migration fills them (see `seedSqlite`).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { io, type Socket } from 'socket.io-client';
import {
  bulkLoad as bulkLoadPostgres,
  inboxQuery,
  labUnreadQuery,
  MESSAGES_BY_ID,
  ownUnreadListQuery,
  ownUnreadTotalQuery,
  PostgresStore,
  parsePostgresUrl,
  RECEIPTS_OF,
} from '../src/store/postgres.js';
import { bulkLoad, SqliteStore } from '../src/store/sqlite.js';
import type { Store } from '../src/store/store.js';
import { latencyStats } from './report.js';
import { BENCH_API_KEY, cpuMsOf, startServer, token } from './servers.js';

export interface InboxSpec {
  requests: number;
  /** Rounded down to a multiple of `requests`. */
  messages: number;
  teachers: number;
  labUsers: number;
  /** Questions per kind. */
  queries: number;
}

const BASE = Date.UTC(2026, 0, 1);
const requestId = (r: number) => r.toString(16).padStart(24, '0');
const messageId = (i: number) => `f${i.toString(16).padStart(23, '0')}`;

/** Per request: its message count, last message and the two senders' counters. */
function shape(spec: InboxSpec) {
  const k = Math.max(1, Math.floor(spec.messages / spec.requests));
  const lastSeq = (r: number) => (k - 1) * spec.requests + r;
  const owner = (r: number) => `t${r % spec.teachers}`;
  const lab = (r: number) => `l${r % spec.labUsers}`;
  return { k, lastSeq, owner, lab, total: k * spec.requests };
}

/**
 * Seeds a migrated SQLite database. As a migration or an import would, the
 * rows are written with the counters' triggers off and the running totals
 * filled afterwards by the migrations' own fill (`bulkLoad`); `triggers`
 * writes them with the triggers on instead, row by row, for the test that
 * checks both give the same counters.
 */
export async function seedSqlite(
  path: string,
  spec: InboxSpec,
  opts: { triggers?: boolean } = {},
): Promise<void> {
  await new SqliteStore(path).close();
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = OFF');
  // Messages go to each request's range of (request_id, seq): a cache that
  // holds the index keeps the load from rewriting its pages over and over.
  db.pragma('cache_size = -2000000');
  const { k, lastSeq, owner, lab, total } = shape(spec);
  const insertRequest = db.prepare(
    `INSERT INTO requests (id, owner_id, created_at, updated_at, activity_at, message_count,
       last_message_seq, last_message_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  );
  const insertReader = db.prepare(
    'INSERT INTO request_readers (request_id, user_id, sent, read) VALUES (?, ?, ?, 0)',
  );
  const insertMessage = db.prepare(
    `INSERT INTO request_messages (seq, id, request_id, sender_id, sender_username, sender_role,
       message, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  );
  const insertReceipt = db.prepare(
    "INSERT INTO receipts (message_id, kind, user_id, at) VALUES (?, 'delivered', ?, ?)",
  );
  const created = new Date(BASE).toISOString();
  const load = () => {
    for (let r = 1; r <= spec.requests; r++) {
      const at = new Date(BASE + lastSeq(r) * 10).toISOString();
      insertRequest.run(
        requestId(r),
        owner(r),
        created,
        created,
        at,
        k,
        lastSeq(r),
        messageId(lastSeq(r)),
      );
      insertReader.run(requestId(r), owner(r), Math.ceil(k / 2));
      if (k > 1) insertReader.run(requestId(r), lab(r), Math.floor(k / 2));
      insertReceipt.run(messageId(lastSeq(r)), k % 2 === 1 ? lab(r) : owner(r), at);
    }
    for (let i = 1; i <= total; i++) {
      const r = ((i - 1) % spec.requests) + 1;
      const fromOwner = Math.floor((i - 1) / spec.requests) % 2 === 0;
      const sender = fromOwner ? owner(r) : lab(r);
      insertMessage.run(
        i,
        messageId(i),
        requestId(r),
        sender,
        sender,
        fromOwner ? 'TEACHER' : 'LAB',
        `message ${i}`,
        new Date(BASE + i * 10).toISOString(),
      );
    }
  };
  if (opts.triggers) db.transaction(load)();
  else bulkLoad(db, load);
  db.exec('ANALYZE');
  db.close();
}

/** As `seedSqlite`, on PostgreSQL: `session_replication_role = replica` turns the triggers off. */
export async function seedPostgres(
  url: string,
  schema: string,
  spec: InboxSpec,
  opts: { triggers?: boolean } = {},
): Promise<void> {
  const store = new PostgresStore({ url });
  await store.ping();
  await store.close();
  const client = new pg.Client({ connectionString: url.replace(/[?&]schema=[^&]*/, '') });
  await client.connect();
  const { k, total } = shape(spec);
  const R = spec.requests;
  const base = `timestamptz '${new Date(BASE).toISOString()}'`;
  const load = async () => {
    await client.query(
      `INSERT INTO requests (id, owner_id, created_at, updated_at, activity_at, message_count,
         last_message_seq, last_message_id)
       SELECT lpad(to_hex(r), 24, '0'), 't' || (r % $1), ${base}, ${base},
         ${base} + (($2::bigint - 1) * ${R} + r) * 10 * interval '1 millisecond', $2,
         ($2::bigint - 1) * ${R} + r, 'f' || lpad(to_hex(($2::bigint - 1) * ${R} + r), 23, '0')
       FROM generate_series(1, ${R}) r`,
      [spec.teachers, k],
    );
    await client.query(
      `INSERT INTO request_readers (request_id, user_id, sent, read)
       SELECT lpad(to_hex(r), 24, '0'), 't' || (r % $1), ceil($3::numeric / 2), 0
       FROM generate_series(1, ${R}) r
       UNION ALL
       SELECT lpad(to_hex(r), 24, '0'), 'l' || (r % $2), floor($3::numeric / 2), 0
       FROM generate_series(1, ${R}) r WHERE $3 > 1`,
      [spec.teachers, spec.labUsers, k],
    );
    await client.query(
      `INSERT INTO receipts (message_id, kind, user_id, at)
       SELECT 'f' || lpad(to_hex(($3::bigint - 1) * ${R} + r), 23, '0'), 'delivered',
         CASE WHEN $3 % 2 = 1 THEN 'l' || (r % $2) ELSE 't' || (r % $1) END,
         ${base} + (($3::bigint - 1) * ${R} + r) * 10 * interval '1 millisecond'
       FROM generate_series(1, ${R}) r`,
      [spec.teachers, spec.labUsers, k],
    );
    const chunk = 1_000_000;
    for (let from = 1; from <= total; from += chunk) {
      const to = Math.min(from + chunk - 1, total);
      await client.query(
        `INSERT INTO request_messages (seq, id, request_id, sender_id, sender_username,
           sender_role, message, created_at)
         SELECT i, 'f' || lpad(to_hex(i), 23, '0'), lpad(to_hex((i - 1) % ${R} + 1), 24, '0'),
           s, s, CASE WHEN o THEN 'TEACHER' ELSE 'LAB' END, 'message ' || i,
           ${base} + i * 10 * interval '1 millisecond'
         FROM (SELECT i, ((i - 1) / ${R}) % 2 = 0 AS o,
                 CASE WHEN ((i - 1) / ${R}) % 2 = 0 THEN 't' || (((i - 1) % ${R} + 1) % $1)
                      ELSE 'l' || (((i - 1) % ${R} + 1) % $2) END AS s
               FROM generate_series($3::bigint, $4::bigint) i) g`,
        [spec.teachers, spec.labUsers, from, to],
      );
    }
    await client.query(
      `SELECT setval(pg_get_serial_sequence('request_messages', 'seq'), ${Math.max(1, total)})`,
    );
  };
  try {
    await client.query('SET synchronous_commit = off');
    await client.query(`SET search_path = "${schema}"`);
    if (opts.triggers) {
      await client.query('BEGIN');
      await load();
      await client.query('COMMIT');
    } else {
      await bulkLoadPostgres(client, load);
    }
    // This schema's tables only: a database-wide ANALYZE waits on every other schema's locks.
    await client.query('ANALYZE requests, request_readers, request_messages, receipts');
  } finally {
    await client.end();
  }
}

/** A statement on the seeded store: `$1`, `$2`… each used once, in order. */
type Ask = (sql: string, args: unknown[]) => Promise<Array<Record<string, unknown>>>;

/**
 * Checks a seeded store on a sample against what the triggers keep and the
 * messages say: each sampled request's counters against its messages (count,
 * last message, what each sender sent, its owner's `owner_seen`), and each
 * sampled user's running totals, the lab's and their own requests', against
 * the sum of `message_count − sent − read` over every request. Throws on the
 * first difference; returns how many values it compared.
 */
export async function checkSeed(spec: InboxSpec, store: Store, ask: Ask): Promise<number> {
  let compared = 0;
  const same = (what: string, got: unknown, want: unknown) => {
    compared++;
    if (String(got) !== String(want)) throw new Error(`seed check: ${what}: ${got} ≠ ${want}`);
  };
  const R = spec.requests;
  for (const r of new Set([1, 2, Math.ceil(R / 2), R])) {
    const id = requestId(r);
    const [row] = await ask(
      'SELECT message_count, last_message_id, owner_id, owner_seen FROM requests WHERE id = $1',
      [id],
    );
    const [counted] = await ask(
      'SELECT count(*) AS n, max(seq) AS last FROM request_messages WHERE request_id = $1',
      [id],
    );
    same(`${id} message_count`, row?.message_count, counted?.n);
    const [last] = await ask('SELECT id FROM request_messages WHERE seq = $1', [counted?.last]);
    same(`${id} last_message_id`, row?.last_message_id, last?.id);
    const senders = await ask(
      `SELECT sender_id, count(*) AS n FROM request_messages WHERE request_id = $1
       GROUP BY sender_id ORDER BY sender_id`,
      [id],
    );
    const readers = await ask(
      'SELECT user_id, sent, read FROM request_readers WHERE request_id = $1 ORDER BY user_id',
      [id],
    );
    same(
      `${id} senders`,
      senders.map((x) => `${x.sender_id}:${x.n}`).join(),
      readers.map((x) => `${x.user_id}:${x.sent}`).join(),
    );
    const ownerRow = readers.find((x) => x.user_id === row?.owner_id);
    same(
      `${id} owner_seen`,
      row?.owner_seen,
      Number(ownerRow?.sent ?? 0) + Number(ownerRow?.read ?? 0),
    );
  }
  const unread = 'r.message_count - coalesce(rr.sent, 0) - coalesce(rr.read, 0)';
  const slow = `SELECT coalesce(sum(CASE WHEN ${unread} > 0 THEN ${unread} ELSE 0 END), 0) AS n
    FROM requests r LEFT JOIN request_readers rr ON rr.request_id = r.id AND rr.user_id = $1`;
  const teachers = [0, 5, spec.teachers - 1].map((t) => `t${t}`);
  const labs = ['l0', 'l7', 'lab-new'];
  for (const u of [...teachers, ...labs]) {
    const [lab] = await ask(slow, [u]);
    same(`${u} as LAB`, (await store.unreadTotals(u, undefined, 1)).total, lab?.n);
  }
  for (const t of teachers) {
    const [own] = await ask(`${slow} WHERE r.owner_id = $2`, [t, t]);
    same(`${t}'s own requests`, (await store.unreadTotals(t, t, 1)).total, own?.n);
  }
  return compared;
}

/** `checkSeed` on the seeded database, through a store and a connection of its own. */
export async function checkSeeded(
  database: 'sqlite' | 'postgres',
  spec: InboxSpec,
  sqlitePath: string,
  pgUrl: string,
): Promise<number> {
  if (database === 'sqlite') {
    const store = new SqliteStore(sqlitePath);
    const db = new Database(sqlitePath, { readonly: true });
    try {
      return await checkSeed(
        spec,
        store,
        async (sql, args) =>
          db.prepare(sql.replace(/\$\d+/g, '?')).all(...args) as Array<Record<string, unknown>>,
      );
    } finally {
      db.close();
      await store.close();
    }
  }
  const store = new PostgresStore({ url: pgUrl, max: 2 });
  const { connectionString, schema } = parsePostgresUrl(pgUrl);
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await client.query(`SET search_path = "${schema}"`);
    return await checkSeed(spec, store, async (sql, args) => (await client.query(sql, args)).rows);
  } finally {
    await client.end();
    await store.close();
  }
}

/**
 * The plans of every query `listRequests` and the unread API run, on the
 * seeded database: SQLite's `EXPLAIN QUERY PLAN` of the store's own
 * statements, PostgreSQL's `EXPLAIN (ANALYZE, BUFFERS)` of the store's own
 * query texts with real arguments. Messages may only be looked up by id (an
 * inbox page's last messages), never scanned: throws otherwise.
 */
export async function explainInbox(
  database: 'sqlite' | 'postgres',
  spec: InboxSpec,
  sqlitePath: string,
  pgUrl: string,
): Promise<string> {
  const mid = requestId(Math.ceil(spec.requests / 2));
  const out: string[] = [];
  const check = (what: string, plan: string[]) => {
    out.push(`-- ${what}`, ...plan, '');
    // Receipts are read by message id too; on a small table PostgreSQL may
    // rightly prefer a scan, so only messages are held to it here.
    const touching = plan.filter((l) => /\brequest_messages\b/.test(l));
    const byId = (l: string) =>
      /^SEARCH (request_messages|receipts) USING .*\((id|message_id)=\?\)/.test(l) ||
      /Index (Only )?Scan using (request_messages_id_key|receipts_pkey) on /.test(l);
    const scans = touching.filter((l) => !byId(l));
    if (scans.length > 0)
      throw new Error(`${what} reads messages other than by id:\n${plan.join('\n')}`);
  };
  if (database === 'sqlite') {
    const store = new SqliteStore(sqlitePath);
    try {
      const q = (store as any).q as Record<string, Database.Statement>;
      const db = (store as any).db as Database.Database;
      const plan = (name: string, args: unknown) =>
        check(
          name,
          db
            .prepare(`EXPLAIN QUERY PLAN ${q[name]?.source}`)
            .all(args as any)
            .map((r: any) => r.detail as string),
        );
      const at = { userId: 'l7', ownerId: 't5', at: '~', id: '', limit: 51 };
      plan('activityOf', mid);
      plan('labInbox', at);
      plan('teacherInbox', at);
      plan('messagesById', '[]');
      plan('receiptsOf', '[]');
      plan('labUnreadTotal', { userId: 'l7' });
      plan('labUnreadList', { userId: 'l7', limit: 100 });
      plan('ownUnreadTotal', { userId: 't5' });
      plan('ownUnreadList', { userId: 't5', limit: 100 });
    } finally {
      await store.close();
    }
    return out.join('\n');
  }
  const { connectionString, schema } = parsePostgresUrl(pgUrl);
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await client.query(`SET search_path = "${schema}"`);
    const plan = async (what: string, sql: string, args: unknown[]) => {
      const { rows } = await client.query(`EXPLAIN (ANALYZE, BUFFERS) ${sql}`, args);
      check(
        what,
        rows.map((r) => r['QUERY PLAN'] as string),
      );
    };
    const { rows } = await client.query(
      `SELECT last_message_id FROM requests ORDER BY activity_at DESC LIMIT 50`,
    );
    const ids = rows.map((r) => r.last_message_id as string);
    await plan('lab inbox, page 1', inboxQuery(false, false), ['l7', 51]);
    await plan('lab inbox, a later page', inboxQuery(false, true), ['lab-new', 51, mid]);
    await plan('teacher inbox, page 1', inboxQuery(true, false), ['t5', 't5', 51]);
    await plan("a page's last messages", MESSAGES_BY_ID, [ids]);
    await plan('their receipts', RECEIPTS_OF, [ids]);
    await plan('lab unread total and list', labUnreadQuery, ['l7', 100]);
    await plan('own unread total', ownUnreadTotalQuery, ['t5']);
    await plan('own unread list', ownUnreadListQuery, ['t5', 100]);
  } finally {
    await client.end();
  }
  return out.join('\n');
}

function connect(port: number, tok: string): Promise<Socket> {
  const socket = io(`http://127.0.0.1:${port}`, {
    auth: { token: tok },
    transports: ['websocket'],
    reconnection: false,
  });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  });
}

/** Latencies, in ms, of `n` sequential calls of `ask`. */
async function measure(n: number, ask: (i: number) => Promise<void>): Promise<number[]> {
  for (let i = 0; i < Math.min(50, n); i++) await ask(i); // warm-up
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await ask(i);
    out.push(performance.now() - t);
  }
  return out;
}

export async function inboxScenario(
  database: 'sqlite' | 'postgres',
  spec: InboxSpec,
  pgUrl: string,
): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'charla-inbox-'));
  const schema = `charla_bench_${randomBytes(4).toString('hex')}`;
  const pgSchemaUrl = new URL(pgUrl);
  pgSchemaUrl.searchParams.set('schema', schema);
  const databaseUrl =
    database === 'sqlite' ? `sqlite:${join(dir, 'inbox.db')}` : pgSchemaUrl.toString();
  try {
    return await seedAndAsk(database, spec, dir, pgSchemaUrl.toString(), databaseUrl);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    if (database === 'postgres') {
      const client = new pg.Client({ connectionString: pgUrl });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    }
  }
}

async function seedAndAsk(
  database: 'sqlite' | 'postgres',
  spec: InboxSpec,
  dir: string,
  pgSchemaUrl: string,
  databaseUrl: string,
): Promise<Record<string, number>> {
  const seeding = performance.now();
  if (database === 'sqlite') await seedSqlite(join(dir, 'inbox.db'), spec);
  else await seedPostgres(pgSchemaUrl, parsePostgresUrl(pgSchemaUrl).schema as string, spec);
  const seedSeconds = (performance.now() - seeding) / 1000;
  const { total } = shape(spec);
  process.stderr.write(
    `  inbox ${database}: seeded ${total} messages in ${seedSeconds.toFixed(0)} s\n`,
  );
  const checked = await checkSeeded(database, spec, join(dir, 'inbox.db'), pgSchemaUrl);
  process.stderr.write(`  inbox ${database}: the seed checks out on ${checked} sampled values\n`);
  const plans = await explainInbox(database, spec, join(dir, 'inbox.db'), pgSchemaUrl);
  const outDir = new URL('./out/', import.meta.url.replace('/dist/bench/', '/bench/'));
  mkdirSync(outDir, { recursive: true });
  writeFileSync(new URL(`inbox-plans-${database}.txt`, outDir), plans);

  // The server's PostgreSQL connections carry a name of their own, so that
  // their backends' CPU can be counted with the server's.
  const appName = `charla-inbox-${process.pid}`;
  const serverUrl = new URL(databaseUrl);
  if (database === 'postgres') serverUrl.searchParams.set('application_name', appName);
  const server = await startServer('charla', {
    DATABASE_URL: database === 'postgres' ? serverUrl.toString() : databaseUrl,
    HISTORY_PAGE: '50',
  });
  const admin =
    database === 'postgres'
      ? new pg.Client({ connectionString: parsePostgresUrl(pgSchemaUrl).connectionString })
      : undefined;
  await admin?.connect();
  const backends = async (): Promise<number[]> =>
    admin
      ? (
          await admin.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1', [
            appName,
          ])
        ).rows.map((r) => r.pid as number)
      : [];
  /**
   * CPU (ms, user + system) per call of `ask`, n calls one at a time: the
   * server's and, on PostgreSQL, its backends'. Unlike wall time on a shared
   * machine, it does not count the time spent waiting for a core.
   */
  const cpuPerCall = async (n: number, ask: () => Promise<void>): Promise<number> => {
    for (let i = 0; i < 20; i++) await ask();
    const before = new Map<number, number>();
    for (const pid of [server.pid, ...(await backends())]) before.set(pid, cpuMsOf(pid));
    for (let i = 0; i < n; i++) await ask();
    let used = 0;
    for (const pid of new Set([server.pid, ...(await backends())])) {
      used += cpuMsOf(pid) - (before.get(pid) ?? 0);
    }
    return used / n;
  };
  const sockets: Socket[] = [];
  try {
    const lab = await connect(server.port, await token('l7', { role: 'LAB' }));
    const newcomer = await connect(server.port, await token('lab-new', { role: 'LAB' }));
    const teacher = await connect(server.port, await token('t5', { role: 'TEACHER' }));
    sockets.push(lab, newcomer, teacher);
    const list = async (s: Socket, payload: object) => {
      const ack = await s.timeout(10_000).emitWithAck('listRequests', payload);
      if (!ack.ok || ack.requests.length === 0) throw new Error(JSON.stringify(ack).slice(0, 200));
    };
    // Request 1 is the oldest: a page before it is empty.
    const randomRequest = () => requestId(2 + Math.floor(Math.random() * (spec.requests - 1)));
    const unread = async (path: string) => {
      const res = await fetch(`http://127.0.0.1:${server.port}${path}`, {
        headers: { 'x-api-key': BENCH_API_KEY },
      });
      if (res.status !== 200) throw new Error(`${path}: ${res.status}`);
      await res.text();
    };
    const n = spec.queries;
    const labFirst = latencyStats(await measure(n, () => list(lab, { limit: 50 })));
    const labDeep = latencyStats(
      await measure(n, () => list(newcomer, { limit: 50, before: randomRequest() })),
    );
    const teacherFirst = latencyStats(await measure(n, () => list(teacher, { limit: 50 })));
    const unreadTeacher = latencyStats(
      await measure(n, () => unread('/api/users/t5/unread?role=TEACHER')),
    );
    const unreadLab = latencyStats(
      await measure(Math.min(n, 100), () => unread('/api/users/l7/unread?role=LAB')),
    );
    const cpuN = Math.min(n, 500);
    const cpu = {
      cpuLabFirstMs: await cpuPerCall(cpuN, () => list(lab, { limit: 50 })),
      cpuTeacherMs: await cpuPerCall(cpuN, () => list(teacher, { limit: 50 })),
      cpuUnreadTeacherMs: await cpuPerCall(cpuN, () => unread('/api/users/t5/unread?role=TEACHER')),
      cpuUnreadLabMs: await cpuPerCall(cpuN, () => unread('/api/users/l7/unread?role=LAB')),
    };
    process.stderr.write(`  inbox ${database}: CPU per call ${JSON.stringify(cpu)}\n`);
    for (const s of sockets) s.close();
    await server.stop();
    // The same questions to the store in this process: the queries' own cost,
    // without Socket.IO, JSON and the scheduler of a shared machine.
    const store =
      database === 'sqlite'
        ? new SqliteStore(join(dir, 'inbox.db'))
        : new PostgresStore({ url: databaseUrl, max: 2 });
    let direct: ReturnType<typeof latencyStats>;
    let directDeep: ReturnType<typeof latencyStats>;
    try {
      direct = latencyStats(
        await measure(n, async () => {
          await store.listRequests({ userId: 'l7', limit: 50 });
        }),
      );
      directDeep = latencyStats(
        await measure(n, async () => {
          await store.listRequests({ userId: 'lab-new', before: randomRequest(), limit: 50 });
        }),
      );
    } finally {
      await store.close();
    }
    return {
      requests: spec.requests,
      messages: total,
      seedSeconds,
      seedChecked: checked,
      storeFirstP50: direct.p50,
      storeFirstP99: direct.p99,
      storeDeepP99: directDeep.p99,
      labFirstP50: labFirst.p50,
      labFirstP99: labFirst.p99,
      labDeepP99: labDeep.p99,
      teacherP50: teacherFirst.p50,
      teacherP99: teacherFirst.p99,
      unreadTeacherP50: unreadTeacher.p50,
      unreadTeacherP99: unreadTeacher.p99,
      unreadLabP50: unreadLab.p50,
      unreadLabP99: unreadLab.p99,
      ...cpu,
    };
  } finally {
    for (const s of sockets) s.close();
    await server.stop();
    await admin?.end();
  }
}
