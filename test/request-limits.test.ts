/**
 * A request-chat client that stops reading costs the server a bounded amount
 * of memory: once what waits for it passes SEND_BUFFER_MAX_BYTES it is
 * disconnected, and the rest of the room carries on.
 *
 * The slow client speaks Engine.IO's long-polling protocol by hand, so that it
 * can stop polling, which a real client never does on purpose.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { io, type Socket } from 'socket.io-client';
import { api, startServer, type TestServer, userToken } from './helpers.js';

const REQUEST = '6751b6df1ad14eaa13a0bb01';
let server: TestServer;

before(async () => {
  server = await startServer({
    SEND_BUFFER_MAX_BYTES: '65536',
    REQUEST_RATE_LIMIT: '10000/1s',
    FLOOD_LIMIT: '10000',
  });
  assert.equal(
    (await api(server.url, 'PUT', `/api/requests/${REQUEST}`, { ownerId: 1 })).status,
    201,
  );
});

after(() => server.close());

/** One long-polling Engine.IO session, driven by hand. */
async function pollingSession(base: string, token: string) {
  const url = (sid?: string) =>
    `${base}/socket.io/?EIO=4&transport=polling${sid ? `&sid=${sid}` : ''}`;
  const open = await (await fetch(url())).text();
  const sid = JSON.parse(open.slice(1)).sid as string;
  const post = async (packet: string) => {
    const res = await fetch(url(sid), { method: 'POST', body: packet });
    assert.equal(await res.text(), 'ok');
  };
  const poll = async () => {
    const res = await fetch(url(sid));
    return { status: res.status, body: await res.text() };
  };
  await post(`40${JSON.stringify({ token })}`);
  assert.match((await poll()).body, /^40/, 'namespace connected');
  return { post, poll };
}

async function connected(token: string): Promise<Socket> {
  const socket = io(server.url, { auth: { token }, transports: ['websocket'] });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  return socket;
}

async function slowConsumerDisconnects(): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const m = /charla_disconnects_total\{reason="slow_consumer"\} (\d+)/.exec(text);
  return m ? Number(m[1]) : 0;
}

test('a socket that stops reading is disconnected once its buffer passes the limit', async () => {
  const slow = await pollingSession(server.url, await userToken('1', { role: 'TEACHER' }));
  await slow.post(`42${JSON.stringify(['joinRoom', { requestId: REQUEST }])}`);
  // Reads the roomHistory once, then never polls again.
  assert.match((await slow.poll()).body, /roomHistory/);

  const lab = await connected(await userToken('7', { role: 'LAB' }));
  const watcher = await connected(await userToken('8', { role: 'LAB' }));
  let seen = 0;
  watcher.on('message', () => {
    seen += 1;
  });
  for (const s of [lab, watcher]) {
    assert.equal((await s.emitWithAck('joinRoom', { requestId: REQUEST })).ok, true);
  }

  // 40 messages of 4,000 characters: well past 64 KiB waiting for the slow socket.
  const before = await slowConsumerDisconnects();
  for (let i = 0; i < 40; i++) {
    const ack = await lab.emitWithAck('message', {
      requestId: REQUEST,
      message: `${i} ${'x'.repeat(4_000)}`,
    });
    assert.equal(ack.ok, true);
  }
  const deadline = Date.now() + 5_000;
  while ((await slowConsumerDisconnects()) === before && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(await slowConsumerDisconnects(), before + 1, 'the slow socket was dropped');
  // Its session is gone: a late poll is refused.
  assert.equal((await slow.poll()).status, 400);

  // Everyone else carries on.
  assert.equal(seen, 40);
  assert.equal(lab.connected && watcher.connected, true);
  const ack = await lab.emitWithAck('message', { requestId: REQUEST, message: 'still here' });
  assert.equal(ack.ok, true);
  lab.close();
  watcher.close();
});
