/**
 * History on join from memory: a node keeps each watched stream's newest chats
 * (`core/stream-recent.ts`), so a join or a `since` resume within them reads
 * nothing from the store, and the store answers what memory cannot. Real `ws`
 * clients, a real SQLite file; the store's calls are recorded, not replaced.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  api,
  postInOrder,
  StreamClient,
  sleep,
  startServer,
  storeCalls,
  type TestServer,
  until,
  userToken,
} from './helpers.js';
import { REDIS_URL, requireServices, tempRedisPrefix } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

const OWNER = '100';
/** Small pages, so that "beyond what memory holds" takes a few chats, not hundreds. */
const ENV = {
  STREAM_RATE_LIMIT: '100000/1s',
  FLOOD_LIMIT: '100000',
  STREAM_HISTORY_ON_JOIN: '5',
  HISTORY_PAGE: '20',
  HISTORY_MAX_PAGE: '20',
};

let keyN = 0;

async function newStream(s: TestServer): Promise<string> {
  const key = `hist-${++keyN}`;
  assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, { ownerId: OWNER })).status, 201);
  return key;
}

/** Connects and takes the auth, stream and history frames. */
async function join(
  s: TestServer,
  key: string,
  opts: { userId?: string; since?: string } = {},
): Promise<{ c: StreamClient; history: { messages: any[]; gap: boolean } }> {
  const c = await StreamClient.connect(s.wsUrl, key, {
    ...(opts.userId === undefined ? {} : { token: await userToken(opts.userId) }),
    ...(opts.since === undefined ? {} : { query: `?since=${opts.since}` }),
  });
  const history = (await c.next('history')).data;
  return { c, history };
}

const texts = (messages: Array<{ message: string }>) => messages.map((m) => m.message);
const numbered = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, i) => `${prefix}${i}`);
/** Store reads that a join could make (writes of posted chats are not reads). */
const reads = (names: string[]) => names.filter((n) => n !== 'appendStreamMessages');

async function historyCount(s: TestServer, source: 'cache' | 'store'): Promise<number> {
  const text = await (await fetch(`${s.url}/metrics`)).text();
  const m = new RegExp(`charla_stream_history_total\\{source="${source}"\\} (\\d+)`).exec(text);
  return Number(m?.[1] ?? 0);
}

describe('history on join, from memory', () => {
  let s: TestServer;
  let calls: ReturnType<typeof storeCalls>;

  before(async () => {
    s = await startServer(ENV);
    calls = storeCalls(s.app.store);
  });
  after(() => s.close());

  it('joins of a watched stream read nothing from the store', async () => {
    const key = await newStream(s);
    const { c: teacher } = await join(s, key, { userId: OWNER });
    await postInOrder(teacher, numbered('m', 8));
    await s.app.streams.flush();
    const cached = await historyCount(s, 'cache');
    calls.reset();
    const viewers: StreamClient[] = [];
    for (let i = 0; i < 6; i++) {
      const { c, history } = await join(s, key, i % 2 ? { userId: `v${i}` } : {});
      assert.deepEqual(history, { messages: history.messages, gap: false });
      assert.deepEqual(texts(history.messages), ['m3', 'm4', 'm5', 'm6', 'm7']);
      viewers.push(c);
    }
    assert.deepEqual(calls.names.slice(), [], 'no store call while joining');
    assert.equal(await historyCount(s, 'cache'), cached + 6);
    // Live chats follow the history, once each.
    await postInOrder(teacher, ['after']);
    for (const c of viewers) {
      assert.equal((await c.next('chat')).data.message, 'after');
      assert.deepEqual(c.rest(), []);
      c.close();
    }
    teacher.close();
  });

  it('a deleted chat is gone from the next join, by frame or through the API', async () => {
    const key = await newStream(s);
    const { c: teacher } = await join(s, key, { userId: OWNER });
    const sent = await postInOrder(teacher, numbered('d', 7));
    teacher.send({ type: 'delete', data: { id: sent[6]?.data.id } });
    await teacher.next('delete');
    assert.equal(
      (await api(s.url, 'DELETE', `/api/streams/${key}/messages/${sent[4]?.data.id}`)).status,
      200,
    );
    await teacher.next('delete');
    calls.reset();
    const { c, history } = await join(s, key);
    assert.deepEqual(texts(history.messages), ['d0', 'd1', 'd2', 'd3', 'd5']);
    assert.deepEqual(reads(calls.names.slice()), []);
    c.close();
    teacher.close();
  });

  it('resumes within memory without the store; older ones from the store, exactly', async () => {
    const key = await newStream(s);
    const { c: teacher } = await join(s, key, { userId: OWNER });
    // Memory holds HISTORY_MAX_PAGE (20): r5 … r24.
    const sent = await postInOrder(teacher, numbered('r', 25));
    const id = (i: number) => sent[i]?.data.id as string;
    await s.app.streams.flush();

    calls.reset();
    const within = await join(s, key, { userId: '5', since: id(10) });
    assert.deepEqual(texts(within.history.messages), numbered('r', 25).slice(11));
    assert.equal(within.history.gap, false);
    const newest = await join(s, key, { userId: '6', since: id(24) });
    assert.deepEqual(newest.history, { messages: [], gap: false });
    assert.deepEqual(calls.names.slice(), [], 'resumed from memory');

    // r4 is not in memory: the store answers the 20 after it, all of them.
    const older = await join(s, key, { userId: '7', since: id(4) });
    assert.ok(calls.names.includes('streamRecent'), 'read from the store');
    assert.deepEqual(texts(older.history.messages), numbered('r', 25).slice(5));
    assert.equal(older.history.gap, false);
    // From r0, 24 were missed: the newest 20 and a gap.
    const oldest = await join(s, key, { userId: '8', since: id(0) });
    assert.deepEqual(texts(oldest.history.messages), numbered('r', 25).slice(5));
    assert.equal(oldest.history.gap, true);

    await postInOrder(teacher, ['live']);
    for (const j of [within, newest, older, oldest]) {
      assert.equal((await j.c.next('chat')).data.message, 'live');
      assert.deepEqual(j.c.rest(), []);
      j.c.close();
    }
    teacher.close();
  });

  it('a stream nobody watches here is forgotten: the next join reads the store', async () => {
    const key = await newStream(s);
    const { c: teacher } = await join(s, key, { userId: OWNER });
    await postInOrder(teacher, ['kept']);
    teacher.close();
    await until(() => s.app.streams.viewersOf(key) === 0, 'the viewer to leave');
    calls.reset();
    const { c, history } = await join(s, key);
    assert.ok(calls.names.includes('streamRecent'));
    assert.deepEqual(texts(history.messages), ['kept']);
    c.close();
  });

  it('under concurrent posting, joins from memory get every chat once, in order', async () => {
    const key = await newStream(s);
    const { c: teacher } = await join(s, key, { userId: OWNER });
    let posting = true;
    let n = 0;
    const poster = (async () => {
      while (posting) {
        teacher.chat(`c${n++}`);
        if (n % 5 === 0) await sleep(1);
      }
    })();
    const joined: Array<{ c: StreamClient; history: { messages: any[] } }> = [];
    for (let i = 0; i < 10; i++) {
      await sleep(10);
      joined.push(await join(s, key, { userId: `j${i}` }));
    }
    posting = false;
    await poster;
    teacher.chat('end');
    for (const j of joined) {
      for (;;) if ((await j.c.next('chat', 10_000)).data.message === 'end') break;
    }
    const order = (await teacher.collect('chat', n + 1, 10_000)).map((f) => f.data.id as string);
    for (const j of joined) {
      const ids = [
        ...j.history.messages.map((m) => m.id as string),
        ...j.c.frames.filter((f) => f.type === 'chat').map((f) => f.data.id as string),
      ];
      assert.equal(new Set(ids).size, ids.length, 'no chat twice');
      const start = order.indexOf(ids[0] as string);
      assert.deepEqual(ids, order.slice(start, start + ids.length), 'nothing missed');
      assert.equal(ids.at(-1), order.at(-1));
      j.c.close();
    }
    teacher.close();
  });
});

describe('history memory bounds', () => {
  let s: TestServer;
  let calls: ReturnType<typeof storeCalls>;

  before(async () => {
    s = await startServer({ ...ENV, STREAM_HISTORY_CACHE_STREAMS: '2' });
    calls = storeCalls(s.app.store);
  });
  after(() => s.close());

  it('keeps STREAM_HISTORY_CACHE_STREAMS streams, the one joined longest ago dropped first', async () => {
    const [a, b, c] = [await newStream(s), await newStream(s), await newStream(s)];
    const watchers = [];
    for (const key of [a, b, c]) {
      const { c: w } = await join(s, key, { userId: OWNER });
      await postInOrder(w, [`in ${key}`]);
      watchers.push(w);
    }
    await s.app.streams.flush();
    // Kept: b and c (a went when c came). Joining b keeps it; a comes back from the store.
    calls.reset();
    const onB = await join(s, b);
    assert.deepEqual(calls.names.slice(), []);
    const onA = await join(s, a);
    assert.ok(calls.names.includes('streamRecent'));
    assert.deepEqual(texts(onA.history.messages), [`in ${a}`]);
    // c went for a: b was joined after it.
    calls.reset();
    const onC = await join(s, c);
    assert.ok(calls.names.includes('streamRecent'));
    assert.deepEqual(texts(onC.history.messages), [`in ${c}`]);
    for (const w of [...watchers, onA.c, onB.c, onC.c]) w.close();
  });

  it('a stream read again from the store while chats pour in misses none and repeats none', async () => {
    const [hot, other] = [await newStream(s), await newStream(s)];
    const { c: teacher } = await join(s, hot, { userId: OWNER });
    const { c: elsewhere } = await join(s, other);
    const third = await newStream(s);
    const { c: away } = await join(s, third);
    let posting = true;
    let n = 0;
    const poster = (async () => {
      while (posting) {
        teacher.chat(`h${n++}`);
        if (n % 5 === 0) await sleep(1);
      }
    })();
    // Joins of the other two streams push the hot one out of memory between its joins.
    const joined: Array<{ c: StreamClient; history: { messages: any[] } }> = [];
    const extra: StreamClient[] = [];
    for (let i = 0; i < 8; i++) {
      extra.push((await join(s, other)).c, (await join(s, third)).c);
      const pending = [join(s, hot, { userId: `a${i}` }), join(s, hot, { userId: `b${i}` })];
      joined.push(...(await Promise.all(pending)));
    }
    posting = false;
    await poster;
    teacher.chat('end');
    for (const j of joined) {
      for (;;) if ((await j.c.next('chat', 10_000)).data.message === 'end') break;
    }
    const order = (await teacher.collect('chat', n + 1, 10_000)).map((f) => f.data.id as string);
    for (const j of joined) {
      const ids = [
        ...j.history.messages.map((m) => m.id as string),
        ...j.c.frames.filter((f) => f.type === 'chat').map((f) => f.data.id as string),
      ];
      assert.equal(new Set(ids).size, ids.length, 'no chat twice');
      const start = order.indexOf(ids[0] as string);
      assert.deepEqual(ids, order.slice(start, start + ids.length), 'nothing missed');
      j.c.close();
    }
    for (const c of [teacher, elsewhere, away, ...extra]) c.close();
  });
});

if (await requireServices('redis')) {
  describe('history while Redis does not answer', () => {
    // Accepts connections and answers nothing: Redis stalled, or not up yet when the node started.
    const redis = new TcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379));
    let server: TestServer;

    before(async () => {
      redis.hold();
      await redis.start();
      server = await startServer({
        ...ENV,
        REDIS_URL: `redis://127.0.0.1:${redis.port}`,
        REDIS_PREFIX: tempRedisPrefix(),
        STREAM_HISTORY_SETTLE_MS: '300',
      });
    });

    after(async () => {
      // Redis answers again: what was queued meanwhile is answered, not cut.
      redis.release();
      await until(async () => (await fetch(`${server.url}/readyz`)).status === 200, 'Redis again');
      await server?.close();
      await redis.stop();
    });

    /** `p`'s value, or 'still waiting' after `ms`. */
    const within = <T>(p: Promise<T>, ms: number) =>
      Promise.race([p, sleep(ms).then(() => 'still waiting' as const)]);

    it("the messages API's newest page answers after STREAM_HISTORY_SETTLE_MS at most", async () => {
      const key = await newStream(server);
      const page = await within(api(server.url, 'GET', `/api/streams/${key}/messages`), 3_000);
      assert.ok(page !== 'still waiting', 'the page is still waiting');
      assert.equal(page.status, 200);
    });

    it('a join gets its history, flagged as a gap, after STREAM_HISTORY_SETTLE_MS at most', async () => {
      const key = await newStream(server);
      const c = await StreamClient.connect(server.wsUrl, key);
      try {
        const history = await within(c.next('history', 5_000), 3_000);
        assert.ok(history !== 'still waiting', 'the history is still waiting');
        assert.equal(history.data.gap, true);
      } finally {
        c.close();
      }
    });
  });
}
