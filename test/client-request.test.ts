/**
 * `RequestChat` (charla/client) with the real `socket.io-client` underneath,
 * against a real server on a real SQLite file.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { io } from 'socket.io-client';
import { ChatClientError, RequestChat, type RequestMessage } from '../src/client/index.js';
import { newId } from '../src/core/ids.js';
import { BlackholeProxy, until } from './client-helpers.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';

const teacherToken = () => userToken('1', { username: 'ana', role: 'TEACHER' });
const labToken = (id = '7') => userToken(id, { username: `lab${id}`, role: 'LAB' });

/** Records the messages a RequestChat emits. */
export function messagesOf(chat: RequestChat): RequestMessage[] {
  const got: RequestMessage[] = [];
  chat.on('message', (m) => got.push(m));
  return got;
}

export async function storedMessages(url: string, requestId: string): Promise<RequestMessage[]> {
  const res = await api(url, 'GET', `/api/requests/${requestId}/messages?limit=500`);
  assert.equal(res.status, 200);
  return res.body.messages;
}

const fast = { initialDelayMs: 20, maxDelayMs: 200 };

describe('RequestChat', () => {
  let s: TestServer;
  const chats: RequestChat[] = [];
  const connect = async (
    token: string | (() => Promise<string>),
    opts: Partial<Parameters<typeof RequestChat.connect>[1]> = {},
  ) => {
    const c = await RequestChat.connect(s.url, {
      token,
      reconnect: fast,
      ackTimeoutMs: 2_000,
      ...opts,
    });
    chats.push(c);
    return c;
  };
  const register = async () => {
    const id = newId();
    assert.equal((await api(s.url, 'PUT', `/api/requests/${id}`, { ownerId: 1 })).status, 201);
    return id;
  };

  before(async () => {
    s = await startServer({ REQUEST_RATE_LIMIT: '1000/1s' });
  });
  after(async () => {
    for (const c of chats) c.close();
    await s.close();
  });

  it('joins, sends and receives; history comes with the join; receipts flow back', async () => {
    const requestId = await register();
    const teacher = await connect(await teacherToken());
    const lab = await connect(await labToken());
    const first = await teacher.join(requestId);
    assert.deepEqual(first.messages, []);
    assert.equal(first.rejoined, false);
    const delivered: unknown[] = [];
    teacher.on('messagesDelivered', (e) => delivered.push(e));
    await lab.join(requestId);
    const labGot = messagesOf(lab);

    const sent = await teacher.send(requestId, 'hola');
    assert.equal(sent.message, 'hola');
    assert.equal(sent.sender.id, '1');
    await until(() => labGot.length === 1, 'the message at the lab');
    assert.equal(labGot[0]?._id, sent._id);
    // The lab's client acknowledged it as delivered by itself.
    await until(() => delivered.length === 1, 'messagesDelivered');
    assert.deepEqual((delivered[0] as any).messages, [sent._id]);
    assert.equal(teacher.messages(requestId)[0]?.deliveredTo[0]?.userId, '7');

    const read = await lab.markRead(requestId, [sent._id]);
    assert.deepEqual(read.messages, [sent._id]);
    await until(() => teacher.messages(requestId)[0]?.readBy.length === 1, 'the read receipt');

    const again = await connect(await labToken('8'));
    const history = await again.join(requestId);
    assert.deepEqual(
      history.messages.map((m) => m._id),
      [sent._id],
    );
  });

  it('a refused join rejects with the contract code and forgets the room', async () => {
    const requestId = await register();
    const other = await connect(await userToken('2', { role: 'TEACHER' }));
    await assert.rejects(
      other.join(requestId),
      (e: ChatClientError) => e instanceof ChatClientError && e.code === 'forbidden',
    );
    await assert.rejects(
      other.send(requestId, 'x'),
      (e: ChatClientError) => e.code === 'not_joined',
    );
    await assert.rejects(other.join(newId()), (e: ChatClientError) => e.code === 'not_found');
  });

  it('a refused connection rejects with unauthorized or token_expired', async () => {
    await assert.rejects(
      RequestChat.connect(s.url, { token: 'not-a-token' }),
      (e: ChatClientError) => e.code === 'unauthorized',
    );
    const expired = await userToken(
      '1',
      { role: 'TEACHER' },
      { expiresIn: Math.floor(Date.now() / 1000) - 5 },
    );
    await assert.rejects(
      RequestChat.connect(s.url, { token: expired }),
      (e: ChatClientError) => e.code === 'token_expired',
    );
  });

  it('a token function is asked again after the server drops an expired token; rooms come back', async () => {
    const requestId = await register();
    let calls = 0;
    const token = () => {
      calls++;
      const claims = { username: 'ana', role: 'TEACHER' };
      return calls === 1
        ? userToken('1', claims, { expiresIn: Math.floor(Date.now() / 1000) + 2 })
        : userToken('1', claims);
    };
    const teacher = await connect(token);
    await teacher.join(requestId);
    const exceptions: string[] = [];
    teacher.on('exception', (e) => exceptions.push(e.error_code));
    const histories: boolean[] = [];
    teacher.on('history', (h) => histories.push(h.rejoined));
    await until(() => histories.length === 1, 'the re-join after the expiry', 6_000);
    assert.deepEqual(exceptions, ['token_expired']);
    assert.deepEqual(histories, [true]);
    assert.equal(calls, 2);
    const sent = await teacher.send(requestId, 'signed in again');
    assert.equal(sent.sender.id, '1');
  });

  it('connect gives up with timeout after reconnect.maxAttempts when nobody listens', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    await assert.rejects(
      RequestChat.connect(`http://127.0.0.1:${port}`, {
        token: 'x',
        reconnect: { ...fast, maxAttempts: 2 },
      }),
      (e: ChatClientError) => e.code === 'timeout',
    );
  });

  it('a refused message rejects with its code and is not retried', async () => {
    const requestId = await register();
    const teacher = await connect(await teacherToken());
    await teacher.join(requestId);
    await assert.rejects(
      teacher.send(requestId, '   '),
      (e: ChatClientError) => e.code === 'empty_message',
    );
    assert.equal(teacher.pending, 0);
    assert.deepEqual(await storedMessages(s.url, requestId), []);
  });

  it('the same clientMessageId is stored once and delivered once', async () => {
    const requestId = await register();
    const teacher = await connect(await teacherToken());
    const lab = await connect(await labToken());
    await teacher.join(requestId);
    await lab.join(requestId);
    const labGot = messagesOf(lab);
    const a = await teacher.send(requestId, 'once', { clientMessageId: 'fixed-id-1' });
    const b = await teacher.send(requestId, 'once', { clientMessageId: 'fixed-id-1' });
    assert.equal(a._id, b._id);
    // A barrier: a later message arrives, and the repeat never did before it.
    const c = await teacher.send(requestId, 'after');
    await until(() => labGot.some((m) => m._id === c._id), 'the barrier');
    assert.deepEqual(
      labGot.map((m) => m.message),
      ['once', 'after'],
    );
    assert.deepEqual(
      (await storedMessages(s.url, requestId)).map((m) => m.message),
      ['once', 'after'],
    );
  });

  it('retries a send whose acknowledgement was lost with the same clientMessageId: stored and delivered once', async () => {
    const requestId = await register();
    const proxy = new BlackholeProxy(Number(new URL(s.url).port));
    await proxy.start();
    try {
      const teacher = await RequestChat.connect(`http://127.0.0.1:${proxy.port}`, {
        token: await teacherToken(),
        reconnect: fast,
        ackTimeoutMs: 1_000,
      });
      chats.push(teacher);
      const lab = await connect(await labToken());
      await teacher.join(requestId);
      await lab.join(requestId);
      const labGot = messagesOf(lab);
      const rejoined: unknown[] = [];
      teacher.on('history', (h) => rejoined.push(h));
      const attempts: string[] = [];
      teacher.socket.onAnyOutgoing((event, payload) => {
        if (event === 'message') attempts.push(payload.clientMessageId);
      });

      // The server stores the message and acknowledges it; the acknowledgement never arrives.
      proxy.blackholeDownstream = true;
      const sending = teacher.send(requestId, 'exactly once');
      await until(() => labGot.length === 1, 'the message at the lab');
      // The connection dies; the client reconnects, re-joins and sends again.
      proxy.blackholeDownstream = false;
      proxy.dropConnections();
      const sent = await sending;
      assert.equal(sent._id, labGot[0]?._id);
      assert.equal(rejoined.length, 1, 'the room was joined again');
      assert.equal(attempts.length, 2, 'the message was sent twice');
      assert.equal(attempts[0], attempts[1], 'with the same clientMessageId');

      const barrier = await teacher.send(requestId, 'barrier');
      await until(() => labGot.some((m) => m._id === barrier._id), 'the barrier');
      assert.deepEqual(
        labGot.map((m) => m.message),
        ['exactly once', 'barrier'],
      );
      assert.deepEqual(
        (await storedMessages(s.url, requestId)).map((m) => m.message),
        ['exactly once', 'barrier'],
      );
    } finally {
      await proxy.stop();
    }
  });

  it('messages sent before the room is joined again wait, in order; the queue is bounded', async () => {
    const requestId = await register();
    const teacher = await connect(await teacherToken(), { outboxSize: 3 });
    await teacher.join(requestId);
    // Disconnect below the client: it reconnects by itself.
    teacher.socket.io.engine.close();
    const sends = [
      teacher.send(requestId, 'one'),
      teacher.send(requestId, 'two'),
      teacher.send(requestId, 'three'),
    ];
    await assert.rejects(
      teacher.send(requestId, 'four'),
      (e: ChatClientError) => e.code === 'queue_full',
    );
    const sent = await Promise.all(sends);
    assert.deepEqual(
      sent.map((m) => m.message),
      ['one', 'two', 'three'],
    );
    assert.deepEqual(
      (await storedMessages(s.url, requestId)).map((m) => m.message),
      ['one', 'two', 'three'],
    );
  });

  it('close() rejects what waits with closed', async () => {
    const requestId = await register();
    const teacher = await connect(await teacherToken());
    await teacher.join(requestId);
    teacher.socket.io.engine.close();
    const waiting = teacher.send(requestId, 'never');
    teacher.close();
    await assert.rejects(waiting, (e: ChatClientError) => e.code === 'closed');
  });

  it('uses an io function passed in (for browsers without a bundler)', async () => {
    const requestId = await register();
    let used = 0;
    const c = await RequestChat.connect(s.url, {
      token: await teacherToken(),
      io: ((...args: Parameters<typeof io>) => {
        used++;
        return io(...args);
      }) as typeof io,
    });
    chats.push(c);
    assert.equal(used, 1);
    assert.equal((await c.join(requestId)).requestId, requestId);
  });
});

describe('RequestChat history merge after a long absence', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({ REQUEST_RATE_LIMIT: '1000/1s', HISTORY_PAGE: '3' });
  });
  after(() => s.close());

  it('pages back until the re-join history meets what the client held, and emits the missed ones once', async () => {
    const requestId = newId();
    assert.equal(
      (await api(s.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 })).status,
      201,
    );
    const teacher = await RequestChat.connect(s.url, {
      token: await teacherToken(),
      reconnect: fast,
    });
    const proxy = new BlackholeProxy(Number(new URL(s.url).port));
    await proxy.start();
    const lab = await RequestChat.connect(`http://127.0.0.1:${proxy.port}`, {
      token: await labToken(),
      reconnect: fast,
      ackTimeoutMs: 2_000,
    });
    try {
      await teacher.join(requestId);
      await lab.join(requestId);
      const atLab = messagesOf(lab);
      await teacher.send(requestId, 'seen 0');
      await teacher.send(requestId, 'seen 1');
      await until(() => atLab.length === 2, 'the first messages');

      // The lab is away while eight messages are written: more than two history pages.
      await proxy.stop();
      await until(() => !lab.connected, 'the lab disconnected');
      const missed: string[] = [];
      for (let i = 0; i < 8; i++) {
        missed.push((await teacher.send(requestId, `missed ${i}`))._id);
      }
      const histories: Array<{ added: RequestMessage[]; rejoined: boolean }> = [];
      lab.on('history', (h) => histories.push(h));
      await proxy.start();
      await until(() => histories.length === 1, 'the re-join');

      assert.equal(histories[0]?.rejoined, true);
      assert.deepEqual(
        histories[0]?.added.map((m) => m._id),
        missed,
      );
      assert.deepEqual(
        atLab.map((m) => m.message),
        ['seen 0', 'seen 1', ...Array.from({ length: 8 }, (_, i) => `missed ${i}`)],
      );
      const stored = await storedMessages(s.url, requestId);
      assert.deepEqual(
        lab.messages(requestId).map((m) => m._id),
        stored.map((m) => m._id),
      );
    } finally {
      teacher.close();
      lab.close();
      await proxy.stop();
    }
  });
});

describe('RequestChat desk: typing, edits, deletions, attachments, inbox', () => {
  let s: TestServer;
  const chats: RequestChat[] = [];
  const connect = async (token: string) => {
    const c = await RequestChat.connect(s.url, { token, reconnect: fast, ackTimeoutMs: 2_000 });
    chats.push(c);
    return c;
  };
  /** A request owned by teacher 1, with the teacher and a lab user joined. */
  const room = async () => {
    const requestId = newId();
    assert.equal(
      (await api(s.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 })).status,
      201,
    );
    const teacher = await connect(await teacherToken());
    const lab = await connect(await labToken());
    await teacher.join(requestId);
    await lab.join(requestId);
    return { requestId, teacher, lab };
  };

  before(async () => {
    s = await startServer({
      REQUEST_RATE_LIMIT: '1000/1s',
      ATTACHMENT_URL_PREFIXES: 'https://files.example/',
    });
  });
  after(async () => {
    for (const c of chats) c.close();
    await s.close();
  });

  it('typing reaches the others, at most once per 2 s from the client', async () => {
    const { requestId, teacher, lab } = await room();
    const typing: unknown[] = [];
    lab.on('userTyping', (e) => typing.push(e));
    let sent = 0;
    teacher.socket.onAnyOutgoing((event) => {
      if (event === 'typing') sent++;
    });
    teacher.typing(requestId);
    teacher.typing(requestId);
    await until(() => typing.length === 1, 'userTyping');
    assert.deepEqual(typing[0], { requestId, userId: '1', username: 'ana' });
    assert.equal(sent, 1);
  });

  it('editMessage and deleteMessage update both sides', async () => {
    const { requestId, teacher, lab } = await room();
    const updated: RequestMessage[] = [];
    const deleted: unknown[] = [];
    lab.on('messageUpdated', (m) => updated.push(m));
    lab.on('messageDeleted', (e) => deleted.push(e));
    const m = await teacher.send(requestId, 'first try');
    await until(() => lab.messages(requestId).length === 1, 'the message at the lab');
    const edited = await teacher.editMessage(requestId, m._id, 'second try');
    assert.equal(edited.message, 'second try');
    assert.ok(edited.editedAt);
    await until(() => updated.length === 1, 'messageUpdated');
    assert.equal(lab.messages(requestId)[0]?.message, 'second try');
    assert.equal(teacher.messages(requestId)[0]?.message, 'second try');

    await assert.rejects(
      lab.editMessage(requestId, m._id, 'not mine'),
      (e: ChatClientError) => e.code === 'forbidden',
    );

    await teacher.deleteMessage(requestId, m._id);
    await until(() => deleted.length === 1, 'messageDeleted');
    for (const c of [teacher, lab]) {
      const [gone] = c.messages(requestId);
      assert.equal(gone?.message, '');
      assert.ok(gone?.deletedAt);
    }
  });

  it('sends attachments; listRequests and requestUpdated keep the inbox', async () => {
    const { requestId, teacher, lab } = await room();
    const other = await connect(await labToken('9'));
    const updates: Array<{ requestId: string; unread: number }> = [];
    other.on('requestUpdated', (e) => updates.push(e));
    const attachment = {
      url: 'https://files.example/lab.pdf',
      name: 'lab.pdf',
      contentType: 'application/pdf',
      size: 1234,
    };
    const sent = await teacher.send(requestId, '', { attachments: [attachment] });
    assert.deepEqual(sent.attachments, [attachment]);
    await until(() => lab.messages(requestId).length === 1, 'the attachment at the lab');
    assert.deepEqual(lab.messages(requestId)[0]?.attachments, [attachment]);
    // A lab user who has not joined the room hears of it through requestUpdated.
    await until(() => updates.some((u) => u.requestId === requestId), 'requestUpdated');
    assert.equal(updates.find((u) => u.requestId === requestId)?.unread, 1);
    const inbox = await teacher.listRequests({ limit: 50 });
    const entry = inbox.requests.find((r) => r.requestId === requestId);
    assert.equal(entry?.lastMessage?._id, sent._id);
    await assert.rejects(
      teacher.send(requestId, 'x', {
        attachments: [{ ...attachment, url: 'https://evil.example/x' }],
      }),
      (e: ChatClientError) => e.code === 'invalid_payload',
    );
  });
});
