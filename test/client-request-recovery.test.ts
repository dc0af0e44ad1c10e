/**
 * `RequestChat` when things go wrong: a packet the server closes the
 * connection for, a server that is down or that accepts and then drops, a
 * re-join after a long absence (a gap, edits and deletions, live messages
 * during the catch-up), paging back past `historySize`, and calls made while
 * disconnected. Real `socket.io-client` against a real charla (or a bare
 * Socket.IO server where the test needs a misbehaving one).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Server } from 'socket.io';
import { type ChatClientError, RequestChat, type RequestMessage } from '../src/client/index.js';
import { newId } from '../src/core/ids.js';
import { BlackholeProxy, until } from './client-helpers.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';

const teacherToken = () => userToken('1', { username: 'ana', role: 'TEACHER' });
const labToken = () => userToken('7', { username: 'lab7', role: 'LAB' });
const fast = { initialDelayMs: 20, maxDelayMs: 200 };

/** Settles with `p`, or rejects after `ms` (a client that never gives up must fail the test, not hang it). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    p,
    new Promise<T>((_, reject) =>
      setTimeout(() => reject(new Error(`${what}: none in ${ms} ms`)), ms),
    ),
  ]);
}

function messagesOf(chat: RequestChat): RequestMessage[] {
  const got: RequestMessage[] = [];
  chat.on('message', (m) => got.push(m));
  return got;
}

async function storedMessages(url: string, requestId: string): Promise<RequestMessage[]> {
  const res = await api(url, 'GET', `/api/requests/${requestId}/messages?limit=500`);
  assert.equal(res.status, 200);
  return res.body.messages;
}

async function register(url: string): Promise<string> {
  const id = newId();
  assert.equal((await api(url, 'PUT', `/api/requests/${id}`, { ownerId: 1 })).status, 201);
  return id;
}

describe('RequestChat against a packet the server closes the connection for', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({ REQUEST_RATE_LIMIT: '1000/1s', MAX_FRAME_BYTES: '4096' });
  });
  after(() => s.close());

  it('gives the message up with not_connected after the third drop; the next one goes', async () => {
    const requestId = await register(s.url);
    const teacher = await RequestChat.connect(s.url, {
      token: await teacherToken(),
      reconnect: fast,
      sendTimeoutMs: 8_000,
      maxPacketBytes: 1_000_000,
    });
    try {
      await teacher.join(requestId);
      let drops = 0;
      teacher.on('disconnect', () => drops++);
      const started = Date.now();
      const big = teacher.send(requestId, 'x'.repeat(6_000));
      const next = teacher.send(requestId, 'after the big one');
      await assert.rejects(big, (e: ChatClientError) => e.code === 'not_connected');
      assert.equal(drops, 3, 'one drop per attempt');
      assert.ok(Date.now() - started < 5_000, 'given up well before sendTimeoutMs');
      assert.equal((await next).message, 'after the big one');
      assert.deepEqual(
        (await storedMessages(s.url, requestId)).map((m) => m.message),
        ['after the big one'],
      );
    } finally {
      teacher.close();
    }
  });

  it('a drop that comes long after the message left (its answer lost) does not give it up', async () => {
    const requestId = await register(s.url);
    const proxy = new BlackholeProxy(Number(new URL(s.url).port));
    await proxy.start();
    const teacher = await RequestChat.connect(`http://127.0.0.1:${proxy.port}`, {
      token: await teacherToken(),
      reconnect: fast,
      sendTimeoutMs: 20_000,
    });
    try {
      await teacher.join(requestId);
      // Three times, the answer is lost and the connection drops 1.2 s after the message left.
      let losses = 0;
      const loseAnswer = () => {
        if (losses++ === 3) return;
        proxy.blackholeDownstream = true;
        setTimeout(() => {
          proxy.dropConnections();
          proxy.blackholeDownstream = false;
        }, 1_200);
      };
      teacher.on('history', loseAnswer);
      loseAnswer();
      const sent = await within(teacher.send(requestId, 'hello'), 15_000, 'the answer');
      assert.equal(sent.message, 'hello');
      assert.equal(losses, 4);
      assert.deepEqual(
        (await storedMessages(s.url, requestId)).map((m) => m.message),
        ['hello'],
        'stored once',
      );
    } finally {
      teacher.close();
      await proxy.stop();
    }
  });

  it('refuses a packet over maxPacketBytes (default 64 KiB) at once, with message_too_long', async () => {
    const requestId = await register(s.url);
    const teacher = await RequestChat.connect(s.url, {
      token: await teacherToken(),
      reconnect: fast,
      maxPacketBytes: 4_096,
      sendTimeoutMs: 5_000,
    });
    try {
      await teacher.join(requestId);
      let drops = 0;
      teacher.on('disconnect', () => drops++);
      await assert.rejects(
        teacher.send(requestId, 'x'.repeat(5_000)),
        (e: ChatClientError) => e.code === 'message_too_long',
      );
      assert.equal(teacher.pending, 0);
      assert.equal((await teacher.send(requestId, 'small')).message, 'small');
      assert.equal(drops, 0);
    } finally {
      teacher.close();
    }
  });
});

describe('RequestChat connecting and reconnecting', () => {
  it('connect() can be aborted while the server is down; no attempt follows', async () => {
    let attempts = 0;
    const down = createServer((sock) => {
      attempts++;
      sock.destroy();
    });
    await new Promise<void>((r) => down.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(down.address() as { port: number }).port}`;
    try {
      const ac = new AbortController();
      const connecting = RequestChat.connect(url, {
        token: 'x',
        reconnect: fast,
        signal: ac.signal,
      });
      await until(() => attempts >= 2, 'two attempts');
      ac.abort();
      await within(
        assert.rejects(connecting, (e: ChatClientError) => e.code === 'closed'),
        2_000,
        'the rejection',
      );
      const seen = attempts;
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(attempts, seen, 'no attempt after the abort');

      // reconnect.maxAttempts bounds connect() against a server that resets every connection.
      await within(
        assert.rejects(
          RequestChat.connect(url, { token: 'x', reconnect: { ...fast, maxAttempts: 2 } }),
          (e: ChatClientError) => e.code === 'timeout',
        ),
        5_000,
        'the timeout',
      );
    } finally {
      await new Promise((r) => down.close(r));
    }
  });

  it('a join that settled leaves no timer: a process that drops its connection without close() ends', async () => {
    const s = await startServer({ REQUEST_RATE_LIMIT: '1000/1s' });
    try {
      const requestId = await register(s.url);
      const client = new URL('../src/client/index.js', import.meta.url).href;
      const script = `
        const { RequestChat } = await import(${JSON.stringify(client)});
        const chat = await RequestChat.connect(process.env.URL, {
          token: process.env.TOKEN, sendTimeoutMs: 60000, autoDeliver: false,
        });
        await chat.join(process.env.ROOM);
        chat.socket.disconnect();
      `;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        env: {
          PATH: process.env.PATH ?? '',
          URL: s.url,
          TOKEN: await teacherToken(),
          ROOM: requestId,
        },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      const started = Date.now();
      const code = await within(
        new Promise((resolve) => child.once('exit', resolve)),
        15_000,
        'the exit',
      ).finally(() => child.kill());
      assert.equal(code, 0);
      assert.ok(Date.now() - started < 15_000);
    } finally {
      await s.close();
    }
  });

  it('backs off from a server that accepts and then drops, and gives up after maxAttempts', async () => {
    const io = new Server(0, { transports: ['websocket'] });
    const opened: number[] = [];
    io.on('connection', (socket) => {
      opened.push(Date.now());
      setTimeout(() => socket.conn.close(), 20);
    });
    const port = (io.httpServer.address() as { port: number }).port;
    const chat = await RequestChat.connect(`http://127.0.0.1:${port}`, {
      token: 'x',
      reconnect: { initialDelayMs: 100, maxDelayMs: 10_000, jitter: 0, maxAttempts: 3 },
    });
    try {
      const errors: string[] = [];
      const delays: number[] = [];
      chat.on('error', (e) => errors.push(e.code));
      chat.on('reconnecting', ({ delayMs }) => delays.push(delayMs));
      await until(() => errors.length > 0, 'giving up', 5_000);
      assert.deepEqual(errors, ['timeout']);
      assert.deepEqual(delays, [100, 200, 400]);
      assert.equal(opened.length, 4, 'the first connection and three more');
      assert.equal(chat.socket.active, false);
      // Each connection waited its delay after the one before was dropped (on a
      // busy machine connecting adds to the gaps, so only the lower bound holds).
      const gaps = opened.slice(1).map((t, i) => t - (opened[i] as number));
      for (const [i, gap] of gaps.entries()) {
        assert.ok(gap >= (delays[i] as number) - 5, `gaps ${gaps}, delays ${delays}`);
      }
    } finally {
      chat.close();
      io.close();
    }
  });

  it('calls made while disconnected answer not_connected; join waits at most sendTimeoutMs', async () => {
    const s = await startServer({ REQUEST_RATE_LIMIT: '1000/1s' });
    const proxy = new BlackholeProxy(Number(new URL(s.url).port));
    await proxy.start();
    const chat = await RequestChat.connect(`http://127.0.0.1:${proxy.port}`, {
      token: await teacherToken(),
      reconnect: fast,
      sendTimeoutMs: 500,
    });
    try {
      const requestId = await register(s.url);
      await proxy.stop();
      await until(() => !chat.connected, 'the drop');
      await assert.rejects(chat.listRequests(), (e: ChatClientError) => e.code === 'not_connected');
      await within(
        assert.rejects(chat.join(requestId), (e: ChatClientError) => e.code === 'timeout'),
        3_000,
        'the join timeout',
      );
      await assert.rejects(
        chat.send(requestId, 'x'),
        (e: ChatClientError) => e.code === 'not_joined',
      );
    } finally {
      chat.close();
      await proxy.stop();
      await s.close();
    }
  });
});

describe('RequestChat re-join after an absence', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({ REQUEST_RATE_LIMIT: '1000/1s', HISTORY_PAGE: '3' });
  });
  after(() => s.close());

  /** A teacher and a lab user behind a proxy, both in a new room, the lab holding `seen`. */
  async function absence(seen: string[], opts: { catchUpPages?: number } = {}) {
    const requestId = await register(s.url);
    const teacher = await RequestChat.connect(s.url, {
      token: await teacherToken(),
      reconnect: fast,
    });
    const proxy = new BlackholeProxy(Number(new URL(s.url).port));
    await proxy.start();
    const lab = await RequestChat.connect(`http://127.0.0.1:${proxy.port}`, {
      token: await labToken(),
      reconnect: fast,
      ...opts,
    });
    await teacher.join(requestId);
    await lab.join(requestId);
    const atLab = messagesOf(lab);
    const held: RequestMessage[] = [];
    for (const text of seen) held.push(await teacher.send(requestId, text));
    await until(() => atLab.length === seen.length, 'the messages at the lab');
    await proxy.stop();
    await until(() => !lab.connected, 'the lab disconnected');
    const done = async () => {
      teacher.close();
      lab.close();
      await proxy.stop();
    };
    return { requestId, teacher, lab, proxy, atLab, held, done };
  }

  it('says gap when more were missed than catchUpPages pages, and pages back from there', async () => {
    const { requestId, teacher, lab, proxy, done } = await absence(['seen 0', 'seen 1'], {
      catchUpPages: 1,
    });
    try {
      for (let i = 0; i < 10; i++) await teacher.send(requestId, `missed ${i}`);
      const histories: Array<{ gap: boolean; messages: RequestMessage[]; hasMore: boolean }> = [];
      lab.on('history', (h) => histories.push(h));
      await proxy.start();
      await until(() => histories.length === 1, 'the re-join');
      const texts = (ms: RequestMessage[]) => ms.map((m) => m.message);
      assert.equal(histories[0]?.gap, true);
      assert.equal(histories[0]?.hasMore, true);
      // One page with the join and one more: what was held before is dropped, so nothing is skipped.
      const held = ['missed 4', 'missed 5', 'missed 6', 'missed 7', 'missed 8', 'missed 9'];
      assert.deepEqual(texts(histories[0]?.messages ?? []), held);
      assert.deepEqual(texts(lab.messages(requestId)), held);
      const page = await lab.loadHistory(requestId);
      assert.deepEqual(texts(page.messages), ['missed 1', 'missed 2', 'missed 3']);
    } finally {
      await done();
    }
  });

  it('emits edits and deletions made during the absence; a message deleted meanwhile is not a message', async () => {
    const { requestId, teacher, lab, proxy, atLab, held, done } = await absence(['a', 'b']);
    try {
      const [a, b] = held as [RequestMessage, RequestMessage];
      await teacher.editMessage(requestId, a._id, 'a (edited)');
      await teacher.deleteMessage(requestId, b._id);
      const gone = await teacher.send(requestId, 'c');
      await teacher.deleteMessage(requestId, gone._id);
      // The re-join's page (three) is a, b and c.
      const updated: RequestMessage[] = [];
      const deleted: string[] = [];
      lab.on('messageUpdated', (m) => updated.push(m));
      lab.on('messageDeleted', (e) => deleted.push(e.messageId));
      let rejoined = false;
      const added: string[] = [];
      lab.on('history', (h) => {
        rejoined = true;
        added.push(...h.added.map((m) => m._id));
      });
      await proxy.start();
      await until(() => rejoined, 'the re-join');
      assert.deepEqual(
        updated.map((m) => m.message),
        ['a (edited)'],
      );
      assert.deepEqual(deleted, [b._id]);
      assert.deepEqual(
        atLab.map((m) => m.message),
        ['a', 'b'],
        'c was deleted before the lab saw it',
      );
      assert.deepEqual(added, [], 'nor is it in history.added');
      const c = lab.messages(requestId).find((m) => m._id === gone._id);
      assert.ok(c?.deletedAt);
    } finally {
      await done();
    }
  });

  it('a live message that comes during the catch-up is emitted after the missed ones', async () => {
    const { requestId, teacher, lab, proxy, atLab, done } = await absence(['seen']);
    try {
      for (let i = 0; i < 8; i++) await teacher.send(requestId, `missed ${i}`);
      // The first catch-up page is asked for only once the live message is at the lab's socket.
      let live = false;
      lab.socket.onAny((event, m) => {
        if (event === 'message' && m?.message === 'LIVE') live = true;
      });
      const emitWithAck = lab.socket.emitWithAck.bind(lab.socket);
      let fired = false;
      lab.socket.emitWithAck = (async (event: string, ...args: unknown[]) => {
        if (event === 'loadHistory' && !fired) {
          fired = true;
          await teacher.send(requestId, 'LIVE');
          await until(() => live, 'LIVE at the lab socket');
        }
        return emitWithAck(event, ...args);
      }) as typeof lab.socket.emitWithAck;
      await proxy.start();
      await until(() => atLab.some((m) => m.message === 'LIVE'), 'LIVE emitted');
      assert.ok(fired, 'the catch-up paged back');
      assert.deepEqual(
        atLab.map((m) => m.message),
        ['seen', ...Array.from({ length: 8 }, (_, i) => `missed ${i}`), 'LIVE'],
      );
    } finally {
      await done();
    }
  });

  /**
   * Runs `action` once, when the lab's first `event` (joinRoom or the first
   * catch-up page) is under way, after the proxy lets the lab back in.
   */
  function onFirst(
    lab: RequestChat,
    event: string,
    action: (answer: Promise<unknown>) => Promise<void>,
  ): () => boolean {
    const emitWithAck = lab.socket.emitWithAck.bind(lab.socket);
    let fired = false;
    lab.socket.emitWithAck = (async (ev: string, ...args: unknown[]) => {
      if (ev !== event || fired) return emitWithAck(ev, ...args);
      fired = true;
      const answer = emitWithAck(ev, ...args);
      await action(answer);
      return answer;
    }) as typeof lab.socket.emitWithAck;
    return () => fired;
  }

  const missed = Array.from({ length: 8 }, (_, i) => `missed ${i}`);

  it('a drop during the catch-up is no gap: the next re-join fetches every missed message', async () => {
    const { requestId, teacher, lab, proxy, atLab, done } = await absence(['seen 0', 'seen 1']);
    try {
      for (const text of missed) await teacher.send(requestId, text);
      const gaps: boolean[] = [];
      lab.on('history', (h) => gaps.push(h.gap));
      const fired = onFirst(lab, 'loadHistory', async () => proxy.dropConnections());
      await proxy.start();
      await until(() => gaps.length === 1, 'the re-join');
      assert.ok(fired(), 'the catch-up paged back');
      assert.deepEqual(gaps, [false], 'nothing emitted for the re-join the drop cut short');
      assert.deepEqual(
        atLab.map((m) => m.message),
        ['seen 0', 'seen 1', ...missed],
      );
      assert.deepEqual(
        lab.messages(requestId).map((m) => m.message),
        ['seen 0', 'seen 1', ...missed],
      );
    } finally {
      await done();
    }
  });

  it('close() or leave() during the catch-up: no event after it', async () => {
    for (const how of ['close', 'leave'] as const) {
      const { requestId, teacher, lab, proxy, done } = await absence(['seen']);
      try {
        for (const text of missed) await teacher.send(requestId, text);
        let after = false;
        const events: string[] = [];
        for (const ev of ['history', 'message', 'messageUpdated', 'messageDeleted'] as const) {
          lab.on(ev, () => {
            if (after) events.push(ev);
          });
        }
        const fired = onFirst(lab, 'loadHistory', async () => {
          after = true;
          if (how === 'close') lab.close();
          else await lab.leave(requestId);
        });
        await proxy.start();
        await until(fired, 'the catch-up');
        await new Promise((r) => setTimeout(r, 500));
        assert.deepEqual(events, [], `no event after ${how}()`);
        assert.deepEqual(lab.messages(requestId), []);
      } finally {
        await done();
      }
    }
  });

  it('a drop before the joinRoom answer is handled keeps the live message held for the next re-join', async () => {
    const { requestId, teacher, lab, proxy, atLab, done } = await absence(['seen 0', 'seen 1']);
    try {
      for (const text of missed) await teacher.send(requestId, text);
      let live = false;
      lab.socket.onAny((event, m) => {
        if (event === 'message' && m?.message === 'LIVE') live = true;
      });
      const gaps: boolean[] = [];
      lab.on('history', (h) => gaps.push(h.gap));
      onFirst(lab, 'joinRoom', async (answer) => {
        await answer;
        await teacher.send(requestId, 'LIVE');
        await until(() => live, 'LIVE at the lab socket');
        proxy.dropConnections();
        await until(() => !lab.connected, 'the drop');
      });
      await proxy.start();
      await until(() => atLab.some((m) => m.message === 'LIVE'), 'LIVE emitted');
      assert.deepEqual(gaps, [false]);
      assert.deepEqual(
        atLab.map((m) => m.message),
        ['seen 0', 'seen 1', ...missed, 'LIVE'],
      );
      assert.deepEqual(
        lab.messages(requestId).map((m) => m.message),
        ['seen 0', 'seen 1', ...missed, 'LIVE'],
      );
    } finally {
      await done();
    }
  });

  it('loadHistory goes on paging back once historySize messages are held', async () => {
    const requestId = await register(s.url);
    const teacher = await RequestChat.connect(s.url, {
      token: await teacherToken(),
      reconnect: fast,
    });
    const lab = await RequestChat.connect(s.url, {
      token: await labToken(),
      reconnect: fast,
      historySize: 5,
      autoDeliver: false,
    });
    try {
      await teacher.join(requestId);
      for (let i = 0; i < 12; i++) await teacher.send(requestId, `m${i}`);
      const joined = await lab.join(requestId);
      assert.deepEqual(
        joined.messages.map((m) => m.message),
        ['m9', 'm10', 'm11'],
      );
      const pages: string[][] = [];
      for (let more = true; more && pages.length < 6; ) {
        const page = await lab.loadHistory(requestId);
        pages.push(page.messages.map((m) => m.message));
        more = page.hasMore;
      }
      assert.deepEqual(pages, [
        ['m6', 'm7', 'm8'],
        ['m3', 'm4', 'm5'],
        ['m0', 'm1', 'm2'],
      ]);
      // What is held stays the newest historySize.
      assert.deepEqual(
        lab.messages(requestId).map((m) => m.message),
        ['m7', 'm8', 'm9', 'm10', 'm11'],
      );
    } finally {
      teacher.close();
      lab.close();
    }
  });
});
