/**
 * The PostgreSQL group commit as one statement: it must store, count and
 * answer exactly as the same messages stored one at a time, while moving
 * each running unread total once per batch rather than once per message.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import { newId } from '../src/core/ids.js';
import type { NewRequestMessage } from '../src/core/messages.js';
import { outboxEntryOf } from '../src/core/webhook-events.js';
import { PostgresStore, parsePostgresUrl } from '../src/store/postgres.js';
import type { RequestMessageWrite } from '../src/store/store.js';
import { PG_URL, requireServices, tempSchema } from './services.js';

let clock = 0;
const message = (
  requestId: string,
  text: string,
  senderId: string,
  clientMessageId: string | null = null,
): NewRequestMessage => ({
  _id: newId(),
  requestId,
  sender: { id: senderId, username: `user${senderId}`, role: senderId === 't' ? 'TEACHER' : 'LAB' },
  message: text,
  createdAt: new Date(Date.UTC(2026, 0, 1) + ++clock * 1000).toISOString(),
  clientMessageId,
});

/** Every counter the store keeps for unread counts, as rows comparable across schemas. */
async function counters(url: string) {
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  try {
    await client.query(`SET search_path = "${parsePostgresUrl(url).schema}"`);
    const q = async (text: string) => (await client.query(text)).rows;
    return {
      requests: await q(
        `SELECT id, owner_id, message_count, owner_seen, last_message_id, activity_at
         FROM requests ORDER BY id`,
      ),
      readers: await q('SELECT request_id, user_id, sent, read FROM request_readers ORDER BY 1, 2'),
      messages: await q('SELECT sum(messages)::int AS n FROM unread_messages'),
      owners: await q(
        'SELECT owner_id, sum(messages)::int AS n FROM unread_owners GROUP BY 1 ORDER BY 1',
      ),
      users: await q(
        `SELECT user_id, sum(seen)::int AS seen, sum(seen_own)::int AS seen_own
         FROM unread_users GROUP BY 1 ORDER BY 1`,
      ),
      stored: await q(
        'SELECT id, request_id, sender_id, message FROM request_messages ORDER BY request_id, seq',
      ),
      outbox: await q('SELECT id, type, payload FROM webhook_outbox ORDER BY id'),
    };
  } finally {
    await client.end();
  }
}

if (await requireServices('postgres')) {
  describe('PostgreSQL group commit in one statement', () => {
    it('stores, counts and answers as the same messages stored one at a time', async () => {
      const [r1, r2, r3, none] = [newId(), newId(), newId(), newId()].sort() as [
        string,
        string,
        string,
        string,
      ];
      const earlier = message(r1, 'earlier', 'a', 'c-0');
      const payload = JSON.stringify({ text: 'shared "payload", {x}' });
      const events = () => [
        outboxEntryOf('request.message.created', payload),
        outboxEntryOf('request.message.unread', payload, { unlessRead: 'nobody' }),
      ];
      // Requests interleaved, the owner writing in their own request, a
      // repeat of a stored message and one of a message earlier in this
      // batch, a request without a row, events on some.
      const writes: RequestMessageWrite[] = [
        { message: message(r2, 'r2 one', 'a', 'c-1'), outbox: events() },
        { message: message(r1, 'r1 one', 'b') },
        { message: message(r2, 'r2 two', 't'), outbox: events() },
        { message: message(r1, 'r1 again', 'a', 'c-0'), outbox: events() },
        { message: message(r3, 'r3 one', 'a') },
        { message: message(r2, 'r2 repeat', 'a', 'c-1'), outbox: events() },
        { message: message(none, 'nowhere', 'b') },
        { message: message(r1, 'r1 two', 't', 'c-2') },
        { message: message(r2, 'r2 three', 'b') },
        {
          message: message(r1, 'r1 three', 'a'),
          outbox: [outboxEntryOf('request.message.created', '{"own":1}')],
        },
      ];
      const run = async (batched: boolean) => {
        const schema = await tempSchema();
        const store = new PostgresStore({ url: schema.url, max: 2 });
        try {
          for (const r of [r1, r2, r3]) await store.putRequest(r, 't');
          await store.addRequestMessage(earlier);
          await store.addReceipts(r1, 'read', 't', [earlier._id], earlier.createdAt);
          let outcomes: unknown[];
          if (batched) {
            const settled = await store.addRequestMessages(writes);
            outcomes = settled.map((o) => (o.status === 'fulfilled' ? o.value : o.reason));
          } else {
            outcomes = [];
            for (const w of writes)
              outcomes.push(await store.addRequestMessage(w.message, w.outbox));
          }
          return { outcomes, counters: await counters(schema.url) };
        } finally {
          await store.close();
          await schema.drop();
        }
      };
      const alone = await run(false);
      const batch = await run(true);
      assert.deepEqual(batch.outcomes, alone.outcomes);
      assert.deepEqual(batch.counters, alone.counters);
      // A batch takes requests in the order of their ids; within one, the order given.
      const stored = batch.counters.stored.map((m) => m.message);
      assert.deepEqual(stored, [
        'earlier',
        'r1 one',
        'r1 two',
        'r1 three',
        'r2 one',
        'r2 two',
        'r2 three',
        'r3 one',
        'nowhere',
      ]);
      assert.equal(batch.counters.outbox.length, 2 * 2 + 1, 'the events of stored messages only');
      assert.deepEqual(batch.counters.messages, [{ n: 8 }], 'messages of requests with a row');
    });

    it('moves each running unread total once per batch, not once per message', async () => {
      const schema = await tempSchema();
      const store = new PostgresStore({ url: schema.url, max: 2 });
      const client = new pg.Client({ connectionString: PG_URL });
      try {
        const requests = [newId(), newId()];
        for (const r of requests) await store.putRequest(r, 't');
        await client.connect();
        await client.query(`SET search_path = "${parsePostgresUrl(schema.url).schema}"`);
        // Each UPDATE leaves a new version of the row: its line pointer in the page.
        const versions = async () =>
          (
            await client.query<{ n: number }>(
              `SELECT max((ctid::text::point)[1])::int AS n FROM unread_messages`,
            )
          ).rows[0]?.n ?? 0;
        const first = await versions();
        const outcomes = await store.addRequestMessages(
          Array.from({ length: 30 }, (_, i) => ({
            message: message(requests[i % 2] as string, `m${i}`, 'a'),
          })),
        );
        assert.ok(outcomes.every((o) => o.status === 'fulfilled'));
        assert.equal((await versions()) - first, 1, 'one new version of the message total');
        const { rows } = await client.query<{ n: number }>(
          'SELECT sum(messages)::int AS n FROM unread_messages',
        );
        assert.equal(rows[0]?.n, 30);
      } finally {
        await client.end();
        await store.close();
        await schema.drop();
      }
    });
  });
}
