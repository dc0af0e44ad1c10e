/**
 * History on join across nodes when the node that accepted a chat stores it
 * late: a chat node A published just before node B subscribed to the stream,
 * and stored after, is still in B's viewers' history or live chats, exactly
 * once. The lateness is real: the test holds a PostgreSQL lock on the
 * `stream_messages` table in its own transaction, so A's batch waits for it.
 *
 * Four charla nodes in this process, on one PostgreSQL schema and one Redis
 * prefix: A (where chats are posted), B (history from memory), C (memory off:
 * every join reads the store) and D (a short STREAM_HISTORY_SETTLE_MS).
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import pg from 'pg';
import {
  api,
  postInOrder,
  StreamClient,
  sleep,
  startServer,
  type TestServer,
  until,
  userToken,
} from './helpers.js';
import { PG_URL, REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

const OWNER = '100';

interface Joined {
  c: StreamClient;
  history: { messages: Array<{ id: string; message: string }>; gap: boolean };
}

interface ProxiedNode {
  node: TestServer;
  db: TcpProxy;
  redis: TcpProxy;
  close(): Promise<void>;
}

/** Every client a test opened, closed after it whatever happened. */
const open: StreamClient[] = [];

async function join(node: TestServer, key: string, userId?: string): Promise<Joined> {
  const c = await StreamClient.connect(node.wsUrl, key, {
    ...(userId === undefined ? {} : { token: await userToken(userId) }),
  });
  open.push(c);
  return { c, history: (await c.next('history', 10_000)).data };
}

/** Chat ids a viewer got: its history, then the live chats. */
const seen = (j: Joined): string[] => [
  ...j.history.messages.map((m) => m.id),
  ...j.c.frames.filter((f) => f.type === 'chat').map((f) => f.data.id as string),
];

/** Every stored chat of `key`, oldest first, through `GET /api/streams/{key}/messages`. */
async function storedChats(
  node: TestServer,
  key: string,
): Promise<Array<{ id: string; message: string }>> {
  const all: Array<{ id: string; message: string }> = [];
  let before = '';
  for (;;) {
    const page = await api(node.url, 'GET', `/api/streams/${key}/messages?limit=500${before}`);
    assert.equal(page.status, 200);
    all.unshift(...page.body.messages);
    if (!page.body.hasMore) return all;
    before = `&before=${page.body.messages[0].id}`;
  }
}

/** `ids` are a run of `order` with nothing left out and nothing twice. */
function assertRun(ids: string[], order: string[], who: string, historyLength = 0): void {
  // Where it went wrong, in stored positions: what a failure on a loaded machine needs to be read.
  const where = () =>
    `history ${historyLength} then live; stored positions: ${ids
      .map((id, i) => `${i === historyLength ? '| ' : ''}${order.indexOf(id)}`)
      .join(' ')}`;
  assert.equal(new Set(ids).size, ids.length, `${who}: no chat twice; ${where()}`);
  const start = order.indexOf(ids[0] as string);
  assert.ok(start !== -1, `${who}: its first chat is stored`);
  assert.deepEqual(
    ids,
    order.slice(start, start + ids.length),
    `${who}: nothing missed; ${where()}`,
  );
}

/** Posts from `c` every `ms` until stopped; each text numbered. */
function keepPosting(c: StreamClient, prefix: string, ms: number) {
  let on = true;
  let n = 0;
  const done = (async () => {
    while (on) {
      c.chat(`${prefix}${n++}`);
      await sleep(ms);
    }
  })();
  return {
    async stop() {
      on = false;
      await done;
    },
  };
}

if (await requireServices('postgres', 'redis')) {
  describe('history on join when another node stores late', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    let table: string;
    let A: TestServer;
    let B: TestServer;
    let C: TestServer;
    let D: TestServer;
    let env: Record<string, string>;
    let n = 0;

    const newStream = async () => {
      const key = `late-${++n}`;
      assert.equal(
        (await api(A.url, 'PUT', `/api/streams/${key}`, { ownerId: OWNER })).status,
        201,
      );
      return key;
    };

    /** The texts stored for `key`, oldest first, read from the table itself. */
    const tableChats = async (key: string): Promise<string[]> => {
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      try {
        const { rows } = await client.query<{ message: string }>(
          `SELECT message FROM ${table} WHERE stream_key = $1 ORDER BY id`,
          [key],
        );
        return rows.map((r) => r.message);
      } finally {
        await client.end();
      }
    };

    /** Takes a lock that holds back every node's writes of stream chats (reads go on). */
    const holdStreamWrites = async () => {
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      await client.query('BEGIN');
      await client.query(`LOCK TABLE ${table} IN SHARE MODE`);
      return {
        async release() {
          await client.query('COMMIT');
          await client.end();
        },
      };
    };

    before(async () => {
      schema = await tempSchema();
      table = `"${new URL(schema.url).searchParams.get('schema')}".stream_messages`;
      env = {
        DATABASE_URL: schema.url,
        REDIS_URL,
        REDIS_PREFIX: tempRedisPrefix(),
        STREAM_RATE_LIMIT: '100000/1s',
        FLOOD_LIMIT: '1000000',
        STREAM_HISTORY_ON_JOIN: '100',
        // Far longer than the test holds the lock, even on a loaded machine.
        STREAM_HISTORY_SETTLE_MS: '15000',
      };
      A = await startServer(env);
      B = await startServer(env);
      C = await startServer({ ...env, STREAM_HISTORY_CACHE_STREAMS: '0' });
      D = await startServer({ ...env, STREAM_HISTORY_SETTLE_MS: '300' });
    });

    afterEach(async () => {
      for (const c of open.splice(0)) c.close();
      await until(() => B.app.streams.viewerCount === 0, 'B to forget every stream');
    });

    after(async () => {
      for (const node of [A, B, C, D]) await node?.close();
      await schema.drop();
    });

    it("a chat A publishes before B subscribes and stores after B's first join is seen there once", async () => {
      const key = await newStream();
      const { c: poster } = await join(A, key, OWNER);
      await postInOrder(poster, ['before 0', 'before 1', 'before 2']);
      await A.app.streams.flush();
      const lock = await holdStreamWrites();
      let released = false;
      try {
        // Published and delivered, its batch waiting for the lock.
        const [late] = await postInOrder(poster, ['late']);
        // Slow enough that the late chat stays among the newest STREAM_HISTORY_ON_JOIN.
        const posting = keepPosting(poster, 'meanwhile ', 10);
        // The first viewer of this stream on B: B subscribes, then reads.
        const viewerJoined = join(B, key);
        await sleep(300);
        // Read straight from the table: the API's newest page would wait for A.
        const stored = await tableChats(key);
        assert.deepEqual(stored, ['before 0', 'before 1', 'before 2'], 'the lock holds A back');
        await lock.release();
        released = true;
        const viewer = await viewerJoined;
        await sleep(100);
        await posting.stop();
        await postInOrder(poster, ['end']);
        for (;;) if ((await viewer.c.next('chat', 10_000)).data.message === 'end') break;
        await A.app.streams.flush();
        const order = (await storedChats(A, key)).map((m) => m.id);
        const ids = seen(viewer);
        assert.equal(ids.filter((id) => id === late?.data.id).length, 1, 'the late chat, once');
        assertRun(ids, order, 'the viewer on B', viewer.history.messages.length);
        assert.equal(ids.at(-1), order.at(-1));
        assert.equal(viewer.history.gap, false);
      } finally {
        if (!released) await lock.release();
      }
    });

    /** A node whose PostgreSQL and Redis connections pass through proxies the test can pause. */
    const proxiedNode = async (extra: Record<string, string>): Promise<ProxiedNode> => {
      const db = new TcpProxy('127.0.0.1', Number(new URL(PG_URL).port || 5432));
      const redis = new TcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379));
      await db.start();
      await redis.start();
      const dbUrl = new URL(env.DATABASE_URL as string);
      dbUrl.port = String(db.port);
      const redisUrl = new URL(REDIS_URL);
      redisUrl.port = String(redis.port);
      const node = await startServer({
        ...env,
        ...extra,
        DATABASE_URL: dbUrl.toString(),
        REDIS_URL: redisUrl.toString(),
      });
      return {
        node,
        db,
        redis,
        async close() {
          db.resume('client');
          redis.resume('service');
          for (const c of open.splice(0)) c.close();
          await node.close();
          await db.stop();
          await redis.stop();
        },
      };
    };

    /**
     * A join of `key` on E whose history read waits in E's database proxy. E
     * keeps the stream's rules and topic (a viewer of its own); with a cache
     * of one stream, another stream's viewer takes the cache's place first,
     * so the join seeds it again. The read is the proxy's only waiting bytes.
     */
    const joinWithReadHeld = async (E: ProxiedNode, key: string, cacheOfOne: boolean) => {
      await join(E.node, key);
      if (cacheOfOne) await join(E.node, await newStream());
      E.db.pause('client');
      const joining = join(E.node, key);
      await until(() => E.db.waiting('client') > 0, "E's history read to wait in the proxy");
      // Wrapped: returned bare, an async function's caller would wait for the join itself.
      return { joining };
    };

    for (const [how, extra] of [
      ['read from the store', { STREAM_HISTORY_CACHE_STREAMS: '0' }],
      ['that seeds the cache', { STREAM_HISTORY_CACHE_STREAMS: '1' }],
    ] as const) {
      it(`a chat stored before a history read (${how}) and heard after its answer is seen once`, async () => {
        const E = await proxiedNode(extra);
        try {
          const key = await newStream();
          const { c: poster } = await join(A, key, OWNER);
          await postInOrder(poster, ['before']);
          await A.app.streams.flush();
          const cacheOfOne = extra.STREAM_HISTORY_CACHE_STREAMS === '1';
          const { joining } = await joinWithReadHeld(E, key, cacheOfOne);
          // E has settled and asked: what Redis sends E from now on arrives after the answer.
          E.redis.pause('service');
          const [late] = await postInOrder(poster, ['late']);
          await A.app.streams.flush();
          E.db.resume('client');
          // A node that used the answer at once would send its history now, `late` in it.
          await sleep(300);
          E.redis.resume('service');
          const viewer = await joining;
          await postInOrder(poster, ['end']);
          for (;;) if ((await viewer.c.next('chat', 10_000)).data.message === 'end') break;
          const order = (await storedChats(A, key)).map((m) => m.id);
          const ids = seen(viewer);
          assert.equal(ids.filter((id) => id === late?.data.id).length, 1, 'the late chat, once');
          assertRun(ids, order, 'the viewer on E', viewer.history.messages.length);
          assert.equal(viewer.history.gap, false);
        } finally {
          await E.close();
        }
      });
    }

    it('a cache whose seed read is not known to be caught up with the broker is not kept: later joins get each chat once', async () => {
      const E = await proxiedNode({
        STREAM_HISTORY_CACHE_STREAMS: '1',
        STREAM_HISTORY_SETTLE_MS: '300',
      });
      try {
        const key = await newStream();
        const { c: poster } = await join(A, key, OWNER);
        await postInOrder(poster, ['before']);
        await A.app.streams.flush();
        const { joining } = await joinWithReadHeld(E, key, true);
        E.redis.pause('service');
        const [late] = await postInOrder(poster, ['late']);
        await A.app.streams.flush();
        E.db.resume('client');
        // Longer than STREAM_HISTORY_SETTLE_MS: the seed gives up waiting for the broker.
        await sleep(800);
        E.redis.resume('service');
        const first = await joining;
        assert.equal(first.history.gap, true, 'not confirmed: flagged');
        await postInOrder(poster, ['after']);
        await until(
          () => first.c.frames.some((f) => f.type === 'chat' && f.data.message === 'after'),
          "the first viewer to hear 'after'",
        );
        const next = await join(E.node, key);
        const ids = next.history.messages.map((m) => m.id);
        assert.equal(ids.filter((id) => id === late?.data.id).length, 1, 'the late chat, once');
        assert.deepEqual(
          next.history.messages.map((m) => m.message),
          ['before', 'late', 'after'],
        );
      } finally {
        await E.close();
      }
    });

    for (const [how, extra] of [
      ['reading the store', { STREAM_HISTORY_CACHE_STREAMS: '0' }],
      ['seeding its cache', { STREAM_HISTORY_CACHE_STREAMS: '1' }],
    ] as const) {
      it(`a join whose history waits (${how}) while more chats than it holds are posted gets the chats before it, then every later one`, async () => {
        const E = await proxiedNode(extra);
        try {
          const key = await newStream();
          const { c: poster } = await join(A, key, OWNER);
          const before = ['before 0', 'before 1', 'before 2'];
          await postInOrder(poster, before);
          await A.app.streams.flush();
          const cacheOfOne = extra.STREAM_HISTORY_CACHE_STREAMS === '1';
          const { joining: viewerJoined } = await joinWithReadHeld(E, key, cacheOfOne);
          // More than STREAM_HISTORY_ON_JOIN (100), all stored before E reads.
          const during = Array.from({ length: 120 }, (_, i) => `during ${i}`);
          await postInOrder(poster, during);
          await A.app.streams.flush();
          E.db.resume('client');
          const viewer = await viewerJoined;
          await postInOrder(poster, ['end']);
          const live: string[] = [];
          for (;;) {
            const text = (await viewer.c.next('chat', 10_000)).data.message as string;
            if (text === 'end') break;
            live.push(text);
          }
          assert.deepEqual(
            viewer.history.messages.map((m) => m.message),
            before,
            'the history is what came before the join',
          );
          assert.deepEqual(live, during, 'then every later chat, in order');
          assert.equal(viewer.history.gap, false);
        } finally {
          await E.close();
        }
      });
    }

    it("a chat deleted through another node's API before its own node stored it is found", async () => {
      const key = await newStream();
      const { c: poster } = await join(A, key, OWNER);
      const lock = await holdStreamWrites();
      let released = false;
      try {
        const [chat] = await postInOrder(poster, ['not stored yet']);
        const id = chat?.data.id as string;
        const deleting = api(B.url, 'DELETE', `/api/streams/${key}/messages/${id}`);
        // B asks every node to store what it published, and waits for A.
        await sleep(300);
        await lock.release();
        released = true;
        assert.deepEqual(await deleting, { status: 200, body: { id, deleted: true } });
        assert.deepEqual((await poster.next('delete', 5_000)).data, { id, by: 'api' });
      } finally {
        if (!released) await lock.release();
      }
    });

    it('a node that does not store within STREAM_HISTORY_SETTLE_MS makes the history a gap', async () => {
      const key = await newStream();
      const { c: poster } = await join(A, key, OWNER);
      await postInOrder(poster, ['stored']);
      await A.app.streams.flush();
      const lock = await holdStreamWrites();
      let released = false;
      try {
        await postInOrder(poster, ['stuck']);
        const t0 = performance.now();
        const viewer = await join(D, key);
        const waited = performance.now() - t0;
        assert.equal(viewer.history.gap, true, 'not confirmed: flagged');
        assert.deepEqual(
          viewer.history.messages.map((m) => m.message),
          ['stored'],
        );
        assert.ok(waited >= 250 && waited < 5_000, `history after ${waited.toFixed(0)} ms`);
        await lock.release();
        released = true;
        await postInOrder(poster, ['after']);
        assert.equal((await viewer.c.next('chat', 5_000)).data.message, 'after');
        // Not cached: the next join on D, now that A has stored, has it all.
        await A.app.streams.flush();
        const next = await join(D, key);
        assert.deepEqual(
          next.history.messages.map((m) => m.message),
          ['stored', 'stuck', 'after'],
        );
        assert.equal(next.history.gap, false);
      } finally {
        if (!released) await lock.release();
      }
    });

    it('viewers joining B and C one by one while A posts and stores late miss none, repeat none', async () => {
      const key = await newStream();
      const { c: poster } = await join(A, key, OWNER);
      // C keeps the stream's topic: its joins read the store in a room already subscribed.
      const keeper = await join(C, key);
      await postInOrder(poster, ['start']);
      const viewers: Array<[string, Joined]> = [['the viewer kept on C', keeper]];
      const posting = keepPosting(poster, 'c', 2);
      // A's writes wait for the lock a third of the time.
      let locking = true;
      const locks = (async () => {
        while (locking) {
          const lock = await holdStreamWrites();
          await sleep(30);
          await lock.release();
          await sleep(60);
        }
      })();
      try {
        for (let i = 0; i < 12; i++) {
          // B has no viewer of the stream left: each join there subscribes anew.
          await until(() => B.app.streams.viewerCount === 0, 'B to forget the stream');
          const [onB, onC] = await Promise.all([join(B, key), join(C, key)]);
          viewers.push([`viewer ${i} on B`, onB], [`viewer ${i} on C`, onC]);
          await sleep(40 + (i % 4) * 20);
          onB.c.close();
          onC.c.close();
          await Promise.all([onB.c.closed, onC.c.closed]);
        }
      } finally {
        locking = false;
        await locks;
        await posting.stop();
      }
      await postInOrder(poster, ['end']);
      for (;;) if ((await keeper.c.next('chat', 10_000)).data.message === 'end') break;
      await A.app.streams.flush();
      const order = (await storedChats(A, key)).map((m) => m.id);
      for (const [who, j] of viewers) {
        const ids = seen(j);
        assert.ok(ids.length > 0, `${who} got chats`);
        assertRun(ids, order, who, j.history.messages.length);
      }
    });
  });
}
