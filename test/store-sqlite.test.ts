/** The Store conformance suite against SQLite, one temp file per test. */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type Database from 'better-sqlite3';
import { SqliteStore } from '../src/store/sqlite.js';
import { tempDir } from './helpers.js';
import { storeSuite } from './store-suite.js';

storeSuite('sqlite', async () => {
  const dir = tempDir('charla-store-');
  return {
    open: async () => new SqliteStore(join(dir, 'charla.db')),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

test('history and receipt queries are served from indexes, never a table scan', async () => {
  const dir = tempDir('charla-plan-');
  const store = new SqliteStore(join(dir, 'charla.db'));
  try {
    // The store's own prepared statements, so the plan checked is the plan run.
    const statements = (store as any).q as Record<string, Database.Statement>;
    const db = (store as any).db as Database.Database;
    for (const name of [
      'streamPage',
      'requestPage',
      'requestSeq',
      'eligibleForReceipt',
      'receiptsOf',
    ]) {
      const sql = statements[name]?.source;
      assert.ok(sql, name);
      const plan = db
        .prepare(`EXPLAIN QUERY PLAN ${sql}`)
        .all(...params(sql))
        .map((row: any) => row.detail as string);
      // A rowid range (`USING INTEGER PRIMARY KEY (rowid<?)`) walks every request's rows: not enough.
      const unindexed = plan.filter(
        (d) =>
          /\b(stream_messages|request_messages|receipts)\b/.test(d) &&
          !/USING (COVERING )?INDEX|USING PRIMARY KEY/.test(d),
      );
      assert.deepEqual(unindexed, [], `${name}: ${plan.join(' | ')}`);
    }
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Placeholder values for a statement's `?` parameters: the plan does not depend on them. */
function params(sql: string): Array<string | number> {
  return Array.from(sql.matchAll(/\?/g), () => 'x');
}

test('the webhook worker reads the outbox through its partial indexes', async () => {
  const dir = tempDir('charla-plan-');
  const store = new SqliteStore(join(dir, 'charla.db'));
  try {
    const statements = (store as any).q as Record<string, Database.Statement>;
    const db = (store as any).db as Database.Database;
    for (const [name, index] of [
      ['dueOutbox', 'webhook_outbox_due'],
      ['failedOutbox', 'webhook_outbox_failed'],
      ['outboxDepth', 'webhook_outbox_due'],
    ] as const) {
      const sql = statements[name]?.source as string;
      const plan = db
        .prepare(`EXPLAIN QUERY PLAN ${sql}`)
        .all(...params(sql))
        .map((row: any) => row.detail as string)
        .join(' | ');
      assert.match(plan, new RegExp(`USING INDEX ${index}`), `${name}: ${plan}`);
    }
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
