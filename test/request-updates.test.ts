/**
 * Coalescing of `requestUpdated` (README "Request chat", REQUEST_UPDATE_FLUSH_MS):
 * the coalescer on its own with a recording delivery, then real
 * socket.io-client sockets against charla on SQLite: a lone update is not
 * delayed, a burst ends with the right count, reads are never overtaken; and
 * two nodes on PostgreSQL and Redis, where each node coalesces for its own sockets.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MemoryBroker } from '../src/broker/memory.js';
import {
  INBOX_TOPIC,
  RequestUpdates,
  UpdateCoalescer,
  type UpdateTarget,
} from '../src/transport/request-updates.js';
import {
  API_KEY,
  api,
  type ChildServer,
  SECRET,
  sleep,
  spawnServer,
  startServer,
  type TestServer,
  until,
  userToken,
} from './helpers.js';
import { RequestClient } from './request-client.js';
import { REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';

const target = (room: string, except: string[] = []): UpdateTarget => ({ rooms: [room], except });
const frame = (t: UpdateTarget, requestId: string, unread: number) => ({
  ...t,
  update: { requestId, lastMessage: null, unread },
});

function recorder(flushMs: number, maxTracked = 1000) {
  const sent: Array<{ room: string; requestId: string; unread: number }> = [];
  const c = new UpdateCoalescer({ flushMs, maxTracked }, (t, u) =>
    sent.push({ room: t.rooms.join(','), requestId: u.requestId, unread: u.unread }),
  );
  return { c, sent };
}

describe('UpdateCoalescer', () => {
  it('sends a quiet request’s update at once, and each target’s first of an interval', () => {
    const { c, sent } = recorder(10_000);
    c.offer(frame(target('user:1'), 'r1', 1));
    c.offer(frame(target('lab:2'), 'r1', 1));
    c.offer(frame(target('user:1'), 'r2', 4));
    assert.deepEqual(sent, [
      { room: 'user:1', requestId: 'r1', unread: 1 },
      { room: 'lab:2', requestId: 'r1', unread: 1 },
      { room: 'user:1', requestId: 'r2', unread: 4 },
    ]);
    assert.equal(c.held, 0);
    c.close();
  });

  it('keeps only the newest update per target while busy, and sends it at the flush', () => {
    const { c, sent } = recorder(10_000);
    for (let unread = 1; unread <= 5; unread++) c.offer(frame(target('user:1'), 'r1', unread));
    assert.deepEqual(
      sent.map((s) => s.unread),
      [1],
    );
    assert.equal(c.held, 1);
    c.flush();
    assert.deepEqual(
      sent.map((s) => s.unread),
      [1, 5],
    );
    // Sent at this flush: busy for the next interval too.
    c.offer(frame(target('user:1'), 'r1', 6));
    assert.equal(sent.length, 2);
    c.flush();
    assert.deepEqual(
      sent.map((s) => s.unread),
      [1, 5, 6],
    );
    // An interval without updates makes it quiet again.
    c.flush();
    c.offer(frame(target('user:1'), 'r1', 7));
    assert.deepEqual(
      sent.map((s) => s.unread),
      [1, 5, 6, 7],
    );
    c.close();
  });

  it('holds every newer update of a request with one waiting, in the order they came', () => {
    const { c, sent } = recorder(10_000);
    c.offer(frame(target('lab:2'), 'r1', 3));
    c.offer(frame(target('lab:2'), 'r1', 4));
    // A read: another room of the same user, quiet, but must not overtake the 4.
    c.offer(frame(target('user:2'), 'r1', 0));
    c.offer(frame(target('user:9'), 'r2', 1));
    assert.deepEqual(
      sent.map((s) => `${s.room}=${s.unread}`),
      ['lab:2=3', 'user:9=1'],
    );
    c.flush();
    assert.deepEqual(
      sent.map((s) => `${s.room}=${s.unread}`),
      ['lab:2=3', 'user:9=1', 'lab:2=4', 'user:2=0'],
    );
    // Again, the other way round: the last arrival is the last sent.
    c.offer(frame(target('user:2'), 'r1', 1));
    c.offer(frame(target('lab:2'), 'r1', 2));
    c.offer(frame(target('user:2'), 'r1', 0));
    c.flush();
    assert.deepEqual(
      sent.slice(4).map((s) => `${s.room}=${s.unread}`),
      ['lab:2=2', 'user:2=0'],
    );
    c.close();
  });

  it('tells targets apart by their exceptions too', () => {
    const { c, sent } = recorder(10_000);
    c.offer(frame(target('role:LAB', ['user:1']), 'r1', 1));
    c.offer(frame(target('role:LAB', ['user:1', 'lab:2']), 'r1', 2));
    assert.deepEqual(
      sent.map((s) => s.unread),
      [1, 2],
    );
    c.close();
  });

  it('flushes by itself after the interval', async () => {
    const { c, sent } = recorder(30);
    c.offer(frame(target('user:1'), 'r1', 1));
    c.offer(frame(target('user:1'), 'r1', 2));
    assert.equal(sent.length, 1);
    await until(() => sent.length === 2, 'the held update');
    assert.equal(sent[1]?.unread, 2);
    c.close();
  });

  it('sends everything held at once past its bound', () => {
    const { c, sent } = recorder(10_000, 4);
    for (const id of ['r1', 'r2']) {
      c.offer(frame(target('user:1'), id, 1));
      c.offer(frame(target('user:1'), id, 2));
    }
    // Two requests tracked and two updates held: at the bound, not past it.
    assert.equal(sent.length, 2);
    c.offer(frame(target('user:1'), 'r3', 1));
    assert.deepEqual(
      sent.map((s) => `${s.requestId}=${s.unread}`),
      ['r1=1', 'r2=1', 'r3=1', 'r1=2', 'r2=2'],
    );
    assert.equal(c.held, 0);
    c.close();
  });

  it('with flushMs 0 sends every update at once', () => {
    const { c, sent } = recorder(0);
    for (let unread = 1; unread <= 3; unread++) c.offer(frame(target('user:1'), 'r1', unread));
    assert.deepEqual(
      sent.map((s) => s.unread),
      [1, 2, 3],
    );
    assert.equal(c.held, 0);
    c.close();
  });
});

describe('RequestUpdates', () => {
  it('delivers its own publications and skips malformed ones from the topic', () => {
    const broker = new MemoryBroker();
    const sent: number[] = [];
    const bad: unknown[] = [];
    const updates = new RequestUpdates(
      broker,
      { flushMs: 0, maxTracked: 10 },
      (_t, u) => sent.push(u.unread),
      (err) => bad.push(err),
    );
    for (const payload of ['not json', '{}', '{"rooms":["a"],"except":[],"update":null}', '[1]']) {
      broker.publish(INBOX_TOPIC, payload);
    }
    assert.equal(bad.length, 4);
    updates.publish(target('user:1'), { requestId: 'r1', lastMessage: null, unread: 3 });
    // Another node's publication, parsed from the topic.
    broker.publish(
      INBOX_TOPIC,
      JSON.stringify({
        ...target('user:1'),
        update: { requestId: 'r2', lastMessage: null, unread: 4 },
      }),
    );
    assert.deepEqual(sent, [3, 4]);
    updates.close();
    broker.publish(INBOX_TOPIC, JSON.stringify(frame(target('user:1'), 'r3', 5)));
    assert.deepEqual(sent, [3, 4], 'nothing after close');
  });
});

describe('requestUpdated coalescing, SQLite', () => {
  const FLUSH_MS = 400;
  let server: TestServer;
  const requestId = '6751b6df1ad14eaa13a0bb01';

  before(async () => {
    server = await startServer({
      REQUEST_UPDATE_FLUSH_MS: String(FLUSH_MS),
      REQUEST_RATE_LIMIT: '10000/1s',
      FLOOD_LIMIT: '100000',
    });
    assert.equal(
      (await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 41 })).status,
      201,
    );
  });
  after(() => server.close());

  const mine = (p: any) => p.requestId === requestId;

  it('a lone update arrives at once, a burst ends with the right count and fewer updates', async () => {
    const teacher = await RequestClient.connect(
      server.url,
      await userToken('41', { role: 'TEACHER' }),
    );
    const otherTab = await RequestClient.connect(
      server.url,
      await userToken('41', { role: 'TEACHER' }),
    );
    const lab = await RequestClient.connect(server.url, await userToken('42', { role: 'LAB' }));
    try {
      assert.equal((await lab.ask('joinRoom', { requestId })).ok, true);
      const started = performance.now();
      await lab.ask('message', { requestId, message: 'lone' });
      await teacher.next('requestUpdated', (p) => mine(p) && p.unread === 1);
      const lone = performance.now() - started;
      assert.ok(lone < FLUSH_MS / 2, `a lone update took ${lone.toFixed(0)} ms`);
      // Quiet again: an interval with no update passes.
      await sleep(2.5 * FLUSH_MS);

      const n = 30;
      await Promise.all(
        Array.from({ length: n }, (_, i) =>
          lab.ask('message', { requestId, message: `burst ${i}` }),
        ),
      );
      for (const tab of [teacher, otherTab]) {
        await tab.next('requestUpdated', (p) => mine(p) && p.unread === 1 + n, 3 * FLUSH_MS);
        const got = tab.of('requestUpdated').filter(mine);
        assert.equal(got.at(-1).unread, 1 + n);
        assert.equal(got.at(-1).lastMessage.message, `burst ${n - 1}`);
        assert.ok(got.length < 1 + n, `${got.length} updates for ${n + 1} messages`);
        const counts = got.map((u) => u.unread);
        assert.deepEqual(
          counts,
          [...counts].sort((a, b) => a - b),
          'counts never go back',
        );
      }
      // The sender's own count is 0 throughout.
      assert.ok(
        lab
          .of('requestUpdated')
          .filter(mine)
          .every((u) => u.unread === 0),
      );
    } finally {
      for (const c of [teacher, otherTab, lab]) c.socket.close();
    }
  });

  it('a read right after a burst is the last count every tab of the reader gets', async () => {
    // A lab colleague with counters of their own: message updates reach their
    // `lab:` room, their reads their `user:` room; the read must not be overtaken.
    const colleague = await userToken('43', { role: 'LAB' });
    const tab1 = await RequestClient.connect(server.url, colleague);
    const tab2 = await RequestClient.connect(server.url, colleague);
    const teacher = await RequestClient.connect(
      server.url,
      await userToken('41', { role: 'TEACHER' }),
    );
    const lab = await RequestClient.connect(server.url, await userToken('42', { role: 'LAB' }));
    try {
      assert.equal((await lab.ask('joinRoom', { requestId })).ok, true);
      assert.equal((await tab1.ask('joinRoom', { requestId })).ok, true);
      const readAll = async () => {
        const page = await tab1.ask('loadHistory', { requestId, limit: 500 });
        const ids = page.messages.map((m: any) => m._id);
        assert.equal((await tab1.ask('readMessages', { requestId, messages: ids })).ok, true);
      };
      await readAll();
      await sleep(2.5 * FLUSH_MS);

      await Promise.all(
        Array.from({ length: 10 }, (_, i) => lab.ask('message', { requestId, message: `r ${i}` })),
      );
      await tab1.next('requestUpdated', (p) => mine(p) && p.unread > 0);
      await readAll();
      await sleep(3 * FLUSH_MS);
      for (const tab of [tab1, tab2]) {
        const got = tab.of('requestUpdated').filter(mine);
        assert.equal(got.at(-1).unread, 0, JSON.stringify(got.map((u) => u.unread)));
      }
      // The teacher's last update says what their inbox says.
      const inbox = await teacher.ask('listRequests', {});
      const row = inbox.requests.find(mine);
      assert.equal(teacher.of('requestUpdated').filter(mine).at(-1).unread, row.unread);
    } finally {
      for (const c of [tab1, tab2, teacher, lab]) c.socket.close();
    }
  });
});

if (await requireServices('postgres', 'redis')) {
  describe('requestUpdated coalescing, two nodes on PostgreSQL and Redis', () => {
    const FLUSH_MS = 400;
    const requestId = '6751b6df1ad14eaa13a0bb02';
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    let A: ChildServer;
    let B: ChildServer;

    before(async () => {
      schema = await tempSchema();
      const env = {
        DATABASE_URL: schema.url,
        REDIS_URL,
        REDIS_PREFIX: tempRedisPrefix(),
        JWT_SECRET: SECRET,
        API_KEY,
        REQUEST_RATE_LIMIT: '10000/1s',
        FLOOD_LIMIT: '100000',
        REQUEST_UPDATE_FLUSH_MS: String(FLUSH_MS),
      };
      [A, B] = await Promise.all([spawnServer(env), spawnServer(env)]);
      assert.equal(
        (await api(A.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 51 })).status,
        201,
      );
    });

    after(async () => {
      const codes = await Promise.all([A, B].map((n) => n?.stop('SIGTERM')));
      await schema.drop();
      assert.deepEqual(codes, [0, 0]);
    });

    const mine = (p: any) => p.requestId === requestId;

    it('every tab of each user, on either node, ends with that user’s count', async () => {
      const teacher = await userToken('51', { role: 'TEACHER' });
      const colleague = await userToken('53', { role: 'LAB' });
      const teacherA = await RequestClient.connect(A.url, teacher);
      const teacherB = await RequestClient.connect(B.url, teacher);
      const colleagueA = await RequestClient.connect(A.url, colleague);
      const colleagueB = await RequestClient.connect(B.url, colleague);
      const sender = await RequestClient.connect(A.url, await userToken('52', { role: 'LAB' }));
      const tabs = [teacherA, teacherB, colleagueA, colleagueB, sender];
      try {
        assert.equal((await sender.ask('joinRoom', { requestId })).ok, true);
        assert.equal((await colleagueB.ask('joinRoom', { requestId })).ok, true);
        // Every node's inbox subscription is live once an update reaches both.
        await sender.ask('message', { requestId, message: 'first' });
        await teacherA.next('requestUpdated', mine);
        await teacherB.next('requestUpdated', mine);
        // The colleague reads on B: from now on they have counters of their own.
        const first = await colleagueB.ask('loadHistory', { requestId });
        const ids = first.messages.map((m: any) => m._id);
        assert.equal((await colleagueB.ask('readMessages', { requestId, messages: ids })).ok, true);
        await sleep(2.5 * FLUSH_MS);

        const n = 30;
        await Promise.all(
          Array.from({ length: n }, (_, i) =>
            sender.ask('message', { requestId, message: `burst ${i}` }),
          ),
        );
        // The colleague reads half of the burst on B while updates are held.
        const page = await colleagueB.ask('loadHistory', { requestId, limit: 500 });
        const half = page.messages.slice(0, 1 + n / 2).map((m: any) => m._id);
        assert.equal(
          (await colleagueB.ask('readMessages', { requestId, messages: half })).ok,
          true,
        );
        await sleep(3 * FLUSH_MS);

        const truth = async (tab: RequestClient) =>
          (await tab.ask('listRequests', {})).requests.find(mine).unread;
        assert.equal(await truth(teacherA), 1 + n);
        assert.equal(await truth(colleagueA), n / 2);
        for (const [tab, want] of [
          [teacherA, 1 + n],
          [teacherB, 1 + n],
          [colleagueA, n / 2],
          [colleagueB, n / 2],
        ] as const) {
          const got = tab.of('requestUpdated').filter(mine);
          assert.equal(got.at(-1).unread, want, JSON.stringify(got.map((u) => u.unread)));
        }
        // Coalesced on each node: fewer updates than messages, on both.
        for (const tab of [teacherA, teacherB]) {
          const got = tab.of('requestUpdated').filter(mine).length;
          assert.ok(got < 1 + n, `${got} updates for ${1 + n} messages`);
        }
      } finally {
        for (const tab of tabs) tab.socket.close();
      }
    });
  });
}
