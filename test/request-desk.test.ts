/**
 * The request chat's desk (protocol section 8) with real socket.io-client v4
 * sockets against a real server on a real SQLite file: typing, edits,
 * deletions, attachments, the inbox and its live unread counts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.js';
import { newId } from '../src/core/ids.js';
import { allowedUrl } from '../src/core/requests.js';
import { TypingThrottle } from '../src/core/typing.js';
import { api, sleep, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient, settle } from './request-client.js';

const TEACHER = { username: 'ana', role: 'TEACHER' };
const LAB = { username: 'lab', role: 'LAB' };
const PREFIX = 'https://files.test/uploads/';
const EDIT_WINDOW_S = 2;

const photo = (name = 'sample.png') => ({
  url: `${PREFIX}${name}`,
  name,
  contentType: 'image/png',
  size: 2048,
});

describe('request chat desk', () => {
  let server: TestServer;
  const clients: RequestClient[] = [];
  let nextUser = 100;
  /** A user id no other test uses, so lab-wide updates of other tests are told apart by request. */
  const freshUser = () => String(nextUser++);

  const connect = async (userId: string, claims: Record<string, unknown>) => {
    const c = await RequestClient.connect(server.url, await userToken(userId, claims));
    clients.push(c);
    return c;
  };
  const register = async (ownerId: string) => {
    const id = newId();
    assert.equal((await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId })).status, 201);
    return id;
  };
  const join = async (c: RequestClient, requestId: string) => {
    assert.deepEqual(await c.ask('joinRoom', { requestId }), { ok: true, requestId });
  };
  const stored = async (requestId: string) =>
    (await api(server.url, 'GET', `/api/requests/${requestId}/messages`)).body.messages as any[];
  /** A teacher and a lab user, both in the room of a new request the teacher owns. */
  const room = async () => {
    const teacherId = freshUser();
    const labId = freshUser();
    const requestId = await register(teacherId);
    const teacher = await connect(teacherId, TEACHER);
    const lab = await connect(labId, LAB);
    await join(teacher, requestId);
    await join(lab, requestId);
    return { requestId, teacher, lab, teacherId, labId };
  };

  before(async () => {
    server = await startServer({
      REQUEST_RATE_LIMIT: '1000/1s',
      TYPING_INTERVAL_MS: '400',
      REQUEST_EDIT_WINDOW_SECONDS: String(EDIT_WINDOW_S),
      ATTACHMENT_URL_PREFIXES: `${PREFIX}, https://cdn.test/`,
      ATTACHMENTS_MAX: '2',
      UNREAD_LIST_MAX: '2',
    });
  });
  after(async () => {
    for (const c of clients) c.close();
    await server.close();
  });

  describe('typing', () => {
    test('reaches the room once per interval, never the sender, and is not stored', async () => {
      const { requestId, teacher, lab, labId } = await room();
      const ack = await lab.ask('typing', { requestId });
      assert.deepEqual(ack, { ok: true, requestId, forwarded: true });
      assert.deepEqual(await teacher.next('userTyping'), {
        requestId,
        userId: labId,
        username: 'lab',
      });
      assert.deepEqual(await lab.ask('typing', { requestId }), {
        ok: true,
        requestId,
        forwarded: false,
      });
      await sleep(450);
      assert.equal((await lab.ask('typing', { requestId })).forwarded, true);
      // A message after the typing is the barrier: everything before it has arrived.
      await lab.ask('message', { requestId, message: 'done' });
      await teacher.next('message');
      assert.equal(teacher.of('userTyping').length, 2);
      assert.equal(lab.of('userTyping').length, 0, 'not echoed to the typist');
      assert.deepEqual(
        (await stored(requestId)).map((m) => m.message),
        ['done'],
      );
    });

    test('outside the room is not_in_room and reaches nobody', async () => {
      const { requestId, teacher } = await room();
      const outsider = await connect(freshUser(), LAB);
      const ack = await outsider.ask('typing', { requestId });
      assert.equal(ack.error_code, 'not_in_room');
      const bad = await outsider.ask('typing', { requestId: 'nope' });
      assert.equal(bad.error_code, 'invalid_payload');
      await settle();
      assert.equal(teacher.of('userTyping').length, 0);
    });
  });

  describe('editing and deleting', () => {
    test('the sender edits: acknowledged, the room gets messageUpdated, history keeps it', async () => {
      const { requestId, teacher, lab } = await room();
      const sent = (await lab.ask('message', { requestId, message: 'resutls ready' })).message;
      const ack = await lab.ask('editMessage', {
        requestId,
        messageId: sent._id,
        message: 'results ready',
      });
      assert.equal(ack.ok, true);
      assert.equal(ack.message.message, 'results ready');
      assert.ok(Date.parse(ack.message.editedAt) >= Date.parse(sent.createdAt));
      assert.equal(ack.message.createdAt, sent.createdAt);
      assert.deepEqual(await teacher.next('messageUpdated'), ack.message);
      const [inHistory] = await stored(requestId);
      assert.equal(inHistory.message, 'results ready');
      assert.equal(inHistory.editedAt, ack.message.editedAt);
      // The whole room, the editor's own sockets too: its other tabs show the edit.
      assert.deepEqual(await lab.next('messageUpdated'), ack.message);
    });

    test("someone else's message is forbidden; unknown ids not_found; bad text refused", async () => {
      const { requestId, teacher, lab } = await room();
      const sent = (await lab.ask('message', { requestId, message: 'mine' })).message;
      for (const event of ['editMessage', 'deleteMessage']) {
        const ack = await teacher.ask(event, { requestId, messageId: sent._id, message: 'x' });
        assert.equal(ack.error_code, 'forbidden', event);
        const unknown = await lab.ask(event, { requestId, messageId: newId(), message: 'x' });
        assert.equal(unknown.error_code, 'not_found', event);
        const malformed = await lab.ask(event, { requestId, messageId: 'zz', message: 'x' });
        assert.equal(malformed.error_code, 'invalid_payload', event);
      }
      const empty = await lab.ask('editMessage', { requestId, messageId: sent._id, message: ' ' });
      assert.equal(empty.error_code, 'empty_message');
      const long = await lab.ask('editMessage', {
        requestId,
        messageId: sent._id,
        message: 'x'.repeat(5001),
      });
      assert.equal(long.error_code, 'message_too_long');
      await settle();
      assert.equal(teacher.of('messageUpdated').length + teacher.of('messageDeleted').length, 0);
      const [kept] = await stored(requestId);
      assert.equal(kept.message, 'mine');
      assert.equal('editedAt' in kept, false);
    });

    test('the sender deletes: the room gets messageDeleted, history holds a blank', async () => {
      const { requestId, teacher, lab } = await room();
      const sent = (
        await lab.ask('message', { requestId, message: 'oops', attachments: [photo()] })
      ).message;
      const ack = await lab.ask('deleteMessage', { requestId, messageId: sent._id });
      assert.equal(ack.ok, true);
      const deleted = await teacher.next('messageDeleted');
      assert.deepEqual(deleted, { requestId, messageId: sent._id, deletedAt: ack.deletedAt });
      assert.deepEqual(await lab.next('messageDeleted'), deleted);
      const [gone] = await stored(requestId);
      assert.equal(gone._id, sent._id);
      assert.equal(gone.message, '');
      assert.deepEqual(gone.attachments, []);
      assert.equal(gone.deletedAt, ack.deletedAt);
      const again = await lab.ask('deleteMessage', { requestId, messageId: sent._id });
      assert.equal(again.error_code, 'not_found');
      const edit = await lab.ask('editMessage', { requestId, messageId: sent._id, message: 'x' });
      assert.equal(edit.error_code, 'not_found');
    });

    test('after the edit window both are edit_window_passed and nothing changes', async () => {
      const { requestId, teacher, lab } = await room();
      const sent = (await lab.ask('message', { requestId, message: 'final' })).message;
      await sleep(EDIT_WINDOW_S * 1000 + 200);
      const edit = await lab.ask('editMessage', { requestId, messageId: sent._id, message: 'x' });
      assert.equal(edit.ok, false);
      assert.equal(edit.error_code, 'edit_window_passed');
      const ex = lab.of('exception').at(-1);
      assert.deepEqual([ex.event, ex.error_code], ['editMessage', 'edit_window_passed']);
      const del = await lab.ask('deleteMessage', { requestId, messageId: sent._id });
      assert.equal(del.error_code, 'edit_window_passed');
      await settle();
      assert.equal(teacher.of('messageUpdated').length + teacher.of('messageDeleted').length, 0);
      assert.equal((await stored(requestId))[0].message, 'final');
    });
  });

  describe('attachments', () => {
    test('links under an allowed prefix are stored and delivered; the text may be empty', async () => {
      const { requestId, teacher, lab } = await room();
      const files = [photo(), { ...photo('r.pdf'), url: 'https://cdn.test/r.pdf' }];
      files[1] = { ...(files[1] as ReturnType<typeof photo>), contentType: 'application/pdf' };
      const ack = await lab.ask('message', { requestId, message: '', attachments: files });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      assert.deepEqual(ack.message.attachments, files);
      assert.deepEqual((await teacher.next('message')).attachments, files);
      assert.deepEqual((await stored(requestId))[0].attachments, files);
      const plain = await lab.ask('message', { requestId, message: 'no files' });
      assert.deepEqual(plain.message.attachments, [], 'always an array');
    });

    test('other URLs, too many, bad fields and empty text alone are refused; nothing stored', async () => {
      const { requestId, teacher, lab } = await room();
      const refused: Array<[unknown, string]> = [
        [
          { message: 'x', attachments: [{ ...photo(), url: 'https://evil.test/a.png' }] },
          'invalid_payload',
        ],
        [
          { message: 'x', attachments: [{ ...photo(), url: 'https://files.test/other/a.png' }] },
          'invalid_payload',
        ],
        [
          { message: 'x', attachments: [{ ...photo(), url: 'https://files.test/uploads/../x' }] },
          'invalid_payload',
        ],
        [
          { message: 'x', attachments: [{ ...photo(), url: 'https://cdn.test@evil.test/a' }] },
          'invalid_payload',
        ],
        [
          { message: 'x', attachments: [{ ...photo(), url: 'javascript:alert(1)' }] },
          'invalid_payload',
        ],
        [{ message: 'x', attachments: [photo('a'), photo('b'), photo('c')] }, 'invalid_payload'],
        [
          { message: 'x', attachments: [{ ...photo(), contentType: 'image png' }] },
          'invalid_payload',
        ],
        [{ message: 'x', attachments: [{ ...photo(), size: -1 }] }, 'invalid_payload'],
        [{ message: 'x', attachments: [{ ...photo(), name: '' }] }, 'invalid_payload'],
        [{ message: 'x', attachments: 'nope' }, 'invalid_payload'],
        [{ message: '', attachments: [] }, 'empty_message'],
      ];
      for (const [payload, code] of refused) {
        const ack = await lab.ask('message', { requestId, ...(payload as object) });
        assert.equal(ack.error_code, code, JSON.stringify(payload));
      }
      await settle();
      assert.equal(teacher.of('message').length, 0);
      assert.deepEqual(await stored(requestId), []);
    });

    test('with no ATTACHMENT_URL_PREFIXES every attachment is refused', async () => {
      const bare = await startServer({});
      try {
        const requestId = newId();
        await api(bare.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' });
        const c = await RequestClient.connect(bare.url, await userToken('7', LAB));
        clients.push(c);
        await c.ask('joinRoom', { requestId });
        const ack = await c.ask('message', { requestId, message: 'x', attachments: [photo()] });
        assert.equal(ack.error_code, 'invalid_payload');
        const res = await api(bare.url, 'GET', `/api/requests/${requestId}/messages`);
        assert.deepEqual(res.body.messages, []);
      } finally {
        await bare.close();
      }
    });
  });

  describe('inbox', () => {
    test('listRequests: a teacher sees their requests, the lab every request with messages', async () => {
      const teacherId = freshUser();
      const labId = freshUser();
      const [a, b, silent] = [
        await register(teacherId),
        await register(teacherId),
        await register(teacherId),
      ];
      const teacher = await connect(teacherId, TEACHER);
      const lab = await connect(labId, LAB);
      await join(lab, a);
      await join(lab, b);
      await lab.ask('message', { requestId: a, message: 'a1' });
      await lab.ask('message', { requestId: b, message: 'b1' });
      await lab.ask('message', { requestId: a, message: 'a2' });

      const mine = await teacher.ask('listRequests', { limit: 10 });
      assert.equal(mine.ok, true);
      assert.deepEqual(
        mine.requests.map((r: any) => [r.requestId, r.unread, r.lastMessage?.message ?? null]),
        [
          [a, 2, 'a2'],
          [b, 1, 'b1'],
          // Registered before any message was sent: its activity is the oldest.
          [silent, 0, null],
        ],
      );
      assert.equal(mine.hasMore, false);
      assert.equal(mine.requests[0].ownerId, teacherId);
      assert.ok(!Number.isNaN(Date.parse(mine.requests[0].updatedAt)));

      // Paging: one at a time, by the last request of the page before.
      const first = await teacher.ask('listRequests', { limit: 1 });
      assert.equal(first.hasMore, true);
      const second = await teacher.ask('listRequests', {
        limit: 1,
        before: first.requests[0].requestId,
      });
      assert.equal(second.requests[0].requestId, mine.requests[1].requestId);

      const labView = await lab.ask('listRequests', {});
      const mineInLab = labView.requests.filter((r: any) => [a, b, silent].includes(r.requestId));
      assert.deepEqual(
        mineInLab.map((r: any) => [r.requestId, r.unread]),
        [
          [a, 0],
          [b, 0],
        ],
        'the lab sees no request without messages, and its own messages are not unread',
      );
      const otherLab = await connect(freshUser(), LAB);
      const fresh = await otherLab.ask('listRequests', { limit: 2 });
      assert.deepEqual(
        fresh.requests.map((r: any) => [r.requestId, r.unread]),
        [
          [a, 2],
          [b, 1],
        ],
      );
    });

    test('listRequests refuses students, bad paging and a missing acknowledgement', async () => {
      const student = await connect(freshUser(), { username: 'sam' });
      assert.equal((await student.ask('listRequests', {})).error_code, 'forbidden');
      const lab = await connect(freshUser(), LAB);
      for (const payload of [{ limit: 0 }, { limit: 501 }, { before: 'x' }, 'str']) {
        const ack = await lab.ask('listRequests', payload);
        assert.equal(ack.error_code, 'invalid_payload', JSON.stringify(payload));
      }
      lab.socket.emit('listRequests', {});
      const ex = await lab.next(
        'exception',
        (e) => e.event === 'listRequests' && /ack/.test(e.message),
      );
      assert.equal(ex.error_code, 'invalid_payload');
    });

    test('requestUpdated reaches every socket of each user who may act, and follows reads', async () => {
      const teacherId = freshUser();
      const requestId = await register(teacherId);
      // Neither teacher socket has joined the room.
      const tab1 = await connect(teacherId, TEACHER);
      const tab2 = await connect(teacherId, TEACHER);
      const otherTeacher = await connect(freshUser(), TEACHER);
      const sender = await connect(freshUser(), LAB);
      const colleague = await connect(freshUser(), LAB);
      await join(sender, requestId);
      const sent = (await sender.ask('message', { requestId, message: 'ready' })).message;
      const mineOnly = (p: any) => p.requestId === requestId;
      for (const tab of [tab1, tab2]) {
        assert.deepEqual(await tab.next('requestUpdated', mineOnly), {
          requestId,
          lastMessage: sent,
          unread: 1,
        });
      }
      assert.equal((await colleague.next('requestUpdated', mineOnly)).unread, 1);
      assert.equal((await sender.next('requestUpdated', mineOnly)).unread, 0, 'the sender too');

      // The teacher reads in one tab: both tabs hear the new count.
      await join(tab1, requestId);
      await tab1.ask('readMessages', { requestId, messages: [sent._id] });
      for (const tab of [tab1, tab2]) {
        const update = await tab.next('requestUpdated', (p) => mineOnly(p) && p.unread === 0);
        assert.equal(update.lastMessage._id, sent._id);
        assert.deepEqual(
          update.lastMessage.readBy.map((r: any) => r.userId),
          [teacherId],
        );
      }
      // A second message: the teacher has one unread again, the colleague two.
      await sender.ask('message', { requestId, message: 'and more' });
      await tab2.next('requestUpdated', (p) => mineOnly(p) && p.lastMessage.message === 'and more');
      assert.equal(tab2.of('requestUpdated').filter(mineOnly).at(-1).unread, 1);
      const c2 = await colleague.next(
        'requestUpdated',
        (p) => mineOnly(p) && p.lastMessage.message === 'and more',
      );
      assert.equal(c2.unread, 2);
      await settle();
      assert.equal(otherTeacher.of('requestUpdated').length, 0, 'not for another teacher');
      // Deleting a message takes it out of everyone's count.
      const last = tab2.of('requestUpdated').filter(mineOnly).at(-1).lastMessage;
      await sender.ask('deleteMessage', { requestId, messageId: last._id });
      const afterDelete = await colleague.next(
        'requestUpdated',
        (p) => mineOnly(p) && p.unread === 1 && p.lastMessage.deletedAt !== undefined,
      );
      assert.equal(afterDelete.lastMessage.message, '');
    });
  });

  describe('unread API', () => {
    test('GET /api/users/{id}/unread gives the total and the requests with unread messages', async () => {
      const teacherId = freshUser();
      const lab = await connect(freshUser(), LAB);
      const ids = [await register(teacherId), await register(teacherId), await register(teacherId)];
      for (const [i, requestId] of ids.entries()) {
        await join(lab, requestId);
        for (let n = 0; n <= i; n++) await lab.ask('message', { requestId, message: `m${n}` });
      }
      const res = await api(server.url, 'GET', `/api/users/${teacherId}/unread?role=TEACHER`);
      assert.equal(res.status, 200);
      // Six unread in all; the list stops at UNREAD_LIST_MAX (2), most recent first.
      assert.deepEqual(res.body, {
        total: 6,
        requests: [
          { requestId: ids[2], unread: 3 },
          { requestId: ids[1], unread: 2 },
        ],
      });
      const nobody = await api(server.url, 'GET', `/api/users/${freshUser()}/unread?role=TEACHER`);
      assert.deepEqual(nobody.body, { total: 0, requests: [] });
      const fresh = await api(server.url, 'GET', `/api/users/${freshUser()}/unread?role=LAB`);
      assert.equal(fresh.status, 200);
      assert.ok(fresh.body.total >= 6, 'a new lab user has every message unread');
      // Compared upper-case, as roles in tokens are.
      const lower = await api(server.url, 'GET', `/api/users/${freshUser()}/unread?role=lab`);
      assert.equal(lower.status, 200);
      for (const q of ['', '?role=STUDENT', '?role=LABS']) {
        const bad = await api(server.url, 'GET', `/api/users/${teacherId}/unread${q}`);
        assert.equal(bad.status, 400, q);
        assert.equal(bad.body.error_code, 'invalid_payload');
      }
      const noKey = await api(
        server.url,
        'GET',
        `/api/users/${teacherId}/unread?role=LAB`,
        undefined,
        null,
      );
      assert.equal(noKey.status, 401);
    });
  });
});

describe('request desk settings and rules', () => {
  test('defaults, and every setting validated', () => {
    const { desk } = loadConfig({});
    assert.deepEqual(desk, {
      editWindowMs: 900_000,
      typingIntervalMs: 2000,
      typingTrackedMax: 100_000,
      attachmentUrlPrefixes: [],
      attachmentsMax: 10,
      unreadListMax: 100,
    });
    const set = loadConfig({ ATTACHMENT_URL_PREFIXES: ' https://a.test/x/ ,http://b.test/' });
    assert.deepEqual(
      set.desk.attachmentUrlPrefixes.map((u) => u.href),
      ['https://a.test/x/', 'http://b.test/'],
    );
    for (const [name, value] of [
      ['ATTACHMENT_URL_PREFIXES', 'ftp://a.test/'],
      ['ATTACHMENT_URL_PREFIXES', 'files'],
      ['ATTACHMENT_URL_PREFIXES', 'https://user:pw@a.test/'],
      ['ATTACHMENTS_MAX', '0'],
      ['ATTACHMENTS_MAX', '101'],
      ['TYPING_INTERVAL_MS', '0'],
      ['TYPING_TRACKED_MAX', 'many'],
      ['REQUEST_EDIT_WINDOW_SECONDS', '-1'],
      ['UNREAD_LIST_MAX', '0'],
    ] as const) {
      assert.throws(
        () => loadConfig({ [name]: value }),
        (e: unknown) => e instanceof ConfigError && e.message.includes(name),
        `${name}=${value}`,
      );
    }
  });

  test('attachment URLs are compared after parsing', () => {
    const prefixes = [new URL('https://files.test/uploads/')];
    assert.equal(allowedUrl('https://files.test/uploads/a.png', prefixes), true);
    for (const url of [
      'https://files.test/uploads/../secret',
      'https://files.test/uploadsX/a',
      'https://files.test.evil/uploads/a',
      'https://x@files.test/uploads/a',
      'http://files.test/uploads/a',
      'not a url',
      // Stored as sent: what the parser strips or tolerates is refused.
      'https://files.test/uploads/a\r\nX-Injected: 1',
      'https://files.test/uploads/a\nb',
      'https://files.test/uploads/a\tb',
      'https://files.test/uploads/ ',
      ' https://files.test/uploads/a',
      'https://files.test/uploads/a\u0000',
      'https://files.test/uploads/a\u0085',
      // An encoded slash or backslash climbs out on a file server that decodes it.
      'https://files.test/uploads/..%2fsecret',
      'https://files.test/uploads/..%2F..%2Fsecret',
      'https://files.test/uploads/..%5csecret',
    ]) {
      assert.equal(allowedUrl(url, prefixes), false, url);
    }
    assert.equal(allowedUrl('https://files.test/uploads/a', []), false, 'no prefix, no URL');
    assert.equal(
      allowedUrl('https://files.test/uploads/a.pdf?path=x%2Fy', prefixes),
      true,
      "the query is the file server's own business",
    );
  });

  test('the typing throttle forwards once per interval and stays bounded', () => {
    let now = 0;
    const t = new TypingThrottle(1000, 3, () => now);
    assert.equal(t.allow('1', 'r'), true);
    assert.equal(t.allow('1', 'r'), false);
    assert.equal(t.allow('2', 'r'), true, 'per user');
    assert.equal(t.allow('1', 's'), true, 'per request');
    now = 1000;
    assert.equal(t.allow('1', 'r'), true, 'again after the interval');
    // Many pairs at once: never more than the bound is remembered.
    for (let i = 0; i < 1000; i++) t.allow(String(i), 'flood');
    assert.ok(t.size <= 3, `remembers ${t.size}`);
    now = 5000;
    t.allow('x', 'y');
    assert.equal(t.size, 1, 'expired pairs are forgotten');
  });
});
