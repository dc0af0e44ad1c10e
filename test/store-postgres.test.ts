/** The Store conformance suite against the machine's PostgreSQL, one schema per test. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import { newId } from '../src/core/ids.js';
import { outboxEntry } from '../src/core/webhook-events.js';
import {
  bulkLoad,
  INBOX_SELECT,
  inboxQuery,
  labUnreadQuery,
  ownUnreadListQuery,
  ownUnreadTotalQuery,
  PostgresStore,
  parsePostgresUrl,
  unreadListQuery,
  unreadTotalQuery,
} from '../src/store/postgres.js';
import { PG_URL, requireServices, tempSchema } from './services.js';
import { seedUnreadHistory, storeSuite, unreadListsOf, unreadTotalsOf } from './store-suite.js';
import { TcpProxy } from './tcp-proxy.js';

if (await requireServices('postgres')) {
  storeSuite('postgres', async () => {
    const schema = await tempSchema();
    return {
      open: async () => new PostgresStore({ url: schema.url, max: 4 }),
      cleanup: () => schema.drop(),
    };
  });

  describe('PostgreSQL specifics', () => {
    it('migrates once when several nodes start at the same moment', async () => {
      const schema = await tempSchema();
      const stores = Array.from(
        { length: 6 },
        () => new PostgresStore({ url: schema.url, max: 2 }),
      );
      try {
        await Promise.all(stores.map((s) => s.ping()));
        const client = new pg.Client({ connectionString: PG_URL });
        await client.connect();
        const name = parsePostgresUrl(schema.url).schema;
        const { rows } = await client.query(
          `SELECT count(*)::int AS n, max(version)::int AS v FROM "${name}".schema_migrations`,
        );
        await client.end();
        assert.equal(rows[0].n, rows[0].v, 'each migration applied once');
      } finally {
        await Promise.all(stores.map((s) => s.close()));
        await schema.drop();
      }
    });

    it('keeps one order and one copy under concurrent writers', async () => {
      const schema = await tempSchema();
      const a = new PostgresStore({ url: schema.url });
      const b = new PostgresStore({ url: schema.url });
      try {
        const r = '6751b6df1ad14eaa13a03313';
        const send = (s: PostgresStore, i: number) =>
          s.addRequestMessage({
            _id: `${(i + 0x100000).toString(16)}${'0'.repeat(18)}`,
            requestId: r,
            sender: { id: '1', username: 'ana', role: 'TEACHER' },
            message: `m${i % 10}`,
            createdAt: new Date().toISOString(),
            clientMessageId: `c-${i % 10}`,
          });
        const results = await Promise.all(
          Array.from({ length: 40 }, (_, i) => send(i % 2 ? a : b, i)),
        );
        assert.equal(results.filter((x) => !x.duplicate).length, 10);
        const history = await a.requestHistory(r, { limit: 100 });
        assert.equal(history.messages.length, 10, 'one copy per clientMessageId');
        const receipts = await Promise.all(
          Array.from({ length: 8 }, (_, i) =>
            (i % 2 ? a : b).addReceipts(
              r,
              'read',
              '2',
              history.messages.map((m) => m._id),
              new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(),
            ),
          ),
        );
        assert.equal(receipts.flat().length, 10, 'each receipt is new exactly once');
      } finally {
        await a.close();
        await b.close();
        await schema.drop();
      }
    });

    it('keeps unread counters equal to a recount under concurrent reads, sends and deletions', async () => {
      const schema = await tempSchema();
      const a = new PostgresStore({ url: schema.url, max: 4 });
      const b = new PostgresStore({ url: schema.url, max: 4 });
      try {
        const r = newId();
        await a.putRequest(r, '1');
        const message = (sender: string, i: number) => ({
          _id: newId(),
          requestId: r,
          sender: { id: sender, username: `u${sender}`, role: sender === '1' ? 'TEACHER' : 'LAB' },
          message: `m${i}`,
          createdAt: new Date().toISOString(),
          clientMessageId: null,
        });
        const first = await Promise.all(
          Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).addRequestMessage(message('2', i))),
        );
        const ids = first.map((x) => x.message._id);
        const at = new Date().toISOString();
        await Promise.all([
          ...Array.from({ length: 4 }, (_, k) =>
            a.addReceipts(r, 'read', '1', ids.slice(k * 10, k * 10 + 10), at),
          ),
          ...ids
            .filter((_, i) => i % 2 === 0)
            .map((id, i) => (i % 2 ? a : b).changeRequestMessage(r, id, '2', { deletedAt: at })),
          ...Array.from({ length: 10 }, (_, i) =>
            (i % 2 ? a : b).addRequestMessage(message('1', i)),
          ),
          ...Array.from({ length: 10 }, (_, i) =>
            (i % 2 ? b : a).addRequestMessage(message('2', i)),
          ),
        ]);
        const history = (await a.requestHistory(r, { limit: 500 })).messages;
        const live = history.filter((m) => m.deletedAt === undefined);
        const unreadBy = (user: string) =>
          live.filter((m) => m.sender.id !== user && !m.readBy.some((x) => x.userId === user))
            .length;
        for (const user of ['1', '2', '3']) {
          assert.equal((await b.requestSummary(r, user))?.unread, unreadBy(user), `user ${user}`);
        }
        assert.equal((await a.unreadTotals('1', '1', 10)).total, unreadBy('1'));
        // The running totals, moved by both stores' connections, add up too.
        for (const user of ['1', '2', '3']) {
          assert.equal((await b.unreadTotals(user, undefined, 10)).total, unreadBy(user));
        }
      } finally {
        await a.close();
        await b.close();
        await schema.drop();
      }
    });

    it('fills the running unread totals of an existing database when it migrates', async () => {
      const schema = await tempSchema();
      const client = new pg.Client({ connectionString: PG_URL });
      let store = new PostgresStore({ url: schema.url, max: 2 });
      try {
        await seedUnreadHistory(store);
        const totals = unreadTotalsOf;
        const before = await totals(store);
        assert.deepEqual(before, [2, 2, 0, 1, 0, 2, 0, 3]);
        const lists = await unreadListsOf(store);
        await store.close();
        // The database as the release before the running totals and owner_seen left it.
        await client.connect();
        await client.query(`SET search_path = "${parsePostgresUrl(schema.url).schema}"`);
        await client.query(
          `DROP TABLE unread_messages, unread_owners, unread_users;
           DROP FUNCTION unread_request_changed, unread_reader_changed CASCADE;
           DROP FUNCTION owner_seen_request_changed, owner_seen_reader_changed CASCADE;
           ALTER TABLE requests DROP COLUMN owner_seen;
           DELETE FROM schema_migrations WHERE version >= 5`,
        );
        store = new PostgresStore({ url: schema.url, max: 2 });
        assert.deepEqual(await totals(store), before);
        assert.deepEqual(await unreadListsOf(store), lists);
      } finally {
        await client.end();
        await store.close();
        await schema.drop();
      }
    });

    it('plans the inbox and unread counts on indexes, never scanning messages', async () => {
      const schema = await tempSchema();
      const store = new PostgresStore({ url: schema.url, max: 2 });
      const client = new pg.Client({ connectionString: PG_URL });
      try {
        await store.ping();
        await client.connect();
        const name = parsePostgresUrl(schema.url).schema as string;
        await client.query(`SET search_path = "${name}"`);
        // Enough rows that a scan would cost more than an index, as in production.
        await client.query(
          `INSERT INTO requests (id, owner_id, created_at, updated_at, activity_at,
             message_count, last_message_seq, last_message_id)
           SELECT lpad(to_hex(g), 24, '0'), (g % 500)::text, now(), now(),
             now() - g * interval '1 second', 3, g, 'e' || lpad(to_hex(g), 23, '0')
           FROM generate_series(1, 30000) g;
           INSERT INTO request_messages
             (id, request_id, sender_id, sender_username, sender_role, message, created_at)
           SELECT 'e' || lpad(to_hex(g), 23, '0'), lpad(to_hex(g % 30000 + 1), 24, '0'),
             (g % 7)::text, 'u', 'LAB', 'x', now()
           FROM generate_series(1, 90000) g;
           INSERT INTO request_readers (request_id, user_id, sent, read)
           SELECT lpad(to_hex(g), 24, '0'), (g % 7)::text, 1, 1 FROM generate_series(1, 30000) g;
           ANALYZE requests, request_messages, request_readers`,
        );
        const before = '0000000000000000000003e8';
        const cases: Array<[string, string, unknown[]]> = [
          ['lab inbox', inboxQuery(false, false), ['3', 51]],
          ['lab inbox, later page', inboxQuery(false, true), ['3', 51, before]],
          ['teacher inbox', inboxQuery(true, false), ['3', '42', 51]],
          ['teacher inbox, later page', inboxQuery(true, true), ['3', '42', 51, before]],
          ['one request', `${INBOX_SELECT} WHERE r.id = $2`, ['3', before]],
          ['teacher unread list', unreadListQuery(true), ['3', 100, '42']],
          ['teacher unread total', unreadTotalQuery(true), ['3', '42']],
          ['own unread list', ownUnreadListQuery, ['42', 100]],
          ['lab unread total and list', labUnreadQuery, ['3', 100]],
          ['lab unread total', unreadTotalQuery(false), ['3']],
          ['own unread total', ownUnreadTotalQuery, ['42']],
        ];
        for (const [what, sql, values] of cases) {
          const { rows } = await client.query(`EXPLAIN ${sql}`, values);
          const plan = rows.map((r: any) => r['QUERY PLAN'] as string).join('\n');
          assert.doesNotMatch(plan, /request_messages|receipts/, `${what}:\n${plan}`);
          // The running totals read a few counter rows: no request's row, whatever their number.
          if (what === 'lab unread total' || what === 'own unread total') {
            assert.doesNotMatch(plan, /\brequests\b|request_readers/, `${what}:\n${plan}`);
            const scanned = Array.from(plan.matchAll(/ on (\w+)/g), (m) => m[1]);
            assert.ok(scanned.length > 0, `${what}:\n${plan}`);
            assert.ok(
              scanned.every((t) => t?.startsWith('unread_')),
              `${what} reads counters only:\n${plan}`,
            );
            continue;
          }
          // Only the 16 rows of the message total may be scanned.
          assert.doesNotMatch(plan, /Seq Scan on (?!unread_messages)/, `${what}:\n${plan}`);
        }
      } finally {
        await client.end();
        await store.close();
        await schema.drop();
      }
    });

    it('reads for the unread lists only requests with unread messages, not those read', async () => {
      const schema = await tempSchema();
      const store = new PostgresStore({ url: schema.url, max: 2 });
      const client = new pg.Client({ connectionString: PG_URL });
      try {
        await store.ping();
        await client.connect();
        await client.query(`SET search_path = "${parsePostgresUrl(schema.url).schema}"`);
        // 20,000 requests of one teacher, newest first by g, two messages each
        // from the lab. The teacher read all but the two oldest; the lab user
        // "desk" read all but the two newest.
        const id = (g: string) => `lpad(to_hex(${g}), 24, '0')`;
        await bulkLoad(client, async () => {
          await client.query(
            `INSERT INTO requests (id, owner_id, created_at, updated_at, activity_at,
               message_count, last_message_seq, last_message_id)
             SELECT ${id('g')}, 'busy', now(), now(), now() - g * interval '1 second', 2, g,
               'e' || lpad(to_hex(g), 23, '0')
             FROM generate_series(1, 20000) g;
             INSERT INTO request_readers (request_id, user_id, sent, read)
             SELECT ${id('g')}, 'busy', 0, CASE WHEN g > 19998 THEN 1 ELSE 2 END
             FROM generate_series(1, 20000) g;
             INSERT INTO request_readers (request_id, user_id, sent, read)
             SELECT ${id('g')}, 'desk', 0, CASE WHEN g <= 2 THEN 0 ELSE 2 END
             FROM generate_series(1, 20000) g;
             INSERT INTO request_readers (request_id, user_id, sent, read)
             SELECT ${id('g')}, 'lab', 4, 0 FROM generate_series(1, 10000) g;`,
          );
        });
        await client.query('ANALYZE requests, request_readers');
        const hex = (g: number) => g.toString(16).padStart(24, '0');
        assert.deepEqual(await store.unreadTotals('busy', 'busy', 100), {
          total: 2,
          requests: [
            { requestId: hex(19999), unread: 1 },
            { requestId: hex(20000), unread: 1 },
          ],
        });
        assert.deepEqual(await store.unreadTotals('desk', undefined, 100), {
          total: 4,
          requests: [
            { requestId: hex(1), unread: 2 },
            { requestId: hex(2), unread: 2 },
          ],
        });
        /** Rows the plan's scans of requests returned, over all their loops. */
        const requestRows = async (sql: string, values: unknown[]) => {
          const { rows } = await client.query(`EXPLAIN (ANALYZE, TIMING OFF) ${sql}`, values);
          const plan = rows.map((r: any) => r['QUERY PLAN'] as string).join('\n');
          assert.doesNotMatch(plan, /request_messages|receipts|Seq Scan on requests/, plan);
          let sum = 0;
          for (const m of plan.matchAll(
            / on requests(?: \w+)?\s+\(.*actual rows=(\d+) loops=(\d+)/g,
          )) {
            sum += Number(m[1]) * Number(m[2]);
          }
          return { plan, sum };
        };
        const own = await requestRows(ownUnreadListQuery, ['busy', 100]);
        assert.match(own.plan, /requests_owner_unread/, own.plan);
        assert.equal(own.sum, 2, `the two unread requests, not the 19,998 read:\n${own.plan}`);
        // The walk over every request that it replaces, for contrast.
        const walk = await requestRows(unreadListQuery(true), ['busy', 100, 'busy']);
        assert.equal(walk.sum, 20000, walk.plan);
        const lab = await requestRows(labUnreadQuery, ['desk', 100]);
        assert.ok(lab.sum <= 3, `the walk stops at the total:\n${lab.plan}`);
      } finally {
        await client.end();
        await store.close();
        await schema.drop();
      }
    });

    it('rejects (never resolves falsely) when the server is unreachable', async () => {
      const s = new PostgresStore({ url: 'postgres://postgres@127.0.0.1:1/test' });
      await assert.rejects(s.ping());
      await assert.rejects(s.putRequest('6751b6df1ad14eaa13a03313', '1'));
      await s.close();
    });

    /** A store of 2 connections in a schema of its own, reaching PostgreSQL through a proxy. */
    async function storeBehindProxy() {
      const schema = await tempSchema();
      const target = new URL(PG_URL);
      const proxy = new TcpProxy(target.hostname, Number(target.port || 5432));
      await proxy.start();
      const url = new URL(schema.url);
      url.host = `127.0.0.1:${proxy.port}`;
      return { schema, proxy, s: new PostgresStore({ url: url.toString(), max: 2 }) };
    }

    it('fails calls while PostgreSQL is away and serves again when it is back', async () => {
      const { schema, proxy, s } = await storeBehindProxy();
      const r = '6751b6df1ad14eaa13a03313';
      const message = (text: string, clientMessageId: string) => ({
        _id: newId(),
        requestId: r,
        sender: { id: '1', username: 'ana', role: 'TEACHER' },
        message: text,
        createdAt: new Date().toISOString(),
        clientMessageId,
      });
      try {
        await s.putRequest(r, '1');
        await proxy.cut();
        await assert.rejects(s.ping());
        await assert.rejects(s.addRequestMessage(message('during', 'c-1')));
        await proxy.start();
        await s.ping();
        const after = await s.addRequestMessage(message('after', 'c-22'));
        assert.equal(after.duplicate, false);
        const texts = (await s.requestHistory(r, { limit: 10 })).messages.map((m) => m.message);
        assert.deepEqual(texts, ['after'], 'nothing of the failed call was stored');
      } finally {
        await s.close();
        await proxy.stop();
        await schema.drop();
      }
    });

    it('a connection lost mid-call fails that call, never the process', async () => {
      // Calls in flight hold their connections out of the pool, where the pool
      // no longer listens for their errors: an abrupt loss (network, proxy,
      // host) then raised an 'error' event nobody handled, ending the node.
      const { schema, proxy, s } = await storeBehindProxy();
      const r = '6751b6df1ad14eaa13a03314';
      const message = (i: number) => ({
        _id: newId(),
        requestId: r,
        sender: { id: '1', username: 'ana', role: 'TEACHER' },
        message: `m${i}`,
        createdAt: new Date().toISOString(),
        clientMessageId: null,
      });
      try {
        await s.putRequest(r, '1');
        await s.requestHistory(r, { limit: 1 });
        // The answers wait in the proxy: every call below holds its connection.
        proxy.pause('service');
        const calls = [
          ...Array.from({ length: 20 }, (_, i) => s.addRequestMessage(message(i))),
          s.putRequest('6751b6df1ad14eaa13a03315', '2'),
          s.requestHistory(r, { limit: 10 }),
        ].map((p) =>
          p.then(
            () => 'stored',
            () => 'failed',
          ),
        );
        await new Promise((resolve) => setTimeout(resolve, 300));
        await proxy.cut();
        proxy.resume('service');
        const results = await Promise.all(calls);
        assert.ok(results.includes('failed'), results.join());
        await proxy.start();
        await s.ping();
        assert.equal((await s.addRequestMessage(message(99))).duplicate, false);
      } finally {
        await s.close();
        await proxy.stop();
        await schema.drop();
      }
    });

    it('concurrent webhook claims from several nodes never share an event', async () => {
      const schema = await tempSchema();
      const nodes = Array.from({ length: 3 }, () => new PostgresStore({ url: schema.url, max: 4 }));
      try {
        const entries = Array.from({ length: 120 }, (_, i) =>
          outboxEntry(
            'stream.ended',
            { key: `k${i}` },
            { at: new Date(Date.UTC(2026, 0, 1, 0, 0, i)) },
          ),
        );
        await nodes[0]?.enqueueWebhooks(entries);
        const now = new Date(Date.UTC(2026, 0, 2)).toISOString();
        const lease = new Date(Date.UTC(2026, 0, 3)).toISOString();
        // 30 claims of 5 at the same moment, 10 from each node: 150 wanted, 120 there.
        const claims = await Promise.all(
          Array.from({ length: 30 }, (_, i) =>
            (nodes[i % 3] as PostgresStore).claimWebhooks(5, now, lease),
          ),
        );
        const ids = claims.flat().map((e) => e.id);
        assert.equal(new Set(ids).size, ids.length, 'no event claimed twice');
        assert.deepEqual([...ids].sort(), entries.map((e) => e.id).sort(), 'every event claimed');
      } finally {
        await Promise.all(nodes.map((n) => n.close()));
        await schema.drop();
      }
    });

    it('refuses a schema name that is not a plain identifier', () => {
      assert.throws(() => parsePostgresUrl(`${PG_URL}?schema=a";drop`), /schema/);
      assert.throws(() => parsePostgresUrl(`${PG_URL}?schema=Mixed`), /schema/);
      assert.deepEqual(parsePostgresUrl('postgres://h/db?schema=abc'), {
        connectionString: 'postgres://h/db',
        schema: 'abc',
      });
    });
  });
}
