/**
 * The live classroom (protocol section 7) on one node, with real `ws`
 * clients against a real server: the `stream` and `history` frames, resume
 * with `since`, every moderator frame and its broadcast, every refusal.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { newId } from '../src/core/ids.js';
import {
  api,
  joinStream,
  postInOrder,
  type StreamClient,
  sleep,
  startServer,
  type TestServer,
  userToken,
} from './helpers.js';

let s: TestServer;
let keyN = 0;

before(async () => {
  s = await startServer({
    STREAM_RATE_LIMIT: '100000/1s',
    FLOOD_LIMIT: '100000',
    STREAM_VIEWERS_INTERVAL_MS: '100',
  });
});
after(() => s.close());

const OWNER = '100';
const MOD = '101';

/** A fresh stream owned by OWNER, with MOD listed as moderator. */
async function newStream(title = 'Algebra'): Promise<string> {
  const key = `class-${++keyN}`;
  assert.equal(
    (await api(s.url, 'PUT', `/api/streams/${key}`, { title, ownerId: OWNER })).status,
    201,
  );
  assert.equal(
    (await api(s.url, 'PATCH', `/api/streams/${key}`, { moderators: [MOD] })).status,
    200,
  );
  return key;
}

/** A viewer of `key` on this file's server: see `joinStream`. */
const join = (key: string, userId?: string, opts: { query?: string; roles?: string[] } = {}) =>
  joinStream(s.wsUrl, key, userId, opts);

/** Every stored chat of the stream, oldest first (paged: a busy test posts more than a page). */
const stored = async (key: string) => {
  await s.app.streams.flush();
  const all: any[] = [];
  let before = '';
  for (;;) {
    const page = (await api(s.url, 'GET', `/api/streams/${key}/messages?limit=500${before}`)).body;
    all.unshift(...page.messages);
    if (!page.hasMore) return all;
    before = `&before=${page.messages[0].id}`;
  }
};

/** The next `stream` frame whose data passes `test` (viewer counts re-send it too). */
async function nextStream(c: StreamClient, test: (data: any) => boolean): Promise<any> {
  for (;;) {
    const f = await c.next('stream');
    if (test(f.data)) return f.data;
  }
}

const texts = (frames: Array<{ message: string }>) => frames.map((m) => m.message);

describe('joining', () => {
  it('sends stream then history right after auth, to anonymous viewers too', async () => {
    const key = await newStream('Geometry');
    const { c: teacher } = await join(key, OWNER);
    await postInOrder(teacher, ['one', 'two', 'three']);
    const { c, stream, history } = await join(key);
    assert.deepEqual(stream.data, {
      key,
      title: 'Geometry',
      viewers: 2,
      slowModeSeconds: 0,
      membersOnly: false,
      paused: false,
      pinned: null,
    });
    assert.equal(history.data.gap, false);
    assert.deepEqual(texts(history.data.messages), ['one', 'two', 'three']);
    const first = history.data.messages[0];
    assert.deepEqual(Object.keys(first).sort(), [
      'badges',
      'id',
      'message',
      'sentAt',
      'user',
      'userId',
    ]);
    assert.deepEqual(first.badges, ['owner']);
    teacher.close();
    c.close();
  });

  it('holds the newest STREAM_HISTORY_ON_JOIN chats that are not deleted, oldest first', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const sent = await postInOrder(
      teacher,
      Array.from({ length: 55 }, (_, i) => `m${i}`),
    );
    teacher.send({ type: 'delete', data: { id: sent[54]?.data.id } });
    await teacher.next('delete');
    const { c, history } = await join(key);
    assert.equal(history.data.messages.length, 50);
    assert.deepEqual(
      texts(history.data.messages),
      Array.from({ length: 50 }, (_, i) => `m${i + 4}`),
    );
    teacher.close();
    c.close();
  });

  it('an empty stream has an empty history', async () => {
    const { c, history } = await join(await newStream());
    assert.deepEqual(history.data, { messages: [], gap: false });
    c.close();
  });

  it('counts viewers and re-sends stream when the count changed', async () => {
    const key = await newStream();
    const { c: a } = await join(key);
    const { c: b, stream } = await join(key);
    assert.equal(stream.data.viewers, 2);
    await nextStream(a, (d) => d.viewers === 2);
    b.close();
    for (;;) {
      const f = await a.next('stream', 2000);
      if (f.data.viewers === 1) break;
    }
    const before = a.all.filter((f) => f.type === 'stream').length;
    await sleep(400);
    assert.equal(
      a.all.filter((f) => f.type === 'stream').length,
      before,
      'not re-sent while the count stays the same',
    );
    a.close();
  });
});

describe('resume with since', () => {
  it('after a reset, gets exactly the 30 missed chats in order, then live ones', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    await postInOrder(teacher, ['before']);
    const { c: student, history } = await join(key, '5');
    const seen = { data: history.data.messages.at(-1) };
    assert.equal(seen.data.message, 'before');
    student.ws.terminate();
    await student.closed;
    const missed = await postInOrder(
      teacher,
      Array.from({ length: 30 }, (_, i) => `missed ${i}`),
    );
    const back = await join(key, '5', { query: `?since=${seen.data.id}` });
    assert.equal(back.history.data.gap, false);
    assert.deepEqual(
      back.history.data.messages.map((m: any) => m.id),
      missed.map((f) => f.data.id),
    );
    await postInOrder(teacher, ['live after']);
    const live = await back.c.next('chat');
    assert.equal(live.data.message, 'live after');
    assert.deepEqual(back.c.rest(), []);
    teacher.close();
    back.c.close();
  });

  it('with 600 missed, gets the newest HISTORY_MAX_PAGE and gap: true', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const [first] = await postInOrder(teacher, ['seen']);
    for (let i = 0; i < 600; i++) teacher.chat(`missed ${i}`);
    await teacher.collect('chat', 601, 20_000);
    const back = await join(key, '5', { query: `?since=${first?.data.id}` });
    assert.equal(back.history.data.gap, true);
    assert.equal(back.history.data.messages.length, 500);
    assert.equal(back.history.data.messages[0].message, 'missed 100');
    assert.equal(back.history.data.messages[499].message, 'missed 599');
    teacher.close();
    back.c.close();
  });

  it('an id the stream never had gives the usual history with gap: true', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    await postInOrder(teacher, ['a', 'b']);
    for (const since of [newId(), 'not-an-id']) {
      const back = await join(key, '5', { query: `?since=${since}` });
      assert.equal(back.history.data.gap, true);
      assert.deepEqual(texts(back.history.data.messages), ['a', 'b']);
      back.c.close();
    }
    teacher.close();
  });

  it('under concurrent posting, no chat is both in history and live, none is missed', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const [first] = await postInOrder(teacher, ['start']);
    let posting = true;
    let n = 0;
    const poster = (async () => {
      while (posting) {
        teacher.chat(`c${n++}`);
        if (n % 5 === 0) await sleep(1);
      }
    })();
    const joiners = [];
    for (let i = 0; i < 12; i++) {
      await sleep(15);
      const since = i % 2 === 0 ? `?since=${first?.data.id}` : '';
      joiners.push(join(key, `s${i}`, { query: since }).then((j) => ({ ...j, since })));
    }
    const joined = await Promise.all(joiners);
    await sleep(100);
    posting = false;
    await poster;
    teacher.chat('end');
    for (const j of joined) {
      for (;;) if ((await j.c.next('chat', 10_000)).data.message === 'end') break;
    }
    const order = (await stored(key)).map((m) => m.id);
    let resumedWhole = 0;
    for (const j of joined) {
      const ids = [
        ...j.history.data.messages.map((m: any) => m.id as string),
        ...j.c.frames.filter((f) => f.type === 'chat').map((f) => f.data.id as string),
      ];
      assert.equal(new Set(ids).size, ids.length, 'no chat twice');
      // Contiguous in the stream's order: nothing missed between history and live.
      const start = order.indexOf(ids[0] as string);
      assert.deepEqual(ids, order.slice(start, start + ids.length));
      assert.equal(ids.at(-1), order.at(-1));
      if (j.since && !j.history.data.gap) {
        assert.equal(ids[0], order[1], 'resumed right after the given chat');
        resumedWhole++;
      } else if (j.since) {
        // More were posted since than one history holds (a fast machine): the newest, flagged.
        assert.equal(j.history.data.messages.length, 500);
        assert.ok(order.indexOf(ids[0]) > 1, 'a gap is flagged only when chats were left out');
      }
      j.c.close();
    }
    assert.ok(resumedWhole > 0, 'the early resumes got everything since the given chat');
    teacher.close();
  });
});

describe('badges', () => {
  it('marks the owner, listed moderators and MODERATOR staff on every chat', async () => {
    const key = await newStream();
    const { c: viewer } = await join(key);
    const owner = await join(key, OWNER);
    const mod = await join(key, MOD);
    const staff = await join(key, '900', { roles: ['moderator'] });
    const plain = await join(key, '5');
    await postInOrder(owner.c, ['from owner']);
    await postInOrder(mod.c, ['from mod']);
    await postInOrder(staff.c, ['from staff']);
    await postInOrder(plain.c, ['from student']);
    const chats = await viewer.collect('chat', 4);
    assert.deepEqual(
      chats.map((f) => [f.data.message, f.data.badges]),
      [
        ['from owner', ['owner']],
        ['from mod', ['moderator']],
        ['from staff', ['moderator']],
        ['from student', []],
      ],
    );
    for (const c of [viewer, owner.c, mod.c, staff.c, plain.c]) c.close();
  });
});

describe('moderator frames', () => {
  it('refuses every moderator frame from anyone else with forbidden, changing nothing', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const [chat] = await postInOrder(teacher, ['keep me']);
    const anon = (await join(key)).c;
    const student = (await join(key, '5')).c;
    const frames = [
      { type: 'delete', data: { id: chat?.data.id } },
      { type: 'timeout', data: { userId: '6', seconds: 60 } },
      { type: 'ban', data: { userId: '6' } },
      { type: 'unban', data: { userId: '6' } },
      { type: 'settings', data: { paused: true } },
      { type: 'pin', data: { id: chat?.data.id } },
    ];
    for (const c of [anon, student]) {
      for (const f of frames) {
        c.send(f);
        const err = await c.next();
        assert.equal(err.type, 'error', f.type);
        assert.equal(err.data.error_code, 'forbidden', f.type);
      }
    }
    assert.equal((await stored(key))[0].deletedAt, null);
    const info = (await api(s.url, 'GET', `/api/streams/${key}`)).body;
    assert.equal(info.paused, false);
    assert.equal(info.pinned, null);
    assert.deepEqual((await api(s.url, 'GET', `/api/streams/${key}/bans`)).body.bans, []);
    assert.deepEqual(teacher.rest(), [], 'nobody else saw anything');
    for (const c of [teacher, anon, student]) c.close();
  });

  it('rejects malformed moderator frames with invalid_payload', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const bad = [
      { type: 'delete', data: { id: 'nope' } },
      { type: 'timeout', data: { userId: '6', seconds: 0 } },
      { type: 'timeout', data: { userId: '6', seconds: 1_209_601 } },
      { type: 'timeout', data: { userId: '6', seconds: 1.5 } },
      { type: 'timeout', data: { userId: '6' } },
      { type: 'ban', data: { userId: '' } },
      { type: 'ban', data: { userId: 1.5 } },
      { type: 'settings', data: { slowModeSeconds: 3601 } },
      { type: 'settings', data: { slowModeSeconds: -1 } },
      { type: 'settings', data: { paused: 'yes' } },
      { type: 'pin', data: {} },
    ];
    for (const f of bad) {
      teacher.send(f);
      assert.equal((await teacher.next()).data.error_code, 'invalid_payload', JSON.stringify(f));
    }
    teacher.close();
  });

  it('delete: broadcast to everyone, gone from history, kept for the API with who and when', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const { c: student } = await join(key, '5');
    const [bad] = await postInOrder(student, ['offensive']);
    await postInOrder(student, ['fine']);
    await teacher.collect('chat', 2);
    const mod = await join(key, MOD);
    mod.c.send({ type: 'delete', data: { id: bad?.data.id } });
    for (const c of [teacher, student, mod.c]) {
      assert.deepEqual((await c.next('delete')).data, { id: bad?.data.id, by: MOD });
    }
    const { c: late, history } = await join(key);
    assert.deepEqual(texts(history.data.messages), ['fine']);
    const rows = await stored(key);
    const row = rows.find((m) => m.id === bad?.data.id);
    assert.equal(row.deletedBy, MOD);
    assert.ok(!Number.isNaN(Date.parse(row.deletedAt)));
    assert.equal(rows.find((m) => m.message === 'fine').deletedAt, null);
    mod.c.send({ type: 'delete', data: { id: newId() } });
    assert.equal((await mod.c.next()).data.error_code, 'not_found');
    for (const c of [teacher, student, mod.c, late]) c.close();
  });

  it('timeout: timed_out with retry_after_ms until it ends; the user still reads', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const { c: student } = await join(key, '5');
    teacher.send({ type: 'timeout', data: { userId: '5', seconds: 2, reason: 'calm down' } });
    for (const c of [teacher, student]) {
      assert.deepEqual((await c.next('moderation')).data, {
        action: 'timeout',
        userId: '5',
        seconds: 2,
        by: OWNER,
      });
    }
    student.chat('let me talk');
    const err = await student.next('error');
    assert.equal(err.data.error_code, 'timed_out');
    assert.ok(err.data.retry_after_ms > 1000 && err.data.retry_after_ms <= 2000);
    await postInOrder(teacher, ['still reading?']);
    assert.equal((await student.next('chat')).data.message, 'still reading?');
    await sleep(err.data.retry_after_ms + 50);
    await postInOrder(student, ['back']);
    assert.equal((await stored(key)).filter((m) => m.message === 'let me talk').length, 0);
    teacher.close();
    student.close();
  });

  it('ban and unban: banned without retry_after_ms, nobody sees the chat; the owner cannot be banned', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const { c: student } = await join(key, '5');
    const mod = await join(key, MOD);
    mod.c.send({ type: 'ban', data: { userId: '5', reason: 'spam' } });
    assert.deepEqual((await student.next('moderation')).data, {
      action: 'ban',
      userId: '5',
      by: MOD,
    });
    student.chat('spam');
    const err = await student.next('error');
    assert.deepEqual(Object.keys(err.data).sort(), ['error_code', 'message']);
    assert.equal(err.data.error_code, 'banned');
    await postInOrder(teacher, ['barrier']);
    assert.deepEqual(
      texts((await mod.c.collect('chat', 1)).map((f) => f.data)),
      ['barrier'],
      'the refused chat reached nobody',
    );
    const bans = (await api(s.url, 'GET', `/api/streams/${key}/bans`)).body.bans;
    assert.equal(bans.length, 1);
    assert.equal(bans[0].userId, '5');
    assert.equal(bans[0].until, null);
    assert.equal(bans[0].reason, 'spam');
    assert.equal(bans[0].by, MOD);
    mod.c.send({ type: 'ban', data: { userId: OWNER } });
    assert.equal((await mod.c.next('error')).data.error_code, 'forbidden');
    mod.c.send({ type: 'unban', data: { userId: '5' } });
    assert.deepEqual((await student.next('moderation')).data, {
      action: 'unban',
      userId: '5',
      by: MOD,
    });
    await postInOrder(student, ['sorry']);
    assert.deepEqual(
      (await stored(key)).map((m) => m.message),
      ['barrier', 'sorry'],
    );
    for (const c of [teacher, student, mod.c]) c.close();
  });

  it('rules heard in another order than they were stored end as stored: the node reads them again', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const { c: student } = await join(key, '5');
    assert.equal((await api(s.url, 'PUT', `/api/streams/${key}/bans/5`, {})).status, 200);
    assert.equal((await student.next('moderation')).data.action, 'ban');
    // Another moderator's unban, stored after the ban but heard before it:
    // here the store takes it and the node never hears it at all.
    await s.app.store.addModerationAction(
      key,
      {
        action: 'unban',
        userId: '5',
        messageId: null,
        by: MOD,
        at: new Date().toISOString(),
        reason: null,
      },
      [],
      { kind: 'unban', userId: '5' },
    );
    // The next change heard makes the node compare with the store.
    assert.equal(
      (await api(s.url, 'PATCH', `/api/streams/${key}`, { title: 'Álgebra II' })).status,
      200,
    );
    assert.deepEqual((await student.next('moderation', 5_000)).data, {
      action: 'unban',
      userId: '5',
      by: MOD,
    });
    await postInOrder(student, ['de vuelta']);
    assert.deepEqual(
      (await stored(key)).map((m) => m.message),
      ['de vuelta'],
    );
    for (const c of [teacher, student]) c.close();
  });

  it('settings: slow mode, members-only and pause, each broadcast as a stream frame; moderators exempt', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const { c: student } = await join(key, '5');
    const { c: member } = await join(key, '6');
    teacher.send({ type: 'settings', data: { slowModeSeconds: 2 } });
    await nextStream(student, (d) => d.slowModeSeconds === 2);
    await postInOrder(student, ['first']);
    student.chat('too soon');
    const slow = await student.next('error');
    assert.equal(slow.data.error_code, 'slow_mode');
    assert.ok(slow.data.retry_after_ms > 0 && slow.data.retry_after_ms <= 2000);
    await postInOrder(teacher, ['teacher 1', 'teacher 2']);

    teacher.send({ type: 'settings', data: { slowModeSeconds: 0, membersOnly: true } });
    const membersOnly = await nextStream(student, (d) => d.membersOnly);
    assert.equal(membersOnly.slowModeSeconds, 0);
    assert.equal(
      (await api(s.url, 'PUT', `/api/streams/${key}/members`, { userIds: ['6'] })).status,
      200,
    );
    student.chat('not a member');
    assert.equal((await student.next('error')).data.error_code, 'members_only');
    await postInOrder(member, ['member here']);
    await postInOrder(teacher, ['teacher 3']);

    teacher.send({ type: 'settings', data: { paused: true } });
    await nextStream(member, (d) => d.paused);
    member.chat('paused?');
    assert.equal((await member.next('error')).data.error_code, 'chat_paused');
    await postInOrder(teacher, ['teacher 4']);
    teacher.send({ type: 'settings', data: { paused: false, membersOnly: false } });
    await nextStream(student, (d) => !d.paused && !d.membersOnly);
    await postInOrder(student, ['open again']);
    assert.deepEqual(
      (await stored(key)).map((m) => m.message),
      ['first', 'teacher 1', 'teacher 2', 'member here', 'teacher 3', 'teacher 4', 'open again'],
    );
    for (const c of [teacher, student, member]) c.close();
  });

  it('a pinned chat deleted in the store is never shown again by a read of the rules', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const { c: student } = await join(key, '5');
    const [chat] = await postInOrder(teacher, ['spam']);
    const id = chat?.data.id as string;
    teacher.send({ type: 'pin', data: { id } });
    await nextStream(student, (d) => d.pinned?.id === id);
    // The deletion is stored; its unpin has not come yet (it follows a moment later).
    const at = new Date().toISOString();
    await s.app.store.addModerationAction(
      key,
      { action: 'delete', userId: OWNER, messageId: id, by: MOD, at, reason: null },
      [],
      { kind: 'delete', id, by: MOD, at },
    );
    // A change heard meanwhile makes the node read the rules again.
    assert.equal((await api(s.url, 'PUT', `/api/streams/${key}/bans/6`, {})).status, 200);
    const shown = await nextStream(student, (d) => d.pinned?.id !== id);
    assert.equal(shown.pinned, null, 'the deleted chat is not pinned for the viewers');
    const { stream } = await join(key);
    assert.equal(stream.data.pinned, null, 'nor for a joiner');
    for (const c of [teacher, student]) c.close();
  });

  it('pin and unpin: the stream frame carries the pinned chat', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const { c: student } = await join(key, '5');
    const [chat] = await postInOrder(teacher, ['read chapter 3']);
    teacher.send({ type: 'pin', data: { id: chat?.data.id } });
    await nextStream(student, (d) => d.pinned?.id === chat?.data.id);
    const { c: late, stream } = await join(key);
    assert.deepEqual(stream.data.pinned, chat?.data, 'joiners see the pin');
    teacher.send({ type: 'pin', data: { id: null } });
    await nextStream(student, (d) => d.pinned === null);
    teacher.send({ type: 'pin', data: { id: newId() } });
    assert.equal((await teacher.next('error')).data.error_code, 'not_found');
    // Deleting the pinned chat unpins it.
    teacher.send({ type: 'pin', data: { id: chat?.data.id } });
    assert.deepEqual((await nextStream(student, (d) => d.pinned !== null)).pinned, chat?.data);
    teacher.send({ type: 'delete', data: { id: chat?.data.id } });
    await student.next('delete');
    await nextStream(student, (d) => d.pinned === null);
    for (const c of [teacher, student, late]) c.close();
  });
});

describe('history frame size', () => {
  it('is cut to SEND_BUFFER_MAX_BYTES, oldest first, with gap: true, instead of closing the joiner', async () => {
    const small = await startServer({
      SEND_BUFFER_MAX_BYTES: '16384',
      STREAM_MESSAGE_MAX_CHARS: '2000',
      STREAM_RATE_LIMIT: '100000/1s',
    });
    try {
      await api(small.url, 'PUT', '/api/streams/big', { ownerId: OWNER });
      const { StreamClient: Client } = await import('./helpers.js');
      const teacher = await Client.connect(small.wsUrl, 'big', { token: await userToken(OWNER) });
      for (let i = 0; i < 20; i++) teacher.chat(`${i} ${'x'.repeat(1500)}`);
      await teacher.collect('chat', 20);
      await small.app.streams.flush();
      const c = await Client.connect(small.wsUrl, 'big');
      const history = await c.next('history');
      assert.equal(history.data.gap, true);
      assert.ok(history.data.messages.length > 0 && history.data.messages.length < 20);
      assert.ok(history.data.messages.at(-1).message.startsWith('19 '), 'the newest are kept');
      teacher.chat('still open');
      assert.equal((await c.next('chat')).data.message, 'still open');
      teacher.close();
      c.close();
    } finally {
      await small.close();
    }
  });
});

describe('server API', () => {
  it('GET and PATCH a stream: title, moderators and settings, broadcast as a stream frame', async () => {
    const key = await newStream('Physics');
    const { c: viewer } = await join(key);
    const got = await api(s.url, 'GET', `/api/streams/${key}`);
    assert.equal(got.status, 200);
    assert.deepEqual(got.body, {
      key,
      title: 'Physics',
      ownerId: OWNER,
      moderators: [MOD],
      live: true,
      viewers: 1,
      slowModeSeconds: 0,
      membersOnly: false,
      paused: false,
      pinned: null,
    });
    const patched = await api(s.url, 'PATCH', `/api/streams/${key}`, {
      title: 'Physics II',
      moderators: ['102', 103],
      slowModeSeconds: 10,
      membersOnly: true,
      paused: true,
    });
    assert.equal(patched.status, 200);
    assert.deepEqual(patched.body.moderators, ['102', '103']);
    const frame = await nextStream(viewer, (d) => d.title === 'Physics II');
    assert.deepEqual([frame.slowModeSeconds, frame.membersOnly, frame.paused], [10, true, true]);
    // The new list replaces the old: 101 no longer moderates, 102 does.
    const old = (await join(key, MOD)).c;
    old.send({ type: 'settings', data: { paused: false } });
    assert.equal((await old.next('error')).data.error_code, 'forbidden');
    const now = (await join(key, '102')).c;
    now.send({ type: 'settings', data: { paused: false } });
    await nextStream(viewer, (d) => d.paused === false);
    for (const body of [
      { slowModeSeconds: 3601 },
      { slowModeSeconds: -1 },
      { membersOnly: 'yes' },
      { moderators: 'x' },
      { title: 5 },
    ]) {
      assert.equal(
        (await api(s.url, 'PATCH', `/api/streams/${key}`, body)).status,
        422,
        JSON.stringify(body),
      );
    }
    assert.equal((await api(s.url, 'GET', '/api/streams/nope')).status, 404);
    assert.equal((await api(s.url, 'PATCH', '/api/streams/nope', { paused: true })).status, 404);
    assert.equal((await api(s.url, 'GET', `/api/streams/${key}`, undefined, null)).status, 401);
    assert.equal((await api(s.url, 'PATCH', `/api/streams/${key}`, {}, 'wrong')).status, 401);
    for (const c of [viewer, old, now]) c.close();
  });

  it('PUT members replaces the allowlist; bad bodies are 422 and change nothing', async () => {
    const key = await newStream();
    await api(s.url, 'PATCH', `/api/streams/${key}`, { membersOnly: true });
    const put = await api(s.url, 'PUT', `/api/streams/${key}/members`, { userIds: ['5', 6, '5'] });
    assert.equal(put.status, 200);
    assert.deepEqual(put.body.userIds, ['5', '6']);
    const { c: five } = await join(key, '5');
    await postInOrder(five, ['member 5']);
    assert.equal(
      (await api(s.url, 'PUT', `/api/streams/${key}/members`, { userIds: ['6'] })).status,
      200,
    );
    five.chat('still?');
    assert.equal((await five.next('error')).data.error_code, 'members_only');
    for (const body of [{}, { userIds: 'x' }, { userIds: [null] }, { userIds: [''] }]) {
      assert.equal((await api(s.url, 'PUT', `/api/streams/${key}/members`, body)).status, 422);
    }
    const { c: six } = await join(key, '6');
    await postInOrder(six, ['member 6']);
    assert.equal(
      (await api(s.url, 'PUT', '/api/streams/nope/members', { userIds: [] })).status,
      404,
    );
    five.close();
    six.close();
  });

  it('a banned or timed-out moderator is refused like anyone; numeric user ids are taken as strings', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const listed = await join(key, MOD);
    const staff = await join(key, '102', { roles: ['MODERATOR'] });
    teacher.send({ type: 'ban', data: { userId: Number(MOD) } });
    assert.deepEqual((await listed.c.next('moderation')).data, {
      action: 'ban',
      userId: MOD,
      by: OWNER,
    });
    listed.c.chat('still here?');
    assert.equal((await listed.c.next('error')).data.error_code, 'banned');
    teacher.send({ type: 'timeout', data: { userId: 102, seconds: 60 } });
    await staff.c.next('moderation');
    staff.c.chat('and me?');
    const err = (await staff.c.next('error')).data;
    assert.equal(err.error_code, 'timed_out');
    assert.ok(err.retry_after_ms > 50_000);
    await postInOrder(teacher, ['barrier']);
    assert.deepEqual(
      (await stored(key)).map((m) => m.message),
      ['barrier'],
    );
    // Lifting a ban that is not there is still answered with its broadcast.
    teacher.send({ type: 'unban', data: { userId: '77' } });
    const answers = await teacher.collect('moderation', 3);
    assert.deepEqual(answers[2]?.data, { action: 'unban', userId: '77', by: OWNER });
    for (const c of [teacher, listed.c, staff.c]) c.close();
  });

  it('answers a connection’s frames in the order they came, errors found at once included', async () => {
    const key = await newStream();
    const { c } = await join(key, '5');
    c.chat('');
    c.chat('x'.repeat(501));
    c.ws.send(Buffer.from('binary'));
    c.send({ type: 'zzz', data: {} });
    const codes = (await c.collect('error', 4)).map((f) => f.data.error_code);
    assert.deepEqual(codes, [
      'empty_message',
      'message_too_long',
      'invalid_payload',
      'unknown_type',
    ]);
    c.close();
  });

  it('DELETE a message: broadcast with by "api"; unknown ids and streams are refused', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const [chat] = await postInOrder(teacher, ['remove me']);
    const del = await api(s.url, 'DELETE', `/api/streams/${key}/messages/${chat?.data.id}`);
    assert.equal(del.status, 200);
    assert.deepEqual((await teacher.next('delete')).data, { id: chat?.data.id, by: 'api' });
    const row = (await stored(key)).find((m) => m.id === chat?.data.id);
    assert.equal(row.deletedBy, 'api');
    assert.equal(row.user, row.username, 'a chat for the API carries `user` as frames do');
    // Deleting it again answers success, with its broadcast, and stores no second log entry.
    const again = await api(s.url, 'DELETE', `/api/streams/${key}/messages/${chat?.data.id}`);
    assert.equal(again.status, 200);
    assert.deepEqual((await teacher.next('delete')).data, { id: chat?.data.id, by: 'api' });
    const log = (await api(s.url, 'GET', `/api/streams/${key}/moderation-log`)).body.actions;
    assert.deepEqual(
      log.map((a: any) => a.action),
      ['delete'],
    );
    assert.equal((await api(s.url, 'DELETE', `/api/streams/${key}/messages/nope`)).status, 400);
    assert.equal(
      (await api(s.url, 'DELETE', `/api/streams/${key}/messages/${newId()}`)).status,
      404,
    );
    assert.equal(
      (await api(s.url, 'DELETE', `/api/streams/nope/messages/${chat?.data.id}`)).status,
      404,
    );
    teacher.close();
  });

  it('PUT, GET and DELETE bans: timeouts with seconds, bans without', async () => {
    const key = await newStream();
    const { c: student } = await join(key, '5');
    const timeout = await api(s.url, 'PUT', `/api/streams/${key}/bans/5`, {
      seconds: 600,
      reason: 'noise',
    });
    assert.equal(timeout.status, 200);
    assert.deepEqual((await student.next('moderation')).data, {
      action: 'timeout',
      userId: '5',
      seconds: 600,
      by: 'api',
    });
    student.chat('hi');
    assert.equal((await student.next('error')).data.error_code, 'timed_out');
    assert.equal((await api(s.url, 'PUT', `/api/streams/${key}/bans/6`, {})).status, 200);
    const { bans } = (await api(s.url, 'GET', `/api/streams/${key}/bans`)).body;
    assert.deepEqual(
      bans.map((b: any) => [b.userId, b.until === null, b.reason, b.by]),
      [
        ['5', false, 'noise', 'api'],
        ['6', true, null, 'api'],
      ],
    );
    const until = Date.parse(bans[0].until);
    assert.ok(until > Date.now() + 590_000 && until <= Date.now() + 600_000);
    assert.equal((await api(s.url, 'DELETE', `/api/streams/${key}/bans/5`)).status, 200);
    await nextStream(student, () => true).catch(() => {});
    await postInOrder(student, ['free']);
    for (const body of [{ seconds: 0 }, { seconds: 1_209_601 }, { seconds: 'x' }, { reason: 5 }]) {
      assert.equal((await api(s.url, 'PUT', `/api/streams/${key}/bans/7`, body)).status, 422);
    }
    assert.equal((await api(s.url, 'PUT', `/api/streams/${key}/bans/${OWNER}`, {})).status, 403);
    assert.equal((await api(s.url, 'PUT', '/api/streams/nope/bans/5', {})).status, 404);
    assert.equal((await api(s.url, 'GET', '/api/streams/nope/bans')).status, 404);
    assert.deepEqual(
      (await api(s.url, 'GET', `/api/streams/${key}/bans`)).body.bans.map((b: any) => b.userId),
      ['6'],
    );
    student.close();
  });

  it('the moderation log lists every action, newest first, paged with before', async () => {
    const key = await newStream();
    const { c: teacher } = await join(key, OWNER);
    const [chat] = await postInOrder(teacher, ['x']);
    teacher.send({ type: 'timeout', data: { userId: '5', seconds: 60, reason: 'r1' } });
    await teacher.next('moderation');
    teacher.send({ type: 'ban', data: { userId: '6' } });
    await teacher.next('moderation');
    teacher.send({ type: 'unban', data: { userId: '6' } });
    await teacher.next('moderation');
    teacher.send({ type: 'delete', data: { id: chat?.data.id } });
    await teacher.next('delete');
    await api(s.url, 'PATCH', `/api/streams/${key}`, { paused: true });
    const all = await api(s.url, 'GET', `/api/streams/${key}/moderation-log`);
    assert.equal(all.status, 200);
    assert.deepEqual(
      all.body.actions.map((a: any) => [a.action, a.userId, a.messageId, a.by, a.reason]),
      [
        ['settings', undefined, undefined, 'api', undefined],
        ['delete', OWNER, chat?.data.id, OWNER, undefined],
        ['unban', '6', undefined, OWNER, undefined],
        ['ban', '6', undefined, OWNER, undefined],
        ['timeout', '5', undefined, OWNER, 'r1'],
      ],
    );
    assert.deepEqual(Object.keys(all.body.actions[0]).sort(), ['action', 'at', 'by', 'id']);
    assert.equal(all.body.hasMore, false);
    const page = await api(s.url, 'GET', `/api/streams/${key}/moderation-log?limit=3`);
    assert.equal(page.body.hasMore, true);
    const rest = await api(
      s.url,
      'GET',
      `/api/streams/${key}/moderation-log?limit=2&before=${page.body.actions[2].id}`,
    );
    assert.deepEqual(
      rest.body.actions.map((a: any) => a.action),
      ['ban', 'timeout'],
    );
    for (const q of ['limit=0', 'limit=501', 'before=x', 'before=-1']) {
      assert.equal(
        (await api(s.url, 'GET', `/api/streams/${key}/moderation-log?${q}`)).status,
        400,
      );
    }
    assert.equal((await api(s.url, 'GET', '/api/streams/nope/moderation-log')).status, 404);
    teacher.close();
  });
});
