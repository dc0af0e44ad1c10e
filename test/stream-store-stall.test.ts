/**
 * A stream whose store has stalled: chats are delivered before they are
 * stored, so what waits for the store is bounded by STREAM_STORE_QUEUE_MAX.
 * Past it a chat is refused with `rate_limited` and `retry_after_ms`, sent to
 * nobody and never stored; once the store catches up, posting works again and
 * history holds exactly the chats that were accepted. Moderators are never
 * rate-limited, the store's backlog included. The stall is real: the
 * test holds a PostgreSQL lock on the node's `stream_messages` table. The
 * messages API's newest page waits for what was published to be stored.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import {
  api,
  StreamClient,
  sleep,
  startServer,
  type TestServer,
  until,
  userToken,
} from './helpers.js';
import { PG_URL, requireServices, tempSchema } from './services.js';

const QUEUE_MAX = 20;

if (await requireServices('postgres')) {
  describe('stream chats while the store is stalled', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    let server: TestServer;

    before(async () => {
      schema = await tempSchema();
      server = await startServer({
        DATABASE_URL: schema.url,
        STREAM_RATE_LIMIT: '100000/1s',
        FLOOD_LIMIT: '1000000',
        STREAM_STORE_QUEUE_MAX: String(QUEUE_MAX),
      });
    });

    after(async () => {
      await server?.close();
      await schema?.drop();
    });

    it('refuses chats past STREAM_STORE_QUEUE_MAX, sends and stores none of them, and recovers', async () => {
      const key = 'stalled';
      assert.equal(
        (await api(server.url, 'PUT', `/api/streams/${key}`, { ownerId: '100' })).status,
        201,
      );
      const poster = await StreamClient.connect(server.wsUrl, key, {
        token: await userToken('1'),
      });
      const viewer = await StreamClient.connect(server.wsUrl, key);
      const owner = await StreamClient.connect(server.wsUrl, key, {
        token: await userToken('100'),
      });
      const banned = await StreamClient.connect(server.wsUrl, key, {
        token: await userToken('2'),
      });
      // Joined: a chat posted before a viewer's history is out would come inside it.
      for (const c of [poster, viewer, owner, banned]) await c.next('history', 10_000);
      assert.equal((await api(server.url, 'PUT', `/api/streams/${key}/bans/2`, {})).status, 200);
      const table = `"${new URL(schema.url).searchParams.get('schema')}".stream_messages`;
      const lock = new pg.Client({ connectionString: PG_URL });
      await lock.connect();
      try {
        await lock.query('BEGIN');
        await lock.query(`LOCK TABLE ${table} IN SHARE MODE`);
        const total = QUEUE_MAX + 15;
        for (let i = 0; i < total; i++) poster.chat(`c${i}`);
        const answers = await poster.collect('chat', QUEUE_MAX, 10_000);
        const errors = await poster.collect('error', total - QUEUE_MAX, 10_000);
        assert.deepEqual(
          answers.map((f) => f.data.message),
          Array.from({ length: QUEUE_MAX }, (_, i) => `c${i}`),
          'the first STREAM_STORE_QUEUE_MAX chats are accepted, in order',
        );
        for (const e of errors) {
          assert.equal(e.data.error_code, 'rate_limited');
          assert.ok(e.data.retry_after_ms > 0, 'the refusal says when to try again');
        }
        const seen = await viewer.collect('chat', QUEUE_MAX, 10_000);
        assert.equal(seen.length, QUEUE_MAX, 'the viewer saw no refused chat');
        // The queue is full: the owner, never rate-limited, still posts; a
        // banned user is still told it is banned.
        owner.chat('from the owner');
        const atOwner = await owner.collect('chat', QUEUE_MAX + 1, 10_000);
        assert.equal(atOwner.at(-1)?.data.message, 'from the owner');
        banned.chat('let me in');
        assert.equal((await banned.next('error', 10_000)).data.error_code, 'banned');
        const stored = await api(server.url, 'GET', `/api/streams/${key}/messages?limit=500`);
        assert.equal(stored.body.messages.length, 0, 'the lock holds the store back');
      } finally {
        await lock.query('COMMIT');
        await lock.end();
      }
      await until(async () => {
        const page = await api(server.url, 'GET', `/api/streams/${key}/messages?limit=500`);
        return page.body.messages.length === QUEUE_MAX + 1;
      }, 'the accepted chats to be stored');
      poster.chat('after');
      const chats = await poster.collect('chat', QUEUE_MAX + 2, 10_000);
      assert.equal(chats.at(-1)?.data.message, 'after');
      await server.app.streams.flush();
      const page = await api(server.url, 'GET', `/api/streams/${key}/messages?limit=500`);
      assert.deepEqual(
        page.body.messages.map((m: { message: string }) => m.message),
        [...Array.from({ length: QUEUE_MAX }, (_, i) => `c${i}`), 'from the owner', 'after'],
        'history holds exactly the accepted chats',
      );
      for (const c of [poster, viewer, owner, banned]) c.close();
    });

    it("the messages API's newest page waits for a chat just seen live to be stored", async () => {
      const key = 'just-seen';
      assert.equal(
        (await api(server.url, 'PUT', `/api/streams/${key}`, { ownerId: '100' })).status,
        201,
      );
      const poster = await StreamClient.connect(server.wsUrl, key, {
        token: await userToken('1'),
      });
      await poster.next('history', 10_000);
      const table = `"${new URL(schema.url).searchParams.get('schema')}".stream_messages`;
      const lock = new pg.Client({ connectionString: PG_URL });
      await lock.connect();
      let page: Promise<{ status: number; body: { messages: Array<{ message: string }> } }>;
      try {
        await lock.query('BEGIN');
        await lock.query(`LOCK TABLE ${table} IN SHARE MODE`);
        poster.chat('seen live');
        assert.equal((await poster.next('chat', 10_000)).data.message, 'seen live');
        // Reads go on under the lock: without the wait this answers at once, without the chat.
        page = api(server.url, 'GET', `/api/streams/${key}/messages`);
        await sleep(300);
      } finally {
        await lock.query('COMMIT');
        await lock.end();
      }
      const answer = await page;
      assert.equal(answer.status, 200);
      assert.deepEqual(
        answer.body.messages.map((m) => m.message),
        ['seen live'],
      );
      poster.close();
    });
  });
}
