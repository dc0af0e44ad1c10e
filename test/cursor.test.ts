/**
 * Paging cursors: a `before` that is well-formed but names nothing in the
 * collection paged (an id never stored, one of another request or stream, a
 * request outside the caller's inbox) is `not_found`, never an empty last
 * page, which a client would take for "nothing older" and stop paging. A
 * cursor that names something still pages, deleted chats and messages
 * included, and the last page still says `hasMore: false`. Real clients
 * (socket.io-client, fetch, ws) against charla on SQLite and on PostgreSQL.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { newId } from '../src/core/ids.js';
import {
  api,
  joinStream,
  postInOrder,
  sleep,
  startServer,
  type TestServer,
  until,
  userToken,
} from './helpers.js';
import { RequestClient } from './request-client.js';
import { PG_URL, requireServices, tempSchema } from './services.js';

const TEACHER = { username: 'ana', role: 'TEACHER' };
const LAB = { username: 'lab', role: 'LAB' };

/** What every refusal of a Socket.IO event looks like through its acknowledgement. */
function assertRefused(answer: any, code: string): void {
  assert.equal(answer.ok, false, JSON.stringify(answer));
  assert.equal(answer.error_code, code);
  assert.equal(typeof answer.message, 'string');
  assert.ok(answer.message.length > 0);
}

/** The `exception` emit that goes with a refused event, as for every other refusal. */
async function assertException(
  c: RequestClient,
  event: string,
  seen: number,
  requestId?: string,
): Promise<void> {
  const e = await c.next('exception', () => c.of('exception').length > seen);
  const last = c.of('exception').at(-1);
  assert.equal(last.event, event, JSON.stringify(e));
  assert.equal(last.error_code, 'not_found');
  assert.equal(typeof last.message, 'string');
  if (requestId !== undefined) assert.equal(last.requestId, requestId);
}

/** The HTTP API's usual error body, with its status. */
function assertNotFound(res: { status: number; body: any }): void {
  assert.equal(res.status, 404, JSON.stringify(res.body));
  assert.equal(res.body.error_code, 'not_found');
  assert.equal(typeof res.body.message, 'string');
}

function cursorSuite(name: string, env: () => Promise<Record<string, string>>): void {
  describe(`paging cursors on ${name}`, () => {
    let s: TestServer;
    let teacher: RequestClient;
    let lab: RequestClient;
    // Teacher 1 owns `mine` (five messages) and `also` (one); teacher 2 owns
    // `theirs`, where nobody has written.
    const mine = newId();
    const also = newId();
    const theirs = newId();
    const sent: string[] = [];
    let elsewhere = '';

    before(async () => {
      s = await startServer(await env());
      for (const [r, owner] of [
        [mine, '1'],
        [also, '1'],
        [theirs, '2'],
      ] as const) {
        assert.equal(
          (await api(s.url, 'PUT', `/api/requests/${r}`, { ownerId: owner })).status,
          201,
        );
      }
      teacher = await RequestClient.connect(s.url, await userToken('1', TEACHER));
      lab = await RequestClient.connect(s.url, await userToken('7', LAB));
      for (const c of [teacher, lab]) {
        assert.equal((await c.ask('joinRoom', { requestId: mine })).ok, true);
      }
      assert.equal((await teacher.ask('joinRoom', { requestId: also })).ok, true);
      for (let i = 0; i < 5; i++) {
        const a = await teacher.ask('message', { requestId: mine, message: `m${i}` });
        assert.equal(a.ok, true);
        sent.push(a.message._id);
      }
      elsewhere = (await teacher.ask('message', { requestId: also, message: 'n0' })).message._id;
    });

    after(async () => {
      teacher?.socket.close();
      lab?.socket.close();
      await s?.close();
    });

    it('loadHistory: an unknown cursor, or one of another request, is not_found; a deleted one pages', async () => {
      const ids = (p: any) => p.messages.map((m: any) => m._id);
      for (const cursor of [newId(), elsewhere]) {
        const seen = lab.of('exception').length;
        const answer = await lab.ask('loadHistory', { requestId: mine, before: cursor });
        assertRefused(answer, 'not_found');
        await assertException(lab, 'loadHistory', seen, mine);
      }
      // A valid cursor still pages, and the last page says so.
      const page = await lab.ask('loadHistory', { requestId: mine, before: sent[3], limit: 2 });
      assert.equal(page.ok, true);
      assert.deepEqual(ids(page), sent.slice(1, 3));
      assert.equal(page.hasMore, true);
      const last = await lab.ask('loadHistory', { requestId: mine, before: sent[1], limit: 2 });
      assert.deepEqual(ids(last), sent.slice(0, 1));
      assert.equal(last.hasMore, false);
      const first = await lab.ask('loadHistory', { requestId: mine, before: sent[0] });
      assert.deepEqual(
        { ok: first.ok, messages: first.messages, hasMore: first.hasMore },
        {
          ok: true,
          messages: [],
          hasMore: false,
        },
      );
      // A malformed id keeps its answer.
      assertRefused(
        await lab.ask('loadHistory', { requestId: mine, before: 'nope' }),
        'invalid_payload',
      );
      // A deleted message keeps its row, and so is still a cursor.
      const a = await teacher.ask('message', { requestId: also, message: 'to delete' });
      const id = a.message._id;
      const later = (await teacher.ask('message', { requestId: also, message: 'after' })).message
        ._id;
      assert.equal(
        (await teacher.ask('deleteMessage', { requestId: also, messageId: id })).ok,
        true,
      );
      const past = await teacher.ask('loadHistory', { requestId: also, before: id });
      assert.equal(past.ok, true, JSON.stringify(past));
      assert.deepEqual(ids(past), [elsewhere]);
      assert.equal(past.hasMore, false);
      const around = await teacher.ask('loadHistory', { requestId: also, before: later });
      assert.equal(around.messages.at(-1)?._id, id);
      assert.equal(typeof around.messages.at(-1)?.deletedAt, 'string');
    });

    it('listRequests: a cursor outside the inbox is not_found', async () => {
      // Unknown, another teacher's, and (for the lab) one nobody has written in.
      for (const [c, cursor] of [
        [teacher, newId()],
        [teacher, theirs],
        [lab, newId()],
        [lab, theirs],
      ] as const) {
        const seen = c.of('exception').length;
        assertRefused(await c.ask('listRequests', { before: cursor }), 'not_found');
        await assertException(c, 'listRequests', seen);
      }
      const top = await teacher.ask('listRequests', { limit: 1 });
      assert.equal(top.ok, true);
      assert.equal(top.hasMore, true);
      const next = await teacher.ask('listRequests', {
        before: top.requests[0].requestId,
        limit: 1,
      });
      assert.equal(next.ok, true);
      assert.equal(next.requests.length, 1);
      assert.notEqual(next.requests[0].requestId, top.requests[0].requestId);
      assert.equal(next.hasMore, false);
      const end = await teacher.ask('listRequests', { before: next.requests[0].requestId });
      assert.deepEqual(
        { ok: end.ok, requests: end.requests, hasMore: end.hasMore },
        {
          ok: true,
          requests: [],
          hasMore: false,
        },
      );
      assertRefused(await teacher.ask('listRequests', { before: 'nope' }), 'invalid_payload');
    });

    it("GET /api/requests/{id}/messages: an unknown cursor, or another request's, is 404", async () => {
      const path = (r: string, q: string) => `/api/requests/${r}/messages?${q}`;
      assertNotFound(await api(s.url, 'GET', path(mine, `before=${newId()}`)));
      assertNotFound(await api(s.url, 'GET', path(mine, `before=${elsewhere}`)));
      assertNotFound(await api(s.url, 'GET', path(theirs, `before=${sent[2]}`)));
      const page = await api(s.url, 'GET', path(mine, `before=${sent[4]}&limit=3`));
      assert.equal(page.status, 200);
      assert.deepEqual(
        page.body.messages.map((m: any) => m._id),
        sent.slice(1, 4),
      );
      assert.equal(page.body.hasMore, true);
      const last = await api(s.url, 'GET', path(mine, `before=${sent[1]}&limit=3`));
      assert.equal(last.status, 200);
      assert.equal(last.body.messages.length, 1);
      assert.equal(last.body.hasMore, false);
      const bad = await api(s.url, 'GET', path(mine, 'before=nope'));
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error_code, 'invalid_payload');
    });

    it("GET /api/streams/{key}/messages: an unknown cursor, or another stream's, is 404", async () => {
      for (const key of ['alpha', 'beta']) {
        assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, {})).status, 201);
      }
      const a = await joinStream(s.wsUrl, 'alpha', '3');
      const b = await joinStream(s.wsUrl, 'beta', '3');
      try {
        const chats = (await postInOrder(a.c, ['a0', 'a1', 'a2', 'a3'])).map((f) => f.data.id);
        const [other] = (await postInOrder(b.c, ['b0'])).map((f) => f.data.id);
        const path = (q: string) => `/api/streams/alpha/messages?${q}`;
        // Stored a moment after they are seen live: wait until the newest page holds them.
        await until(
          async () => (await api(s.url, 'GET', path('limit=10'))).body.messages.length === 4,
          'the chats stored',
        );
        assertNotFound(await api(s.url, 'GET', path(`before=${newId()}`)));
        assertNotFound(await api(s.url, 'GET', path(`before=${other}`)));
        const page = await api(s.url, 'GET', path(`before=${chats[3]}&limit=2`));
        assert.equal(page.status, 200);
        assert.deepEqual(
          page.body.messages.map((m: any) => m.id),
          chats.slice(1, 3),
        );
        assert.equal(page.body.hasMore, true);
        const last = await api(s.url, 'GET', path(`before=${chats[1]}&limit=2`));
        assert.deepEqual(
          last.body.messages.map((m: any) => m.id),
          chats.slice(0, 1),
        );
        assert.equal(last.body.hasMore, false);
        // A deleted chat is kept for audit, and is still a cursor.
        const del = await api(s.url, 'DELETE', `/api/streams/alpha/messages/${chats[2]}`);
        assert.equal(del.status, 200, JSON.stringify(del.body));
        const past = await api(s.url, 'GET', path(`before=${chats[2]}`));
        assert.equal(past.status, 200);
        assert.deepEqual(
          past.body.messages.map((m: any) => m.id),
          chats.slice(0, 2),
        );
        assert.equal(past.body.hasMore, false);
        const bad = await api(s.url, 'GET', path('before=nope'));
        assert.equal(bad.status, 400);
        assert.equal(bad.body.error_code, 'invalid_payload');
      } finally {
        a.c.close();
        b.c.close();
      }
    });

    it("GET /api/streams/{key}/moderation-log: an unknown cursor, or another stream's, is 404", async () => {
      for (const key of ['log-a', 'log-b']) {
        assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, {})).status, 201);
      }
      for (const user of ['21', '22', '23']) {
        const ban = await api(s.url, 'PUT', `/api/streams/log-a/bans/${user}`, {});
        assert.equal(ban.status < 300, true, JSON.stringify(ban.body));
      }
      await api(s.url, 'PUT', '/api/streams/log-b/bans/24', {});
      const log = (key: string, q = '') =>
        api(s.url, 'GET', `/api/streams/${key}/moderation-log?${q}`);
      const ids = (await log('log-a')).body.actions.map((x: any) => x.id as string);
      assert.equal(ids.length, 3);
      const [other] = (await log('log-b')).body.actions.map((x: any) => x.id as string);
      assert.ok(other);
      // Newer than every log-a action: read as a position, it would page log-a.
      assertNotFound(await log('log-a', `before=${other}`));
      assertNotFound(await log('log-a', `before=${Number(other) + 1000}`));
      const page = await log('log-a', `before=${ids[0]}&limit=1`);
      assert.equal(page.status, 200);
      assert.deepEqual(
        page.body.actions.map((x: any) => x.id),
        [ids[1]],
      );
      assert.equal(page.body.hasMore, true);
      const last = await log('log-a', `before=${ids[1]}&limit=1`);
      assert.deepEqual(
        last.body.actions.map((x: any) => x.id),
        [ids[2]],
      );
      assert.equal(last.body.hasMore, false);
      const bad = await log('log-a', 'before=nope');
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error_code, 'invalid_payload');
    });
  });
}

cursorSuite('SQLite', async () => ({}));

if (await requireServices('postgres')) {
  const schema = await tempSchema();
  cursorSuite('PostgreSQL', async () => ({ DATABASE_URL: schema.url }));
  after(() => schema.drop());

  describe('a stream cursor seen live before it is stored', () => {
    let stalled: Awaited<ReturnType<typeof tempSchema>>;
    let server: TestServer;

    before(async () => {
      stalled = await tempSchema();
      server = await startServer({ DATABASE_URL: stalled.url });
    });

    after(async () => {
      await server?.close();
      await stalled?.drop();
    });

    it('pages once the chat is stored instead of being not_found', async () => {
      assert.equal((await api(server.url, 'PUT', '/api/streams/live', {})).status, 201);
      const { c } = await joinStream(server.wsUrl, 'live', '3');
      // The stall is real: a lock on the node's table holds every chat write.
      const lock = new pg.Client({ connectionString: PG_URL });
      await lock.connect();
      try {
        const [old] = (await postInOrder(c, ['stored'])).map((f) => f.data.id);
        const path = (q: string) => `/api/streams/live/messages?${q}`;
        await until(
          async () => (await api(server.url, 'GET', path(''))).body.messages.length === 1,
          'the first chat stored',
        );
        const table = `"${new URL(stalled.url).searchParams.get('schema')}".stream_messages`;
        await lock.query('BEGIN');
        await lock.query(`LOCK TABLE ${table} IN SHARE MODE`);
        const [seen] = (await postInOrder(c, ['seen live'])).map((f) => f.data.id);
        const answer = api(server.url, 'GET', path(`before=${seen}`));
        await sleep(300);
        await lock.query('ROLLBACK');
        const page = await answer;
        assert.equal(page.status, 200, JSON.stringify(page.body));
        assert.deepEqual(
          page.body.messages.map((m: any) => m.id),
          [old],
        );
        assert.equal(page.body.hasMore, false);
      } finally {
        await lock.query('ROLLBACK').catch(() => {});
        await lock.end();
        c.close();
      }
    });
  });
}
