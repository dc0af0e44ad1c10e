/** The live-stream chat (protocol section 2) with real `ws` clients against a real server. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import { api, StreamClient, sign, startServer, type TestServer, userToken } from './helpers.js';

let s: TestServer;

before(async () => {
  s = await startServer({ STREAM_RATE_LIMIT: '1000/1s' });
  for (const key of ['main', 'other', 'order', 'expiry', 'ending', 'leak-a', 'leak-b']) {
    assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, { title: key })).status, 201);
  }
});
after(() => s.close());

const stored = async (key: string) => {
  await s.app.streams.flush();
  return (await api(s.url, 'GET', `/api/streams/${key}/messages?limit=500`)).body.messages as any[];
};

describe('connecting and authenticating', () => {
  it('answers the upgrade with auth: false for an anonymous viewer', async () => {
    const c = await StreamClient.connect(s.wsUrl, 'main');
    assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: false } });
    c.close();
  });

  it('authenticates by Authorization header', async () => {
    const c = await StreamClient.connect(s.wsUrl, 'main', { token: await userToken('1') });
    assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: true } });
    c.close();
  });

  it('authenticates by token query parameter, with or without the trailing slash', async () => {
    const token = await userToken('1');
    const c = await StreamClient.connect(s.wsUrl, 'main', { query: `?token=${token}` });
    assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: true } });
    c.close();
    const { WebSocket } = await import('ws');
    const bare = new StreamClient(new WebSocket(`${s.wsUrl}/ws/streams/main?token=${token}`));
    await bare.opened;
    assert.deepEqual(await bare.next(), { type: 'auth', data: { authenticated: true } });
    bare.close();
  });

  it('answers every auth message; the last token presented wins', async () => {
    const c = await StreamClient.connect(s.wsUrl, 'main');
    await c.next('auth');
    c.auth(await userToken('1'));
    assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: true } });
    c.auth(await sign({ user_id: 1 }, { secret: 'wrong-secret-wrong-secret-wrong-secret' }));
    assert.equal((await c.next()).data.error_code, 'invalid_token');
    assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: false } });
    c.chat('after a bad token');
    assert.equal((await c.next()).data.error_code, 'not_authenticated');
    c.close();
  });

  it('handles frames sent right after auth with the identity auth established', async () => {
    const c = await StreamClient.connect(s.wsUrl, 'main');
    await c.next('auth');
    c.auth(await userToken('42', { username: 'quick' }));
    c.chat('right after auth');
    assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: true } });
    const chat = await c.next();
    assert.equal(chat.type, 'chat');
    assert.equal(chat.data.user, 'quick');
    c.close();
  });

  it('tells a bad or expired token at connect, then stays open as anonymous', async () => {
    const bad = await StreamClient.connect(s.wsUrl, 'main', { token: 'garbage' });
    assert.deepEqual((await bad.next()).data.error_code, 'invalid_token');
    assert.deepEqual(await bad.next(), { type: 'auth', data: { authenticated: false } });
    bad.close();
    const expired = await StreamClient.connect(s.wsUrl, 'main', {
      token: await userToken('1', {}, { expiresIn: Math.floor(Date.now() / 1000) - 10 }),
    });
    assert.deepEqual((await expired.next()).data.error_code, 'token_expired');
    assert.deepEqual(await expired.next(), { type: 'auth', data: { authenticated: false } });
    expired.close();
  });

  it('refuses alg none and tokens signed with another key', async () => {
    const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const none = `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ user_id: 1, exp: 9e9 })}.`;
    const other = await new SignJWT({ user_id: 1 })
      .setProtectedHeader({ alg: 'HS256' })
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode('another-key-another-key-another-key'));
    for (const token of [none, other]) {
      const c = await StreamClient.connect(s.wsUrl, 'main', { token });
      assert.equal((await c.next()).data.error_code, 'invalid_token');
      assert.equal((await c.next()).data.authenticated, false);
      c.chat('should not pass');
      assert.equal((await c.next()).data.error_code, 'not_authenticated');
      c.close();
    }
    assert.equal((await stored('main')).filter((m) => m.message === 'should not pass').length, 0);
  });
});

describe('chat', () => {
  it('is stored and delivered to every viewer, the sender included, with the contract fields', async () => {
    const sender = await StreamClient.connect(s.wsUrl, 'main', {
      token: await userToken('7', { username: 'ana' }),
    });
    const viewer = await StreamClient.connect(s.wsUrl, 'main');
    await sender.next('auth');
    await viewer.next('auth');
    sender.chat('hola');
    const mine = await sender.next('chat');
    const theirs = await viewer.next('chat');
    assert.deepEqual(mine, theirs);
    assert.equal(mine.data.user, 'ana');
    assert.equal(mine.data.message, 'hola');
    assert.equal(mine.data.userId, '7');
    assert.match(mine.data.id, /^[0-9a-f]{24}$/);
    assert.ok(!Number.isNaN(Date.parse(mine.data.sentAt)));
    const rows = await stored('main');
    assert.ok(rows.some((m) => m.id === mine.data.id && m.message === 'hola' && m.userId === '7'));
    sender.close();
    viewer.close();
  });

  it('reaches every receiver in one shared order', async () => {
    const a = await StreamClient.connect(s.wsUrl, 'order', { token: await userToken('a') });
    const b = await StreamClient.connect(s.wsUrl, 'order', { token: await userToken('b') });
    const watchers = await Promise.all([1, 2, 3].map(() => StreamClient.connect(s.wsUrl, 'order')));
    for (const c of [a, b, ...watchers]) await c.next('auth');
    const n = 150;
    for (let i = 0; i < n; i++) {
      a.chat(`a${i}`);
      b.chat(`b${i}`);
    }
    const orders = await Promise.all(
      [a, b, ...watchers].map(async (c) => (await c.collect('chat', 2 * n)).map((f) => f.data.id)),
    );
    for (const order of orders.slice(1)) assert.deepEqual(order, orders[0]);
    const texts = (await a.collect('chat', 2 * n)).map((f) => f.data.message as string);
    assert.deepEqual(
      texts.filter((t) => t.startsWith('a')),
      Array.from({ length: n }, (_, i) => `a${i}`),
    );
    const rows = await stored('order');
    assert.deepEqual(
      rows.map((m) => m.id),
      orders[0],
    );
    for (const c of [a, b, ...watchers]) c.close();
  });

  it('never leaks between stream keys', async () => {
    const aSender = await StreamClient.connect(s.wsUrl, 'leak-a', { token: await userToken('1') });
    const bViewer = await StreamClient.connect(s.wsUrl, 'leak-b');
    await aSender.next('auth');
    await bViewer.next('auth');
    const bSender = await StreamClient.connect(s.wsUrl, 'leak-b', { token: await userToken('2') });
    await bSender.next('auth');
    aSender.chat('only for a');
    await aSender.next('chat');
    // A later chat on leak-b is the barrier: nothing of leak-a may come before it.
    bSender.chat('marker for b');
    assert.equal((await bViewer.next()).data.message, 'marker for b');
    assert.deepEqual(bViewer.rest(), []);
    bSender.close();
    assert.deepEqual(
      (await stored('leak-b')).map((m) => m.message),
      ['marker for b'],
    );
    aSender.close();
    bViewer.close();
  });
});

describe('token expiry on an open connection', () => {
  it('turns the connection anonymous, and a new auth restores it', async () => {
    const c = await StreamClient.connect(s.wsUrl, 'expiry', {
      token: await userToken('9', {}, { expiresIn: '2s' }),
    });
    assert.equal((await c.next()).data.authenticated, true);
    const err = await c.next(undefined, 4000);
    assert.deepEqual(err.type, 'error');
    assert.equal(err.data.error_code, 'token_expired');
    assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: false } });
    c.chat('expired');
    assert.equal((await c.next()).data.error_code, 'not_authenticated');
    c.auth(await userToken('9'));
    assert.equal((await c.next()).data.authenticated, true);
    c.chat('back');
    assert.equal((await c.next()).data.message, 'back');
    c.close();
  });
});

describe('stream lifecycle', () => {
  it('refuses an unknown key with stream_not_found and 4404', async () => {
    for (const key of ['nope', 'bad%20key', 'x'.repeat(65)]) {
      const c = await StreamClient.connect(s.wsUrl, key);
      assert.equal((await c.next()).data.error_code, 'stream_not_found');
      assert.equal((await c.closed).code, 4404);
    }
  });

  it('ends a stream: viewers and newcomers get stream_ended and 4410; PUT reopens it', async () => {
    const viewer = await StreamClient.connect(s.wsUrl, 'ending');
    await viewer.next('auth');
    assert.equal((await api(s.url, 'DELETE', '/api/streams/ending')).status, 200);
    assert.equal((await viewer.next()).data.error_code, 'stream_ended');
    assert.equal((await viewer.closed).code, 4410);
    const late = await StreamClient.connect(s.wsUrl, 'ending');
    assert.equal((await late.next()).data.error_code, 'stream_ended');
    assert.equal((await late.closed).code, 4410);
    assert.equal((await api(s.url, 'PUT', '/api/streams/ending', {})).status, 200);
    const again = await StreamClient.connect(s.wsUrl, 'ending');
    assert.deepEqual(await again.next(), { type: 'auth', data: { authenticated: false } });
    again.close();
  });

  it('refuses upgrades on other paths', async () => {
    const { WebSocket } = await import('ws');
    const c = new StreamClient(new WebSocket(`${s.wsUrl}/ws/elsewhere/`));
    await assert.rejects(c.opened, /404/);
  });
});
