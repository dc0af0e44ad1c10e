/** Bad input and limits on the stream endpoint (protocol sections 2, 5 and 6). */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { api, StreamClient, startServer, type TestServer, userToken } from './helpers.js';

const stored = async (s: TestServer, key: string) => {
  await s.app.streams.flush();
  return (await api(s.url, 'GET', `/api/streams/${key}/messages?limit=500`)).body.messages as any[];
};

describe('bad input', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({ STREAM_MESSAGE_MAX_CHARS: '20', FLOOD_LIMIT: '1000' });
    await api(s.url, 'PUT', '/api/streams/bad', {});
  });
  after(() => s.close());

  it('answers each with its error code, stores nothing and shows nothing to others', async () => {
    const c = await StreamClient.connect(s.wsUrl, 'bad', { token: await userToken('1') });
    const other = await StreamClient.connect(s.wsUrl, 'bad');
    await c.next('auth');
    await other.next('auth');
    const cases: Array<[unknown, string]> = [
      ['not json', 'invalid_json'],
      ['{"type":"chat","data":', 'invalid_json'],
      [[], 'invalid_payload'],
      [{ data: { message: 'x' } }, 'invalid_payload'],
      [{ type: 5, data: {} }, 'invalid_payload'],
      [{ type: 'chat' }, 'invalid_payload'],
      [{ type: 'chat', data: 'hola' }, 'invalid_payload'],
      [{ type: 'chat', data: {} }, 'invalid_payload'],
      [{ type: 'chat', data: { message: 12 } }, 'invalid_payload'],
      [{ type: 'chat', data: { message: { text: 'x' } } }, 'invalid_payload'],
      [{ type: 'shout', data: { message: 'x' } }, 'unknown_type'],
      [{ type: 'chat', data: { message: '' } }, 'empty_message'],
      [{ type: 'chat', data: { message: '   \n ' } }, 'empty_message'],
      [{ type: 'chat', data: { message: 'x'.repeat(21) } }, 'message_too_long'],
    ];
    for (const [frame, code] of cases) {
      c.send(frame);
      const reply = await c.next();
      assert.equal(reply.type, 'error', JSON.stringify(frame));
      assert.equal(reply.data.error_code, code, JSON.stringify(frame));
      assert.equal(typeof reply.data.message, 'string');
    }
    c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    assert.equal((await c.next()).data.error_code, 'invalid_payload');
    c.chat('x'.repeat(20));
    assert.equal((await c.next()).type, 'chat');
    // The chat is the barrier: it was sent after every refused frame, so anything
    // those leaked to the other viewer would have reached it first.
    assert.equal((await other.next()).type, 'chat');
    assert.deepEqual(other.rest(), []);
    assert.equal((await stored(s, 'bad')).length, 1);
    assert.equal(c.ws.readyState, c.ws.OPEN);
    c.close();
    other.close();
  });

  it('answers every malformed auth with an error and then auth, leaving the viewer anonymous', async () => {
    const token = await userToken('1');
    const c = await StreamClient.connect(s.wsUrl, 'bad', { token });
    assert.deepEqual((await c.next()).data, { authenticated: true });
    for (const frame of [
      { type: 'auth', data: {} },
      { type: 'auth', data: { token: 7 } },
      { type: 'auth' },
      { type: 'auth', data: 'x' },
    ]) {
      c.send(frame);
      const error = await c.next();
      assert.equal(error.type, 'error', JSON.stringify(frame));
      assert.equal(error.data.error_code, 'invalid_payload');
      const answer = await c.next();
      assert.equal(answer.type, 'auth', JSON.stringify(frame));
      assert.deepEqual(answer.data, { authenticated: false });
      c.auth(token);
      assert.deepEqual((await c.next('auth')).data, { authenticated: true });
    }
    c.send({ type: 'auth', data: {} });
    await c.next('auth');
    c.chat('anonymous now');
    assert.equal((await c.next()).data.error_code, 'not_authenticated');
    c.close();
  });

  it('refuses a chat from an anonymous viewer', async () => {
    const c = await StreamClient.connect(s.wsUrl, 'bad');
    await c.next('auth');
    c.chat('hola');
    assert.equal((await c.next()).data.error_code, 'not_authenticated');
    c.close();
  });

  it('counts errors by code in /metrics', async () => {
    const text = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(text, /charla_errors_total\{code="invalid_json"\} 2/);
    assert.match(text, /charla_errors_total\{code="not_authenticated"\} 2/);
  });
});

describe('limits', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({
      STREAM_RATE_LIMIT: '3/10s',
      FLOOD_LIMIT: '30',
      MAX_FRAME_BYTES: '4096',
      STREAM_MESSAGE_MAX_CHARS: '4000',
    });
    await api(s.url, 'PUT', '/api/streams/lim', {});
  });
  after(() => s.close());

  it('rate-limits per user per stream with retry_after_ms', async () => {
    const token = await userToken('r1');
    const a = await StreamClient.connect(s.wsUrl, 'lim', { token });
    const sameUser = await StreamClient.connect(s.wsUrl, 'lim', { token });
    const otherUser = await StreamClient.connect(s.wsUrl, 'lim', { token: await userToken('r2') });
    for (const c of [a, sameUser, otherUser]) await c.next('auth');
    for (let i = 0; i < 3; i++) a.chat(`m${i}`);
    await a.collect('chat', 3);
    sameUser.chat('one too many');
    const err = (await sameUser.collect('error', 1))[0];
    assert.equal(err?.data.error_code, 'rate_limited');
    assert.ok(err?.data.retry_after_ms > 0 && err?.data.retry_after_ms <= 10_000);
    otherUser.chat('my own budget');
    const chats = await otherUser.collect('chat', 4);
    assert.equal(chats.at(-1)?.data.message, 'my own budget');
    assert.equal((await stored(s, 'lim')).length, 4);
    for (const c of [a, sameUser, otherUser]) c.close();
  });

  it('a chat the rate refuses does not start the slow-mode wait', async () => {
    const key = 'lim-slow';
    assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, {})).status, 201);
    const c = await StreamClient.connect(s.wsUrl, key, { token: await userToken('r3') });
    await c.next('auth');
    for (let i = 0; i < 3; i++) c.chat(`m${i}`);
    await c.collect('chat', 3);
    const patched = await api(s.url, 'PATCH', `/api/streams/${key}`, { slowModeSeconds: 30 });
    assert.equal(patched.status, 200);
    c.chat('one too many');
    const rate = (await c.collect('error', 1))[0];
    assert.equal(rate?.data.error_code, 'rate_limited');
    // Refused by the rate, it did not start slow mode's wait: still the rate that refuses.
    c.chat('again');
    const again = (await c.collect('error', 2))[1];
    assert.equal(again?.data.error_code, 'rate_limited');
    c.close();
  });

  it('closes a frame over MAX_FRAME_BYTES with 1009', async () => {
    const c = await StreamClient.connect(s.wsUrl, 'lim', { token: await userToken('big') });
    await c.next('auth');
    c.chat('x'.repeat(5000));
    assert.equal((await c.closed).code, 1009);
  });

  it('closes a connection that floods with 1008, and not one that stays under the limit', async () => {
    const calm = await StreamClient.connect(s.wsUrl, 'lim');
    const flood = await StreamClient.connect(s.wsUrl, 'lim');
    await calm.next('auth');
    await flood.next('auth');
    for (let i = 0; i < 30; i++) calm.send('{}');
    await calm.collect('error', 30);
    assert.equal(calm.ws.readyState, calm.ws.OPEN);
    for (let i = 0; i < 31; i++) flood.send('{}');
    assert.equal((await flood.closed).code, 1008);
    calm.close();
  });
});

describe('slow viewers', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({
      STREAM_RATE_LIMIT: '100000/1s',
      STREAM_MESSAGE_MAX_CHARS: '60000',
      SEND_BUFFER_MAX_BYTES: '262144',
      FLOOD_LIMIT: '100000',
    });
    await api(s.url, 'PUT', '/api/streams/slow', {});
  });
  after(() => s.close());

  it('disconnects a viewer that does not read, and the others keep receiving', async () => {
    const poster = await StreamClient.connect(s.wsUrl, 'slow', { token: await userToken('p') });
    const fast = await StreamClient.connect(s.wsUrl, 'slow');
    const slow = await StreamClient.connect(s.wsUrl, 'slow');
    for (const c of [poster, fast, slow]) await c.next('auth');
    slow.ws.pause();
    // Send in rounds until the server gives up on the slow viewer: how much that
    // takes depends on the kernel's socket buffers, not only on the limit.
    const text = 'y'.repeat(50_000);
    let n = 0;
    while (s.app.streams.viewerCount === 3 && n < 2000) {
      for (let i = 0; i < 20; i++) poster.chat(`${n++}:${text}`);
      await fast.collect('chat', n, 30_000);
    }
    const got = await fast.collect('chat', n, 30_000);
    assert.equal(got.length, n);
    assert.ok(n < 2000, 'the slow viewer was never disconnected');
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, /charla_disconnects_total\{reason="slow_consumer"\} 1/);
    assert.equal(s.app.streams.viewerCount, 2);
    slow.ws.resume();
    const { code } = await slow.closed;
    // 1013 when the close frame got through before the grace period ended, else cut (1006).
    assert.ok(code === 1013 || code === 1006, `close code ${code}`);
    assert.ok(slow.frames.filter((f) => f.type === 'chat').length < n);
    poster.close();
    fast.close();
  });
});
