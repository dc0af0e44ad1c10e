/**
 * The request chat (protocol section 3) with real socket.io-client v4 sockets
 * against a real server and a real SQLite file: one test per promise.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { newId } from '../src/core/ids.js';
import { api, sign, startServer, type TestServer, tempDir, userToken } from './helpers.js';
import { RequestClient, settle } from './request-client.js';

const TEACHER = { username: 'ana', role: 'TEACHER' };
const LAB = { username: 'lab', role: 'LAB' };
const teacherToken = () => userToken('1', TEACHER);
const labToken = (id = '7') => userToken(id, LAB);

async function register(server: TestServer, ownerId: string | number = 1): Promise<string> {
  const id = newId();
  const res = await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId });
  assert.equal(res.status, 201);
  return id;
}

async function joined(server: TestServer, token: string, requestId: string) {
  const c = await RequestClient.connect(server.url, token);
  const ack = await c.ask('joinRoom', { requestId });
  assert.deepEqual(ack, { ok: true, requestId });
  return c;
}

async function stored(server: TestServer, requestId: string): Promise<any[]> {
  const res = await api(server.url, 'GET', `/api/requests/${requestId}/messages?limit=500`);
  assert.equal(res.status, 200);
  return res.body.messages;
}

describe('request chat', () => {
  let server: TestServer;
  const clients: RequestClient[] = [];
  const track = (c: RequestClient) => {
    clients.push(c);
    return c;
  };

  before(async () => {
    // Rate limiting has its own tests below; here it would only slow the paging test down.
    server = await startServer({ REQUEST_RATE_LIMIT: '1000/1s' });
  });
  after(async () => {
    for (const c of clients) c.close();
    await server.close();
  });

  describe('connecting', () => {
    test('a token in auth, in an Authorization header or in the query connects', async () => {
      const token = await teacherToken();
      for (const options of [
        { auth: { token } },
        { extraHeaders: { Authorization: `Bearer ${token}` } },
        { query: { token } },
      ]) {
        const c = track(await RequestClient.connect(server.url, undefined, options));
        assert.equal(c.socket.connected, true, JSON.stringify(Object.keys(options)));
        c.close();
      }
    });

    test('missing, bad, wrongly signed and alg:none tokens are refused as unauthorized', async () => {
      const unsigned = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from(
        '{"user_id":"1","role":"LAB"}',
      ).toString('base64url')}.`;
      for (const options of [
        {},
        { auth: { token: 'not-a-jwt' } },
        {
          auth: {
            token: await sign(
              { user_id: '1', role: 'LAB' },
              { secret: 'another-secret-of-enough-length!!' },
            ),
          },
        },
        { auth: { token: unsigned } },
        { extraHeaders: { Authorization: 'Basic abc' } },
      ]) {
        const err = await RequestClient.refusal(server.url, options);
        assert.equal(err.message, 'unauthorized', JSON.stringify(options).slice(0, 80));
        assert.equal(err.data?.error_code, 'unauthorized');
      }
    });

    test('an expired token is refused as token_expired', async () => {
      const token = await userToken('1', TEACHER, {
        expiresIn: Math.floor(Date.now() / 1000) - 10,
      });
      const err = await RequestClient.refusal(server.url, { auth: { token } });
      assert.equal(err.message, 'token_expired');
    });

    test('a socket whose token expires is disconnected', async () => {
      const requestId = await register(server);
      const token = await userToken('7', LAB, { expiresIn: '2s' });
      const c = track(await joined(server, token, requestId));
      const reason = await c.disconnected(4_000);
      assert.equal(reason, 'io server disconnect');
      assert.equal(c.of('exception').at(-1)?.error_code, 'token_expired');
    });
  });

  describe('who may act', () => {
    test('the owner teacher and lab staff join; another teacher and a student are forbidden', async () => {
      const requestId = await register(server, '1');
      const history = (c: RequestClient) => c.next('roomHistory');
      const owner = track(await joined(server, await teacherToken(), requestId));
      assert.deepEqual(await history(owner), { requestId, messages: [], hasMore: false });
      const lab = track(await joined(server, await labToken(), requestId));
      assert.equal((await history(lab)).requestId, requestId);

      for (const token of [
        await userToken('2', TEACHER),
        await userToken('3', { username: 'sam' }),
      ]) {
        const c = track(await RequestClient.connect(server.url, token));
        const ack = await c.ask('joinRoom', { requestId });
        assert.equal(ack.ok, false);
        assert.equal(ack.error_code, 'forbidden');
        const ex = await c.next('exception');
        assert.deepEqual(
          [ex.event, ex.error_code, ex.requestId],
          ['joinRoom', 'forbidden', requestId],
        );
        assert.equal(c.of('roomHistory').length, 0);
        // Not in the room: nothing said there reaches it.
        await owner.ask('message', { requestId, message: 'private' });
        await settle();
        assert.equal(c.of('message').length, 0);
      }
    });

    test('an unregistered request is not_found', async () => {
      const c = track(await RequestClient.connect(server.url, await labToken()));
      const ack = await c.ask('joinRoom', { requestId: newId() });
      assert.equal(ack.error_code, 'not_found');
    });

    test('a new owner replaces the old one at once', async () => {
      const requestId = await register(server, '1');
      const old = track(await joined(server, await teacherToken(), requestId));
      const res = await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 2 });
      assert.equal(res.status, 200);
      // The change took the old owner's socket out of the room, and it may not join again.
      const refused = await old.ask('message', { requestId, message: 'still mine?' });
      assert.equal(refused.error_code, 'not_in_room');
      assert.equal((await old.ask('joinRoom', { requestId })).error_code, 'forbidden');
      assert.deepEqual(await stored(server, requestId), []);
      const newOwner = track(await joined(server, await userToken('2', TEACHER), requestId));
      assert.equal((await newOwner.ask('message', { requestId, message: 'mine' })).ok, true);
    });
  });

  describe('messages', () => {
    test('stored, acknowledged with the Message, delivered to the other sockets of the room', async () => {
      const requestId = await register(server);
      const teacher = track(await joined(server, await teacherToken(), requestId));
      const teacherTab = track(await joined(server, await teacherToken(), requestId));
      const lab = track(await joined(server, await labToken(), requestId));
      const otherRoom = await register(server);
      const elsewhere = track(await joined(server, await labToken('8'), otherRoom));

      const ack = await teacher.ask('message', { requestId, message: 'hola' });
      assert.equal(ack.ok, true);
      const m = ack.message;
      assert.match(m._id, /^[0-9a-f]{24}$/);
      assert.deepEqual(
        { ...m, _id: 'x', createdAt: 'x' },
        {
          _id: 'x',
          requestId,
          sender: { id: '1', username: 'ana', role: 'TEACHER' },
          message: 'hola',
          createdAt: 'x',
          attachments: [],
          deliveredTo: [],
          readBy: [],
        },
      );
      assert.ok(Math.abs(Date.parse(m.createdAt) - Date.now()) < 5_000);
      assert.deepEqual(await lab.next('message'), m);
      assert.deepEqual(await teacherTab.next('message'), m, "the sender's other socket");
      await settle();
      assert.equal(teacher.of('message').length, 0, 'not echoed to the sending socket');
      assert.equal(elsewhere.of('message').length, 0, 'nothing leaks to another request');
      assert.deepEqual(await stored(server, requestId), [m]);
      assert.deepEqual(await stored(server, otherRoom), []);
    });

    test('the seed spelling resquestId is accepted', async () => {
      const requestId = await register(server);
      const c = track(await RequestClient.connect(server.url, await labToken()));
      assert.equal((await c.ask('joinRoom', { resquestId: requestId })).ok, true);
      const ack = await c.ask('message', { resquestId: requestId, message: 'ok' });
      assert.equal(ack.message.requestId, requestId);
    });

    test('a retry with the same clientMessageId returns the original and is not delivered twice', async () => {
      const requestId = await register(server);
      const teacher = track(await joined(server, await teacherToken(), requestId));
      const lab = track(await joined(server, await labToken(), requestId));
      const send = () =>
        teacher.ask('message', { requestId, message: 'once', clientMessageId: 'k1' });
      const [first, second] = [await send(), await send()];
      assert.equal(second.ok, true);
      assert.deepEqual(second.message, first.message);
      // The same key from another user is another message.
      const labs = await lab.ask('message', { requestId, message: 'once', clientMessageId: 'k1' });
      assert.notEqual(labs.message._id, first.message._id);
      await settle();
      assert.equal(lab.of('message').length, 1);
      assert.equal((await stored(server, requestId)).length, 2);
    });

    test('events before joinRoom are not_in_room and change nothing', async () => {
      const requestId = await register(server);
      const lab = track(await joined(server, await labToken(), requestId));
      const c = track(await RequestClient.connect(server.url, await teacherToken()));
      for (const [event, payload] of [
        ['message', { requestId, message: 'hi' }],
        ['ackMessages', { requestId, messages: [newId()] }],
        ['readMessages', { requestId, messages: [newId()] }],
        ['loadHistory', { requestId }],
        ['leaveRoom', { requestId }],
      ] as const) {
        const ack = await c.ask(event, payload);
        assert.deepEqual([ack.ok, ack.error_code], [false, 'not_in_room'], event);
      }
      await settle();
      assert.equal(lab.of('message').length, 0);
      assert.deepEqual(await stored(server, requestId), []);
    });

    test('after leaveRoom a socket receives nothing and may not send', async () => {
      const requestId = await register(server);
      const lab = track(await joined(server, await labToken(), requestId));
      const teacher = track(await joined(server, await teacherToken(), requestId));
      assert.deepEqual(await teacher.ask('leaveRoom', { requestId }), { ok: true, requestId });
      await lab.ask('message', { requestId, message: 'anyone?' });
      await settle();
      assert.equal(teacher.of('message').length, 0);
      assert.equal(
        (await teacher.ask('message', { requestId, message: 'x' })).error_code,
        'not_in_room',
      );
    });
  });

  describe('receipts', () => {
    test('delivered and read reach the other side and the user’s other socket, not the acking one', async () => {
      const requestId = await register(server);
      const teacher = track(await joined(server, await teacherToken(), requestId));
      const lab = track(await joined(server, await labToken(), requestId));
      const labTab = track(await joined(server, await labToken(), requestId));
      const { message } = await teacher.ask('message', { requestId, message: '¿listo?' });

      const ack = await lab.ask('ackMessages', { requestId, messages: [message._id] });
      assert.equal(ack.ok, true);
      assert.deepEqual(ack.messages, [message._id]);
      const delivered = await teacher.next('messagesDelivered');
      assert.deepEqual(delivered, { requestId, userId: '7', messages: [message._id], at: ack.at });
      assert.deepEqual(await labTab.next('messagesDelivered'), delivered);

      const read = await lab.ask('readMessages', { requestId, messages: [message._id] });
      assert.deepEqual(await teacher.next('messageReads'), {
        requestId,
        userId: '7',
        messages: [message._id],
        at: read.at,
      });
      assert.deepEqual((await labTab.next('messageReads')).messages, [message._id]);
      await settle();
      assert.equal(lab.of('messagesDelivered').length + lab.of('messageReads').length, 0);

      const [m] = await stored(server, requestId);
      assert.deepEqual(m.deliveredTo, [{ userId: '7', at: ack.at }]);
      assert.deepEqual(m.readBy, [{ userId: '7', at: read.at }]);
    });

    test('read implies delivered; receipts are idempotent and the first time wins', async () => {
      const requestId = await register(server);
      const teacher = track(await joined(server, await teacherToken(), requestId));
      const lab = track(await joined(server, await labToken(), requestId));
      const { message } = await teacher.ask('message', { requestId, message: 'uno' });
      const read = await lab.ask('readMessages', { requestId, messages: [message._id] });
      await teacher.next('messageReads');
      const again = await lab.ask('readMessages', { requestId, messages: [message._id] });
      const late = await lab.ask('ackMessages', { requestId, messages: [message._id] });
      assert.deepEqual([again.ok, again.messages, late.ok, late.messages], [true, [], true, []]);
      await settle();
      assert.equal(teacher.of('messageReads').length, 1, 'a repeat emits nothing');
      assert.equal(teacher.of('messagesDelivered').length, 0);
      const [m] = await stored(server, requestId);
      assert.deepEqual(m.readBy, [{ userId: '7', at: read.at }]);
      assert.deepEqual(m.deliveredTo, [{ userId: '7', at: read.at }]);
    });

    test('unknown ids, ids of another request and one’s own are ignored and never echoed', async () => {
      const requestId = await register(server);
      const other = await register(server);
      const teacher = track(await joined(server, await teacherToken(), requestId));
      const lab = track(await joined(server, await labToken(), requestId));
      const labOther = track(await joined(server, await labToken(), other));
      const teacherOther = track(await joined(server, await teacherToken(), other));
      const own = (await lab.ask('message', { requestId, message: 'mine' })).message._id;
      const foreign = (await teacherOther.ask('message', { requestId: other, message: 'x' }))
        .message._id;
      const ack = await lab.ask('ackMessages', { requestId, messages: [newId(), foreign, own] });
      assert.deepEqual([ack.ok, ack.messages], [true, []]);
      await settle();
      assert.equal(teacher.of('messagesDelivered').length, 0);
      assert.equal(teacherOther.of('messagesDelivered').length, 0);
      assert.equal(labOther.of('messagesDelivered').length, 0);
      for (const id of [requestId, other]) {
        for (const m of await stored(server, id)) assert.deepEqual(m.deliveredTo, [], m.message);
      }
    });
  });

  describe('bad input', () => {
    test('every event answers malformed payloads with its code and changes nothing', async () => {
      const requestId = await register(server);
      const c = track(await joined(server, await teacherToken(), requestId));
      const lab = track(await joined(server, await labToken(), requestId));
      const cases: Array<[string, unknown, string]> = [
        ['joinRoom', undefined, 'invalid_payload'],
        ['joinRoom', 'abc', 'invalid_payload'],
        ['joinRoom', [requestId], 'invalid_payload'],
        ['joinRoom', { requestId: 'xyz' }, 'invalid_payload'],
        ['joinRoom', { requestId: 42 }, 'invalid_payload'],
        ['message', { requestId }, 'invalid_payload'],
        ['message', { requestId, message: 5 }, 'invalid_payload'],
        ['message', { requestId, message: { __proto__: { x: 1 } } }, 'invalid_payload'],
        ['message', { requestId, message: '   ' }, 'empty_message'],
        ['message', { requestId, message: '' }, 'empty_message'],
        ['message', { requestId, message: 'a'.repeat(5001) }, 'message_too_long'],
        ['message', { requestId, message: 'x', clientMessageId: 7 }, 'invalid_payload'],
        ['message', { requestId, message: '\ud800' }, 'invalid_payload'],
        ['ackMessages', { requestId, messages: 'abc' }, 'invalid_payload'],
        ['ackMessages', { requestId, messages: [] }, 'invalid_payload'],
        ['readMessages', { requestId, messages: ['nope'] }, 'invalid_payload'],
        ['readMessages', { requestId, messages: Array(501).fill(newId()) }, 'invalid_payload'],
        ['loadHistory', { requestId, before: 'nope' }, 'invalid_payload'],
        ['loadHistory', { requestId, limit: 0 }, 'invalid_payload'],
        ['loadHistory', { requestId, limit: 501 }, 'invalid_payload'],
        ['loadHistory', { requestId, limit: '10' }, 'invalid_payload'],
        ['leaveRoom', null, 'invalid_payload'],
        ['noSuchEvent', { requestId }, 'unknown_type'],
      ];
      for (const [event, payload, code] of cases) {
        const ack = await c.ask(event, payload);
        assert.deepEqual(
          [ack.ok, ack.error_code],
          [false, code],
          `${event} ${JSON.stringify(payload)?.slice(0, 60)}`,
        );
        assert.equal(typeof ack.message, 'string');
        const ex = c.of('exception').at(-1);
        assert.deepEqual([ex.event, ex.error_code], [event, code]);
      }
      assert.equal(c.of('exception').length, cases.length);
      // loadHistory answers only through an acknowledgement.
      c.socket.emit('loadHistory', { requestId });
      await c.next('exception', () => c.of('exception').length === cases.length + 1);
      assert.deepEqual(
        [c.of('exception').at(-1).event, c.of('exception').at(-1).error_code],
        ['loadHistory', 'invalid_payload'],
      );
      assert.equal(c.socket.connected, true);
      await settle();
      assert.deepEqual(await stored(server, requestId), []);
      assert.deepEqual(
        lab.events.filter(([e]) => e !== 'roomHistory'),
        [],
        'nobody else saw anything',
      );
      // Still fully usable.
      assert.equal((await c.ask('message', { requestId, message: 'fine' })).ok, true);
    });
  });

  describe('history', () => {
    test('150 messages: the newest 100 on join, the older 50 through loadHistory and HTTP', async () => {
      const requestId = await register(server);
      const lab = track(await joined(server, await labToken(), requestId));
      const sent: string[] = [];
      for (let i = 0; i < 150; i++) {
        sent.push((await lab.ask('message', { requestId, message: `m${i}` })).message._id);
      }
      const teacher = track(await joined(server, await teacherToken(), requestId));
      const page = await teacher.next('roomHistory');
      assert.equal(page.hasMore, true);
      assert.deepEqual(
        page.messages.map((m: any) => m._id),
        sent.slice(50),
      );
      const older = await teacher.ask('loadHistory', { requestId, before: page.messages[0]._id });
      assert.deepEqual([older.ok, older.hasMore], [true, false]);
      assert.deepEqual(
        older.messages.map((m: any) => m._id),
        sent.slice(0, 50),
      );
      const some = await teacher.ask('loadHistory', { requestId, before: sent[100], limit: 10 });
      assert.deepEqual(
        some.messages.map((m: any) => m._id),
        sent.slice(90, 100),
      );
      assert.equal(some.hasMore, true);

      const newest = await api(server.url, 'GET', `/api/requests/${requestId}/messages`);
      assert.deepEqual(
        newest.body.messages.map((m: any) => m._id),
        sent.slice(50),
      );
      assert.equal(newest.body.hasMore, true);
      const rest = await api(
        server.url,
        'GET',
        `/api/requests/${requestId}/messages?before=${sent[50]}&limit=100`,
      );
      assert.deepEqual(
        rest.body.messages.map((m: any) => m._id),
        sent.slice(0, 50),
      );
      assert.equal(rest.body.hasMore, false);
    });
  });

  describe('transports', () => {
    test('long-polling works end to end, next to a WebSocket client', async () => {
      const requestId = await register(server);
      const polling = track(
        await RequestClient.connect(server.url, await teacherToken(), { transports: ['polling'] }),
      );
      assert.equal(polling.socket.io.engine.transport.name, 'polling');
      const ws = track(await joined(server, await labToken(), requestId));
      assert.equal((await polling.ask('joinRoom', { requestId })).ok, true);
      const { message } = await polling.ask('message', { requestId, message: 'por polling' });
      assert.equal((await ws.next('message')).message, 'por polling');
      await ws.ask('readMessages', { requestId, messages: [message._id] });
      assert.deepEqual((await polling.next('messageReads')).messages, [message._id]);
      const reply = await ws.ask('message', { requestId, message: 'por websocket' });
      assert.equal((await polling.next('message'))._id, reply.message._id);
    });
  });

  describe('server API', () => {
    test('PUT /api/requests/{id}: 201, 200, and its refusals', async () => {
      const id = newId();
      assert.equal(
        (await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId: '5' })).status,
        201,
      );
      const again = await api(server.url, 'PUT', `/api/requests/${id.toUpperCase()}`, {
        ownerId: 6,
      });
      assert.deepEqual([again.status, again.body.requestId, again.body.ownerId], [200, id, '6']);
      assert.equal(
        (await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId: 1 }, null)).status,
        401,
      );
      assert.equal(
        (await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId: 1 }, 'wrong')).status,
        401,
      );
      assert.equal(
        (await api(server.url, 'PUT', '/api/requests/nope', { ownerId: 1 })).status,
        400,
      );
      const missing = await api(server.url, 'PUT', `/api/requests/${id}`, {});
      assert.deepEqual([missing.status, missing.body.error_code], [422, 'invalid_payload']);
      assert.equal((await api(server.url, 'PUT', `/api/requests/${id}`, '{oops')).status, 400);
      const unknown = await api(server.url, 'GET', `/api/requests/${newId()}/messages`);
      assert.deepEqual([unknown.status, unknown.body.error_code], [404, 'not_found']);
    });
  });
});

describe('request chat limits', () => {
  let server: TestServer;
  const clients: RequestClient[] = [];
  before(async () => {
    server = await startServer({
      REQUEST_RATE_LIMIT: '3/60s',
      REQUEST_MESSAGE_MAX_CHARS: '10',
      FLOOD_LIMIT: '30',
      MAX_FRAME_BYTES: '4096',
    });
  });
  after(async () => {
    for (const c of clients) c.close();
    await server.close();
  });

  test('REQUEST_MESSAGE_MAX_CHARS counts code points', async () => {
    const requestId = await register(server);
    const c = await joined(server, await labToken(), requestId);
    clients.push(c);
    assert.equal((await c.ask('message', { requestId, message: '😀'.repeat(10) })).ok, true);
    const long = await c.ask('message', { requestId, message: 'a'.repeat(11) });
    assert.equal(long.error_code, 'message_too_long');
  });

  test('the rate limit answers rate_limited with retry_after_ms, per user and request', async () => {
    const requestId = await register(server);
    const c = await joined(server, await labToken('9'), requestId);
    const other = await joined(server, await teacherToken(), requestId);
    clients.push(c, other);
    for (let i = 0; i < 3; i++)
      assert.equal((await c.ask('message', { requestId, message: `${i}` })).ok, true);
    const limited = await c.ask('message', { requestId, message: 'more' });
    assert.equal(limited.error_code, 'rate_limited');
    // The rest of the 60 s window the first message opened.
    assert.ok(
      limited.retry_after_ms > 50_000 && limited.retry_after_ms <= 60_000,
      String(limited.retry_after_ms),
    );
    const ex = c.of('exception').at(-1);
    assert.equal(ex.retry_after_ms, limited.retry_after_ms);
    assert.equal((await other.ask('message', { requestId, message: 'mine' })).ok, true);
    assert.equal((await stored(server, requestId)).length, 4);
  });

  test('a packet over MAX_FRAME_BYTES closes the connection and stores nothing', async () => {
    const requestId = await register(server);
    const c = await joined(server, await labToken('11'), requestId);
    const other = await joined(server, await teacherToken(), requestId);
    clients.push(c, other);
    const gone = c.disconnected();
    c.socket.emit('message', { requestId, message: 'x'.repeat(5_000) });
    assert.equal(await gone, 'transport close');
    await settle();
    assert.deepEqual(await stored(server, requestId), []);
    assert.equal(other.of('message').length, 0);
    assert.equal(other.socket.connected, true);
  });

  test('more than FLOOD_LIMIT events in 10 s disconnects the socket', async () => {
    const requestId = await register(server);
    const c = await joined(server, await labToken('10'), requestId);
    clients.push(c);
    const gone = c.disconnected();
    for (let i = 0; i < 40; i++) c.socket.emit('ackMessages', { requestId, messages: [newId()] });
    assert.equal(await gone, 'io server disconnect');
  });
});

test('messages and receipts survive a restart', async () => {
  const dir = tempDir();
  let server = await startServer({ DATA_DIR: dir });
  const requestId = await register(server);
  const teacher = await joined(server, await teacherToken(), requestId);
  const lab = await joined(server, await labToken(), requestId);
  const { message } = await teacher.ask('message', { requestId, message: 'durable' });
  const read = await lab.ask('readMessages', { requestId, messages: [message._id] });
  teacher.close();
  lab.close();
  await server.close();

  server = await startServer({ DATA_DIR: dir });
  try {
    const again = await joined(server, await labToken(), requestId);
    const page = await again.next('roomHistory');
    assert.deepEqual(page.messages, [
      {
        ...message,
        deliveredTo: [{ userId: '7', at: read.at }],
        readBy: [{ userId: '7', at: read.at }],
      },
    ]);
    again.close();
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
