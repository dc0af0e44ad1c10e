/**
 * Write coalescing of busy streams (`src/transport/stream-flush.ts`), through
 * real `ws` clients. STREAM_FLUSH_BUSY_PERCENT=0 makes every stream busy from
 * its first chat, so coalescing is exercised without loading the machine.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { type FlushSlot, StreamFlusher } from '../src/transport/stream-flush.js';
import {
  api,
  type Frame,
  StreamClient,
  sleep,
  startServer,
  type TestServer,
  until,
  userToken,
} from './helpers.js';

const ids = (frames: Frame[]) => frames.filter((f) => f.type === 'chat').map((f) => f.data.id);
const texts = (frames: Frame[]) =>
  frames.filter((f) => f.type === 'chat').map((f) => String(f.data.message));

/** Resolves with the time (performance.now) the next chat frame arrives at `c`. */
function nextChatAt(c: StreamClient): Promise<{ at: number; message: string }> {
  return new Promise((resolve) => {
    const onMessage = (data: unknown) => {
      const f = JSON.parse(String(data)) as Frame;
      if (f.type !== 'chat') return;
      c.ws.off('message', onMessage);
      resolve({ at: performance.now(), message: String(f.data.message) });
    };
    c.ws.on('message', onMessage);
  });
}

async function viewers(s: TestServer, key: string, n: number): Promise<StreamClient[]> {
  const list = await Promise.all(
    Array.from({ length: n }, () => StreamClient.connect(s.wsUrl, key)),
  );
  for (const c of list) await c.next('auth');
  return list;
}

const LIMITS = { STREAM_RATE_LIMIT: '100000/1s', FLOOD_LIMIT: '100000' };

describe('stream write coalescing, busy stream', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({ ...LIMITS, STREAM_FLUSH_MS: '300', STREAM_FLUSH_BUSY_PERCENT: '0' });
  });
  after(() => s.close());

  it('holds a busy stream’s chats for STREAM_FLUSH_MS and writes them together', async () => {
    await api(s.url, 'PUT', '/api/streams/held', {});
    const poster = await StreamClient.connect(s.wsUrl, 'held', { token: await userToken('p') });
    await poster.next('auth');
    const [viewer] = (await viewers(s, 'held', 1)) as [StreamClient];
    // The first chat after a still moment goes at once: nothing was written lately.
    let got = nextChatAt(viewer);
    poster.chat('a');
    const a = await got;
    assert.equal(a.message, 'a');
    got = nextChatAt(viewer);
    const sent = performance.now();
    poster.chat('b');
    poster.chat('c');
    const b = await got;
    assert.equal(b.message, 'b');
    assert.ok(b.at - sent >= 200, `b waited ${b.at - sent} ms, expected about 300`);
    const [, , c] = await viewer.collect('chat', 3);
    assert.equal(c?.data.message, 'c');
    poster.close();
    viewer.close();
  });

  it('loses nothing and keeps one order for every viewer under a busy flow', async () => {
    await api(s.url, 'PUT', '/api/streams/flow', {});
    const posters = await Promise.all(
      ['p1', 'p2', 'p3'].map(async (id) =>
        StreamClient.connect(s.wsUrl, 'flow', { token: await userToken(id) }),
      ),
    );
    for (const p of posters) await p.next('auth');
    const watchers = await viewers(s, 'flow', 20);
    const per = 100;
    for (let i = 0; i < per; i++) {
      for (const [j, p] of posters.entries()) p.chat(`${j}:${i}`);
      if (i % 10 === 0) await sleep(5);
    }
    const total = per * posters.length;
    const first = await watchers[0]?.collect('chat', total, 10_000);
    assert.ok(first);
    const order = ids(first);
    assert.equal(new Set(order).size, total);
    for (const w of [...watchers, ...posters]) {
      const frames = await w.collect('chat', total, 10_000);
      assert.deepEqual(ids(frames), order);
    }
    // Each poster's chats in the order it sent them.
    const sent = texts(first);
    for (let j = 0; j < posters.length; j++) {
      const mine = sent.filter((t) => t.startsWith(`${j}:`)).map((t) => Number(t.split(':')[1]));
      assert.deepEqual(
        mine,
        Array.from({ length: per }, (_, i) => i),
      );
    }
    for (const c of [...posters, ...watchers]) c.close();
  });

  it('writes a viewer’s queued chats before an error sent to it', async () => {
    await api(s.url, 'PUT', '/api/streams/order', {});
    const poster = await StreamClient.connect(s.wsUrl, 'order', { token: await userToken('p') });
    await poster.next('auth');
    poster.chat('first');
    await poster.next('chat');
    poster.chat('queued');
    // Within the 300 ms window: 'queued' waits in the flow when the error is sent.
    await sleep(50);
    poster.send('not json');
    const next = await poster.next();
    assert.equal(next.type, 'chat');
    assert.equal(next.data.message, 'queued');
    assert.equal((await poster.next()).data.error_code, 'invalid_json');
    poster.close();
  });

  it('writes queued chats before the stream_ended error and the close', async () => {
    await api(s.url, 'PUT', '/api/streams/ending', {});
    const poster = await StreamClient.connect(s.wsUrl, 'ending', { token: await userToken('p') });
    await poster.next('auth');
    const [viewer] = (await viewers(s, 'ending', 1)) as [StreamClient];
    poster.chat('first');
    await viewer.next('chat');
    poster.chat('last');
    await sleep(50);
    assert.equal((await api(s.url, 'DELETE', '/api/streams/ending')).status < 300, true);
    const last = await viewer.next();
    assert.equal(last.type, 'chat');
    assert.equal(last.data.message, 'last');
    assert.equal((await viewer.next()).data.error_code, 'stream_ended');
    assert.equal((await viewer.closed).code, 4410);
    poster.close();
  });
});

describe('stream write coalescing, quiet stream', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({ ...LIMITS, STREAM_FLUSH_MS: '1000' });
    await api(s.url, 'PUT', '/api/streams/quiet', {});
  });
  after(() => s.close());

  it('writes a lone chat at once, well under STREAM_FLUSH_MS', async () => {
    const poster = await StreamClient.connect(s.wsUrl, 'quiet', { token: await userToken('p') });
    await poster.next('auth');
    const watchers = await viewers(s, 'quiet', 5);
    for (let i = 0; i < 5; i++) {
      const arrivals = watchers.map(nextChatAt);
      const sent = performance.now();
      poster.chat(`lone ${i}`);
      for (const got of await Promise.all(arrivals)) {
        assert.equal(got.message, `lone ${i}`);
        assert.ok(got.at - sent < 500, `a lone chat took ${got.at - sent} ms`);
      }
      await sleep(20);
    }
    for (const c of [poster, ...watchers]) c.close();
  });
});

describe('stream write coalescing off (STREAM_FLUSH_MS=0)', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({ ...LIMITS, STREAM_FLUSH_MS: '0', STREAM_FLUSH_BUSY_PERCENT: '0' });
    await api(s.url, 'PUT', '/api/streams/off', {});
  });
  after(() => s.close());

  it('writes every chat at once, in order', async () => {
    const poster = await StreamClient.connect(s.wsUrl, 'off', { token: await userToken('p') });
    await poster.next('auth');
    const [viewer] = (await viewers(s, 'off', 1)) as [StreamClient];
    let got = nextChatAt(viewer);
    poster.chat('a');
    await got;
    for (let i = 0; i < 5; i++) {
      got = nextChatAt(viewer);
      const sent = performance.now();
      poster.chat(`n${i}`);
      const arrived = await got;
      assert.equal(arrived.message, `n${i}`);
      assert.ok(arrived.at - sent < 250, `took ${arrived.at - sent} ms`);
    }
    assert.deepEqual(texts(await viewer.collect('chat', 6)), ['a', 'n0', 'n1', 'n2', 'n3', 'n4']);
    poster.close();
    viewer.close();
  });
});

describe('stream write coalescing and SEND_BUFFER_MAX_BYTES', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({
      ...LIMITS,
      STREAM_MESSAGE_MAX_CHARS: '60000',
      SEND_BUFFER_MAX_BYTES: '262144',
      STREAM_FLUSH_MS: '50',
      STREAM_FLUSH_BUSY_PERCENT: '0',
    });
    await api(s.url, 'PUT', '/api/streams/bound', {});
  });
  after(() => s.close());

  it('closes a viewer that does not read while others get every chat in order', async () => {
    const poster = await StreamClient.connect(s.wsUrl, 'bound', { token: await userToken('p') });
    const fast = await StreamClient.connect(s.wsUrl, 'bound');
    const slow = await StreamClient.connect(s.wsUrl, 'bound');
    for (const c of [poster, fast, slow]) await c.next('auth');
    slow.ws.pause();
    const text = 'y'.repeat(50_000);
    let n = 0;
    while (s.app.streams.viewerCount === 3 && n < 2000) {
      for (let i = 0; i < 20; i++) poster.chat(`${n++}:${text}`);
      await fast.collect('chat', n, 30_000);
    }
    assert.ok(n < 2000, 'the slow viewer was never disconnected');
    const got = await fast.collect('chat', n, 30_000);
    assert.deepEqual(
      got.map((f) => Number(String(f.data.message).split(':')[0])),
      Array.from({ length: n }, (_, i) => i),
    );
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, /charla_disconnects_total\{reason="slow_consumer"\} 1/);
    slow.ws.resume();
    const { code } = await slow.closed;
    assert.ok(code === 1013 || code === 1006, `close code ${code}`);
    assert.ok(slow.frames.filter((f) => f.type === 'chat').length < n);
    poster.close();
    fast.close();
  });
});

/** A connected pair of real TCP sockets: the server side as a viewer's socket, and what its peer reads. */
async function socketPair(): Promise<{ slot: FlushSlot; read: () => Buffer; close: () => void }> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const accepted = once(server, 'connection');
  const peer = net.connect(port, '127.0.0.1');
  const [socket] = (await accepted) as [net.Socket];
  const chunks: Buffer[] = [];
  peer.on('data', (c: Buffer) => chunks.push(c));
  return {
    slot: { socket, flushFrom: -1, flushTo: -1, flushOwn: null },
    read: () => Buffer.concat(chunks),
    close: () => {
      peer.destroy();
      socket.destroy();
      server.close();
    },
  };
}

describe('StreamFlow', () => {
  const f = (s: string) => Buffer.from(s);

  it('writes each viewer its frames in order, and drops a released viewer’s queue at once', async () => {
    const flusher = new StreamFlusher({ flushMs: 50, busyShare: 0 });
    const a = await socketPair();
    const b = await socketPair();
    const flowA = flusher.join('k');
    const flowB = flusher.join('k');
    assert.ok(flowA && flowA === flowB);
    const [one, two] = [f('one;'), f('two;')];
    for (const frame of [one, two]) {
      flowA.queue(a.slot, frame);
      flowA.queue(b.slot, frame);
    }
    assert.equal(flowA.queuedBytes(a.slot), 8);
    flowA.release(b.slot);
    assert.equal(flowA.queuedBytes(b.slot), 0);
    assert.equal(b.slot.flushFrom, -1);
    await sleep(100);
    assert.equal(a.read().toString(), 'one;two;');
    assert.equal(b.read().length, 0, 'a released viewer was written to');
    flowA.release(a.slot);
    assert.equal(flusher.size, 0, 'the flow outlived its viewers');
    a.close();
    b.close();
  });

  it('writes a viewer’s own frame after the chats queued before it and before later ones, in one flush', async () => {
    const flusher = new StreamFlusher({ flushMs: 50, busyShare: 0 });
    const a = await socketPair();
    const b = await socketPair();
    const c = await socketPair();
    const flow = flusher.join('k');
    flusher.join('k');
    flusher.join('k');
    assert.ok(flow);
    // Nothing queued for it: the caller writes at once.
    assert.equal(flow.queueOwn(a.slot, f('early;')), false);
    const [one, two, three] = [f('1;'), f('2;'), f('3;')];
    for (const frame of [one, two]) for (const x of [a, b, c]) flow.queue(x.slot, frame);
    assert.equal(flow.queueOwn(a.slot, f('err;')), true);
    assert.equal(flow.queueOwn(a.slot, f('auth;')), true);
    assert.equal(flow.queueOwn(c.slot, f('gone;')), true);
    for (const x of [a, b, c]) flow.queue(x.slot, three);
    assert.equal(flow.queuedBytes(a.slot), 15);
    // A released viewer's own frames go with its queue.
    flow.release(c.slot);
    await sleep(100);
    assert.equal(a.read().toString(), '1;2;err;auth;3;');
    assert.equal(b.read().toString(), '1;2;3;');
    assert.equal(c.read().length, 0);
    // take() (before a close) writes them at once, in the same order.
    flow.queue(a.slot, f('4;'));
    flow.queueOwn(a.slot, f('bye;'));
    flow.take(a.slot);
    await until(() => a.read().toString().endsWith('bye;'), 'the taken frames');
    assert.equal(a.read().toString(), '1;2;err;auth;3;4;bye;');
    for (const x of [a, b]) flow.release(x.slot);
    for (const x of [a, b, c]) x.close();
  });

  it('keeps a viewer’s order when it missed a frame', async () => {
    const flusher = new StreamFlusher({ flushMs: 50, busyShare: 0 });
    const a = await socketPair();
    const b = await socketPair();
    const flow = flusher.join('k');
    flusher.join('k');
    assert.ok(flow);
    const [one, two, three] = [f('1;'), f('2;'), f('3;')];
    flow.queue(a.slot, one);
    flow.queue(b.slot, one);
    flow.queue(b.slot, two);
    flow.queue(a.slot, three);
    flow.queue(b.slot, three);
    await sleep(100);
    assert.equal(a.read().toString(), '1;3;');
    assert.equal(b.read().toString(), '1;2;3;');
    flow.release(a.slot);
    flow.release(b.slot);
    a.close();
    b.close();
  });

  it('waits twice as long as a big room’s last flush took, so its writes keep half the core free', async () => {
    // Every flush costs 200 ms of CPU on this clock: it is read at each flush's start and end.
    let reads = 0;
    const cpuMs = () => 200 * Math.ceil(reads++ / 2);
    const flusher = new StreamFlusher({ flushMs: 10, busyShare: 0, cpuMs });
    const a = await socketPair();
    const flow = flusher.join('k');
    assert.ok(flow);
    try {
      assert.equal(flow.gapMs, 10, 'before any flush the wait is STREAM_FLUSH_MS');
      const started = performance.now();
      flow.queue(a.slot, f('1;'));
      // The first chat after a still moment waits for nothing.
      await until(() => a.read().toString() === '1;', 'the first chat');
      assert.equal(flow.gapMs, 400);
      flow.queue(a.slot, f('2;'));
      await until(() => a.read().toString() === '1;2;', 'the second chat');
      const waited = performance.now() - started;
      assert.ok(
        waited >= 380,
        `the second chat went ${waited.toFixed(0)} ms after the first flush`,
      );
    } finally {
      flow.release(a.slot);
      a.close();
    }
  });

  it('never waits longer than a second, however long a flush took', async () => {
    let reads = 0;
    const cpuMs = () => 5_000 * Math.ceil(reads++ / 2);
    const flusher = new StreamFlusher({ flushMs: 10, busyShare: 0, cpuMs });
    const a = await socketPair();
    const flow = flusher.join('k');
    assert.ok(flow);
    try {
      flow.queue(a.slot, f('1;'));
      await until(() => a.read().length > 0, 'the first chat');
      assert.equal(flow.gapMs, 1_000);
    } finally {
      flow.release(a.slot);
      a.close();
    }
  });

  it('is off with flushMs 0', () => {
    assert.equal(new StreamFlusher({ flushMs: 0, busyShare: 0.25 }).join('k'), null);
  });
});
