/** The server API for streams (protocol section 4), health, readiness and metrics. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { API_KEY, api, StreamClient, startServer, type TestServer, userToken } from './helpers.js';

let s: TestServer;
before(async () => {
  s = await startServer({ STREAM_RATE_LIMIT: '1000/1s', MAX_FRAME_BYTES: '1024' });
});
after(() => s.close());

describe('stream API', () => {
  it('needs the API key', async () => {
    for (const key of [null, 'wrong', '']) {
      const r = await api(s.url, 'PUT', '/api/streams/k1', {}, key);
      assert.equal(r.status, 401);
      assert.equal(r.body.error_code, 'unauthorized');
    }
    assert.equal((await api(s.url, 'DELETE', '/api/streams/k1', undefined, null)).status, 401);
    assert.equal(await s.app.streams.status('k1'), 'unknown');
  });

  it('creates (201) then updates (200) a stream', async () => {
    const created = await api(s.url, 'PUT', '/api/streams/k1', { title: 'Álgebra', ownerId: 12 });
    assert.equal(created.status, 201);
    assert.deepEqual(created.body, { key: 'k1', created: true });
    const updated = await api(s.url, 'PUT', '/api/streams/k1', { title: 'Álgebra II' });
    assert.equal(updated.status, 200);
    const row = await s.app.store.getStream('k1');
    assert.deepEqual(row, { key: 'k1', title: 'Álgebra II', ownerId: '12', endedAt: null });
  });

  it('refuses bad bodies and keys without changing anything', async () => {
    const cases: Array<[string, unknown, number, string]> = [
      ['/api/streams/k2', '{oops', 400, 'invalid_json'],
      ['/api/streams/k2', { title: 5 }, 422, 'invalid_payload'],
      ['/api/streams/k2', { ownerId: { id: 1 } }, 422, 'invalid_payload'],
      ['/api/streams/k2', { title: 'x'.repeat(2000) }, 413, 'invalid_payload'],
      ['/api/streams/bad%20key', {}, 400, 'invalid_payload'],
      ['/api/streams/bad!key', {}, 400, 'invalid_payload'],
      [`/api/streams/${'x'.repeat(65)}`, {}, 400, 'invalid_payload'],
    ];
    for (const [path, body, status, code] of cases) {
      const r = await api(s.url, 'PUT', path, body);
      assert.equal(r.status, status, `${path} ${JSON.stringify(body)}`);
      assert.equal(r.body.error_code, code);
    }
    assert.equal(await s.app.streams.status('k2'), 'unknown');
  });

  it('refuses a body that is not UTF-8 as invalid_json, and stores nothing', async () => {
    // {"title":"<FF FE C0 AF>"}: without the check, stored as four U+FFFD.
    const body = Buffer.concat([
      Buffer.from('{"title":"'),
      Buffer.from([0xff, 0xfe, 0xc0, 0xaf]),
      Buffer.from('"}'),
    ]);
    const r = await fetch(`${s.url}/api/streams/k-utf8`, {
      method: 'PUT',
      headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' },
      body,
    });
    assert.equal(r.status, 400);
    assert.equal(((await r.json()) as { error_code: string }).error_code, 'invalid_json');
    assert.equal(await s.app.streams.status('k-utf8'), 'unknown');
  });

  it('refuses a user id over 256 characters in a path as invalid_payload', async () => {
    const long = encodeURIComponent('漢'.repeat(257));
    const unread = await api(s.url, 'GET', `/api/users/${long}/unread?role=LAB`);
    assert.equal(unread.status, 400);
    assert.equal(unread.body.error_code, 'invalid_payload');
    assert.equal(
      (
        await api(
          s.url,
          'GET',
          `/api/users/${encodeURIComponent('漢'.repeat(256))}/unread?role=LAB`,
        )
      ).status,
      200,
    );
  });

  it('ends a stream (200) and answers 404 for an unknown one', async () => {
    await api(s.url, 'PUT', '/api/streams/k3', {});
    assert.deepEqual((await api(s.url, 'DELETE', '/api/streams/k3')).body, {
      key: 'k3',
      ended: true,
    });
    assert.equal(await s.app.streams.status('k3'), 'ended');
    const missing = await api(s.url, 'DELETE', '/api/streams/never');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error_code, 'stream_not_found');
  });

  it('pages stored chat, oldest first', async () => {
    await api(s.url, 'PUT', '/api/streams/hist', {});
    const c = await StreamClient.connect(s.wsUrl, 'hist', { token: await userToken('h') });
    await c.next('auth');
    for (let i = 0; i < 25; i++) c.chat(`m${i}`);
    await c.collect('chat', 25);
    await s.app.streams.flush();
    const last = await api(s.url, 'GET', '/api/streams/hist/messages?limit=10');
    assert.equal(last.body.hasMore, true);
    assert.deepEqual(
      last.body.messages.map((m: any) => m.message),
      Array.from({ length: 10 }, (_, i) => `m${15 + i}`),
    );
    const older = await api(
      s.url,
      'GET',
      `/api/streams/hist/messages?limit=20&before=${last.body.messages[0].id}`,
    );
    assert.equal(older.body.hasMore, false);
    assert.equal(older.body.messages.length, 15);
    assert.equal(older.body.messages[0].message, 'm0');
    for (const q of ['limit=0', 'limit=501', 'limit=x', 'before=nope']) {
      assert.equal((await api(s.url, 'GET', `/api/streams/hist/messages?${q}`)).status, 400, q);
    }
    assert.equal((await api(s.url, 'GET', '/api/streams/none/messages')).status, 404);
    c.close();
  });

  it('answers unknown paths 404 and wrong methods 405 method_not_allowed, with Allow', async () => {
    assert.equal((await api(s.url, 'GET', '/nothing')).status, 404);
    const res = await fetch(`${s.url}/api/streams/k1`, { method: 'POST', body: '{}' });
    assert.equal(res.status, 405);
    assert.equal(res.headers.get('allow'), 'PUT, DELETE, GET, PATCH');
    assert.deepEqual(await res.json(), {
      error_code: 'method_not_allowed',
      message: 'This method is not allowed here.',
    });
  });

  it('refuses a key that is a prefix, an extension or another length of the right one', async () => {
    for (const key of [API_KEY.slice(0, -1), `${API_KEY}x`, 'ñ'.repeat(6), 'x'.repeat(4096)]) {
      const r = await api(s.url, 'PUT', '/api/streams/k9', {}, key);
      assert.equal(r.status, 401, key.slice(0, 20));
    }
    assert.equal(await s.app.streams.status('k9'), 'unknown');
  });
});

describe('operations', () => {
  it('serves /healthz and /readyz', async () => {
    assert.deepEqual((await api(s.url, 'GET', '/healthz', undefined, null)).body, { status: 'ok' });
    const ready = await api(s.url, 'GET', '/readyz', undefined, null);
    assert.equal(ready.status, 200);
    assert.deepEqual(ready.body, { status: 'ready', storage: 'ok', broker: 'ok' });
  });

  it('serves Prometheus metrics for connections, messages, errors and event-loop lag', async () => {
    await api(s.url, 'PUT', '/api/streams/m', {});
    const c = await StreamClient.connect(s.wsUrl, 'm', { token: await userToken('m') });
    const v = await StreamClient.connect(s.wsUrl, 'm');
    await c.next('auth');
    await v.next('auth');
    c.chat('counted');
    await v.next('chat');
    const text = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(text, /charla_connections\{chat="stream"\} 2/);
    assert.match(text, /charla_messages_in_total\{chat="stream"\} \d+/);
    assert.match(text, /charla_messages_out_total\{chat="stream"\} \d+/);
    assert.match(text, /nodejs_eventloop_lag_seconds \d/);
    c.close();
    v.close();
  });
});

describe('METRICS_TOKEN', () => {
  let guarded: TestServer;
  const token = 'metrics-token-for-the-scraper';
  before(async () => {
    guarded = await startServer({ METRICS_TOKEN: token });
  });
  after(() => guarded.close());

  const scrape = (authorization?: string) =>
    fetch(`${guarded.url}/metrics`, {
      headers: authorization === undefined ? {} : { authorization },
    });

  it('makes /metrics need its bearer token (401 unauthorized otherwise)', async () => {
    for (const header of [
      undefined,
      'Bearer wrong',
      `Bearer ${token}x`,
      `Bearer ${token.slice(0, -1)}`,
      token,
      `Basic ${token}`,
      API_KEY,
    ]) {
      const res = await scrape(header);
      assert.equal(res.status, 401, String(header));
      assert.equal(res.headers.get('www-authenticate'), 'Bearer');
      assert.equal(((await res.json()) as { error_code: string }).error_code, 'unauthorized');
    }
    const ok = await scrape(`Bearer ${token}`);
    assert.equal(ok.status, 200);
    assert.match(await ok.text(), /nodejs_eventloop_lag_seconds/);
  });

  it('leaves /healthz and /readyz open', async () => {
    assert.equal((await api(guarded.url, 'GET', '/healthz', undefined, null)).status, 200);
    assert.equal((await api(guarded.url, 'GET', '/readyz', undefined, null)).status, 200);
  });
});
