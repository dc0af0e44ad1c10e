/**
 * `StreamChat` (charla/client) with the real `ws` WebSocket underneath: against
 * a real server for what it serves, and against a scripted `ws` server for the
 * protocol's edges a healthy server never produces (duplicates, `?since=`
 * resume frames, a refused stream).
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import {
  ChatClientError,
  StreamChat,
  type StreamChatMessage,
  streamEndpoint,
} from '../src/client/index.js';
import { BlackholeProxy, Recorder, until } from './client-helpers.js';
import { chatFrame, hex, ScriptedServer } from './client-stream-server.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';

const fast = { initialDelayMs: 20, maxDelayMs: 200 };

describe('StreamChat against charla', () => {
  let s: TestServer;
  const chats: StreamChat[] = [];
  const open = (key: string, opts: Parameters<typeof StreamChat.connect>[2] = {}) => {
    const c = StreamChat.connect(s.url, key, { WebSocket, reconnect: fast, ...opts });
    chats.push(c);
    return c;
  };

  before(async () => {
    s = await startServer({ STREAM_RATE_LIMIT: '1000/1s' });
    for (const key of ['live', 'queued', 'late-auth', 'gone', 'resume', 'expiring']) {
      assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, {})).status, 201);
    }
  });
  after(async () => {
    for (const c of chats) c.close();
    await s.close();
  });

  it('sends and receives: every viewer gets every chat once, in one order', async () => {
    const ana = new Recorder(open('live', { token: await userToken('1', { username: 'ana' }) }));
    const viewer = new Recorder(open('live'));
    await Promise.all([ana.chat.ready(), viewer.chat.ready()]);
    assert.equal(ana.chat.authenticated, true);
    assert.equal(viewer.chat.authenticated, false);
    for (let i = 0; i < 20; i++) ana.chat.send(`hola ${i}`);
    await until(() => viewer.chats.length === 20 && ana.chats.length === 20, '20 chats each');
    const expected = Array.from({ length: 20 }, (_, i) => `hola ${i}`);
    assert.deepEqual(viewer.texts(), expected);
    assert.deepEqual(ana.texts(), expected);
    assert.equal(viewer.chats[0]?.user, 'ana');
    assert.equal(ana.chat.lastChatId, viewer.chats.at(-1)?.id);
  });

  it('chats sent before the connection is authenticated wait, then leave once', async () => {
    const viewer = new Recorder(open('queued'));
    await viewer.chat.ready();
    const ana = new Recorder(open('queued', { token: await userToken('2') }));
    ana.chat.send('early 1');
    ana.chat.send('early 2');
    assert.equal(ana.chat.pending, 2);
    await until(() => viewer.chats.length === 2, 'the queued chats');
    assert.deepEqual(viewer.texts(), ['early 1', 'early 2']);
    assert.equal(ana.chat.pending, 0);
  });

  it('auth() later authenticates; an error frame becomes a typed error', async () => {
    const c = new Recorder(open('late-auth'));
    await c.chat.ready();
    c.chat.send('anonymous');
    await until(() => c.of('error').length === 1, 'not_authenticated');
    const err = c.of('error')[0] as ChatClientError;
    assert.ok(err instanceof ChatClientError);
    assert.equal(err.code, 'not_authenticated');
    c.chat.auth(await userToken('3'));
    await until(() => c.chat.authenticated, 'authenticated');
    c.chat.send('now signed in');
    await until(() => c.chats.length === 1, 'the chat');
    assert.equal(c.chats[0]?.userId, '3');
  });

  it('a token function is asked again when the token expires on an open connection', async () => {
    let calls = 0;
    const token = () => {
      calls++;
      // The first token runs out two seconds from now; later ones last.
      return calls === 1
        ? userToken('6', {}, { expiresIn: Math.floor(Date.now() / 1000) + 2 })
        : userToken('6');
    };
    const c = new Recorder(open('expiring', { token }));
    await c.chat.ready();
    assert.equal(c.chat.authenticated, true);
    await until(
      () => c.of('error').some((e) => e.code === 'token_expired'),
      'token_expired',
      5_000,
    );
    await until(() => calls === 2 && c.chat.authenticated, 'signed in again');
    assert.deepEqual(c.of('auth'), [false, true, false, true]);
    c.chat.send('still here');
    await until(() => c.chats.length === 1, 'the chat');
    assert.equal(c.chats[0]?.userId, '6');
    assert.deepEqual(
      c.of('error').map((e) => e.code),
      ['token_expired'],
    );
  });

  it('a token function that fails leaves the connection anonymous, and ready', async () => {
    const c = new Recorder(
      open('late-auth', { token: () => Promise.reject(new Error('offline')) }),
    );
    await c.chat.ready();
    assert.equal(c.chat.authenticated, false);
    assert.deepEqual(c.of('auth'), [false]);
  });

  it('an unknown stream ends the client without reconnecting', async () => {
    const c = new Recorder(open('no-such-stream'));
    await assert.rejects(c.chat.ready(), (e: ChatClientError) => e.code === 'closed');
    assert.equal(c.of('error')[0]?.code, 'stream_not_found');
    const closes = c.of('close');
    assert.deepEqual(closes.at(-1), {
      code: 4404,
      reason: 'stream_not_found',
      willReconnect: false,
    });
    assert.throws(
      () => c.chat.send('x'),
      (e: ChatClientError) => e.code === 'closed',
    );
  });

  it('after a drop, resumes with ?since=: missed chats come once, in history', async () => {
    const proxy = new BlackholeProxy(Number(new URL(s.url).port));
    await proxy.start();
    const ana = new Recorder(open('resume', { token: await userToken('5') }));
    const viewer = new Recorder(
      StreamChat.connect(`http://127.0.0.1:${proxy.port}`, 'resume', {
        WebSocket,
        reconnect: fast,
      }),
    );
    chats.push(viewer.chat);
    try {
      await Promise.all([ana.chat.ready(), viewer.chat.ready()]);
      ana.chat.send('seen');
      await until(() => viewer.chats.length === 1, 'the first chat');
      assert.equal(viewer.of('history').length, 1, 'a history frame on join');
      await proxy.stop();
      await until(() => viewer.of('close').length === 1, 'the viewer cut off');
      for (let i = 0; i < 3; i++) ana.chat.send(`missed ${i}`);
      await until(() => ana.chats.length === 4, 'the missed chats stored');
      await proxy.start();
      await until(() => viewer.of('history').length === 2, 'the resumed history');
      const resumed = viewer.of('history')[1];
      assert.equal(resumed.resumed, true);
      assert.equal(resumed.gap, false);
      assert.deepEqual(
        resumed.messages.map((m: StreamChatMessage) => m.message),
        ['missed 0', 'missed 1', 'missed 2'],
      );
      ana.chat.send('after');
      await until(() => viewer.texts().includes('after'), 'the live chat after');
      assert.deepEqual(viewer.texts(), ['seen', 'after']);
    } finally {
      await proxy.stop();
    }
  });

  it('the outbox is bounded', async () => {
    const c = open('gone', { outboxSize: 2, token: await userToken('4') });
    c.send('a');
    c.send('b');
    assert.throws(
      () => c.send('c'),
      (e: ChatClientError) => e.code === 'queue_full',
    );
  });
});

describe('StreamChat resume and de-duplication', () => {
  let server: ScriptedServer;
  before(async () => {
    server = new ScriptedServer();
    await new Promise((r) => server.wss.once('listening', r));
  });
  after(() => server.close());

  it('drops repeated chat ids, in live frames and in history', async () => {
    server.onConnection = (ws) => {
      ws.send(JSON.stringify({ type: 'auth', data: { authenticated: false } }));
      ws.send(JSON.stringify({ type: 'history', data: { messages: [], gap: false } }));
      for (const id of [1, 2, 2, 3, 1]) ws.send(chatFrame(hex(id)));
      ws.send(
        JSON.stringify({
          type: 'history',
          data: {
            messages: [JSON.parse(chatFrame(hex(3))).data, JSON.parse(chatFrame(hex(4))).data],
            gap: false,
          },
        }),
      );
      ws.send(chatFrame(hex(4)));
      ws.send(chatFrame(hex(5)));
    };
    const c = new Recorder(StreamChat.connect(server.url, 'k', { WebSocket }));
    try {
      await until(() => c.chats.some((m) => m.id === hex(5)), 'the last chat');
      assert.deepEqual(
        c.chats.map((m) => m.id),
        [1, 2, 3, 5].map(hex),
      );
      const histories = c.of('history');
      assert.equal(histories.length, 2);
      assert.deepEqual(
        histories[1].messages.map((m: StreamChatMessage) => m.id),
        [hex(4)],
      );
      assert.equal(c.chat.lastChatId, hex(5));
    } finally {
      c.chat.close();
    }
  });

  it('the dedupe set is bounded: the oldest ids are forgotten', async () => {
    server.onConnection = (ws) => {
      ws.send(JSON.stringify({ type: 'auth', data: { authenticated: false } }));
      for (const id of [1, 2, 3, 1, 3]) ws.send(chatFrame(hex(id)));
      ws.send(chatFrame(hex(9)));
    };
    const c = new Recorder(StreamChat.connect(server.url, 'k', { WebSocket, dedupeSize: 2 }));
    try {
      await until(() => c.chats.some((m) => m.id === hex(9)), 'the last chat');
      // 1 was pushed out by 2 and 3, so its repeat is new again; 3 is still remembered.
      assert.deepEqual(
        c.chats.map((m) => m.id),
        [1, 2, 3, 1, 9].map(hex),
      );
    } finally {
      c.chat.close();
    }
  });

  it('reconnects with backoff, presents the token again and resumes with ?since=', async () => {
    server.urls.length = 0;
    server.received.length = 0;
    let n = 0;
    server.onConnection = (ws, url) => {
      n++;
      ws.send(JSON.stringify({ type: 'auth', data: { authenticated: false } }));
      ws.on('message', (d) => {
        const f = JSON.parse(String(d));
        if (f.type === 'auth') {
          ws.send(JSON.stringify({ type: 'auth', data: { authenticated: true } }));
        }
      });
      if (n === 1) {
        // Dropped once its token has arrived, however slow the machine.
        ws.on('message', () => {
          ws.send(chatFrame(hex(10)));
          ws.send(chatFrame(hex(11)));
          setTimeout(() => ws.terminate(), 50);
        });
        return;
      }
      // The resumed connection: what came after `since`, with one overlap.
      const since = new URL(url, 'http://x').searchParams.get('since');
      const data = (id: number) => JSON.parse(chatFrame(hex(id))).data;
      ws.send(
        JSON.stringify({
          type: 'history',
          data: { messages: since === hex(11) ? [data(11), data(12)] : [], gap: false },
        }),
      );
    };
    let tokens = 0;
    const chat = StreamChat.connect(server.url, 'room-1', {
      WebSocket,
      token: () => `token-${++tokens}`,
      reconnect: fast,
    });
    const c = new Recorder(chat);
    const reconnecting: unknown[] = [];
    chat.on('reconnecting', (r) => reconnecting.push(r));
    try {
      await until(() => c.of('history').length === 1, 'the resumed history');
      assert.equal(server.urls[0], '/ws/streams/room-1/');
      assert.equal(server.urls[1], `/ws/streams/room-1/?since=${hex(11)}`);
      const history = c.of('history')[0];
      assert.deepEqual(
        history.messages.map((m: StreamChatMessage) => m.id),
        [hex(12)],
      );
      assert.equal(history.resumed, true);
      assert.equal(history.gap, false);
      assert.deepEqual(
        c.chats.map((m) => m.id),
        [hex(10), hex(11)],
      );
      await chat.ready();
      assert.equal(chat.authenticated, true);
      // The token function was called again for the new connection.
      assert.deepEqual(
        server.received.filter((f: any) => f.type === 'auth').map((f: any) => f.data.token),
        ['token-1', 'token-2'],
      );
      assert.equal(reconnecting.length, 1);
      const closes = c.of('close');
      assert.equal(closes[0].willReconnect, true);
    } finally {
      chat.close();
    }
  });

  it('gives up after maxAttempts consecutive failures', async () => {
    const dead = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await new Promise((r) => dead.once('listening', r));
    const port = (dead.address() as AddressInfo).port;
    await new Promise((r) => dead.close(r));
    const chat = StreamChat.connect(`http://127.0.0.1:${port}`, 'k', {
      WebSocket,
      reconnect: { ...fast, maxAttempts: 2 },
    });
    const c = new Recorder(chat);
    const started = Date.now();
    await assert.rejects(chat.ready(), (e: ChatClientError) => e.code === 'closed');
    const closes = c.of('close');
    assert.equal(closes.length, 3);
    assert.equal(closes.at(-1).willReconnect, false);
    assert.ok(Date.now() - started < 2_000);
  });
});

describe('streamEndpoint', () => {
  it('maps the server URL to the stream endpoint', () => {
    assert.equal(streamEndpoint('http://h:1', 'a'), 'ws://h:1/ws/streams/a/');
    assert.equal(streamEndpoint('https://h/chat/', 'a b'), 'wss://h/chat/ws/streams/a%20b/');
    assert.equal(streamEndpoint('ws://h:2', 'k'), 'ws://h:2/ws/streams/k/');
  });
});
