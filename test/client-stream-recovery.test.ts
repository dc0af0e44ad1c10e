/**
 * `StreamChat` when things go wrong: a token that cannot be had, never comes,
 * changes while it is fetched or is given up, a server that goes silent,
 * never upgrades, accepts and drops, stops reading or sends frames too large,
 * a drop before any chat, and `close()` from a listener. Against a real
 * charla where it serves the case, else a scripted `ws` server.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { type ChatClientError, StreamChat, type StreamChatMessage } from '../src/client/index.js';
import { BlackholeProxy, Recorder, until } from './client-helpers.js';
import { chatFrame, hex, ScriptedServer } from './client-stream-server.js';
import { api, sleep, startServer, type TestServer, userToken } from './helpers.js';

const fast = { initialDelayMs: 20, maxDelayMs: 200 };
const greet = (ws: WebSocket, authenticated = false) =>
  ws.send(JSON.stringify({ type: 'auth', data: { authenticated } }));

describe('StreamChat tokens against charla', () => {
  let s: TestServer;
  const chats: StreamChat[] = [];
  before(async () => {
    s = await startServer({ STREAM_RATE_LIMIT: '1000/1s' });
    for (const key of ['blip', 'switch', 'signout', 'giveup']) {
      assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, {})).status, 201);
    }
  });
  after(async () => {
    for (const c of chats) c.close();
    await s.close();
  });

  it('queued chats wait for a token the token function failed to give, then leave as its user', async () => {
    const proxy = new BlackholeProxy(Number(new URL(s.url).port));
    await proxy.start();
    let calls = 0;
    const token = () => {
      calls++;
      // The token service fails once, for the reconnect.
      if (calls === 2) return Promise.reject(new Error('503'));
      return userToken('7', { username: 'eva' });
    };
    const eva = new Recorder(
      StreamChat.connect(`http://127.0.0.1:${proxy.port}`, 'blip', {
        WebSocket,
        token,
        reconnect: fast,
      }),
    );
    const viewer = new Recorder(StreamChat.connect(s.url, 'blip', { WebSocket }));
    chats.push(eva.chat, viewer.chat);
    try {
      await Promise.all([eva.chat.ready(), viewer.chat.ready()]);
      eva.chat.once('close', () => {
        for (let i = 0; i < 5; i++) eva.chat.send(`queued ${i}`);
      });
      proxy.dropConnections();
      await until(() => viewer.chats.length === 5, 'the queued chats');
      assert.deepEqual(
        viewer.texts(),
        [0, 1, 2, 3, 4].map((i) => `queued ${i}`),
      );
      assert.ok(viewer.chats.every((m) => m.userId === '7'));
      assert.ok(calls >= 3, 'the token function was asked again');
      const errors = eva.of('error') as ChatClientError[];
      assert.deepEqual(
        errors.map((e) => [e.code, e.event]),
        [['not_authenticated', 'auth']],
        'the failure is told, and no chat was refused',
      );
      assert.equal(eva.chat.pending, 0);
    } finally {
      await proxy.stop();
    }
  });

  it('auth() while the token function is fetching: the later token wins', async () => {
    const alice = await userToken('8', { username: 'alice' });
    const bob = await userToken('9', { username: 'bob' });
    const c = new Recorder(
      StreamChat.connect(s.url, 'switch', {
        WebSocket,
        reconnect: fast,
        token: () => sleep(300).then(() => alice),
      }),
    );
    chats.push(c.chat);
    c.chat.once('open', () => setTimeout(() => c.chat.auth(bob), 20));
    await until(() => c.of('auth').length === 2, 'the answer to bob');
    await c.chat.ready();
    c.chat.send('who am I?');
    await until(() => c.chats.length === 1, 'the chat');
    assert.equal(c.chats[0]?.user, 'bob');
    assert.equal(c.chats[0]?.userId, '9');
    assert.deepEqual(c.of('auth'), [false, true]);
  });

  it('auth(undefined) on a signed-in connection: later chats leave anonymously and are refused', async () => {
    const viewer = new Recorder(StreamChat.connect(s.url, 'signout', { WebSocket }));
    const eva = new Recorder(
      StreamChat.connect(s.url, 'signout', {
        WebSocket,
        reconnect: fast,
        token: await userToken('7', { username: 'eva' }),
      }),
    );
    chats.push(viewer.chat, eva.chat);
    await Promise.all([viewer.chat.ready(), eva.chat.ready()]);
    eva.chat.send('as eva');
    await until(() => viewer.chats.length === 1, 'the signed-in chat');
    eva.chat.auth(undefined);
    assert.equal(eva.chat.authenticated, false);
    eva.chat.send('signed out');
    await until(() => eva.of('error').length === 1, 'the refusal');
    assert.equal((eva.of('error')[0] as ChatClientError).code, 'not_authenticated');
    await sleep(200);
    assert.deepEqual(viewer.texts(), ['as eva']);
    assert.equal(eva.chat.pending, 0);
    assert.deepEqual(eva.of('close'), [{ code: 1000, reason: 'signed out', willReconnect: true }]);
  });

  it('auth(undefined) while chats wait for a token that never comes: they leave and are refused', async () => {
    const c = new Recorder(
      StreamChat.connect(s.url, 'giveup', {
        WebSocket,
        reconnect: fast,
        token: () => Promise.reject(new Error('503')),
      }),
    );
    chats.push(c.chat);
    await c.chat.ready();
    c.chat.send('one');
    c.chat.send('two');
    await sleep(100);
    assert.equal(c.chat.pending, 2);
    c.chat.auth(undefined);
    await until(() => c.chat.pending === 0, 'the outbox to leave');
    const refusals = () =>
      (c.of('error') as ChatClientError[]).filter((e) => e.event !== 'auth').map((e) => e.code);
    await until(() => refusals().length === 2, 'the refusals');
    assert.deepEqual(refusals(), ['not_authenticated', 'not_authenticated']);
    assert.deepEqual(c.of('close'), [], 'an anonymous connection is kept');
  });
});

describe('StreamChat against a failing server', () => {
  let server: ScriptedServer;
  before(async () => {
    server = new ScriptedServer();
    await new Promise((r) => server.wss.once('listening', r));
  });
  after(() => server.close());
  const reset = (onConnection: ScriptedServer['onConnection']) => {
    server.urls.length = 0;
    server.received.length = 0;
    server.onConnection = onConnection;
  };

  it('a server that goes silent is left for a new connection; one that pings is kept', async () => {
    reset((ws) => greet(ws));
    // ws answers pings by itself: a silent server is one that sends none.
    const c = new Recorder(
      StreamChat.connect(server.url, 'k', { WebSocket, reconnect: fast, idleTimeoutMs: 300 }),
    );
    try {
      await until(() => server.urls.length === 2, 'a new connection', 3_000);
      assert.deepEqual(c.of('close')[0], {
        code: 1006,
        reason: 'server silent',
        willReconnect: true,
      });
    } finally {
      c.chat.close();
    }

    reset((ws) => {
      greet(ws);
      const beat = setInterval(() => ws.ping(), 100);
      ws.on('close', () => clearInterval(beat));
    });
    const kept = new Recorder(
      StreamChat.connect(server.url, 'k', { WebSocket, reconnect: fast, idleTimeoutMs: 300 }),
    );
    try {
      await kept.chat.ready();
      await sleep(1_000);
      assert.equal(server.urls.length, 1);
      assert.deepEqual(kept.of('close'), []);
    } finally {
      kept.chat.close();
    }
  });

  it('a token function that never answers holds nothing up: auth() and tokenTimeoutMs take over', async () => {
    reset((ws) => {
      greet(ws);
      ws.on('message', (d) => {
        const f = JSON.parse(String(d));
        if (f.type === 'auth') greet(ws, f.data.token === 'good');
      });
    });
    let calls = 0;
    const never = () => {
      calls++;
      return new Promise<string>(() => {});
    };
    const c = new Recorder(
      StreamChat.connect(server.url, 'k', { WebSocket, reconnect: fast, token: never }),
    );
    try {
      await until(() => calls === 1, 'the token function');
      c.chat.auth('good');
      c.chat.send('hello');
      await c.chat.ready();
      await until(() => server.received.length === 2, 'the token and the chat');
      assert.deepEqual(server.received, [
        { type: 'auth', data: { token: 'good' } },
        { type: 'chat', data: { message: 'hello' } },
      ]);
    } finally {
      c.chat.close();
    }

    // Alone, a call that never answers fails after tokenTimeoutMs, and the next one is made.
    reset((ws) => {
      greet(ws);
      ws.on('message', (d) => {
        const f = JSON.parse(String(d));
        if (f.type === 'auth') greet(ws, f.data.token === 'good');
      });
    });
    calls = 0;
    const late = new Recorder(
      StreamChat.connect(server.url, 'k', {
        WebSocket,
        reconnect: fast,
        tokenTimeoutMs: 200,
        token: () => (++calls === 1 ? new Promise<string>(() => {}) : 'good'),
      }),
    );
    try {
      late.chat.send('hello');
      await late.chat.ready();
      await until(() => server.received.length === 2, 'the token and the chat', 5_000);
      assert.equal(calls, 2);
      const errors = late.of('error') as ChatClientError[];
      assert.deepEqual(
        errors.map((e) => [e.code, e.event, e.message]),
        [['not_authenticated', 'auth', 'The token function failed: no token after 200 ms']],
      );
      assert.equal(late.chat.authenticated, true);
    } finally {
      late.chat.close();
    }
  });

  it('a server that accepts and never upgrades is left after idleTimeoutMs', async () => {
    const held: Socket[] = [];
    const tcp = createServer((sock) => held.push(sock));
    await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', () => r()));
    const { port } = tcp.address() as { port: number };
    const c = new Recorder(
      StreamChat.connect(`http://127.0.0.1:${port}`, 'k', {
        WebSocket,
        reconnect: fast,
        idleTimeoutMs: 300,
      }),
    );
    try {
      await until(() => held.length === 2, 'a new connection', 3_000);
      assert.deepEqual(c.of('close')[0], {
        code: 1006,
        reason: 'no handshake',
        willReconnect: true,
      });
      assert.deepEqual(c.of('open'), []);
    } finally {
      c.chat.close();
      for (const sock of held) sock.destroy();
      await new Promise((r) => tcp.close(r));
    }
  });

  it('a server that greets and drops is retried with backoff, and maxAttempts holds', async () => {
    reset((ws) => {
      greet(ws);
      setTimeout(() => ws.close(1011, 'overloaded'), 20);
    });
    const chat = StreamChat.connect(server.url, 'k', {
      WebSocket,
      reconnect: { initialDelayMs: 50, jitter: 0, maxAttempts: 3 },
    });
    const c = new Recorder(chat);
    const delays: number[] = [];
    chat.on('reconnecting', (r) => delays.push(r.delayMs));
    try {
      await until(() => c.of('close').some((e) => !e.willReconnect), 'the client stops', 5_000);
      assert.deepEqual(delays, [50, 100, 200]);
      assert.equal(server.urls.length, 4);
    } finally {
      chat.close();
    }
  });

  it('after a drop before any chat, the history that follows is flagged as a gap', async () => {
    let n = 0;
    const data = (id: number) => JSON.parse(chatFrame(hex(id))).data as StreamChatMessage;
    reset((ws) => {
      n++;
      greet(ws);
      // The first join finds no chat; the stream is busy while the viewer is away.
      const messages = n === 1 ? [] : [data(20), data(21)];
      ws.send(JSON.stringify({ type: 'history', data: { messages, gap: false } }));
      if (n === 1) setTimeout(() => ws.terminate(), 50);
    });
    const c = new Recorder(StreamChat.connect(server.url, 'k', { WebSocket, reconnect: fast }));
    try {
      await until(() => c.of('history').length === 2, 'the history after the drop');
      assert.deepEqual(server.urls, ['/ws/streams/k/', '/ws/streams/k/']);
      assert.deepEqual(
        c.of('history').map((h) => [h.messages.length, h.gap, h.resumed]),
        [
          [0, false, false],
          [2, true, true],
        ],
      );
      assert.equal(c.chat.lastChatId, hex(21));
    } finally {
      c.chat.close();
    }
  });

  it('maxPayload bounds the frames accepted from the server', async () => {
    reset((ws) => {
      greet(ws);
      ws.send(chatFrame(hex(30), 'x'.repeat(100_000)));
    });
    const c = new Recorder(
      StreamChat.connect(server.url, 'k', {
        WebSocket,
        reconnect: false,
        maxPayload: 64 * 1024,
      }),
    );
    await until(() => c.of('close').length === 1, 'the connection closed');
    assert.equal(c.of('close')[0].willReconnect, false);
    assert.deepEqual(c.chats, []);
  });
});

/**
 * Runs `body` in a Node process of its own, with `WebSocket` (from `ws`) and
 * `StreamChat` imported: what is proven is that nothing keeps it alive.
 */
const runClient = (body: string) =>
  new Promise<{ out: string; ms: number }>((resolve, reject) => {
    const client = new URL('../src/client/index.js', import.meta.url).href;
    const script = `
      import { WebSocket } from 'ws';
      import { StreamChat } from ${JSON.stringify(client)};
      ${body}
    `;
    const started = Date.now();
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      cwd: fileURLToPath(new URL('../../', import.meta.url)),
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.on('error', reject);
    child.on('exit', () => {
      clearTimeout(timer);
      resolve({ out: out.trim().split('\n').join(','), ms: Date.now() - started });
    });
  });

describe('StreamChat close() against a server that stopped reading', () => {
  let server: ScriptedServer;
  before(async () => {
    server = new ScriptedServer();
    await new Promise((r) => server.wss.once('listening', r));
    server.onConnection = (ws) => {
      greet(ws);
      // A frozen server: the client's closing handshake is never read, never answered.
      (ws as unknown as { _socket: Socket })._socket.pause();
    };
  });
  after(() => server.close());

  it('the socket is dropped after a short grace, and nothing is left running', async () => {
    const { out } = await runClient(`
      const chat = StreamChat.connect(${JSON.stringify(server.url)}, 'k', { WebSocket });
      await chat.ready();
      const t0 = Date.now();
      chat.close();
      process.on('exit', () => console.log('exited ' + (Date.now() - t0)));
    `);
    const ms = Number(/^exited (\d+)$/.exec(out)?.[1]);
    assert.ok(ms >= 900 && ms < 5_000, `exited ${ms} ms after close() (${out})`);
  });
});

describe('StreamChat close() from a listener', () => {
  const run = (listener: 'close' | 'reconnecting') =>
    runClient(`
      import { createServer } from 'node:net';
      // A port nothing listens on any more: every connection is refused.
      const probe = createServer().listen(0, '127.0.0.1');
      await new Promise((r) => probe.once('listening', r));
      const { port } = probe.address();
      await new Promise((r) => probe.close(r));
      const chat = StreamChat.connect('http://127.0.0.1:' + port, 'k', {
        WebSocket, reconnect: { initialDelayMs: 20000, jitter: 0 },
      });
      chat.on('close', (e) => {
        console.log('close ' + e.willReconnect);
        if (${JSON.stringify(listener)} === 'close') chat.close();
      });
      chat.on('reconnecting', () => {
        console.log('reconnecting');
        if (${JSON.stringify(listener)} === 'reconnecting') chat.close();
      });
    `);

  it('in a close listener: no reconnecting event, and nothing left running', async () => {
    const { out, ms } = await run('close');
    assert.equal(out, 'close true,close false');
    assert.ok(ms < 10_000, `exited after ${ms} ms`);
  });

  it('in a reconnecting listener: nothing left running', async () => {
    const { out, ms } = await run('reconnecting');
    assert.equal(out, 'close true,reconnecting,close false');
    assert.ok(ms < 10_000, `exited after ${ms} ms`);
  });
});
