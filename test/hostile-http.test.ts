/**
 * Hostile HTTP peers against a real charla process (README "Security"):
 * malformed request targets and headers, slowloris on headers, upgrades and
 * bodies, and resets. After each attack the process must be alive, answer
 * `/healthz`, and give its file descriptors back.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { API_KEY, api, StreamClient, sleep, userToken } from './helpers.js';
import {
  assertRecovered,
  baselineOf,
  mb,
  rawSocket,
  readAll,
  reset,
  startWatched,
  upgradeRequest,
  type WatchedServer,
  waitFor,
} from './hostile.js';
import { RequestClient } from './request-client.js';

/** HANDSHAKE_TIMEOUT_SECONDS in this suite: every slow peer must be gone well within CUT_MS. */
const HANDSHAKE_S = 1;
const CUT_MS = 4_000;
const REQUEST_ID = '6751b6df1ad14eaa13a0ee01';

let s: WatchedServer;
let baseline: { fds: number; rss: number };

before(async () => {
  // `listening` is an info line, and spawnServer waits for it.
  s = await startWatched({ LOG_LEVEL: 'info', HANDSHAKE_TIMEOUT_SECONDS: String(HANDSHAKE_S) });
  await api(s.url, 'PUT', '/api/streams/open', {});
  await api(s.url, 'PUT', `/api/requests/${REQUEST_ID}`, { ownerId: '1' });
  baseline = await baselineOf(s);
});
after(() => s.close());

interface Reply {
  status: number;
  headers: string;
  body: string;
}

function parseReply(raw: Buffer): Reply {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const head = end === -1 ? text : text.slice(0, end);
  return {
    status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0),
    headers: head.toLowerCase(),
    body: end === -1 ? '' : text.slice(end + 4),
  };
}

/** Writes `request` byte for byte on a new connection and reads until the server closes. */
async function exchange(request: string | Buffer): Promise<Reply> {
  const socket = await rawSocket(s);
  socket.write(request);
  return parseReply(await readAll(socket));
}

const get = (target: string, method = 'GET') =>
  `${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`;

/** Alive, answering others, descriptors back near the baseline, no error logged. */
async function assertUnharmed(): Promise<void> {
  await assertRecovered(s, baseline);
  const health = await api(s.url, 'GET', '/healthz', undefined, null);
  assert.deepEqual(health, { status: 200, body: { status: 'ok' } });
  const errors = s
    .output()
    .split('\n')
    .filter((line) => /"level":(50|60)/.test(line));
  assert.deepEqual(errors, [], 'a hostile peer is not a server error');
}

/** Resolves with the milliseconds until the server closes `socket` (fails after CUT_MS). */
function closedWithin(socket: Socket, since: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`still open after ${CUT_MS} ms`)), CUT_MS);
    socket.once('close', () => {
      clearTimeout(t);
      resolve(Date.now() - since);
    });
  });
}

describe('malformed request targets', () => {
  it('answer 400 invalid_payload and the process keeps serving', async () => {
    const targets = [
      '//',
      '/\\',
      '///',
      '//%zz/',
      '//healthz',
      '/%zz',
      '/healthz?x=%',
      '/api/streams/open/messages?before=%E0%A4%A',
      '/healthz#frag',
      'http://x//',
      'http://x/\\',
    ];
    for (const target of targets) {
      const reply = await exchange(get(target));
      assert.equal(reply.status, 400, `${target}: ${reply.headers}`);
      assert.equal(JSON.parse(reply.body).error_code, 'invalid_payload', target);
      assert.ok(s.alive(), `the server exited on ${target}:\n${s.output().slice(-2000)}`);
    }
    await assertUnharmed();
  });

  it('the static files refuse them too (the API answers)', async () => {
    for (const target of ['//index.html', '/\\index.html', '//%zz/app.js']) {
      assert.equal((await exchange(get(target))).status, 400, target);
    }
    await assertUnharmed();
  });

  it('absolute-form targets are routed by their path; OPTIONS * is answered', async () => {
    const health = await exchange(get('http://elsewhere.example/healthz'));
    assert.equal(health.status, 200);
    assert.deepEqual(JSON.parse(health.body), { status: 'ok' });
    const put = await exchange(
      `PUT http://x/api/streams/absolute HTTP/1.1\r\nHost: x\r\nX-API-Key: ${API_KEY}\r\n` +
        'Content-Length: 2\r\nConnection: close\r\n\r\n{}',
    );
    assert.equal(put.status, 201);
    assert.equal((await exchange(get('*', 'OPTIONS'))).status, 204);
    const star = await exchange(get('*'));
    assert.equal(star.status, 400);
    assert.equal(JSON.parse(star.body).error_code, 'invalid_payload');
    await assertUnharmed();
  });
});

describe('malformed and hostile headers', () => {
  it('are refused by status, with nothing stored', async () => {
    const head = (lines: string) =>
      `PUT /api/streams/hdr HTTP/1.1\r\nHost: x\r\n${lines}Connection: close\r\n\r\n`;
    const cases: Array<[string, string, number]> = [
      ['a space in a header name', head(`Bad Header: 1\r\nX-API-Key: ${API_KEY}\r\n`), 400],
      ['a line without a colon', head(`garbage\r\nX-API-Key: ${API_KEY}\r\n`), 400],
      ['a bare CR in a value', head(`X-API-Key: ${API_KEY}\rX: y\r\n`), 400],
      [
        'two different Content-Lengths',
        head(`X-API-Key: ${API_KEY}\r\nContent-Length: 2\r\nContent-Length: 3\r\n`),
        400,
      ],
      [
        'Content-Length next to chunked',
        head(`X-API-Key: ${API_KEY}\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n`),
        400,
      ],
      ['the key sent twice', head(`X-API-Key: ${API_KEY}\r\nX-API-Key: ${API_KEY}\r\n`), 401],
      ['a 12 KB key', head(`X-API-Key: ${'k'.repeat(12 * 1024)}\r\n`), 401],
      ['a 64 KB key', head(`X-API-Key: ${'k'.repeat(64 * 1024)}\r\n`), 431],
      ['a key of non-ASCII bytes', head('X-API-Key: \xff\xfe\r\n'), 401],
    ];
    for (const [what, request, status] of cases) {
      const reply = await exchange(Buffer.from(request, 'latin1'));
      assert.equal(reply.status, status, `${what}: ${reply.headers}`);
    }
    const stored = await api(s.url, 'GET', '/api/streams/hdr/messages');
    assert.equal(stored.status, 404, 'no request reached the store');
    await assertUnharmed();
  });
});

describe('slow peers', () => {
  it('headers that trickle in are cut within the handshake time (408)', async () => {
    const socket = await rawSocket(s);
    const since = Date.now();
    socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    // One header every 200 ms: each byte resets an idle timeout, not this one.
    const drip = setInterval(() => socket.write('X-Drip: 1\r\n'), 200);
    const received = readAll(socket, CUT_MS + 1_000);
    try {
      await closedWithin(socket, since);
    } finally {
      clearInterval(drip);
    }
    assert.equal(parseReply(await received).status, 408);
    await assertUnharmed();
  });

  it('an upgrade whose headers never finish is cut the same way', async () => {
    const socket = await rawSocket(s);
    const since = Date.now();
    socket.write('GET /ws/streams/open/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n');
    const received = readAll(socket, CUT_MS + 1_000);
    await closedWithin(socket, since);
    assert.equal(parseReply(await received).status, 408);
    await assertUnharmed();
  });

  it('a body that trickles in is cut, and nothing is stored', async () => {
    const socket = await rawSocket(s);
    const since = Date.now();
    socket.write(
      `PUT /api/streams/slowbody HTTP/1.1\r\nHost: x\r\nX-API-Key: ${API_KEY}\r\n` +
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{',
    );
    const drip = setInterval(() => socket.write(' '), 200);
    const received = readAll(socket, CUT_MS + 1_000);
    try {
      await closedWithin(socket, since);
    } finally {
      clearInterval(drip);
    }
    assert.equal(parseReply(await received).status, 408);
    assert.equal((await api(s.url, 'GET', '/api/streams/slowbody/messages')).status, 404);
    await assertUnharmed();
  });

  it('connections past their handshake are not cut: a WebSocket and a Socket.IO long-poll', async () => {
    const stream = await StreamClient.connect(s.wsUrl, 'open', { token: await userToken('7') });
    await stream.next('auth');
    const poll = await RequestClient.connect(s.url, await userToken('1', { role: 'TEACHER' }), {
      transports: ['polling'],
    });
    // Longer than the handshake time, and than one long-poll.
    await sleep(HANDSHAKE_S * 1000 * 2.5);
    stream.chat('still here');
    assert.equal((await stream.next('chat')).data.message, 'still here');
    assert.equal((await poll.ask('joinRoom', { requestId: REQUEST_ID })).ok, true);
    assert.equal(poll.socket.connected, true);
    stream.close();
    poll.close();
    await stream.closed;
    await assertUnharmed();
  });
});

describe('a client that never reads its answers', () => {
  const RESPONSE_S = 2;
  const BIG = '6751b6df1ad14eaa13a0ee77';
  const PAGE = `/api/requests/${BIG}/messages?limit=500`;
  const pageRequest = `GET ${PAGE} HTTP/1.1\r\nHost: x\r\nX-API-Key: ${API_KEY}\r\n\r\n`;
  let reader: WatchedServer;

  // The default handshake time (10 s), well past this test: only
  // HTTP_RESPONSE_TIMEOUT_SECONDS can cut the connection here.
  before(async () => {
    reader = await startWatched({
      HTTP_RESPONSE_TIMEOUT_SECONDS: String(RESPONSE_S),
      REQUEST_RATE_LIMIT: '100000/1s',
      FLOOD_LIMIT: '100000',
    });
    // A request whose history page (200 messages of 5,000 characters) is about 1 MB.
    assert.equal(
      (await api(reader.url, 'PUT', `/api/requests/${BIG}`, { ownerId: '1' })).status,
      201,
    );
    const lab = await RequestClient.connect(reader.url, await userToken('9', { role: 'LAB' }));
    assert.equal((await lab.ask('joinRoom', { requestId: BIG })).ok, true);
    for (let i = 0; i < 200; i++) {
      const text = `${i} ${'x'.repeat(4_990)}`;
      assert.equal((await lab.ask('message', { requestId: BIG, message: text })).ok, true);
    }
    lab.close();
  });
  after(() => reader.close());

  it('has its pipelined requests answered one at a time: the server holds one answer, not all', async () => {
    assert.equal((await api(reader.url, 'GET', PAGE)).status, 200);
    const before = await baselineOf(reader);
    const socket = await rawSocket(reader);
    socket.pause();
    socket.write(pageRequest.repeat(30));
    await sleep(1_000);
    const grown = reader.rss() - before.rss;
    socket.resetAndDestroy();
    // 30 pages built at once would be 30 MB and more.
    assert.ok(grown < 20 * 1024 * 1024, `RSS grew by ${mb(grown)} for one connection`);
    await assertRecovered(reader, before, { fdSlack: 1 });
  });

  it('is cut when it has more than 32 requests waiting for their turn', async () => {
    const socket = await rawSocket(reader);
    socket.pause();
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.write(
      get('/api/openapi.json').replace('Connection: close', 'Connection: keep-alive').repeat(100),
    );
    // The server's reset reaches a peer that does not read only once it writes.
    await sleep(500);
    socket.resume();
    socket.on('data', () => {});
    await Promise.race([closed, sleep(5_000).then(() => assert.fail('still open'))]);
  });

  it('is cut HTTP_RESPONSE_TIMEOUT_SECONDS after the answer it does not take', async () => {
    // What the first answers open for good comes before the baseline.
    assert.equal((await api(reader.url, 'GET', PAGE)).status, 200);
    const before = await baselineOf(reader);
    const socket = await rawSocket(reader);
    socket.pause();
    // More answers (1 MB each) than the socket buffers hold: the server is
    // left with one it cannot write, and answers no further request meanwhile.
    socket.write(pageRequest.repeat(12));
    await sleep(RESPONSE_S * 1000 - 500);
    assert.ok(reader.fds() > before.fds, 'cut before HTTP_RESPONSE_TIMEOUT_SECONDS');
    // The peer, never reading, does not see the cut: the server's descriptors tell.
    await assertRecovered(reader, before, { fdSlack: 0, ms: 3_000 });
    socket.destroy();
  });

  it('is not cut while its request is still coming in (within the handshake time)', async () => {
    const socket = await rawSocket(reader);
    const body = '{"title":"slow"}';
    socket.write(
      `PUT /api/streams/trickled HTTP/1.1\r\nHost: x\r\nX-API-Key: ${API_KEY}\r\n` +
        `Content-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
    );
    // The body takes longer than HTTP_RESPONSE_TIMEOUT_SECONDS to arrive.
    for (const ch of body) {
      socket.write(ch);
      await sleep(((RESPONSE_S + 1) * 1000) / body.length);
    }
    const reply = parseReply(await readAll(socket, 5_000));
    assert.equal(reply.status, 201, reply.headers);
  });
});

describe('unfinished handshakes are gone within HANDSHAKE_TIMEOUT_SECONDS', () => {
  const HANDSHAKE_MS = 4_000;
  /** How late after the handshake time a cut may still come: scheduling only. */
  const LATE_MS = 250;
  let server: WatchedServer;

  before(async () => {
    server = await startWatched({ HANDSHAKE_TIMEOUT_SECONDS: String(HANDSHAKE_MS / 1000) });
  });
  after(() => server.close());

  /** Milliseconds from the connection's opening until the server closed it. */
  async function cutAfter(send: string, opts: { waitFor?: string } = {}): Promise<number> {
    // Half-open allowed: the peer never closes its side, even after the server's FIN.
    const socket = await rawSocket(server, { allowHalfOpen: true });
    const since = Date.now();
    const closed = new Promise<number>((resolve) => {
      socket.once('end', () => resolve(Date.now() - since));
      socket.once('close', () => resolve(Date.now() - since));
    });
    socket.write(send);
    if (opts.waitFor !== undefined) await waitFor(socket, opts.waitFor);
    // Read whatever comes, answer nothing (not even a close frame).
    socket.on('data', () => {});
    const took = await Promise.race([closed, sleep(HANDSHAKE_MS + 5_000).then(() => -1)]);
    socket.destroy();
    return took;
  }

  it('a connection that sends nothing, or headers that never end', async () => {
    const [nothing, partial] = await Promise.all([
      cutAfter(''),
      cutAfter('GET /ws/streams/open/ HTTP/1.1\r\nHost: x\r\n'),
    ]);
    for (const [name, took] of [
      ['nothing', nothing],
      ['partial headers', partial],
    ] as const) {
      assert.ok(took > 0, `${name}: still open`);
      assert.ok(took <= HANDSHAKE_MS + LATE_MS, `${name}: cut after ${took} ms`);
      assert.ok(took >= HANDSHAKE_MS / 2, `${name}: cut after ${took} ms, long before its time`);
    }
  });

  it('a Socket.IO WebSocket that never joins, and ignores the close', async () => {
    const took = await cutAfter(upgradeRequest('/socket.io/?EIO=4&transport=websocket'), {
      waitFor: '\r\n\r\n',
    });
    assert.ok(took > 0, 'still open');
    assert.ok(took <= HANDSHAKE_MS + LATE_MS, `cut after ${took} ms`);
    assert.ok(took >= HANDSHAKE_MS / 2, `cut after ${took} ms, long before its time`);
  });
});

describe('resets', () => {
  it('a reset right after a request, or in its headers or body, costs nothing', async () => {
    const body = '{"title":"reset"}';
    const whole =
      `PUT /api/streams/reset HTTP/1.1\r\nHost: x\r\nX-API-Key: ${API_KEY}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    const cuts = [
      whole,
      whole.slice(0, whole.indexOf('\r\n\r\n')),
      whole.slice(0, whole.length - 5),
      get('//'),
      get('/healthz'),
    ];
    for (let round = 0; round < 10; round++) {
      for (const part of cuts) {
        const socket = await rawSocket(s);
        socket.write(part);
        reset(socket);
      }
    }
    // A request the server surely read: the ones before it have been handled too.
    const barrier = await rawSocket(s);
    barrier.write(get('/healthz'));
    await waitFor(barrier, '"status":"ok"');
    barrier.destroy();
    await assertUnharmed();
  });
});
