/**
 * The inbox bench's seed, and `bulkLoad` under it: rows written with the
 * counters' triggers off and the counters filled afterwards by the
 * migrations' fills must leave every counter exactly as the triggers, row by
 * row, would have; a load that fails leaves nothing behind, triggers included.
 * On SQLite and on PostgreSQL, at a small size.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import pg from 'pg';
import { checkSeeded, type InboxSpec, seedPostgres, seedSqlite } from '../bench/inbox.js';
import { bulkLoad as bulkLoadPostgres, parsePostgresUrl } from '../src/store/postgres.js';
import { bulkLoad } from '../src/store/sqlite.js';
import { tempDir } from './helpers.js';
import { PG_URL, requireServices, tempSchema } from './services.js';

// Ten messages in each of 40 requests, 7 teachers and 3 lab users: owners
// with several requests, lab users sharing them.
const spec: InboxSpec = { requests: 40, messages: 400, teachers: 7, labUsers: 3, queries: 0 };

/** Every counter the triggers keep, summed over PostgreSQL's shards. */
const COUNTERS = [
  'SELECT sum(messages) AS n FROM unread_messages',
  'SELECT owner_id, sum(messages) AS n FROM unread_owners GROUP BY owner_id ORDER BY owner_id',
  `SELECT user_id, sum(seen) AS seen, sum(seen_own) AS own FROM unread_users
   GROUP BY user_id ORDER BY user_id`,
  'SELECT id, owner_seen FROM requests ORDER BY id',
];

describe('inbox seed on SQLite', () => {
  const counters = (path: string) => {
    const db = new Database(path, { readonly: true });
    try {
      return COUNTERS.map((sql) => db.prepare(sql).all());
    } finally {
      db.close();
    }
  };

  it('fills the counters as the triggers keep them', async () => {
    const dir = tempDir('charla-seed-');
    try {
      const [rowByRow, bulk] = [join(dir, 'triggers.db'), join(dir, 'bulk.db')];
      await seedSqlite(rowByRow, spec, { triggers: true });
      await seedSqlite(bulk, spec);
      const kept = counters(rowByRow);
      assert.ok((kept[2] as unknown[]).length >= spec.teachers + spec.labUsers, 'every user');
      assert.deepEqual(counters(bulk), kept);
      assert.ok((await checkSeeded('sqlite', spec, bulk, '')) > 20);
      // The check can fail: one counter off by one is found.
      const db = new Database(bulk);
      db.prepare("UPDATE unread_users SET seen = seen + 1 WHERE user_id = 'l0'").run();
      db.close();
      await assert.rejects(checkSeeded('sqlite', spec, bulk, ''), /l0 as LAB/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a failed load changes nothing and leaves the triggers in place', async () => {
    const dir = tempDir('charla-seed-');
    try {
      const path = join(dir, 'bulk.db');
      await seedSqlite(path, spec);
      const before = counters(path);
      const db = new Database(path);
      const triggers = () =>
        db
          .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY name")
          .all();
      const kept = triggers();
      assert.ok(kept.length >= 9);
      assert.throws(
        () =>
          bulkLoad(db, () => {
            db.prepare(
              "UPDATE requests SET message_count = message_count + 5 WHERE owner_id = 't1'",
            ).run();
            throw new Error('bad row');
          }),
        /bad row/,
      );
      assert.deepEqual(triggers(), kept);
      db.close();
      assert.deepEqual(counters(path), before);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

if (await requireServices('postgres')) {
  describe('inbox seed on PostgreSQL', () => {
    const withClient = async <T>(url: string, f: (c: pg.Client) => Promise<T>) => {
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      try {
        await client.query(`SET search_path = "${parsePostgresUrl(url).schema}"`);
        return await f(client);
      } finally {
        await client.end();
      }
    };
    const counters = (url: string) =>
      withClient(url, async (c) => {
        const out: unknown[] = [];
        for (const sql of COUNTERS) out.push((await c.query(sql)).rows);
        return out;
      });

    it('fills the counters as the triggers keep them', async () => {
      const [rowByRow, bulk] = [await tempSchema(), await tempSchema()];
      try {
        const schemaOf = (u: string) => parsePostgresUrl(u).schema as string;
        await seedPostgres(rowByRow.url, schemaOf(rowByRow.url), spec, { triggers: true });
        await seedPostgres(bulk.url, schemaOf(bulk.url), spec);
        const kept = await counters(rowByRow.url);
        assert.ok((kept[2] as unknown[]).length >= spec.teachers + spec.labUsers, 'every user');
        assert.deepEqual(await counters(bulk.url), kept);
        assert.ok((await checkSeeded('postgres', spec, '', bulk.url)) > 20);
        await withClient(bulk.url, (c) =>
          c.query(
            "UPDATE unread_owners SET messages = messages - 1 WHERE owner_id = 't5' AND shard = 0",
          ),
        );
        await assert.rejects(checkSeeded('postgres', spec, '', bulk.url), /t5's own requests/);
      } finally {
        await rowByRow.drop();
        await bulk.drop();
      }
    });

    it('a failed load changes nothing and turns the triggers back on', async () => {
      const schema = await tempSchema();
      try {
        await seedPostgres(schema.url, parsePostgresUrl(schema.url).schema as string, spec);
        const before = await counters(schema.url);
        await withClient(schema.url, async (c) => {
          await assert.rejects(
            bulkLoadPostgres(c, async () => {
              await c.query(
                "UPDATE requests SET message_count = message_count + 5 WHERE owner_id = 't1'",
              );
              throw new Error('bad row');
            }),
            /bad row/,
          );
          const { rows } = await c.query('SHOW session_replication_role');
          assert.equal(rows[0].session_replication_role, 'origin');
        });
        assert.deepEqual(await counters(schema.url), before);
      } finally {
        await schema.drop();
      }
    });
  });
}
