/**
 * The request chat's inbox (protocol section 8) against hostile peers, on a
 * charla process: a lab socket that never reads while `requestUpdated`
 * pours in (it joined no room: every message of every request reaches it),
 * and sockets reset in the middle of `joinRoom`, `listRequests` and
 * `loadHistory`. Raw TCP sockets speak Engine.IO over a hand-made WebSocket;
 * real socket.io-client sockets check that everyone else is unaffected.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { newId } from '../src/core/ids.js';
import { api, sleep, startServer, type TestServer, userToken } from './helpers.js';
import {
  assertRecovered,
  baselineOf,
  clientFrame,
  mb,
  metricValue,
  Op,
  rawSocket,
  reset,
  startWatched,
  upgradeRequest,
  type WatchedServer,
  waitFor,
} from './hostile.js';
import { RequestClient } from './request-client.js';

const LAB = { role: 'LAB' };

/** A Socket.IO connection on a raw socket, joined to `/` with `token`. */
async function rawChat(server: WatchedServer, token: string): Promise<Socket> {
  const socket = await rawSocket(server);
  socket.write(upgradeRequest('/socket.io/?EIO=4&transport=websocket'));
  await waitFor(socket, '0{');
  socket.write(clientFrame(Op.text, `40${JSON.stringify({ token })}`));
  await waitFor(socket, '40{');
  return socket;
}

const sendEvent = (socket: Socket, ackId: number, event: string, payload: unknown) =>
  socket.write(clientFrame(Op.text, `42${ackId}${JSON.stringify([event, payload])}`));

const metric = (s: WatchedServer, sample: string) => metricValue(s.url, sample);

describe('the request inbox against hostile peers', () => {
  let s: WatchedServer;
  const SEND_BUFFER = 256 * 1024;

  before(async () => {
    s = await startWatched({
      SEND_BUFFER_MAX_BYTES: String(SEND_BUFFER),
      FLOOD_LIMIT: '1000000',
      REQUEST_RATE_LIMIT: '100000/1s',
      // Every update leaves as it happens, so the attacker's backlog grows
      // with each message; coalescing busy requests would only slow that down.
      REQUEST_UPDATE_FLUSH_MS: '0',
    });
    // SQLite opens some of its files lazily: let that happen before any baseline.
    const requestId = newId();
    await api(s.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' });
    const lab = await RequestClient.connect(s.url, await userToken('7', LAB));
    await lab.ask('joinRoom', { requestId });
    await lab.ask('message', { requestId, message: 'warm-up' });
    lab.close();
    await sleep(500);
  });
  after(() => s.close());

  test('a lab socket that never reads its inbox updates is dropped; memory stays bounded', async () => {
    const requestIds = Array.from({ length: 5 }, () => newId());
    for (const id of requestIds) {
      assert.equal((await api(s.url, 'PUT', `/api/requests/${id}`, { ownerId: '1' })).status, 201);
    }
    const sender = await RequestClient.connect(s.url, await userToken('8', LAB));
    for (const requestId of requestIds) await sender.ask('joinRoom', { requestId });
    const reader = await RequestClient.connect(s.url, await userToken('9', LAB));
    const baseline = await baselineOf(s);
    const drops = await metric(s, 'charla_disconnects_total{reason="slow_consumer"}');
    const attacker = await rawChat(s, await userToken('66', LAB));
    // From here on it reads nothing: the kernel's buffers fill, then the server's.
    attacker.pause();

    let peak = s.rss();
    const sampler = setInterval(() => {
      peak = Math.max(peak, s.rss());
    }, 20);
    // Control characters are escaped as \u00XX in JSON: each update carries ~30 KB.
    const long = '\u0001'.repeat(4_990);
    let sent = 0;
    let last = '';
    try {
      while (sent < 2_000) {
        last = `${sent} ${long}`;
        const message = last;
        const batch = requestIds.map((requestId) => sender.ask('message', { requestId, message }));
        for (const ack of await Promise.all(batch)) assert.equal(ack.ok, true);
        sent += batch.length;
        if ((await metric(s, 'charla_disconnects_total{reason="slow_consumer"}')) > drops) break;
      }
    } finally {
      clearInterval(sampler);
    }
    console.log(
      `never-reading lab socket: dropped after ${sent} updates of ~30 KB; ` +
        `server RSS ${mb(baseline.rss)} -> peak ${mb(peak)}`,
    );
    assert.ok(sent < 2_000, 'the attacker was dropped as a slow consumer');
    assert.equal(await metric(s, 'charla_disconnects_total{reason="slow_consumer"}'), drops + 1);
    assert.ok(peak - baseline.rss < 96 * 1024 * 1024, `RSS grew by ${mb(peak - baseline.rss)}`);
    await assertRecovered(s, baseline, { fdSlack: 1 });
    // The reader kept getting every update.
    await reader.next('requestUpdated', (u) => u.lastMessage?.message === last, 10_000);
    attacker.destroy();
    sender.close();
    reader.close();
  });

  test('sockets reset in the middle of joinRoom, listRequests and loadHistory leave nothing', async () => {
    const requestId = newId();
    assert.equal(
      (await api(s.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' })).status,
      201,
    );
    const lab = await RequestClient.connect(s.url, await userToken('7', LAB));
    await lab.ask('joinRoom', { requestId });
    for (let i = 0; i < 300; i++) {
      assert.equal((await lab.ask('message', { requestId, message: `m${i}` })).ok, true);
    }
    const baseline = await baselineOf(s);
    const connected = await metric(s, 'charla_connections{chat="request"}');
    const token = await userToken('70', LAB);
    for (let round = 0; round < 60; round++) {
      const socket = await rawChat(s, token);
      sendEvent(socket, 1, 'joinRoom', { requestId });
      sendEvent(socket, 2, 'listRequests', { limit: 500 });
      sendEvent(socket, 3, 'loadHistory', { requestId, limit: 500 });
      // Reset at a different point of the work each round.
      if (round % 3 > 0) await sleep(round % 3);
      reset(socket);
    }
    const deadline = Date.now() + 5_000;
    while ((await metric(s, 'charla_connections{chat="request"}')) !== connected) {
      assert.ok(Date.now() < deadline, 'the reset connections are still counted');
      await sleep(50);
    }
    await assertRecovered(s, baseline, { fdSlack: 1 });
    // Everyone else is served as before.
    const other = await RequestClient.connect(s.url, await userToken('71', LAB));
    await other.ask('joinRoom', { requestId });
    const sent = await lab.ask('message', { requestId, message: 'after the resets' });
    assert.equal(sent.ok, true);
    await other.next('message', (m) => m.message === 'after the resets');
    const page = await lab.ask('listRequests', { limit: 5 });
    assert.equal(page.ok, true);
    lab.close();
    other.close();
  });
});

describe('section 8 events count toward FLOOD_LIMIT', () => {
  let t: TestServer;
  const FLOOD = 30;

  before(async () => {
    t = await startServer({ FLOOD_LIMIT: String(FLOOD) });
  });
  after(() => t.close());

  for (const event of ['typing', 'listRequests', 'editMessage', 'deleteMessage']) {
    test(`a flood of ${event} disconnects the socket, not the room`, async () => {
      const requestId = newId();
      await api(t.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' });
      const flooder = await RequestClient.connect(t.url, await userToken('7', LAB));
      const other = await RequestClient.connect(t.url, await userToken('8', LAB));
      for (const c of [flooder, other]) await c.ask('joinRoom', { requestId });
      const payload = { requestId, messageId: newId(), message: 'x' };
      const gone = flooder.disconnected();
      for (let i = 0; i <= FLOOD; i++) flooder.socket.emit(event, payload);
      assert.equal(await gone, 'io server disconnect');
      const sent = await other.ask('message', { requestId, message: 'unaffected' });
      assert.equal(sent.ok, true);
      other.close();
    });
  }
});
