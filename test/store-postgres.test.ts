/** The Store conformance suite against the machine's PostgreSQL, one schema per test. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import { newId } from '../src/core/ids.js';
import { PostgresStore, parsePostgresUrl } from '../src/store/postgres.js';
import { PG_URL, requireServices, tempSchema } from './services.js';
import { storeSuite } from './store-suite.js';
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
          `SELECT count(*)::int AS n, max(version) AS highest FROM "${name}".schema_migrations`,
        );
        await client.end();
        // Each version applied once: as many rows as the highest version.
        assert.equal(rows[0].n, rows[0].highest);
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

    it('rejects (never resolves falsely) when the server is unreachable', async () => {
      const s = new PostgresStore({ url: 'postgres://postgres@127.0.0.1:1/test' });
      await assert.rejects(s.ping());
      await assert.rejects(s.putRequest('6751b6df1ad14eaa13a03313', '1'));
      await s.close();
    });

    it('fails calls while PostgreSQL is away and serves again when it is back', async () => {
      const schema = await tempSchema();
      const target = new URL(PG_URL);
      const proxy = new TcpProxy(target.hostname, Number(target.port || 5432));
      await proxy.start();
      const url = new URL(schema.url);
      url.host = `127.0.0.1:${proxy.port}`;
      const s = new PostgresStore({ url: url.toString(), max: 2 });
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
