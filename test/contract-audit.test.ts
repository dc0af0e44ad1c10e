/**
 * The external contract's round-2 sections (7 live classroom, 8 request chat
 * inbox, typing, edits, attachments, 9 webhooks, 10 hostile peers), checked
 * from outside as the platform's testers see charla: real `ws`,
 * `socket.io-client` and `fetch` clients against one real server, a webhook
 * receiver that verifies signatures with nothing but `node:crypto`, and the
 * exact names, shapes, status codes and orders the contract states.
 */
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../src/config.js';
import { newId } from '../src/core/ids.js';
import {
  API_KEY,
  api,
  type Frame,
  joinStream,
  postInOrder,
  SECRET,
  StreamClient,
  sleep,
  startServer,
  type TestServer,
  until,
  userToken,
} from './helpers.js';
import { RequestClient, settle } from './request-client.js';
import { REDIS_URL, tempRedisPrefix, tempSchema } from './services.js';

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const HEX24 = /^[0-9a-f]{24}$/;
const ATTACHMENTS = 'https://files.example.edu/,https://cdn.example.edu/uploads/';

/** A webhook endpoint that records every POST, checked by hand against the contract's signature rule. */
interface Hook {
  contentType?: string;
  id: string;
  timestamp: string;
  signature: string;
  body: string;
  event: { type: string; timestamp: string; data: any };
}
const WEBHOOK_KEY = randomBytes(32);
const WEBHOOK_SECRET = `whsec_${WEBHOOK_KEY.toString('base64')}`;
const hooks: Hook[] = [];
let receiver: Server;

let s: TestServer;
let schema: { url: string; drop(): Promise<void> } | undefined;
let n = 0;
const key = () => `audit-${++n}-${Date.now().toString(36)}`;

before(async () => {
  receiver = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      hooks.push({
        contentType: String(req.headers['content-type']),
        id: String(req.headers['webhook-id']),
        timestamp: String(req.headers['webhook-timestamp']),
        signature: String(req.headers['webhook-signature']),
        body,
        event: JSON.parse(body),
      });
      res.writeHead(204);
      res.end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  const port = (receiver.address() as AddressInfo).port;
  // CONTRACT_AUDIT_STORE=postgres holds the PostgreSQL store to the same contract,
  // CONTRACT_AUDIT_REDIS=1 the Redis fan-out and counters.
  if (process.env.CONTRACT_AUDIT_STORE === 'postgres') schema = await tempSchema();
  s = await startServer({
    ...(schema ? { DATABASE_URL: schema.url } : {}),
    ...(process.env.CONTRACT_AUDIT_REDIS
      ? { REDIS_URL: REDIS_URL, REDIS_PREFIX: tempRedisPrefix() }
      : {}),
    STREAM_RATE_LIMIT: '6/30s',
    STREAM_VIEWERS_INTERVAL_MS: '100',
    ATTACHMENT_URL_PREFIXES: ATTACHMENTS,
    WEBHOOK_URL: `http://127.0.0.1:${port}/hooks`,
    WEBHOOK_SECRET,
    WEBHOOK_POLL_MS: '50',
    WEBHOOK_UNREAD_AFTER_SECONDS: '1',
  });
});
after(async () => {
  await s.close();
  await schema?.drop();
  await new Promise<void>((r) => receiver.close(() => r()));
});

/** Every error body of the HTTP API. */
function isError(res: { status: number; body: any }, status: number, code: string): void {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body.error_code, code, JSON.stringify(res.body));
  assert.equal(typeof res.body.message, 'string');
  assert.ok(res.body.message.length > 0);
}

/** A client-side 4xx for a body or query the contract's ranges exclude. */
function isInvalid(res: { status: number; body: any }): void {
  assert.ok(res.status === 400 || res.status === 422, `status ${res.status}`);
  assert.equal(res.body.error_code, 'invalid_payload', JSON.stringify(res.body));
  assert.equal(typeof res.body.message, 'string');
}

// ───────────────────────────── section 7 ─────────────────────────────

const OWNER = '700';
const MOD = '701';
const STAFF = '702';

async function classroom(title = 'Química'): Promise<string> {
  const k = key();
  assert.equal(
    (await api(s.url, 'PUT', `/api/streams/${k}`, { title, ownerId: OWNER })).status,
    201,
  );
  assert.equal((await api(s.url, 'PATCH', `/api/streams/${k}`, { moderators: [MOD] })).status, 200);
  return k;
}

/** A viewer of `k` on this file's server: see `joinStream`. */
const join = (k: string, userId?: string, opts: { query?: string; roles?: string[] } = {}) =>
  joinStream(s.wsUrl, k, userId, opts);

/** The next `error` frame; fails on any chat or broadcast before it. */
async function nextError(c: StreamClient): Promise<any> {
  const f = await c.next();
  assert.equal(f.type, 'error', JSON.stringify(f));
  return f.data;
}

/** The next `moderation` frame about `userId` (and of `action`, when given). */
async function nextModeration(c: StreamClient, userId: string, action?: string): Promise<Frame> {
  for (;;) {
    const f = await c.next('moderation');
    if (f.data.userId === userId && (action === undefined || f.data.action === action)) return f;
  }
}

async function nextStream(c: StreamClient, test: (d: any) => boolean): Promise<any> {
  for (;;) {
    const f = await c.next('stream');
    if (test(f.data)) return f.data;
  }
}

describe('7 live classroom: frames', () => {
  it('sends auth, stream, history in that order with the named fields', async () => {
    const k = await classroom('Física');
    const { c, stream, history } = await join(k);
    assert.deepEqual(Object.keys(stream.data).sort(), [
      'key',
      'membersOnly',
      'paused',
      'pinned',
      'slowModeSeconds',
      'title',
      'viewers',
    ]);
    assert.equal(stream.data.key, k);
    assert.equal(stream.data.title, 'Física');
    assert.equal(typeof stream.data.viewers, 'number');
    assert.equal(stream.data.slowModeSeconds, 0);
    assert.equal(stream.data.membersOnly, false);
    assert.equal(stream.data.paused, false);
    assert.equal(stream.data.pinned, null);
    assert.deepEqual(history.data, { messages: [], gap: false });
    c.close();
  });

  it('puts badges on every chat: owner, listed moderator, MODERATOR role, nobody', async () => {
    const k = await classroom();
    const { c: viewer } = await join(k);
    const cases: Array<[string, string[], string[]]> = [
      [OWNER, [], ['owner']],
      [MOD, [], ['moderator']],
      [STAFF, ['MODERATOR'], ['moderator']],
      ['703', ['moderator'], ['moderator']],
      ['704', [], []],
    ];
    for (const [id, roles, badges] of cases) {
      const { c } = await join(k, id, { roles });
      c.chat(`from ${id}`);
      const f = await viewer.next('chat');
      assert.equal(f.data.message, `from ${id}`);
      assert.deepEqual(f.data.badges, badges, `user ${id}`);
      assert.equal(f.data.userId, id);
      assert.match(f.data.id, HEX24);
      assert.match(f.data.sentAt, ISO);
      c.close();
    }
    const { history } = await join(k);
    assert.deepEqual(
      history.data.messages.map((m: any) => m.badges),
      cases.map(([, , b]) => b),
    );
    viewer.close();
  });

  it('refuses every moderator frame from a non-moderator and from an anonymous viewer with forbidden', async () => {
    const k = await classroom();
    const { c: owner } = await join(k, OWNER);
    const [chat] = await postInOrder(owner, ['pin me']);
    const id = chat?.data.id;
    const frames = [
      { type: 'delete', data: { id } },
      { type: 'timeout', data: { userId: '9', seconds: 60 } },
      { type: 'ban', data: { userId: '9' } },
      { type: 'unban', data: { userId: '9' } },
      { type: 'settings', data: { paused: true } },
      { type: 'pin', data: { id } },
      { type: 'pin', data: { id: null } },
    ];
    for (const who of ['705', undefined]) {
      const { c } = await join(k, who);
      for (const f of frames) {
        c.send(f);
        const e = await nextError(c);
        assert.equal(e.error_code, 'forbidden', `${f.type} from ${who ?? 'anonymous'}`);
        assert.equal(typeof e.message, 'string');
      }
      c.close();
    }
    await settle();
    // Nothing happened: the owner saw no broadcast, the chat is there and not pinned.
    assert.deepEqual(owner.rest(), []);
    const info = await api(s.url, 'GET', `/api/streams/${k}`);
    assert.equal(info.body.pinned, null);
    assert.equal(info.body.paused, false);
    assert.deepEqual((await api(s.url, 'GET', `/api/streams/${k}/bans`)).body, { bans: [] });
    owner.close();
  });

  it('delete: broadcasts {id, by}, the API keeps it with deletedAt/deletedBy, history frames never show it', async () => {
    const k = await classroom();
    const { c: owner } = await join(k, OWNER);
    const { c: viewer } = await join(k);
    const { c: user } = await join(k, '710');
    const [a, b] = await postInOrder(user, ['keep', 'remove']);
    const { c: mod } = await join(k, MOD);
    mod.send({ type: 'delete', data: { id: b?.data.id } });
    for (const c of [owner, viewer, user, mod]) {
      const d = await c.next('delete');
      assert.deepEqual(d.data, { id: b?.data.id, by: MOD });
    }
    await s.app.streams.flush();
    const page = await api(s.url, 'GET', `/api/streams/${k}/messages`);
    assert.equal(page.status, 200);
    assert.equal(page.body.hasMore, false);
    const byId = new Map(page.body.messages.map((m: any) => [m.id, m]));
    const kept = byId.get(a?.data.id) as any;
    const gone = byId.get(b?.data.id) as any;
    assert.ok(kept.deletedAt === undefined || kept.deletedAt === null);
    assert.match(gone.deletedAt, ISO);
    assert.equal(gone.deletedBy, MOD);
    const { c: late, history } = await join(k);
    assert.deepEqual(
      history.data.messages.map((m: any) => m.message),
      ['keep'],
    );
    for (const m of history.data.messages) {
      assert.equal('deletedAt' in m, false);
      assert.equal('deletedBy' in m, false);
    }
    // A resume from before the deleted chat does not bring it back either.
    const { c: resumed, history: since } = await join(k, undefined, {
      query: `?since=${a?.data.id}`,
    });
    assert.deepEqual(since.data, { messages: [], gap: false });
    // Unknown chat id: not_found, nothing broadcast.
    mod.send({ type: 'delete', data: { id: newId() } });
    assert.equal((await nextError(mod)).error_code, 'not_found');
    mod.send({ type: 'delete', data: { id: 'nope' } });
    assert.equal((await nextError(mod)).error_code, 'invalid_payload');
    for (const c of [owner, viewer, user, mod, late, resumed]) c.close();
  });

  it('timeout: 1..1,209,600 seconds, moderation frame, timed_out with retry_after_ms', async () => {
    const k = await classroom();
    const { c: mod } = await join(k, MOD);
    const { c: user } = await join(k, '720');
    for (const seconds of [0, 1_209_601, -1, 1.5, '60']) {
      mod.send({ type: 'timeout', data: { userId: '720', seconds } });
      assert.equal((await nextError(mod)).error_code, 'invalid_payload', `seconds ${seconds}`);
    }
    mod.send({ type: 'timeout', data: { userId: '720', seconds: 1_209_600, reason: 'spam' } });
    for (const c of [mod, user]) {
      const f = await c.next('moderation');
      assert.deepEqual(f.data, { action: 'timeout', userId: '720', seconds: 1_209_600, by: MOD });
    }
    user.chat('still here?');
    const e = await nextError(user);
    assert.equal(e.error_code, 'timed_out');
    assert.equal(typeof e.retry_after_ms, 'number');
    assert.ok(e.retry_after_ms > 1_209_500_000 && e.retry_after_ms <= 1_209_600_000);
    // The user may still read.
    mod.chat('reading?');
    assert.equal((await user.next('chat')).data.message, 'reading?');
    const bans = await api(s.url, 'GET', `/api/streams/${k}/bans`);
    assert.equal(bans.status, 200);
    assert.equal(bans.body.bans.length, 1);
    const [ban] = bans.body.bans;
    assert.equal(ban.userId, '720');
    assert.match(ban.until, ISO);
    assert.equal(ban.reason, 'spam');
    assert.equal(ban.by, MOD);
    assert.match(ban.at, ISO);
    // A user id given as a number is the same user.
    mod.send({ type: 'unban', data: { userId: 720 } });
    assert.deepEqual((await user.next('moderation')).data, {
      action: 'unban',
      userId: '720',
      by: MOD,
    });
    user.chat('back');
    assert.equal((await user.next('chat')).data.message, 'back');
    mod.close();
    user.close();
  });

  it('ban/unban: banned without retry_after_ms, unban lifts it, the ban list says until null', async () => {
    const k = await classroom();
    const { c: owner } = await join(k, OWNER);
    const { c: user } = await join(k, '730');
    const { c: other } = await join(k);
    owner.send({ type: 'ban', data: { userId: '730', reason: 'rude' } });
    for (const c of [owner, user, other]) {
      const f = await c.next('moderation');
      assert.deepEqual(f.data, { action: 'ban', userId: '730', by: OWNER });
    }
    user.chat('let me in');
    const e = await nextError(user);
    assert.equal(e.error_code, 'banned');
    assert.equal('retry_after_ms' in e, false);
    await settle();
    assert.deepEqual(other.rest(), []);
    const bans = (await api(s.url, 'GET', `/api/streams/${k}/bans`)).body.bans;
    assert.equal(bans.length, 1);
    assert.deepEqual(Object.keys(bans[0]).sort(), ['at', 'by', 'reason', 'until', 'userId']);
    assert.equal(bans[0].until, null);
    assert.equal(bans[0].reason, 'rude');
    assert.equal(bans[0].by, OWNER);
    owner.send({ type: 'unban', data: { userId: '730' } });
    await user.next('moderation');
    user.chat('thanks');
    assert.equal((await other.next('chat')).data.message, 'thanks');
    assert.deepEqual((await api(s.url, 'GET', `/api/streams/${k}/bans`)).body, { bans: [] });
    for (const c of [owner, user, other]) c.close();
  });

  it('settings: 0..3,600 slow mode, broadcasts stream; slow_mode with retry_after_ms; moderators never slowed', async () => {
    const k = await classroom();
    const { c: mod } = await join(k, MOD);
    const { c: user } = await join(k, '740');
    for (const bad of [
      { slowModeSeconds: 3_601 },
      { slowModeSeconds: -1 },
      { slowModeSeconds: 2.5 },
      { paused: 'yes' },
      { membersOnly: 1 },
    ]) {
      mod.send({ type: 'settings', data: bad });
      assert.equal((await nextError(mod)).error_code, 'invalid_payload', JSON.stringify(bad));
    }
    mod.send({ type: 'settings', data: { slowModeSeconds: 3_600 } });
    for (const c of [mod, user]) await nextStream(c, (d) => d.slowModeSeconds === 3_600);
    user.chat('first');
    assert.equal((await user.next('chat')).data.message, 'first');
    user.chat('second');
    const e = await nextError(user);
    assert.equal(e.error_code, 'slow_mode');
    assert.equal(typeof e.retry_after_ms, 'number');
    assert.ok(
      e.retry_after_ms > 3_590_000 && e.retry_after_ms <= 3_600_000,
      String(e.retry_after_ms),
    );
    await postInOrder(mod, ['m1', 'm2', 'm3']);
    mod.send({ type: 'settings', data: { slowModeSeconds: 0 } });
    await nextStream(user, (d) => d.slowModeSeconds === 0);
    mod.close();
    user.close();
  });

  it('settings: paused and membersOnly refuse ordinary users, never moderators; members allowlist', async () => {
    const k = await classroom();
    const { c: owner } = await join(k, OWNER);
    const { c: user } = await join(k, '750');
    const { c: member } = await join(k, '751');
    owner.send({ type: 'settings', data: { paused: true } });
    const st = await nextStream(user, (d) => d.paused === true);
    assert.equal(st.membersOnly, false);
    user.chat('hello?');
    assert.equal((await nextError(user)).error_code, 'chat_paused');
    await postInOrder(owner, ['teacher speaks while paused']);
    owner.send({ type: 'settings', data: { paused: false, membersOnly: true } });
    await nextStream(user, (d) => d.paused === false && d.membersOnly === true);
    const put = await api(s.url, 'PUT', `/api/streams/${k}/members`, { userIds: ['751', 752] });
    assert.equal(put.status, 200);
    user.chat('me too');
    assert.equal((await nextError(user)).error_code, 'members_only');
    await postInOrder(member, ['member here']);
    const { c: staff } = await join(k, STAFF, { roles: ['MODERATOR'] });
    await postInOrder(staff, ['staff here']);
    isInvalid(await api(s.url, 'PUT', `/api/streams/${k}/members`, { userIds: 'x' }));
    isError(
      await api(s.url, 'PUT', `/api/streams/nope-${k}/members`, { userIds: [] }),
      404,
      'stream_not_found',
    );
    for (const c of [owner, user, member, staff]) c.close();
  });

  it('pin: stream frame carries the chat data (with badges), {id: null} unpins', async () => {
    const k = await classroom();
    const { c: owner } = await join(k, OWNER);
    const [chat] = await postInOrder(owner, ['read page 4']);
    owner.send({ type: 'pin', data: { id: chat?.data.id } });
    const pinned = await nextStream(owner, (d) => d.pinned !== null);
    assert.deepEqual(pinned.pinned, chat?.data);
    const { stream } = await join(k);
    assert.deepEqual(stream.data.pinned, chat?.data);
    const info = await api(s.url, 'GET', `/api/streams/${k}`);
    assert.equal(info.body.pinned.id, chat?.data.id);
    owner.send({ type: 'pin', data: { id: null } });
    await nextStream(owner, (d) => d.pinned === null);
    owner.send({ type: 'pin', data: { id: newId() } });
    assert.equal((await nextError(owner)).error_code, 'not_found');
    owner.send({ type: 'pin', data: {} });
    assert.equal((await nextError(owner)).error_code, 'invalid_payload');
    owner.close();
  });

  it('rate limit: rate_limited with retry_after_ms in data; moderators are never rate-limited', async () => {
    const k = await classroom();
    const { c: user } = await join(k, '760');
    await postInOrder(
      user,
      Array.from({ length: 6 }, (_, i) => `u${i}`),
    );
    user.chat('one too many');
    const e = await nextError(user);
    assert.equal(e.error_code, 'rate_limited');
    assert.equal(typeof e.retry_after_ms, 'number');
    assert.ok(e.retry_after_ms > 0 && e.retry_after_ms <= 30_000);
    const { c: owner } = await join(k, OWNER);
    await postInOrder(
      owner,
      Array.from({ length: 10 }, (_, i) => `o${i}`),
    );
    user.close();
    owner.close();
  });

  it('viewers: the stream frame follows the count when it changes', async () => {
    const k = await classroom();
    const { c: a } = await join(k);
    const { c: b } = await join(k);
    await nextStream(a, (d) => d.viewers === 2);
    b.close();
    await nextStream(a, (d) => d.viewers === 1);
    a.close();
  });

  it('history on join: chats after ?since=, gap true for an unknown or garbage id', async () => {
    const k = await classroom();
    const { c: owner } = await join(k, OWNER);
    const sent = await postInOrder(owner, ['h1', 'h2', 'h3']);
    const { c: a, history: after1 } = await join(k, undefined, {
      query: `?since=${sent[0]?.data.id}`,
    });
    assert.deepEqual(after1.data, { messages: [sent[1]?.data, sent[2]?.data], gap: false });
    const { c: b, history: unknown } = await join(k, undefined, { query: `?since=${newId()}` });
    assert.equal(unknown.data.gap, true);
    assert.deepEqual(
      unknown.data.messages.map((m: any) => m.message),
      ['h1', 'h2', 'h3'],
    );
    const { c: c2, history: garbage } = await join(k, undefined, { query: '?since=%E2%82%AC!' });
    assert.equal(garbage.data.gap, true);
    // Every live chat after the history is newer than all of it.
    owner.chat('h4');
    assert.equal((await b.next('chat')).data.message, 'h4');
    for (const c of [owner, a, b, c2]) c.close();
  });
});

describe('7 live classroom: stream lifecycle', () => {
  it('a PUT without ownerId keeps the owner; a PUT after DELETE opens the stream again', async () => {
    const k = await classroom('Historia');
    assert.equal(
      (await api(s.url, 'PUT', `/api/streams/${k}`, { title: 'Historia II' })).status,
      200,
    );
    const info = (await api(s.url, 'GET', `/api/streams/${k}`)).body;
    assert.equal(info.ownerId, OWNER);
    assert.equal(info.title, 'Historia II');
    assert.deepEqual(info.moderators, [MOD]);
    const { c } = await join(k);
    assert.equal((await api(s.url, 'DELETE', `/api/streams/${k}`)).status, 200);
    assert.equal((await c.next('error')).data.error_code, 'stream_ended');
    assert.equal((await c.closed).code, 4410);
    isError(await api(s.url, 'DELETE', `/api/streams/never-${k}`), 404, 'stream_not_found');
    assert.equal((await api(s.url, 'PUT', `/api/streams/${k}`, {})).status, 200);
    assert.equal((await api(s.url, 'GET', `/api/streams/${k}`)).body.live, true);
    const { c: back } = await join(k, OWNER);
    await postInOrder(back, ['de vuelta']);
    back.close();
  });

  it('sends no stream frame when nothing changed', async () => {
    const k = await classroom();
    const { c } = await join(k);
    await sleep(500);
    assert.equal(c.all.filter((f) => f.type === 'stream').length, 1);
    c.close();
  });
});

describe('7 live classroom: timing and pins', () => {
  it('a timeout ends by itself: the user chats again and the ban list forgets it', async () => {
    const k = await classroom();
    const { c: mod } = await join(k, MOD);
    const { c: user } = await join(k, '1600');
    mod.send({ type: 'timeout', data: { userId: '1600', seconds: 1 } });
    await nextModeration(user, '1600', 'timeout');
    user.chat('too soon');
    const e = await nextError(user);
    assert.equal(e.error_code, 'timed_out');
    assert.ok(e.retry_after_ms > 0 && e.retry_after_ms <= 1_000, String(e.retry_after_ms));
    await sleep(e.retry_after_ms + 50);
    await postInOrder(user, ['on time']);
    assert.deepEqual((await api(s.url, 'GET', `/api/streams/${k}/bans`)).body, { bans: [] });
    mod.close();
    user.close();
  });

  it('deleting the pinned chat unpins it; GET counts the viewers connected', async () => {
    const k = await classroom();
    const { c: owner } = await join(k, OWNER);
    const { c: viewer } = await join(k);
    const [chat] = await postInOrder(owner, ['pinned, then gone']);
    owner.send({ type: 'pin', data: { id: chat?.data.id } });
    await nextStream(viewer, (d) => d.pinned?.id === chat?.data.id);
    assert.equal(
      (await api(s.url, 'DELETE', `/api/streams/${k}/messages/${chat?.data.id}`)).status,
      200,
    );
    assert.deepEqual((await viewer.next('delete')).data, { id: chat?.data.id, by: 'api' });
    await nextStream(viewer, (d) => d.pinned === null);
    assert.equal((await api(s.url, 'GET', `/api/streams/${k}`)).body.pinned, null);
    owner.send({ type: 'pin', data: { id: chat?.data.id } });
    assert.equal((await owner.next('error')).data.error_code, 'not_found');
    await until(
      async () => (await api(s.url, 'GET', `/api/streams/${k}`)).body.viewers === 2,
      'two viewers',
    );
    owner.close();
    viewer.close();
  });
});

describe('7 live classroom: server API', () => {
  it('GET /api/streams/{key}: the named fields; 404 stream_not_found; 401 without or with a wrong key', async () => {
    const k = await classroom('Biología');
    const res = await api(s.url, 'GET', `/api/streams/${k}`);
    assert.equal(res.status, 200);
    assert.deepEqual(Object.keys(res.body).sort(), [
      'key',
      'live',
      'membersOnly',
      'moderators',
      'ownerId',
      'paused',
      'pinned',
      'slowModeSeconds',
      'title',
      'viewers',
    ]);
    assert.deepEqual(res.body, {
      key: k,
      title: 'Biología',
      ownerId: OWNER,
      moderators: [MOD],
      live: true,
      viewers: 0,
      slowModeSeconds: 0,
      membersOnly: false,
      paused: false,
      pinned: null,
    });
    isError(await api(s.url, 'GET', `/api/streams/never-${k}`), 404, 'stream_not_found');
    isError(await api(s.url, 'GET', `/api/streams/${k}`, undefined, null), 401, 'unauthorized');
    isError(await api(s.url, 'GET', `/api/streams/${k}`, undefined, 'wrong'), 401, 'unauthorized');
    for (const [m, p] of [
      ['PATCH', ''],
      ['PUT', '/members'],
      ['DELETE', `/messages/${newId()}`],
      ['PUT', '/bans/1'],
      ['DELETE', '/bans/1'],
      ['GET', '/bans'],
      ['GET', '/moderation-log'],
      ['GET', '/messages'],
    ] as const) {
      const r = await api(
        s.url,
        m,
        `/api/streams/${k}${p}`,
        m === 'GET' || m === 'DELETE' ? undefined : {},
        null,
      );
      assert.equal(r.status, 401, `${m} ${p}`);
    }
    // An ended stream is still described, not live.
    assert.equal((await api(s.url, 'DELETE', `/api/streams/${k}`)).status, 200);
    assert.equal((await api(s.url, 'GET', `/api/streams/${k}`)).body.live, false);
  });

  it('ownerId given as a number is the string user id; the owner gets the owner badge', async () => {
    const k = key();
    assert.equal((await api(s.url, 'PUT', `/api/streams/${k}`, { ownerId: 7700 })).status, 201);
    assert.equal((await api(s.url, 'PUT', `/api/streams/${k}`, { ownerId: 7700 })).status, 200);
    assert.equal((await api(s.url, 'GET', `/api/streams/${k}`)).body.ownerId, '7700');
    const { c } = await join(k, '7700');
    c.chat('mine');
    assert.deepEqual((await c.next('chat')).data.badges, ['owner']);
    c.close();
  });

  it('PATCH: any of title, moderators, slowModeSeconds, membersOnly, paused; broadcasts stream; ranges checked', async () => {
    const k = await classroom();
    const { c } = await join(k);
    const res = await api(s.url, 'PATCH', `/api/streams/${k}`, {
      title: 'Nuevo',
      slowModeSeconds: 10,
      membersOnly: true,
      paused: true,
    });
    assert.equal(res.status, 200);
    const d = await nextStream(c, (x) => x.title === 'Nuevo');
    assert.equal(d.slowModeSeconds, 10);
    assert.equal(d.membersOnly, true);
    assert.equal(d.paused, true);
    // The moderators list makes a user a moderator at once.
    assert.equal(
      (await api(s.url, 'PATCH', `/api/streams/${k}`, { moderators: ['780', 781] })).status,
      200,
    );
    assert.deepEqual((await api(s.url, 'GET', `/api/streams/${k}`)).body.moderators.sort(), [
      '780',
      '781',
    ]);
    const { c: m } = await join(k, '781');
    m.chat('moderating');
    assert.deepEqual((await m.next('chat')).data.badges, ['moderator']);
    isInvalid(await api(s.url, 'PATCH', `/api/streams/${k}`, { slowModeSeconds: 3_601 }));
    isInvalid(await api(s.url, 'PATCH', `/api/streams/${k}`, { slowModeSeconds: -1 }));
    isInvalid(await api(s.url, 'PATCH', `/api/streams/${k}`, { paused: 'no' }));
    isInvalid(await api(s.url, 'PATCH', `/api/streams/${k}`, { moderators: 'x' }));
    isError(await api(s.url, 'PATCH', `/api/streams/${k}`, '{oops'), 400, 'invalid_json');
    isError(
      await api(s.url, 'PATCH', `/api/streams/none-${k}`, { paused: true }),
      404,
      'stream_not_found',
    );
    assert.equal(
      (await api(s.url, 'PATCH', `/api/streams/${k}`, { slowModeSeconds: 3_600 })).status,
      200,
    );
    assert.equal((await api(s.url, 'GET', `/api/streams/${k}`)).body.slowModeSeconds, 3_600);
    c.close();
    m.close();
  });

  it('DELETE messages/{id}: as the delete frame with by "api"; 404 for unknown stream or chat', async () => {
    const k = await classroom();
    const { c: user } = await join(k, '790');
    const [chat] = await postInOrder(user, ['off topic']);
    const res = await api(s.url, 'DELETE', `/api/streams/${k}/messages/${chat?.data.id}`);
    assert.equal(res.status, 200);
    assert.deepEqual((await user.next('delete')).data, { id: chat?.data.id, by: 'api' });
    const page = (await api(s.url, 'GET', `/api/streams/${k}/messages`)).body;
    assert.equal(page.messages[0].deletedBy, 'api');
    assert.match(page.messages[0].deletedAt, ISO);
    isError(await api(s.url, 'DELETE', `/api/streams/${k}/messages/${newId()}`), 404, 'not_found');
    isError(
      await api(s.url, 'DELETE', `/api/streams/none-${k}/messages/${chat?.data.id}`),
      404,
      'stream_not_found',
    );
    const bad = await api(s.url, 'DELETE', `/api/streams/${k}/messages/xyz`);
    assert.equal(bad.body.error_code, 'invalid_payload');
    user.close();
  });

  it('PUT bans/{userId}: seconds → timeout, none → ban; DELETE lifts it; GET bans shape', async () => {
    const k = await classroom();
    const { c: t } = await join(k, '800');
    const { c: b } = await join(k, '801');
    assert.equal(
      (await api(s.url, 'PUT', `/api/streams/${k}/bans/800`, { seconds: 120, reason: 'flood' }))
        .status,
      200,
    );
    assert.deepEqual((await t.next('moderation')).data, {
      action: 'timeout',
      userId: '800',
      seconds: 120,
      by: 'api',
    });
    assert.equal((await api(s.url, 'PUT', `/api/streams/${k}/bans/801`)).status, 200);
    assert.deepEqual((await nextModeration(b, '801')).data, {
      action: 'ban',
      userId: '801',
      by: 'api',
    });
    t.chat('x');
    // Both saw both broadcasts; the refusal is what follows them.
    const te = (await t.next('error')).data;
    assert.equal(te.error_code, 'timed_out');
    assert.ok(te.retry_after_ms > 110_000 && te.retry_after_ms <= 120_000);
    b.chat('x');
    assert.equal((await b.next('error')).data.error_code, 'banned');
    const bans = (await api(s.url, 'GET', `/api/streams/${k}/bans`)).body.bans;
    const byUser = new Map(bans.map((x: any) => [x.userId, x]));
    const tb = byUser.get('800') as any;
    const bb = byUser.get('801') as any;
    assert.match(tb.until, ISO);
    const left = Date.parse(tb.until) - Date.now();
    assert.ok(left > 100_000 && left <= 120_000, String(left));
    assert.equal(tb.reason, 'flood');
    assert.equal(tb.by, 'api');
    assert.equal(bb.until, null);
    assert.equal(bb.reason, null);
    assert.equal(bb.by, 'api');
    isInvalid(await api(s.url, 'PUT', `/api/streams/${k}/bans/802`, { seconds: 0 }));
    isInvalid(await api(s.url, 'PUT', `/api/streams/${k}/bans/802`, { seconds: 1_209_601 }));
    assert.equal(
      (await api(s.url, 'PUT', `/api/streams/${k}/bans/802`, { seconds: 1_209_600 })).status,
      200,
    );
    isError(
      await api(s.url, 'PUT', `/api/streams/none-${k}/bans/802`, {}),
      404,
      'stream_not_found',
    );
    isError(await api(s.url, 'GET', `/api/streams/none-${k}/bans`), 404, 'stream_not_found');
    assert.equal((await api(s.url, 'DELETE', `/api/streams/${k}/bans/800`)).status, 200);
    assert.deepEqual((await nextModeration(t, '800', 'unban')).data, {
      action: 'unban',
      userId: '800',
      by: 'api',
    });
    assert.equal((await api(s.url, 'DELETE', `/api/streams/${k}/bans/801`)).status, 200);
    await nextModeration(b, '801', 'unban');
    await postInOrder(t, ['free']);
    await postInOrder(b, ['free too']);
    const left2 = (await api(s.url, 'GET', `/api/streams/${k}/bans`)).body.bans;
    assert.deepEqual(
      left2.map((x: any) => x.userId),
      ['802'],
    );
    t.close();
    b.close();
  });

  it('moderation-log: newest first, hasMore, before pages on, limit checked', async () => {
    const k = await classroom();
    const { c: mod } = await join(k, MOD);
    const { c: user } = await join(k, '810');
    const [chat] = await postInOrder(user, ['bad word']);
    mod.send({ type: 'delete', data: { id: chat?.data.id } });
    await mod.next('delete');
    mod.send({ type: 'timeout', data: { userId: '810', seconds: 30, reason: 'cool off' } });
    await mod.next('moderation');
    mod.send({ type: 'ban', data: { userId: '811' } });
    await mod.next('moderation');
    mod.send({ type: 'unban', data: { userId: '811', reason: 'apologized' } });
    await mod.next('moderation');
    const all = await api(s.url, 'GET', `/api/streams/${k}/moderation-log`);
    assert.equal(all.status, 200);
    assert.equal(all.body.hasMore, false);
    const actions = all.body.actions.filter((a: any) =>
      ['delete', 'timeout', 'ban', 'unban'].includes(a.action),
    );
    assert.deepEqual(
      actions.map((a: any) => a.action),
      ['unban', 'ban', 'timeout', 'delete'],
    );
    const [unban, ban, timeout, del] = actions;
    assert.equal(unban.userId, '811');
    // `reason?` of ban / unban is what the log keeps; left out, the entry has none.
    assert.equal(unban.reason, 'apologized');
    assert.equal(ban.userId, '811');
    assert.equal('reason' in ban, false);
    assert.equal(timeout.userId, '810');
    assert.equal(timeout.reason, 'cool off');
    assert.equal(del.messageId, chat?.data.id);
    for (const a of actions) {
      assert.equal(a.by, MOD);
      assert.match(a.at, ISO);
    }
    const times = all.body.actions.map((a: any) => Date.parse(a.at));
    assert.deepEqual(
      times,
      [...times].sort((x: number, y: number) => y - x),
    );
    const first = await api(s.url, 'GET', `/api/streams/${k}/moderation-log?limit=2`);
    assert.equal(first.body.actions.length, 2);
    assert.equal(first.body.hasMore, true);
    assert.deepEqual(first.body.actions, all.body.actions.slice(0, 2));
    const last = first.body.actions[1];
    // `before` takes what the page's last entry gives to page on.
    const cursor = last.id;
    assert.ok(cursor !== undefined, 'a log entry carries the cursor for `before`');
    const next = await api(
      s.url,
      'GET',
      `/api/streams/${k}/moderation-log?limit=2&before=${cursor}`,
    );
    assert.equal(next.status, 200);
    assert.deepEqual(next.body.actions, all.body.actions.slice(2, 4));
    for (const q of ['limit=0', 'limit=abc', 'limit=100000', 'limit=-1', 'before=zzz']) {
      isInvalid(await api(s.url, 'GET', `/api/streams/${k}/moderation-log?${q}`));
    }
    isError(
      await api(s.url, 'GET', `/api/streams/none-${k}/moderation-log`),
      404,
      'stream_not_found',
    );
    mod.close();
    user.close();
  });

  it('GET messages: oldest first, limit and before checked', async () => {
    const k = await classroom();
    const { c: owner } = await join(k, OWNER);
    const sent = await postInOrder(owner, ['a', 'b', 'c']);
    await s.app.streams.flush();
    const page = await api(s.url, 'GET', `/api/streams/${k}/messages?limit=2`);
    assert.deepEqual(
      page.body.messages.map((m: any) => m.message),
      ['b', 'c'],
    );
    assert.equal(page.body.hasMore, true);
    const older = await api(s.url, 'GET', `/api/streams/${k}/messages?before=${sent[1]?.data.id}`);
    assert.deepEqual(
      older.body.messages.map((m: any) => m.message),
      ['a'],
    );
    for (const q of ['limit=0', 'limit=abc', 'limit=100000', 'before=nope']) {
      isInvalid(await api(s.url, 'GET', `/api/streams/${k}/messages?${q}`));
    }
    const unknown = await api(s.url, 'GET', `/api/streams/${k}/messages?before=${newId()}`);
    assert.ok(unknown.status < 500);
    owner.close();
  });
});

// ───────────────────────────── section 8 ─────────────────────────────

const teacher = (id: string) => userToken(id, { role: 'TEACHER' });
const lab = (id: string) => userToken(id, { role: 'LAB' });
const ask = (c: RequestClient, event: string, payload?: unknown): Promise<any> =>
  payload === undefined
    ? c.socket.timeout(5_000).emitWithAck(event)
    : c.socket.timeout(5_000).emitWithAck(event, payload);
const sockets: RequestClient[] = [];
async function connect(token: string): Promise<RequestClient> {
  const c = await RequestClient.connect(s.url, token);
  sockets.push(c);
  return c;
}
after(() => {
  for (const c of sockets) c.close();
});

async function request(ownerId: string): Promise<string> {
  const id = newId();
  assert.equal((await api(s.url, 'PUT', `/api/requests/${id}`, { ownerId })).status, 201);
  return id;
}

async function joined(token: string, requestId: string): Promise<RequestClient> {
  const c = await connect(token);
  const ack = await ask(c, 'joinRoom', { requestId });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  await c.next('roomHistory', (h) => h.requestId === requestId);
  return c;
}

async function send(c: RequestClient, requestId: string, message: string, extra = {}) {
  const ack = await ask(c, 'message', { requestId, message, ...extra });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  return ack.message;
}

/** An acknowledgement refusing with `code`, and the matching `exception`. */
async function refused(c: RequestClient, event: string, payload: unknown, code: string) {
  const before = c.of('exception').length;
  const ack = await ask(c, event, payload);
  assert.equal(ack.ok, false, JSON.stringify(ack));
  assert.equal(ack.error_code, code, JSON.stringify(ack));
  assert.equal(typeof ack.message, 'string');
  await until(() => c.of('exception').length > before, 'exception');
  const ex = c.of('exception')[before];
  assert.equal(ex.event, event);
  assert.equal(ex.error_code, code);
  assert.equal(typeof ex.message, 'string');
  return ack;
}

describe('8 request chat: typing', () => {
  it('forwards userTyping to the room’s other sockets, at most once per 2 s, never stored', async () => {
    const rid = await request('900');
    const t = await joined(await teacher('900'), rid);
    const l = await joined(await lab('901'), rid);
    const ack = await ask(t, 'typing', { requestId: rid });
    assert.equal(ack.ok, true);
    const typing = await l.next('userTyping');
    assert.deepEqual(typing, { requestId: rid, userId: '900', username: 'user900' });
    for (let i = 0; i < 5; i++) await ask(t, 'typing', { requestId: rid });
    // The seed's spelling is an alias.
    await ask(t, 'typing', { resquestId: rid });
    await settle(300);
    assert.equal(l.of('userTyping').length, 1);
    assert.equal(t.of('userTyping').length, 0);
    // Another user in the same request has an allowance of their own.
    await ask(l, 'typing', { requestId: rid });
    assert.deepEqual(await t.next('userTyping'), {
      requestId: rid,
      userId: '901',
      username: 'user901',
    });
    const page = await api(s.url, 'GET', `/api/requests/${rid}/messages`);
    assert.deepEqual(page.body, { messages: [], hasMore: false });
    await refused(t, 'typing', { requestId: 'nope' }, 'invalid_payload');
    const outsider = await connect(await lab('902'));
    await refused(outsider, 'typing', { requestId: rid }, 'not_in_room');
  });

  it('forwards typing again once 2 s have passed', async () => {
    const rid = await request('905');
    const t = await joined(await teacher('905'), rid);
    const l = await joined(await lab('906'), rid);
    await ask(t, 'typing', { requestId: rid });
    await l.next('userTyping');
    await sleep(1_500);
    await ask(t, 'typing', { requestId: rid });
    await settle(100);
    assert.equal(l.of('userTyping').length, 1);
    await sleep(600);
    await ask(t, 'typing', { requestId: rid });
    await until(() => l.of('userTyping').length === 2, 'a second userTyping');
  });
});

describe('8 request chat: typing per user and rate limits', () => {
  it('typing is throttled per user and request, across that user’s sockets', async () => {
    const rid = await request('1610');
    const t1 = await joined(await teacher('1610'), rid);
    const t2 = await joined(await teacher('1610'), rid);
    const l = await joined(await lab('1611'), rid);
    await ask(t1, 'typing', { requestId: rid });
    await ask(t2, 'typing', { requestId: rid });
    await settle(200);
    assert.equal(l.of('userTyping').length, 1);
  });

  it('rate_limited carries retry_after_ms in the exception and the acknowledgement', async () => {
    const rid = await request('1620');
    const t = await joined(await teacher('1620'), rid);
    // One at a time, each acknowledged: however long the 60 take, the 61st is within the 30 s.
    for (let i = 0; i < 60; i++) await send(t, rid, `r${i}`);
    await sleep(600);
    const ack = await refused(
      t,
      'message',
      { requestId: rid, message: 'one more' },
      'rate_limited',
    );
    assert.equal(typeof ack.retry_after_ms, 'number');
    assert.ok(ack.retry_after_ms > 0 && ack.retry_after_ms <= 30_000);
    const ex = t.of('exception').at(-1);
    assert.equal(ex.retry_after_ms, ack.retry_after_ms);
    assert.equal(ex.requestId, rid);
  });
});

describe('8 request chat: edits and deletions', () => {
  it('editMessage: only the sender; ack {ok, message} with editedAt; the room gets messageUpdated', async () => {
    const rid = await request('910');
    const t = await joined(await teacher('910'), rid);
    const l = await joined(await lab('911'), rid);
    const original = await send(l, rid, 'primera versión');
    assert.deepEqual(original.attachments, []);
    assert.equal('editedAt' in original, false);
    assert.equal('deletedAt' in original, false);
    const ack = await ask(l, 'editMessage', {
      requestId: rid,
      messageId: original._id,
      message: 'segunda',
    });
    assert.equal(ack.ok, true);
    assert.equal(ack.message._id, original._id);
    assert.equal(ack.message.message, 'segunda');
    assert.match(ack.message.editedAt, ISO);
    assert.equal(ack.message.createdAt, original.createdAt);
    for (const c of [t, l]) {
      const u = await c.next('messageUpdated', (m) => m._id === original._id);
      assert.deepEqual(u, ack.message);
    }
    await refused(
      t,
      'editMessage',
      { requestId: rid, messageId: original._id, message: 'mine' },
      'forbidden',
    );
    await refused(
      l,
      'editMessage',
      { requestId: rid, messageId: newId(), message: 'x' },
      'not_found',
    );
    await refused(
      l,
      'editMessage',
      { requestId: rid, messageId: original._id, message: '' },
      'empty_message',
    );
    await refused(
      l,
      'editMessage',
      { requestId: rid, messageId: original._id, message: 'x'.repeat(5_001) },
      'message_too_long',
    );
    await refused(
      l,
      'editMessage',
      { requestId: rid, messageId: 'abc', message: 'x' },
      'invalid_payload',
    );
    const page = await api(s.url, 'GET', `/api/requests/${rid}/messages`);
    assert.equal(page.body.messages[0].message, 'segunda');
    assert.match(page.body.messages[0].editedAt, ISO);
  });

  it('deleteMessage: the room gets messageDeleted; history holds {message: "", attachments: [], deletedAt}', async () => {
    const rid = await request('920');
    const t = await joined(await teacher('920'), rid);
    const l = await joined(await lab('921'), rid);
    const m = await send(l, rid, 'borrar esto', {
      attachments: [
        {
          url: 'https://files.example.edu/x.pdf',
          name: 'x.pdf',
          contentType: 'application/pdf',
          size: 10,
        },
      ],
    });
    await send(l, rid, 'esto queda');
    await refused(t, 'deleteMessage', { requestId: rid, messageId: m._id }, 'forbidden');
    const ack = await ask(l, 'deleteMessage', { requestId: rid, messageId: m._id });
    assert.equal(ack.ok, true);
    for (const c of [t, l]) {
      const d = await c.next('messageDeleted');
      assert.deepEqual(Object.keys(d).sort(), ['deletedAt', 'messageId', 'requestId']);
      assert.equal(d.requestId, rid);
      assert.equal(d.messageId, m._id);
      assert.match(d.deletedAt, ISO);
    }
    const check = (msg: any) => {
      assert.equal(msg._id, m._id);
      assert.equal(msg.message, '');
      assert.deepEqual(msg.attachments, []);
      assert.match(msg.deletedAt, ISO);
    };
    const page = await api(s.url, 'GET', `/api/requests/${rid}/messages`);
    check(page.body.messages[0]);
    assert.equal(page.body.messages[1].message, 'esto queda');
    // editedAt / deletedAt are absent, not null, on a message never changed.
    for (const key of ['editedAt', 'deletedAt']) {
      assert.equal(key in page.body.messages[1], false, key);
    }
    const again = await joined(await lab('922'), rid);
    const history = again.of('roomHistory')[0];
    check(history.messages[0]);
    assert.equal('deletedAt' in history.messages[1], false);
    assert.equal('editedAt' in history.messages[1], false);
    const older = await ask(again, 'loadHistory', {
      requestId: rid,
      before: page.body.messages[1]._id,
    });
    assert.equal(older.ok, true);
    check(older.messages[0]);
    await refused(
      l,
      'editMessage',
      { requestId: rid, messageId: m._id, message: 'revive' },
      'not_found',
    );
  });
});

describe('8 request chat: the edit window', () => {
  let w: TestServer;
  before(async () => {
    w = await startServer({ REQUEST_EDIT_WINDOW_SECONDS: '1' });
  });
  after(() => w.close());

  it('refuses edits and deletions after REQUEST_EDIT_WINDOW_SECONDS with edit_window_passed', async () => {
    const rid = newId();
    assert.equal((await api(w.url, 'PUT', `/api/requests/${rid}`, { ownerId: 930 })).status, 201);
    const c = await RequestClient.connect(w.url, await teacher('930'));
    try {
      assert.equal((await ask(c, 'joinRoom', { requestId: rid })).ok, true);
      const m = (await ask(c, 'message', { requestId: rid, message: 'tarde' })).message;
      await sleep(1_300);
      const e = await ask(c, 'editMessage', { requestId: rid, messageId: m._id, message: 'x' });
      assert.equal(e.ok, false);
      assert.equal(e.error_code, 'edit_window_passed');
      const d = await ask(c, 'deleteMessage', { requestId: rid, messageId: m._id });
      assert.equal(d.error_code, 'edit_window_passed');
    } finally {
      c.close();
    }
  });
});

describe('8 request chat: attachments', () => {
  const file = (url: string) => ({
    url,
    name: 'guía.pdf',
    contentType: 'application/pdf',
    size: 2048,
  });

  it('accepts links under ATTACHMENT_URL_PREFIXES, with empty text; refuses others and more than 10', async () => {
    const rid = await request('940');
    const t = await joined(await teacher('940'), rid);
    const l = await joined(await lab('941'), rid);
    const m = await send(t, rid, '', {
      attachments: [
        file('https://files.example.edu/a.pdf'),
        file('https://cdn.example.edu/uploads/b'),
      ],
    });
    assert.equal(m.message, '');
    assert.deepEqual(m.attachments, [
      file('https://files.example.edu/a.pdf'),
      file('https://cdn.example.edu/uploads/b'),
    ]);
    assert.deepEqual((await l.next('message')).attachments, m.attachments);
    for (const url of [
      'https://evil.example.com/a.pdf',
      'https://files.example.edu.evil.com/a.pdf',
      'https://cdn.example.edu/other/b',
      'javascript:alert(1)',
    ]) {
      await refused(
        t,
        'message',
        { requestId: rid, message: 'x', attachments: [file(url)] },
        'invalid_payload',
      );
    }
    await refused(
      t,
      'message',
      {
        requestId: rid,
        message: '',
        attachments: Array.from({ length: 11 }, () => file('https://files.example.edu/a')),
      },
      'invalid_payload',
    );
    await send(t, rid, 'ten', {
      attachments: Array.from({ length: 10 }, () => file('https://files.example.edu/a')),
    });
    await refused(t, 'message', { requestId: rid, message: '' }, 'empty_message');
    await refused(
      t,
      'message',
      { requestId: rid, message: 'x', attachments: [{ url: 'https://files.example.edu/a' }] },
      'invalid_payload',
    );
    await settle();
    // Only the accepted messages reached the room.
    assert.equal(l.of('message').length, 2);
  });

  it('refuses every attachment when ATTACHMENT_URL_PREFIXES is unset', async () => {
    const w = await startServer();
    try {
      const rid = newId();
      await api(w.url, 'PUT', `/api/requests/${rid}`, { ownerId: '945' });
      const c = await RequestClient.connect(w.url, await teacher('945'));
      try {
        await ask(c, 'joinRoom', { requestId: rid });
        const ack = await ask(c, 'message', {
          requestId: rid,
          message: 'x',
          attachments: [file('https://files.example.edu/a.pdf')],
        });
        assert.equal(ack.error_code, 'invalid_payload');
        const plain = await ask(c, 'message', { requestId: rid, message: 'x' });
        assert.deepEqual(plain.message.attachments, []);
      } finally {
        c.close();
      }
    } finally {
      await w.close();
    }
  });
});

describe('8 request chat: inbox', () => {
  it('listRequests: a teacher’s own requests, most recent activity first, unread, hasMore, before', async () => {
    const quiet = await request('950');
    const [r1, r2, r3] = [await request('950'), await request('950'), await request('950')];
    await request('951');
    const l = await connect(await lab('952'));
    for (const r of [r1, r3, r2]) {
      await ask(l, 'joinRoom', { requestId: r });
      await send(l, r as string, `hola ${r}`);
      await sleep(5);
    }
    const t = await connect(await teacher('950'));
    const all = await ask(t, 'listRequests', {});
    assert.equal(all.ok, true);
    assert.equal(all.hasMore, false);
    assert.deepEqual(
      all.requests.map((r: any) => r.requestId),
      [r2, r3, r1, quiet],
    );
    // A request without messages is listed too, with nothing to show.
    const none = all.requests.pop();
    assert.equal(none.lastMessage, null);
    assert.equal(none.unread, 0);
    assert.equal(none.ownerId, '950');
    for (const r of all.requests) {
      assert.deepEqual(Object.keys(r).sort(), [
        'lastMessage',
        'ownerId',
        'requestId',
        'unread',
        'updatedAt',
      ]);
      assert.equal(r.ownerId, '950');
      assert.equal(r.unread, 1);
      assert.equal(r.lastMessage.message, `hola ${r.requestId}`);
      assert.equal(r.lastMessage.requestId, r.requestId);
      assert.match(r.updatedAt, ISO);
    }
    const first = await ask(t, 'listRequests', { limit: 2 });
    assert.deepEqual(
      first.requests.map((r: any) => r.requestId),
      [r2, r3],
    );
    assert.equal(first.hasMore, true);
    const rest = await ask(t, 'listRequests', { limit: 2, before: r3 });
    assert.deepEqual(
      rest.requests.map((r: any) => r.requestId),
      [r1, quiet],
    );
    assert.equal(rest.hasMore, false);
    // Without a payload it is the first page.
    assert.deepEqual((await ask(t, 'listRequests')).requests.slice(0, 3), all.requests);
    await refused(t, 'listRequests', { limit: 0 }, 'invalid_payload');
    await refused(t, 'listRequests', { limit: 'ten' }, 'invalid_payload');
    await refused(t, 'listRequests', { limit: 100_000 }, 'invalid_payload');
    await refused(t, 'listRequests', { before: 'zz' }, 'invalid_payload');
    const nobody = await connect(await userToken('953'));
    await refused(nobody, 'listRequests', {}, 'forbidden');
  });

  it('listRequests for LAB: every registered request with at least one message', async () => {
    const empty = await request('960');
    const busy = await request('960');
    const t = await joined(await teacher('960'), busy);
    const sent = await send(t, busy, 'pregunta');
    const l = await connect(await lab('961'));
    const page = await ask(l, 'listRequests', { limit: 500 });
    assert.equal(page.ok, true);
    const ids = page.requests.map((r: any) => r.requestId);
    assert.equal(ids[0], busy);
    assert.equal(ids.includes(empty), false);
    assert.deepEqual(page.requests[0].lastMessage, sent);
    assert.equal(page.requests[0].unread, 1);
    assert.equal(page.requests[0].ownerId, '960');
  });

  it('requestUpdated reaches every socket of the user, joined or not, and again when their reads change it', async () => {
    const rid = await request('970');
    const away = await connect(await teacher('970'));
    const inRoom = await joined(await teacher('970'), rid);
    const l = await joined(await lab('971'), rid);
    const m = await send(l, rid, '¿listo?');
    for (const c of [away, inRoom]) {
      const u = await c.next('requestUpdated', (x) => x.requestId === rid);
      assert.deepEqual(Object.keys(u).sort(), ['lastMessage', 'requestId', 'unread']);
      assert.equal(u.unread, 1);
      assert.deepEqual(u.lastMessage, m);
    }
    const read = await ask(inRoom, 'readMessages', { requestId: rid, messages: [m._id] });
    assert.equal(read.ok, true);
    for (const c of [away, inRoom]) {
      await c.next('requestUpdated', (x) => x.requestId === rid && x.unread === 0);
    }
    const listed = await ask(away, 'listRequests', {});
    assert.equal(listed.requests.find((r: any) => r.requestId === rid).unread, 0);
  });

  it('GET /api/requests/{id}/messages: 404 not_found for an unknown request, 400 for a malformed id', async () => {
    isError(await api(s.url, 'GET', `/api/requests/${newId()}/messages`), 404, 'not_found');
    const bad = await api(s.url, 'GET', '/api/requests/xyz/messages');
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error_code, 'invalid_payload');
    isInvalid(await api(s.url, 'PUT', `/api/requests/${newId()}`, {}));
    isError(
      await api(s.url, 'PUT', `/api/requests/${newId()}`, { ownerId: 1 }, 'nope'),
      401,
      'unauthorized',
    );
  });

  it('GET /api/users/{userId}/unread?role=: {total, requests: [{requestId, unread}]}', async () => {
    const rid = await request('980');
    const l = await joined(await lab('981'), rid);
    await send(l, rid, 'uno');
    await send(l, rid, 'dos');
    await until(
      async () => (await api(s.url, 'GET', '/api/users/980/unread?role=TEACHER')).body.total === 2,
      'unread total',
    );
    const res = await api(s.url, 'GET', '/api/users/980/unread?role=TEACHER');
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { total: 2, requests: [{ requestId: rid, unread: 2 }] });
    // The role is compared upper-case, as roles in tokens are.
    const lower = await api(s.url, 'GET', '/api/users/980/unread?role=teacher');
    assert.deepEqual(lower.body, res.body);
    const none = await api(s.url, 'GET', '/api/users/989/unread?role=TEACHER');
    assert.deepEqual(none.body, { total: 0, requests: [] });
    isInvalid(await api(s.url, 'GET', '/api/users/980/unread'));
    isInvalid(await api(s.url, 'GET', '/api/users/980/unread?role=ADMIN'));
    isError(
      await api(s.url, 'GET', '/api/users/980/unread?role=LAB', undefined, null),
      401,
      'unauthorized',
    );
  });
});

describe('8 request chat: unread counts', () => {
  it('counts only messages sent by others that this user has not read, per user and role', async () => {
    const rid = await request('1200');
    const l1 = await joined(await lab('1201'), rid);
    const l1b = await connect(await lab('1201'));
    const l2 = await connect(await lab('1202'));
    const t = await connect(await teacher('1200'));
    const m1 = await send(l1, rid, 'de lab');
    // The sender's own message is never unread for them, on any of their sockets.
    const own = await l1b.next('requestUpdated', (u) => u.requestId === rid);
    assert.equal(own.unread, 0);
    assert.deepEqual(own.lastMessage, m1);
    assert.equal((await l2.next('requestUpdated', (u) => u.requestId === rid)).unread, 1);
    assert.equal((await t.next('requestUpdated', (u) => u.requestId === rid)).unread, 1);
    const tj = await joined(await teacher('1200'), rid);
    const m2 = await send(tj, rid, 'del profesor');
    await until(
      () => l2.of('requestUpdated').some((u) => u.requestId === rid && u.unread === 2),
      'lab 1202 at 2',
    );
    await until(
      () =>
        l1b.of('requestUpdated').some((u) => u.requestId === rid && u.lastMessage._id === m2._id),
      'lab 1201 hears the teacher',
    );
    const l1Update = l1b
      .of('requestUpdated')
      .filter((u) => u.requestId === rid)
      .at(-1);
    assert.equal(l1Update.unread, 1);
    const tUpdate = t
      .of('requestUpdated')
      .filter((u) => u.requestId === rid)
      .at(-1);
    assert.equal(tUpdate.unread, 1);
    const list = async (c: RequestClient) =>
      (await ask(c, 'listRequests', { limit: 500 })).requests.find((r: any) => r.requestId === rid);
    assert.equal((await list(l1b)).unread, 1);
    assert.equal((await list(l2)).unread, 2);
    assert.equal((await list(t)).unread, 1);
    const unread = async (user: string, role: string) =>
      (await api(s.url, 'GET', `/api/users/${user}/unread?role=${role}`)).body.requests.find(
        (r: any) => r.requestId === rid,
      )?.unread;
    assert.equal(await unread('1202', 'LAB'), 2);
    assert.equal(await unread('1201', 'LAB'), 1);
    assert.equal(await unread('1200', 'TEACHER'), 1);
    // A deleted message leaves every count.
    await ask(tj, 'deleteMessage', { requestId: rid, messageId: m2._id });
    await until(async () => (await unread('1202', 'LAB')) === 1, 'lab 1202 back to 1');
    assert.equal(await unread('1201', 'LAB'), undefined);
  });

  it('a new owner replaces the old: the previous owner leaves the room at once and loses access', async () => {
    const rid = await request('1300');
    const old = await joined(await teacher('1300'), rid);
    const l = await joined(await lab('1301'), rid);
    assert.equal((await api(s.url, 'PUT', `/api/requests/${rid}`, { ownerId: 1302 })).status, 200);
    await sleep(100);
    await send(l, rid, 'after the change');
    await settle();
    assert.equal(old.of('message').length, 0);
    await refused(old, 'message', { requestId: rid, message: 'x' }, 'not_in_room');
    await refused(old, 'joinRoom', { requestId: rid }, 'forbidden');
    const now = await joined(await teacher('1302'), rid);
    assert.equal(now.of('roomHistory')[0].messages.length, 1);
    // The inbox follows the owner.
    const listed = async (c: RequestClient) =>
      (await ask(c, 'listRequests', { limit: 500 })).requests.map((r: any) => r.requestId);
    assert.equal((await listed(old)).includes(rid), false);
    assert.equal((await listed(now)).includes(rid), true);
  });
});

describe('9 webhooks: failures', () => {
  let w: TestServer;
  let failing = true;
  const got: Hook[] = [];
  let sink: Server;
  before(async () => {
    sink = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        got.push({
          id: String(req.headers['webhook-id']),
          timestamp: String(req.headers['webhook-timestamp']),
          signature: String(req.headers['webhook-signature']),
          body,
          event: JSON.parse(body),
        });
        res.writeHead(failing ? 500 : 200);
        res.end();
      });
    });
    await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
    w = await startServer({
      WEBHOOK_URL: `http://127.0.0.1:${(sink.address() as AddressInfo).port}/`,
      WEBHOOK_SECRET,
      WEBHOOK_POLL_MS: '50',
      WEBHOOK_MAX_ATTEMPTS: '2',
      WEBHOOK_RETRY_BASE_SECONDS: '0.05',
    });
  });
  after(async () => {
    await w.close();
    await new Promise<void>((r) => sink.close(() => r()));
  });

  it('keeps an event failed after WEBHOOK_MAX_ATTEMPTS, lists it, and a retry sends it with the same webhook-id', async () => {
    const k = key();
    await api(w.url, 'PUT', `/api/streams/${k}`, {});
    assert.equal((await api(w.url, 'DELETE', `/api/streams/${k}`)).status, 200);
    let failed: any;
    await until(async () => {
      failed = (await api(w.url, 'GET', '/api/webhooks/failed')).body.events;
      return failed.length === 1;
    }, 'a failed event');
    const [e] = failed;
    assert.deepEqual(Object.keys(e).sort(), [
      'attempts',
      'id',
      'lastAttemptAt',
      'lastError',
      'payload',
      'type',
    ]);
    assert.equal(e.type, 'stream.ended');
    assert.equal(e.attempts, 2);
    assert.equal(typeof e.lastError, 'string');
    assert.match(e.lastAttemptAt, ISO);
    assert.equal(got.length, 2);
    assert.ok(got.every((h) => h.id === e.id));
    const payload = typeof e.payload === 'string' ? JSON.parse(e.payload) : e.payload;
    assert.equal(payload.type, 'stream.ended');
    assert.deepEqual(payload.data, { key: k });
    failing = false;
    const retry = await api(w.url, 'POST', `/api/webhooks/failed/${e.id}/retry`);
    assert.ok(retry.status >= 200 && retry.status < 300, String(retry.status));
    await until(() => got.length === 3, 'the retried delivery');
    const last = got[2] as Hook;
    assert.equal(last.id, e.id);
    verified(last);
    await until(
      async () => (await api(w.url, 'GET', '/api/webhooks/failed')).body.events.length === 0,
      'the failed list to empty',
    );
  });
});

// ───────────────────────────── section 9 ─────────────────────────────

/** The first delivered event of `type` whose data passes `test`. */
async function hook(type: string, test: (data: any) => boolean): Promise<Hook> {
  let found: Hook | undefined;
  await until(
    () => {
      found = hooks.find((h) => h.event.type === type && test(h.event.data));
      return found !== undefined;
    },
    `webhook ${type}`,
    8_000,
  );
  return found as Hook;
}

function verified(h: Hook): void {
  if (h.contentType !== undefined) assert.match(h.contentType, /^application\/json\b/);
  assert.match(h.id, /^[A-Za-z0-9_-]+$/);
  assert.match(h.timestamp, /^\d+$/);
  assert.ok(Math.abs(Number(h.timestamp) - Date.now() / 1000) < 60, 'timestamp in seconds');
  const expected = `v1,${createHmac('sha256', WEBHOOK_KEY).update(`${h.id}.${h.timestamp}.${h.body}`).digest('base64')}`;
  assert.ok(h.signature.split(' ').includes(expected), `signature ${h.signature}`);
  assert.deepEqual(Object.keys(h.event).sort(), ['data', 'timestamp', 'type']);
  assert.match(h.event.timestamp, ISO);
}

describe('9 webhooks', () => {
  it('request.message.created carries the Message; request.message.read {requestId, userId, messages, at}', async () => {
    const rid = await request('990');
    const t = await joined(await teacher('990'), rid);
    const l = await joined(await lab('991'), rid);
    const m = await send(l, rid, 'webhook me');
    const created = await hook('request.message.created', (d) => d._id === m._id);
    verified(created);
    assert.deepEqual(created.event.data, m);
    await ask(t, 'readMessages', { requestId: rid, messages: [m._id] });
    const read = await hook('request.message.read', (d) => d.requestId === rid);
    verified(read);
    assert.deepEqual(Object.keys(read.event.data).sort(), [
      'at',
      'messages',
      'requestId',
      'userId',
    ]);
    assert.equal(read.event.data.userId, '990');
    assert.deepEqual(read.event.data.messages, [m._id]);
    assert.match(read.event.data.at, ISO);
    // A repeated clientMessageId is the same message: no second event.
    const first = await send(l, rid, 'once', { clientMessageId: 'c-1' });
    const again = await send(l, rid, 'once', { clientMessageId: 'c-1' });
    assert.equal(again._id, first._id);
    await hook('request.message.created', (d) => d._id === first._id);
    await settle(300);
    assert.equal(
      hooks.filter(
        (h) => h.event.type === 'request.message.created' && h.event.data._id === first._id,
      ).length,
      1,
    );
    // Every delivery so far verified, each event once under its own id.
    for (const h of hooks) verified(h);
  });

  it('request.message.unread: the Message, once nobody read it WEBHOOK_UNREAD_AFTER_SECONDS after', async () => {
    const rid = await request('995');
    const l = await joined(await lab('996'), rid);
    const unread = await send(l, rid, 'nadie lee');
    const h = await hook('request.message.unread', (d) => d._id === unread._id);
    verified(h);
    assert.equal(h.event.data.message, 'nadie lee');
    assert.equal(h.event.data.requestId, rid);
    // A message read in time sends none.
    const t = await joined(await teacher('995'), rid);
    const read = await send(l, rid, 'leído');
    await ask(t, 'readMessages', { requestId: rid, messages: [read._id] });
    await sleep(2_000);
    assert.equal(
      hooks.some((x) => x.event.type === 'request.message.unread' && x.event.data._id === read._id),
      false,
    );
  });

  it('stream events: message.deleted, user.banned, user.timed_out, ended', async () => {
    const k = await classroom();
    const { c: mod } = await join(k, MOD);
    const [chat] = await postInOrder(mod, ['oops']);
    mod.send({ type: 'delete', data: { id: chat?.data.id } });
    await mod.next('delete');
    mod.send({ type: 'ban', data: { userId: '1001', reason: 'spam' } });
    await mod.next('moderation');
    mod.send({ type: 'ban', data: { userId: '1002' } });
    await mod.next('moderation');
    mod.send({ type: 'timeout', data: { userId: '1003', seconds: 90 } });
    await mod.next('moderation');
    await api(s.url, 'PUT', `/api/streams/${k}/bans/1004`, { seconds: 30, reason: 'api' });
    const deleted = await hook('stream.message.deleted', (d) => d.key === k);
    verified(deleted);
    assert.deepEqual(deleted.event.data, { key: k, id: chat?.data.id, by: MOD });
    const banned = await hook('stream.user.banned', (d) => d.key === k && d.userId === '1001');
    assert.deepEqual(banned.event.data, { key: k, userId: '1001', by: MOD, reason: 'spam' });
    const plain = await hook('stream.user.banned', (d) => d.key === k && d.userId === '1002');
    assert.deepEqual(plain.event.data, { key: k, userId: '1002', by: MOD });
    const timed = await hook('stream.user.timed_out', (d) => d.key === k && d.userId === '1003');
    assert.deepEqual(timed.event.data, { key: k, userId: '1003', by: MOD, seconds: 90 });
    const byApi = await hook('stream.user.timed_out', (d) => d.key === k && d.userId === '1004');
    assert.deepEqual(byApi.event.data, {
      key: k,
      userId: '1004',
      by: 'api',
      seconds: 30,
      reason: 'api',
    });
    assert.equal((await api(s.url, 'DELETE', `/api/streams/${k}`)).status, 200);
    const ended = await hook('stream.ended', (d) => d.key === k);
    verified(ended);
    assert.deepEqual(ended.event.data, { key: k });
    // The ended stream refuses with stream_ended and 4410 (section 2).
    const late = await StreamClient.connect(s.wsUrl, k);
    assert.equal((await late.next('error')).data.error_code, 'stream_ended');
    assert.equal((await late.closed).code, 4410);
    mod.close();
  });

  it('GET /api/webhooks/failed lists nothing when every delivery succeeded; retry of an unknown id is 404', async () => {
    const res = await api(s.url, 'GET', '/api/webhooks/failed');
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { events: [] });
    isError(await api(s.url, 'POST', '/api/webhooks/failed/msg_unknown/retry'), 404, 'not_found');
    isError(await api(s.url, 'GET', '/api/webhooks/failed', undefined, null), 401, 'unauthorized');
  });
});

// ───────────────────────────── section 10 ────────────────────────────

describe('10 hostile input', () => {
  it('a bad stream frame gets its error and nothing else; the connection stays usable', async () => {
    const k = await classroom();
    const { c } = await join(k, '1100');
    const { c: other } = await join(k);
    const cases: Array<[string, string]> = [
      ['{not json', 'invalid_json'],
      ['{"data":{"message":"x"}}', 'invalid_payload'],
      ['{"type":"chat","data":"x"}', 'invalid_payload'],
      ['{"type":"chat","data":[]}', 'invalid_payload'],
      ['{"type":"chat"}', 'invalid_payload'],
      ['[]', 'invalid_payload'],
      ['{"type":"shout","data":{}}', 'unknown_type'],
      ['{"type":"chat","data":{"message":""}}', 'empty_message'],
      [JSON.stringify({ type: 'chat', data: { message: 'x'.repeat(501) } }), 'message_too_long'],
    ];
    for (const [text, code] of cases) {
      c.send(text);
      assert.equal((await nextError(c)).error_code, code, text);
    }
    const anon = other;
    anon.chat('anonymous');
    assert.equal((await nextError(anon)).error_code, 'not_authenticated');
    await postInOrder(c, ['still here']);
    await settle();
    assert.deepEqual(
      other.rest().map((f) => f.type),
      ['chat'],
    );
    c.close();
    other.close();
  });

  it('an unknown stream key is stream_not_found then close 4404; an unknown event is unknown_type', async () => {
    const ghost = await StreamClient.connect(s.wsUrl, `ghost-${key()}`);
    assert.equal((await ghost.next('error')).data.error_code, 'stream_not_found');
    assert.equal((await ghost.closed).code, 4404);
    const c = await connect(await lab('1101'));
    const before = c.of('exception').length;
    c.socket.emit('shout', { requestId: newId() });
    await until(() => c.of('exception').length > before, 'exception');
    assert.equal(c.of('exception')[before].error_code, 'unknown_type');
    // Unknown request: not_found; someone else's: forbidden.
    await refused(c, 'joinRoom', { requestId: newId() }, 'not_found');
    const rid = await request('1102');
    const other = await connect(await teacher('1103'));
    await refused(other, 'joinRoom', { requestId: rid }, 'forbidden');
    await refused(other, 'message', { requestId: rid, message: 'x' }, 'not_in_room');
  });

  it('a malformed target or header does not stop the server answering', async () => {
    const { request: raw } = await import('node:http');
    const u = new URL(s.url);
    const status = await new Promise<number>((resolve, reject) => {
      const req = raw({ host: u.hostname, port: u.port, path: '//%zz/', method: 'GET' }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    assert.ok(status >= 400 && status < 500, String(status));
    const health = await fetch(`${s.url}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(API_KEY.length > 0, true);
  });
});

describe('10 hostile peers: limits', () => {
  it('a stream connection past FLOOD_LIMIT frames in 10 s, pings included, is closed with 1008', async () => {
    const k = await classroom();
    const { c } = await join(k);
    for (let i = 0; i < 210; i++) c.ws.ping();
    assert.equal((await c.closed).code, 1008);
  });

  it('a frame over MAX_FRAME_BYTES closes with 1009', async () => {
    const k = await classroom();
    const { c } = await join(k, '1400');
    c.chat('x'.repeat(70_000));
    assert.equal((await c.closed).code, 1009);
  });

  it('a typing flood forwards at most one userTyping and ends in a disconnect past FLOOD_LIMIT', async () => {
    const rid = await request('1410');
    const t = await joined(await teacher('1410'), rid);
    const l = await joined(await lab('1411'), rid);
    const gone = t.disconnected();
    for (let i = 0; i < 250; i++) t.socket.emit('typing', { requestId: rid });
    await gone;
    await settle();
    // However far the flood got before the disconnect, at most one typing went out.
    assert.ok(l.of('userTyping').length <= 1);
    assert.equal(l.socket.connected, true);
  });
});

describe('10 production and metrics', () => {
  it('refuses a token without exp in production, and protects /metrics with METRICS_TOKEN', async () => {
    const p = await startServer({ NODE_ENV: 'production', METRICS_TOKEN: 'scrape-me' });
    try {
      const { SignJWT } = await import('jose');
      const noExp = await new SignJWT({ user_id: '1500', role: 'LAB' })
        .setProtectedHeader({ alg: 'HS256' })
        .setIssuedAt()
        .sign(new TextEncoder().encode(SECRET));
      const refusal = await RequestClient.refusal(p.url, { auth: { token: noExp } });
      assert.equal(refusal.message, 'unauthorized');
      const k = key();
      await api(p.url, 'PUT', `/api/streams/${k}`, {});
      const c = await StreamClient.connect(p.wsUrl, k);
      c.auth(noExp);
      assert.equal((await c.next('error')).data.error_code, 'invalid_token');
      assert.deepEqual((await c.next('auth')).data, { authenticated: false });
      c.close();
      assert.equal((await fetch(`${p.url}/metrics`)).status, 401);
      const ok = await fetch(`${p.url}/metrics`, {
        headers: { authorization: 'Bearer scrape-me' },
      });
      assert.equal(ok.status, 200);
      assert.match(await ok.text(), /# HELP/);
    } finally {
      await p.close();
    }
  });
});

describe('9 and 8 configuration', () => {
  it('refuses a bad WEBHOOK_SECRET or ATTACHMENT_URL_PREFIXES with one line naming the variable', () => {
    const base = { JWT_SECRET: SECRET, API_KEY, WEBHOOK_URL: 'http://127.0.0.1:9/hooks' };
    const short = `whsec_${randomBytes(16).toString('base64')}`;
    for (const [env, name] of [
      [{ ...base }, 'WEBHOOK_SECRET'],
      [{ ...base, WEBHOOK_SECRET: short }, 'WEBHOOK_SECRET'],
      [{ ...base, WEBHOOK_SECRET: randomBytes(32).toString('base64') }, 'WEBHOOK_SECRET'],
      [{ JWT_SECRET: SECRET, ATTACHMENT_URL_PREFIXES: 'not a url' }, 'ATTACHMENT_URL_PREFIXES'],
      [{ JWT_SECRET: SECRET, REQUEST_EDIT_WINDOW_SECONDS: 'soon' }, 'REQUEST_EDIT_WINDOW_SECONDS'],
      [{ JWT_SECRET: SECRET, STREAM_HISTORY_ON_JOIN: '-1' }, 'STREAM_HISTORY_ON_JOIN'],
    ] as const) {
      assert.throws(
        () => loadConfig(env as Record<string, string>),
        (err: Error) => err.message.includes(name) && !err.message.includes('\n'),
        name,
      );
    }
    const ok = loadConfig({ ...base, WEBHOOK_SECRET });
    assert.ok(ok);
  });
});
