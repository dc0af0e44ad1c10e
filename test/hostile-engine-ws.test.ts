/**
 * The WebSocket under the request chat's Engine.IO transport against hostile
 * peers (README "Security"): its control frames and the continuation frames
 * of its messages count toward FLOOD_LIMIT, the pongs it answers with are
 * held to SEND_BUFFER_MAX_BYTES like any other output, and an upgrade
 * Engine.IO refuses after the 101 (a second upgrade of one session) releases
 * its socket within 5 s even when the peer never answers the close. Raw TCP sockets, no token: none of this needs one.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { sleep } from './helpers.js';
import {
  assertRecovered,
  baselineOf,
  clientFrame,
  closedOf,
  disconnects,
  mb,
  Op,
  rawSocket,
  startWatched,
  upgradeRequest,
  type WatchedServer,
  waitFor,
  writeDrained,
} from './hostile.js';

/** An Engine.IO WebSocket on a raw socket, upgraded (101) and not yet read from. */
async function engineSocket(
  server: WatchedServer,
  query = '',
  opts: { allowHalfOpen?: boolean } = {},
): Promise<Socket> {
  const socket = await rawSocket(server, opts);
  socket.write(upgradeRequest(`/socket.io/?EIO=4&transport=websocket${query}`));
  const head = await waitFor(socket, '\r\n\r\n');
  assert.match(head, /^HTTP\/1\.1 101/);
  return socket;
}

/** Resolves once the server has ended or cut `socket` (its FIN or RST has arrived). */
function endedOf(socket: Socket): Promise<void> {
  if (socket.destroyed || socket.readableEnded) return Promise.resolve();
  return new Promise((resolve) => {
    socket.once('end', () => resolve());
    socket.once('close', () => resolve());
  });
}

describe('pings on the Engine.IO WebSocket count toward FLOOD_LIMIT', () => {
  let server: WatchedServer;
  const FLOOD = 50;

  before(async () => {
    server = await startWatched({ FLOOD_LIMIT: String(FLOOD) });
  });
  after(() => server.close());

  for (const [name, opcode] of [
    ['ping', Op.ping],
    ['pong', Op.pong],
  ] as const) {
    test(`a ${name} flood is closed as a flood`, async () => {
      const baseline = await baselineOf(server);
      const floods = await disconnects(server, 'flood');
      const socket = await engineSocket(server);
      const closed = closedOf(socket);
      socket.on('data', () => {});
      const one = clientFrame(opcode, 'x');
      socket.write(Buffer.concat(Array.from({ length: FLOOD * 4 }, () => one)));
      const cut = await Promise.race([closed.then(() => true), sleep(5_000).then(() => false)]);
      assert.ok(cut, `the connection is still open after ${FLOOD * 4} ${name} frames`);
      assert.equal(await disconnects(server, 'flood'), floods + 1);
      await assertRecovered(server, baseline);
    });
  }
  test('continuation frames count one by one, not one per message', async () => {
    const baseline = await baselineOf(server);
    const floods = await disconnects(server, 'flood');
    const socket = await engineSocket(server);
    const closed = closedOf(socket);
    socket.on('data', () => {});
    // A noop packet ("6") in 11 frames: its first, 9 empty continuations, an
    // empty last one. 30 of them are 30 packets, within FLOOD_LIMIT, in 330
    // frames, well past it; each message stays within MAX_FRAGMENTS.
    const message = Buffer.concat([
      clientFrame(Op.text, '6', { fin: false }),
      ...Array.from({ length: 9 }, () => clientFrame(Op.continuation, '', { fin: false })),
      clientFrame(Op.continuation, ''),
    ]);
    socket.write(Buffer.concat(Array.from({ length: 30 }, () => message)));
    const cut = await Promise.race([closed.then(() => true), sleep(5_000).then(() => false)]);
    assert.ok(cut, 'the connection is still open after 330 frames in 30 messages');
    assert.equal(await disconnects(server, 'flood'), floods + 1);
    await assertRecovered(server, baseline);
  });

  test('a fragmented message within FLOOD_LIMIT is taken', async () => {
    const socket = await engineSocket(server);
    let seen = '';
    socket.on('data', (chunk: Buffer) => {
      seen += chunk.toString('latin1');
    });
    // Socket.IO's CONNECT ("40") in 3 frames, counted as 3: answered (a
    // connect or a connect error, "40{…}" or "44{…}"), not cut.
    socket.write(
      Buffer.concat([
        clientFrame(Op.text, '4', { fin: false }),
        clientFrame(Op.continuation, '', { fin: false }),
        clientFrame(Op.continuation, '0'),
      ]),
    );
    const answered = () => /4[04]\{/.test(seen);
    const deadline = Date.now() + 5_000;
    while (!answered() && Date.now() < deadline) await sleep(20);
    assert.ok(answered(), `no answer to the fragmented CONNECT: ${JSON.stringify(seen)}`);
    assert.ok(!socket.destroyed);
    socket.destroy();
  });
});

describe('the Engine.IO WebSocket of a client that pings and never reads', () => {
  let server: WatchedServer;

  before(async () => {
    server = await startWatched({
      FLOOD_LIMIT: '100000000',
      SEND_BUFFER_MAX_BYTES: '65536',
    });
  });
  after(() => server.close());

  test('is dropped once its unread pongs pass SEND_BUFFER_MAX_BYTES; memory stays bounded', async () => {
    const baseline = await baselineOf(server);
    const slow = await disconnects(server, 'slow_consumer');
    const socket = await engineSocket(server);
    socket.pause();
    const ping = clientFrame(Op.ping, Buffer.alloc(125, 0x61));
    const chunk = Buffer.concat(Array.from({ length: 8_000 }, () => ping)); // ~1 MB of pings
    let sent = 0;
    let peak = server.rss();
    const deadline = Date.now() + 10_000;
    while (sent < 64 * 1024 * 1024 && Date.now() < deadline) {
      const written = await Promise.race([
        writeDrained(socket, chunk),
        sleep(1_000).then(() => true),
      ]);
      if (!written) break;
      sent += chunk.length;
      peak = Math.max(peak, server.rss());
      if ((await disconnects(server, 'slow_consumer')) > slow) break;
    }
    console.log(`# ${mb(sent)} of pings, RSS ${mb(baseline.rss)} -> peak ${mb(peak)}`);
    assert.equal(
      await disconnects(server, 'slow_consumer'),
      slow + 1,
      `not dropped after ${mb(sent)} of pings it never read the answers to`,
    );
    assert.ok(
      peak <= baseline.rss + 64 * 1024 * 1024,
      `RSS peaked at ${mb(peak)} (baseline ${mb(baseline.rss)})`,
    );
    socket.destroy();
    await assertRecovered(server, baseline);
  });
});

describe('an upgrade Engine.IO refuses after the 101', () => {
  let server: WatchedServer;

  before(async () => {
    server = await startWatched({});
  });
  after(() => server.close());

  test('releases its socket within 5 s while the peer keeps TCP open', async () => {
    const baseline = await baselineOf(server);
    const polling = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`);
    const sid = JSON.parse((await polling.text()).slice(1)).sid as string;
    // The first upgrade of the session is its probe; the next ones are refused
    // with a close frame, which these peers never answer.
    const probe = await engineSocket(server, `&sid=${sid}`, { allowHalfOpen: true });
    probe.on('data', () => {});
    const refused: Socket[] = [];
    for (let i = 0; i < 10; i++) {
      const s = await engineSocket(server, `&sid=${sid}`, { allowHalfOpen: true });
      s.on('data', () => {});
      refused.push(s);
    }
    const start = Date.now();
    const released = await Promise.race([
      Promise.all(refused.map(endedOf)).then(() => Date.now() - start),
      sleep(8_000).then(() => undefined),
    ]);
    try {
      assert.ok(released !== undefined && released <= 5_000, `released after ${released} ms`);
    } finally {
      probe.destroy();
      for (const s of refused) s.destroy();
    }
    await assertRecovered(server, baseline);
  });
});
