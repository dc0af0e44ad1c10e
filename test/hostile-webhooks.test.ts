/**
 * The webhook worker against a hostile receiver (protocol section 9): a raw
 * TCP server that resets, answers garbage, redirects, hangs, trickles its
 * headers one byte at a time, sends headers past any sane size, or answers
 * 2xx with a body that never ends. A charla process must count each as a
 * failed attempt (the last one a success), keep its memory and descriptors
 * near their baseline, log no error, and keep serving its chats meanwhile.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { api, StreamClient, sleep, userToken } from './helpers.js';
import {
  assertRecovered,
  baselineOf,
  eventually,
  startWatched,
  type WatchedServer,
} from './hostile.js';

type Behaviour = 'reset' | 'garbage' | 'redirect' | 'hang' | 'trickle' | 'hugeHeaders' | 'hugeBody';

/** Every failure, one per request in turn. */
const FAILURES: Behaviour[] = ['reset', 'garbage', 'redirect', 'hang', 'trickle', 'hugeHeaders'];

class HostileReceiver {
  /** What the next request gets; null: the failures in turn. */
  mode: Behaviour | null = null;
  /** The `webhook-id` of every request whose head arrived, with what it got. */
  readonly seen: Array<{ id: string; got: Behaviour }> = [];
  private turn = 0;
  private readonly sockets = new Set<Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();

  private constructor(readonly server: Server) {}

  static async start(): Promise<HostileReceiver> {
    const receiver = new HostileReceiver(createServer());
    receiver.server.on('connection', (socket) => receiver.onConnection(socket));
    await new Promise<void>((resolve) => receiver.server.listen(0, '127.0.0.1', resolve));
    return receiver;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/hooks`;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private onConnection(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('error', () => {});
    socket.once('close', () => this.sockets.delete(socket));
    // A redirect is a complete answer, so the sender keeps its connection
    // alive and may send its next attempt on it: every request on a
    // connection is read and answered in turn, else that attempt would go
    // unseen and end as a timeout.
    let buffered = '';
    // Body bytes of the last request not yet read.
    let skip = 0;
    let answering = true;
    socket.on('data', (chunk: Buffer) => {
      // After an answer that never completes, the rest is read and dropped.
      if (!answering) return;
      buffered += chunk.toString('latin1');
      for (;;) {
        const dropped = Math.min(skip, buffered.length);
        buffered = buffered.slice(dropped);
        skip -= dropped;
        const end = buffered.indexOf('\r\n\r\n');
        if (skip > 0 || end < 0) return;
        const head = buffered.slice(0, end);
        buffered = buffered.slice(end + 4);
        skip = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        const id = /webhook-id: (\S+)/i.exec(head)?.[1] ?? '?';
        const got = this.mode ?? (FAILURES[this.turn++ % FAILURES.length] as Behaviour);
        this.seen.push({ id, got });
        this.answer(socket, got);
        if (got !== 'redirect') {
          answering = false;
          return;
        }
      }
    });
  }

  private answer(socket: Socket, how: Behaviour): void {
    switch (how) {
      case 'reset':
        socket.resetAndDestroy();
        return;
      case 'garbage':
        socket.end('SSH-2.0-OpenSSH\r\n\r\n\u0000\u0001');
        return;
      case 'redirect':
        socket.write(
          'HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n',
        );
        return;
      case 'hang':
        return;
      case 'trickle': {
        socket.write('HTTP/1.1 200 OK\r\nX-Slow: ');
        const t = setInterval(() => {
          if (socket.destroyed) clearInterval(t);
          else socket.write('a');
        }, 50);
        this.timers.add(t);
        return;
      }
      case 'hugeHeaders':
        socket.write(`HTTP/1.1 200 OK\r\nX-Huge: ${'a'.repeat(256 * 1024)}\r\n\r\n`);
        return;
      case 'hugeBody': {
        // A 2xx whose body would never end: success, read only in part.
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n');
        const chunk = Buffer.alloc(64 * 1024, 'x');
        const pump = () => {
          while (!socket.destroyed && socket.write(chunk)) {}
        };
        socket.on('drain', pump);
        pump();
        return;
      }
    }
  }
}

describe('webhooks to a hostile receiver', () => {
  let receiver: HostileReceiver;
  let s: WatchedServer;

  before(async () => {
    receiver = await HostileReceiver.start();
    s = await startWatched({
      WEBHOOK_URL: receiver.url,
      WEBHOOK_SECRET: `whsec_${randomBytes(32).toString('base64')}`,
      WEBHOOK_MAX_ATTEMPTS: String(FAILURES.length),
      WEBHOOK_RETRY_BASE_SECONDS: '0.05',
      WEBHOOK_RETRY_MAX_SECONDS: '0.1',
      WEBHOOK_TIMEOUT_MS: '600',
      WEBHOOK_POLL_MS: '50',
    });
  });
  after(async () => {
    await s.close();
    await receiver.close();
  });

  test('every failure is an attempt; the events are kept as failed, then retried once it answers', async () => {
    const keys = ['wh-a', 'wh-b', 'wh-c'];
    for (const key of keys) {
      assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, {})).status, 201);
    }
    assert.equal((await api(s.url, 'PUT', '/api/streams/live', {})).status, 201);
    const viewer = await StreamClient.connect(s.wsUrl, 'live', { token: await userToken('2') });
    await viewer.next('history');
    const baseline = await baselineOf(s);
    for (const key of keys)
      assert.equal((await api(s.url, 'DELETE', `/api/streams/${key}`)).status, 200);

    // Meanwhile the chat is served as ever.
    viewer.chat('still here');
    assert.equal((await viewer.next('chat')).data.message, 'still here');

    let failed: Array<{ id: string; attempts: number; lastError: string; type: string }> = [];
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      failed = (await api(s.url, 'GET', '/api/webhooks/failed')).body.events;
      if (failed.length === keys.length) break;
      await sleep(100);
    }
    assert.equal(failed.length, keys.length, JSON.stringify(failed));
    for (const e of failed) {
      assert.equal(e.type, 'stream.ended');
      assert.equal(e.attempts, FAILURES.length);
      assert.ok(e.lastError.length > 0 && e.lastError.length <= 500);
    }
    // Every kind of failure was met.
    assert.deepEqual(new Set(receiver.seen.map((a) => a.got)), new Set(FAILURES));
    await assertRecovered(s, baseline, { fdSlack: 3 });

    // A receiver that answers 2xx with a body that never ends has taken the event.
    receiver.mode = 'hugeBody';
    const first = failed[0] as { id: string };
    assert.equal((await api(s.url, 'POST', `/api/webhooks/failed/${first.id}/retry`)).status, 202);
    await eventually('the retried event delivered', () =>
      receiver.seen.some((a) => a.id === first.id && a.got === 'hugeBody'),
    );
    const deadline2 = Date.now() + 10_000;
    let left = failed.length;
    while (Date.now() < deadline2) {
      left = (await api(s.url, 'GET', '/api/webhooks/failed')).body.events.length;
      if (left === keys.length - 1) break;
      await sleep(100);
    }
    assert.equal(left, keys.length - 1);
    await assertRecovered(s, baseline, { fdSlack: 3 });
    viewer.chat('and after');
    assert.equal((await viewer.next('chat')).data.message, 'and after');
    viewer.close();
    const errors = s
      .output()
      .split('\n')
      .filter((line) => /"level":(50|60)/.test(line));
    assert.deepEqual(errors, [], 'a hostile receiver is not a server error');
  });

  test('a connection kept alive after a redirect carries the next attempts, each one counted', async () => {
    // A 307 is a complete answer: the next attempt may go on the same connection.
    receiver.mode = 'redirect';
    assert.equal((await api(s.url, 'PUT', '/api/streams/wh-d', {})).status, 201);
    assert.equal((await api(s.url, 'DELETE', '/api/streams/wh-d')).status, 200);
    type Failed = { id: string; attempts: number; lastError: string; payload: any };
    let event: Failed | undefined;
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const events: Failed[] = (await api(s.url, 'GET', '/api/webhooks/failed')).body.events;
      event = events.find((e) => e.payload.data.key === 'wh-d');
      if (event) break;
      await sleep(100);
    }
    assert.ok(event, 'the event failed');
    assert.equal(event.attempts, FAILURES.length);
    assert.equal(event.lastError, 'HTTP 307');
    const id = event.id;
    assert.deepEqual(
      receiver.seen.filter((a) => a.id === id).map((a) => a.got),
      FAILURES.map(() => 'redirect'),
    );
  });
});
