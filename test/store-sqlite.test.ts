/** The Store conformance suite against SQLite, one temp file per test. */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { outboxEntry } from '../src/core/webhook-events.js';
import { SqliteStore } from '../src/store/sqlite.js';
import { tempDir } from './helpers.js';
import { seedUnreadHistory, storeSuite, unreadListsOf, unreadTotalsOf } from './store-suite.js';

storeSuite('sqlite', async () => {
  const dir = tempDir('charla-store-');
  return {
    open: async () => new SqliteStore(join(dir, 'charla.db')),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

test('fills the running unread totals of an existing database when it migrates', async () => {
  const dir = tempDir('charla-backfill-');
  const path = join(dir, 'charla.db');
  let store = new SqliteStore(path);
  try {
    await seedUnreadHistory(store);
    const totals = unreadTotalsOf;
    const before = await totals(store);
    assert.deepEqual(before, [2, 2, 0, 1, 0, 2, 0, 3]);
    const lists = await unreadListsOf(store);
    await store.close();
    // The database as the release before the running totals and owner_seen left it.
    const db = new Database(path);
    const version = db.pragma('user_version', { simple: true }) as number;
    db.exec(`DROP TRIGGER unread_request_added; DROP TRIGGER unread_request_counted;
      DROP TRIGGER unread_request_owner; DROP TRIGGER unread_reader_added;
      DROP TRIGGER unread_reader_counted;
      DROP TABLE unread_messages; DROP TABLE unread_owners; DROP TABLE unread_users;
      DROP TRIGGER owner_seen_request_added; DROP TRIGGER owner_seen_request_owner;
      DROP TRIGGER owner_seen_reader_added; DROP TRIGGER owner_seen_reader_counted;
      DROP INDEX requests_owner_unread; ALTER TABLE requests DROP COLUMN owner_seen;
      PRAGMA user_version = ${version - 2};`);
    db.close();
    store = new SqliteStore(path);
    assert.deepEqual(await totals(store), before);
    assert.deepEqual(await unreadListsOf(store), lists);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
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

test('the inbox and unread counts read counters on indexes, never messages', async () => {
  const dir = tempDir('charla-plan-');
  const store = new SqliteStore(join(dir, 'charla.db'));
  try {
    const statements = (store as any).q as Record<string, Database.Statement>;
    const db = (store as any).db as Database.Database;
    const planOf = (name: string) => {
      const sql = statements[name]?.source;
      assert.ok(sql, name);
      const names = [...new Set(Array.from(sql.matchAll(/@(\w+)/g), (m) => m[1] as string))];
      const args =
        names.length > 0 ? [Object.fromEntries(names.map((n) => [n, 'x']))] : params(sql);
      return db
        .prepare(`EXPLAIN QUERY PLAN ${sql}`)
        .all(...args)
        .map((row: any) => row.detail as string);
    };
    const inbox = ['labInbox', 'teacherInbox', 'oneInbox'];
    const unread = [
      'labUnreadList',
      'ownUnreadList',
      'teacherUnreadList',
      'labUnreadTotal',
      'ownUnreadTotal',
      'teacherUnreadTotal',
    ];
    const counters = ['countMessage', 'uncountMessage', 'uncountRead', 'readersOf', 'messagesById'];
    for (const name of [...inbox, ...unread, ...counters]) {
      const plan = planOf(name);
      const messages = plan.filter(
        (d) =>
          /\b(request_messages|receipts)\b/.test(d) &&
          !/USING (COVERING )?INDEX|USING PRIMARY KEY/.test(d),
      );
      assert.deepEqual(messages, [], `${name} must not scan messages: ${plan.join(' | ')}`);
      assert.ok(
        !plan.some((d) => /\brequest_messages\b/.test(d)) || name === 'messagesById',
        `${name} does not touch messages at all: ${plan.join(' | ')}`,
      );
    }
    // The running totals read a few counter rows: no request's row, whatever their number.
    for (const name of ['labUnreadTotal', 'ownUnreadTotal']) {
      const plan = planOf(name);
      assert.ok(
        plan.every((d) => !/\b(requests|request_readers)\b/.test(d)),
        `${name} reads no per-request rows: ${plan.join(' | ')}`,
      );
      assert.ok(
        plan.some((d) => /\bunread_users\b.*USING PRIMARY KEY/.test(d)),
        `${name} looks its user up by key: ${plan.join(' | ')}`,
      );
    }
    // A teacher's unread list reads the partial index of requests they have not
    // read: its cost does not grow with the requests they have.
    assert.deepEqual(planOf('ownUnreadList'), [
      'SEARCH requests USING INDEX requests_owner_unread (owner_id=?)',
    ]);
    // A page of the inbox is a range of the (activity_at, id) index, not a scan of requests.
    for (const name of inbox) {
      const plan = planOf(name);
      assert.ok(
        plan.every((d) => /^SEARCH /.test(d)),
        `${name} searches indexes only: ${plan.join(' | ')}`,
      );
    }
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

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
    // A batch of delivered ids is deleted by key, not by a scan of the outbox.
    const sql = statements.deleteOutboxMany?.source as string;
    const plan = db
      .prepare(`EXPLAIN QUERY PLAN ${sql}`)
      .all('[]')
      .map((row: any) => row.detail as string)
      .join(' | ');
    assert.match(
      plan,
      /SEARCH webhook_outbox USING (COVERING )?INDEX sqlite_autoindex_webhook_outbox_1 \(id=\?\)/,
      plan,
    );
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a webhook claim writes nothing: leases are kept in memory by the one process', async () => {
  const dir = tempDir('charla-lease-');
  const store = new SqliteStore(join(dir, 'charla.db'));
  try {
    const events = Array.from({ length: 4 }, (_, i) =>
      outboxEntry('stream.ended', { key: `k${i}` }),
    );
    await store.enqueueWebhooks(events);
    const db = (store as any).db as Database.Database;
    const changes = db.prepare('SELECT total_changes() AS n').pluck();
    const before = changes.get();
    const now = new Date().toISOString();
    const lease = new Date(Date.now() + 60_000).toISOString();
    const first = await store.claimWebhooks(3, now, lease);
    assert.equal(changes.get(), before, 'no row written by the claim');
    assert.deepEqual(
      first.map((e) => e.id),
      events.slice(0, 3).map((e) => e.id),
    );
    const second = await store.claimWebhooks(10, now, lease);
    assert.deepEqual(
      second.map((e) => e.id),
      [events[3]?.id],
      'rows leased are not claimed again',
    );
    await store.releaseWebhook(first[0]?.id as string);
    await store.completeWebhooks([first[1]?.id as string]);
    const third = await store.claimWebhooks(10, now, lease);
    assert.deepEqual(
      third.map((e) => e.id),
      [first[0]?.id],
      'a released row is claimable again; a completed one is gone',
    );
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
