/**
 * How the request chat's packets reach the wire (src/transport/request-wire.ts):
 * what one event-loop turn sends a WebSocket client leaves in one TCP write,
 * in the order it was emitted, and a client that stops reading is still cut
 * at SEND_BUFFER_MAX_BYTES. Writes are counted on the server's own TCP socket
 * for the connection.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { newId } from '../src/core/ids.js';
import { api, sleep, startServer, type TestServer, userToken } from './helpers.js';
import { metricValue } from './hostile.js';
import { RequestClient, settle } from './request-client.js';

const TEACHER = { username: 'ana', role: 'TEACHER' };
const LAB = { username: 'lab', role: 'LAB' };
const SEND_BUFFER = 64 * 1024;

async function register(server: TestServer): Promise<string> {
  const id = newId();
  const res = await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId: 1 });
  assert.equal(res.status, 201);
  return id;
}

const slowConsumerDrops = (server: TestServer) =>
  metricValue(server.url, 'charla_disconnects_total{reason="slow_consumer"}');

/** The client's own TCP socket, under socket.io-client's WebSocket. */
function clientTcp(c: RequestClient): Socket {
  const tcp = (c.socket.io.engine as any).transport.ws._socket as Socket;
  assert.ok(tcp && typeof tcp.localPort === 'number', 'a WebSocket transport');
  return tcp;
}

describe('request chat on the wire', () => {
  let server: TestServer;
  /** Every TCP connection the server accepted, by the client's port. */
  const accepted = new Map<number, Socket>();
  const clients: RequestClient[] = [];

  before(async () => {
    server = await startServer({
      SEND_BUFFER_MAX_BYTES: String(SEND_BUFFER),
      REQUEST_RATE_LIMIT: '100000/1s',
      FLOOD_LIMIT: '100000',
      REQUEST_MESSAGE_MAX_CHARS: '2000',
      MAX_FRAME_BYTES: '65536',
    });
    server.app.server.on('connection', (sock: Socket) => {
      if (sock.remotePort !== undefined) accepted.set(sock.remotePort, sock);
    });
  });
  after(async () => {
    for (const c of clients) c.close();
    await server.close();
  });

  async function connect(token: string) {
    const c = await RequestClient.connect(server.url, token);
    clients.push(c);
    const sock = accepted.get(clientTcp(c).localPort as number);
    assert.ok(sock, "the server's socket for the connection");
    return { c, sock: sock as Socket };
  }

  /** Counts the writes the server's socket hands the kernel (one per write or writev). */
  function countWrites(sock: Socket): { n: number } {
    const count = { n: 0 };
    const s = sock as any;
    const write = s._writeGeneric;
    s._writeGeneric = function (...args: unknown[]) {
      count.n++;
      return write.apply(this, args);
    };
    return count;
  }

  test('the roomHistory and the joinRoom acknowledgement of one turn leave in one write', async () => {
    const requestId = await register(server);
    const lab = await connect(await userToken('7', LAB));
    assert.equal((await lab.c.ask('joinRoom', { requestId })).ok, true);
    for (let i = 0; i < 3; i++) {
      const ack = await lab.c.ask('message', { requestId, message: `before ${i}` });
      assert.equal(ack.ok, true);
    }
    // The owner's inbox updates for those go out on a timer (REQUEST_UPDATE_FLUSH_MS):
    // they are out of the way before the owner connects.
    await settle(400);
    const teacher = await connect(await userToken('1', TEACHER));
    await settle(50);
    const writes = countWrites(teacher.sock);
    const ack = await teacher.c.ask('joinRoom', { requestId });
    assert.deepEqual(ack, { ok: true, requestId });
    // Anything held back for a later turn would have gone out by now.
    await settle(100);
    assert.equal(writes.n, 1, 'one TCP write for the history and the acknowledgement');
    const history = teacher.c.events.filter(([e]) => e === 'roomHistory');
    assert.equal(history.length, 1);
    assert.deepEqual(history[0]?.[1].messages.map((m: { message: string }) => m.message).sort(), [
      'before 0',
      'before 1',
      'before 2',
    ]);
  });

  test('acknowledgements and room deliveries keep their order', async () => {
    const requestId = await register(server);
    const lab = await connect(await userToken('7', LAB));
    const teacher = await connect(await userToken('1', TEACHER));
    for (const { c } of [lab, teacher]) {
      assert.equal((await c.ask('joinRoom', { requestId })).ok, true);
    }
    const N = 60;
    const acked: number[] = [];
    // All emitted in one go: the server commits them in groups and answers
    // each group in one turn.
    const acks = Array.from({ length: N }, (_, i) =>
      lab.c.ask('message', { requestId, message: `m${i}`, clientMessageId: `c${i}` }).then((a) => {
        assert.equal(a.ok, true);
        acked.push(i);
        return a;
      }),
    );
    const answers = await Promise.all(acks);
    assert.deepEqual(
      acked,
      Array.from({ length: N }, (_, i) => i),
      'acknowledgements in the order of the messages',
    );
    for (let i = 0; i < 50 && teacher.c.events.filter(([e]) => e === 'message').length < N; i++) {
      await sleep(20);
    }
    const delivered = teacher.c.events.filter(([e]) => e === 'message').map(([, m]) => m);
    assert.deepEqual(
      delivered.map((m) => m.message),
      Array.from({ length: N }, (_, i) => `m${i}`),
      'room deliveries in the order of the messages',
    );
    assert.deepEqual(
      delivered.map((m) => m._id),
      answers.map((a) => a.message._id),
    );
  });

  test('a WebSocket client that stops reading is cut at SEND_BUFFER_MAX_BYTES', async () => {
    const requestId = await register(server);
    const lab = await connect(await userToken('7', LAB));
    const reader = await connect(await userToken('1', TEACHER));
    const slow = await connect(await userToken('1', TEACHER));
    for (const { c } of [lab, reader, slow]) {
      assert.equal((await c.ask('joinRoom', { requestId })).ok, true);
    }
    const dropsBefore = await slowConsumerDrops(server);
    // From here on it reads nothing: the kernel buffers fill, then the server's.
    clientTcp(slow.c).pause();
    let peak = 0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, slow.sock.writableLength);
    }, 1);
    // Control characters are escaped as \u00XX in JSON: six bytes each on the wire.
    const long = '\u0001'.repeat(1_990);
    const frameBytes = Buffer.byteLength(JSON.stringify(long));
    let sent = 0;
    try {
      while (!slow.sock.destroyed && sent < 2_000) {
        const batch = Array.from({ length: 10 }, (_, j) =>
          lab.c.ask('message', { requestId, message: `${sent + j} ${long}` }),
        );
        for (const a of await Promise.all(batch)) assert.equal(a.ok, true);
        sent += batch.length;
      }
    } finally {
      clearInterval(sampler);
    }
    assert.ok(slow.sock.destroyed, `the slow client was cut after ${sent} messages`);
    console.log(`slow client cut after ${sent} messages; at most ${peak} bytes waited`);
    assert.equal(await slowConsumerDrops(server), dropsBefore + 1);
    // What waited in the socket never passed the bound by more than the turn
    // that found it over (one group commit of ten deliveries at most).
    assert.ok(
      peak <= SEND_BUFFER + 10 * (frameBytes + 64),
      `${peak} bytes waited in the socket (bound ${SEND_BUFFER})`,
    );
    // The room carries on for the client that reads.
    const live = await lab.c.ask('message', { requestId, message: 'after the cut' });
    assert.equal(live.ok, true);
    for (let i = 0; i < 100; i++) {
      if (reader.c.events.some(([e, m]) => e === 'message' && m.message === 'after the cut')) break;
      await sleep(20);
    }
    const got = reader.c.events.filter(([e]) => e === 'message');
    assert.equal(got.length, sent + 1, 'the reader got every message');
  });
});
