/**
 * The stream endpoint against peers that leave at the wrong moment, and
 * against a broker that carries something it should not: in process, so that
 * timers, connection sets and counters can be read directly.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { api, StreamClient, sleep, startServer, type TestServer, userToken } from './helpers.js';
import { clientFrame, eventually, Op, rawStream, waitFor } from './hostile.js';
import { REDIS_URL, requireServices, tempRedisPrefix } from './services.js';

const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

const metric = async (s: TestServer, line: RegExp) => {
  const text = await (await fetch(`${s.url}/metrics`)).text();
  const m = line.exec(text);
  return m ? Number(m[1]) : 0;
};

describe('a viewer that leaves while its token is being checked', () => {
  let jwks: Server;
  let s: TestServer;
  let token: string;
  let release: () => void = () => {};

  before(async () => {
    const { publicKey, privateKey } = await generateKeyPair('RS256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    // The key set answers only when the test says so: the token check is in flight
    // for as long as the test needs.
    const waiting: Array<import('node:http').ServerResponse> = [];
    let released = false;
    const answer = (res: import('node:http').ServerResponse) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
    };
    jwks = createServer((_req, res) => {
      if (released) answer(res);
      else waiting.push(res);
    });
    release = () => {
      released = true;
      for (const res of waiting.splice(0)) answer(res);
    };
    await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', r));
    const { port } = jwks.address() as AddressInfo;
    s = await startServer({
      JWT_SECRET: '',
      JWKS_URL: `http://127.0.0.1:${port}/jwks`,
    });
    await api(s.url, 'PUT', '/api/streams/late', {});
    token = await new SignJWT({ user_id: 'late', username: 'late' })
      .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
      .setExpirationTime('12h')
      .sign(privateKey);
  });
  after(async () => {
    release();
    await s.close();
    jwks.closeAllConnections();
    await new Promise<void>((r) => jwks.close(() => r()));
  });

  it('arms no expiry timer once it is gone', async () => {
    const socket = await rawStream(
      { host: '127.0.0.1', port: Number(new URL(s.url).port) },
      'late',
    );
    await eventually('the viewer to be counted', () => s.app.streams.viewerCount === 1);
    const baseline = timers();
    socket.write(clientFrame(Op.text, JSON.stringify({ type: 'auth', data: { token } })));
    // The key set is being fetched: the check is in flight. Now the viewer leaves.
    await sleep(100);
    socket.resetAndDestroy();
    await eventually('the viewer to be gone', () => s.app.streams.viewerCount === 0);
    release();
    // A second viewer authenticating with the same key set is the barrier: once it
    // is answered, the first check has finished too.
    const barrier = await StreamClient.connect(s.wsUrl, 'late');
    await barrier.next('auth');
    barrier.auth(token);
    assert.deepEqual((await barrier.next('auth')).data, { authenticated: true });
    barrier.close();
    await eventually('the barrier viewer to be gone', () => s.app.streams.viewerCount === 0);
    // The 12-hour expiry of a connection that closed would be one timer more.
    assert.ok(timers() <= baseline, `timers: ${timers()} > ${baseline}`);
  });
});

describe('closing', () => {
  let s: TestServer;
  before(async () => {
    s = await startServer({ STREAM_RATE_LIMIT: '1000/1s' });
    await api(s.url, 'PUT', '/api/streams/closing', {});
  });
  after(() => s.close());

  const port = () => ({ host: '127.0.0.1', port: Number(new URL(s.url).port) });

  it('counts only the viewers a chat was written to', async () => {
    const poster = await StreamClient.connect(s.wsUrl, 'closing', { token: await userToken('1') });
    await poster.next('auth');
    const leaving = await rawStream(port(), 'closing');
    await eventually('the raw viewer to join', () => s.app.streams.viewerCount === 2);
    const out = () => metric(s, /charla_messages_out_total\{chat="stream"\} (\d+)/);
    const first = waitFor(leaving, '"message":"one"');
    poster.chat('one');
    await poster.next('chat');
    await first;
    const before = await out();
    // The raw viewer starts the close handshake and keeps its TCP side open: it is
    // closing, still in the set, and must not be counted as a receiver.
    const code = Buffer.alloc(2);
    code.writeUInt16BE(1000);
    leaving.write(clientFrame(Op.close, code));
    await waitFor(leaving, Buffer.from([0x88]).toString('latin1'));
    poster.chat('two');
    await poster.next('chat');
    assert.equal((await out()) - before, 1);
    leaving.destroy();
    poster.close();
    await eventually('both to be gone', () => s.app.streams.viewerCount === 0);
  });

  it('releases a viewer that closed but keeps its side open, within 5 s', async () => {
    const before = s.app.streams.viewerCount;
    const socket = await rawStream(port(), 'closing', {}, { allowHalfOpen: true });
    await eventually('the raw viewer to join', () => s.app.streams.viewerCount === before + 1);
    const gauge = () => metric(s, /charla_connections\{chat="stream"\} (\d+)/);
    assert.equal(await gauge(), before + 1);
    const code = Buffer.alloc(2);
    code.writeUInt16BE(1000);
    socket.write(clientFrame(Op.close, code));
    // The peer never ends its side: the server must let go of the socket by itself.
    await eventually(
      'the server to release the socket',
      () => s.app.streams.viewerCount === before,
      5_000,
    );
    assert.equal(await gauge(), before);
    assert.equal(socket.readableEnded, true, 'the server ended the TCP connection');
    socket.destroy();
  });

  it('close() tells every viewer 1001 and ends even a connection that never answers', async () => {
    const t = await startServer();
    await api(t.url, 'PUT', '/api/streams/shutdown', {});
    // A peer that never answers the close handshake: the server has to cut it.
    const socket = await rawStream(
      { host: '127.0.0.1', port: Number(new URL(t.url).port) },
      'shutdown',
      {},
      { allowHalfOpen: true },
    );
    await eventually('the raw viewer to join', () => t.app.streams.viewerCount === 1);
    let peerEnded = false;
    let got = Buffer.alloc(0);
    socket.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c]);
    });
    socket.on('end', () => {
      peerEnded = true;
    });
    await t.close();
    const at = got.indexOf(0x88);
    assert.ok(at !== -1, 'no close frame');
    assert.equal(got.readUInt16BE(at + 2), 1001);
    await eventually('the peer to see the server end the connection', () => peerEnded, 500);
    socket.destroy();
  });
});

if (await requireServices('redis')) {
  describe('a broker carrying a malformed event', () => {
    let s: TestServer;
    const prefix = tempRedisPrefix();
    let redis: Redis;
    before(async () => {
      s = await startServer({ REDIS_URL, REDIS_PREFIX: prefix });
      await api(s.url, 'PUT', '/api/streams/garbage', {});
      redis = new Redis(REDIS_URL);
    });
    after(async () => {
      await s.close();
      await redis.quit();
    });

    it('ignores it, stays up, and keeps delivering', async () => {
      const viewer = await StreamClient.connect(s.wsUrl, 'garbage');
      const poster = await StreamClient.connect(s.wsUrl, 'garbage', {
        token: await userToken('1'),
      });
      await viewer.next('auth');
      await poster.next('auth');
      // The subscription is live once a chat comes back through Redis.
      for (let i = 0; viewer.rest().length === 0; i++) {
        assert.ok(i < 100, 'no chat came back through Redis');
        poster.chat(`first ${i}`);
        await sleep(50);
      }

      for (const bad of [
        'not json',
        'null',
        '{"kind":"chat"}',
        '{"kind":"chat","message":{"id":1}}',
        '{"kind":"chat","message":null}',
        '[]',
      ]) {
        await redis.publish(`${prefix}stream:garbage`, bad);
      }
      poster.chat('after');
      let next = await viewer.next();
      while (next.data.message?.startsWith('first')) next = await viewer.next();
      assert.equal(next.type, 'chat');
      assert.equal(next.data.message, 'after');
      assert.equal(viewer.rest().length, 0);
      viewer.close();
      poster.close();
    });
  });
}
