/**
 * The request chat against hostile and dead peers (README "Security"): a
 * socket that asks for history and never reads it, packet floods that are not
 * events, silent clients, handshakes never finished, an owner change that
 * must take the old owner out of the room on every node, and a join that
 * fails half-way. Raw TCP sockets speak Engine.IO over a hand-made WebSocket
 * where a real client would not misbehave; real socket.io-client sockets
 * check that everyone else is unaffected.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { newId } from '../src/core/ids.js';
import {
  API_KEY,
  api,
  type ChildServer,
  SECRET,
  sleep,
  spawnServers,
  startServer,
  type TestServer,
  userToken,
} from './helpers.js';
import {
  assertRecovered,
  baselineOf,
  clientFrame,
  disconnects,
  eventually,
  mb,
  Op,
  rawSocket,
  startWatched,
  upgradeRequest,
  type WatchedServer,
} from './hostile.js';
import { RequestClient } from './request-client.js';
import { PG_URL, REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';

const TEACHER = { username: 'ana', role: 'TEACHER' };
const LAB = { username: 'lab', role: 'LAB' };

interface ServerFrame {
  opcode: number;
  text: string;
  at: number;
}

/**
 * A request-chat client on a raw TCP socket: it upgrades to Engine.IO's
 * WebSocket transport itself and records the server's (unmasked) frames.
 */
class RawChat {
  readonly frames: ServerFrame[] = [];
  /** When the server's close frame or the end of the connection arrived. */
  endedAt: number | undefined;
  private head = '';
  private upgraded = false;
  private buf: Buffer = Buffer.alloc(0);

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.once('close', () => {
      this.endedAt ??= Date.now();
    });
  }

  static async open(server: { host: string; port: number }, token?: string): Promise<RawChat> {
    const chat = new RawChat(await rawSocket(server));
    chat.socket.write(upgradeRequest('/socket.io/?EIO=4&transport=websocket'));
    await chat.until((f) => f.text.startsWith('0{'), 'the Engine.IO open packet');
    if (token !== undefined) {
      chat.send(`40${JSON.stringify({ token })}`);
      await chat.until((f) => f.text.startsWith('40{'), 'the namespace connect');
    }
    return chat;
  }

  send(text: string): void {
    if (this.socket.writable) this.socket.write(clientFrame(Op.text, text));
  }

  /** The first frame matching `pred` (or rejects after `ms`). */
  async until(pred: (f: ServerFrame) => boolean, what: string, ms = 5_000): Promise<ServerFrame> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.frames.find(pred);
      if (found) return found;
      if (Date.now() > deadline || this.endedAt !== undefined) {
        throw new Error(`no ${what}; got ${JSON.stringify(this.frames.map((f) => f.text))}`);
      }
      await sleep(10);
    }
  }

  /** Resolves with the time the connection was ended by the server, or rejects after `ms`. */
  async ended(ms: number): Promise<number> {
    const deadline = Date.now() + ms;
    while (this.endedAt === undefined) {
      if (Date.now() > deadline) throw new Error(`still open after ${ms} ms`);
      await sleep(10);
    }
    return this.endedAt;
  }

  private onData(chunk: Buffer): void {
    if (!this.upgraded) {
      this.head += chunk.toString('latin1');
      const end = this.head.indexOf('\r\n\r\n');
      if (end < 0) return;
      assert.match(this.head, /^HTTP\/1\.1 101/);
      this.upgraded = true;
      chunk = Buffer.from(this.head.slice(end + 4), 'latin1');
    }
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    while (this.buf.length >= 2) {
      let len = (this.buf[1] as number) & 0x7f;
      let offset = 2;
      if (len === 126) {
        if (this.buf.length < 4) return;
        len = this.buf.readUInt16BE(2);
        offset = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) return;
        len = Number(this.buf.readBigUInt64BE(2));
        offset = 10;
      }
      if (this.buf.length < offset + len) return;
      const opcode = (this.buf[0] as number) & 0x0f;
      const text = this.buf.subarray(offset, offset + len).toString();
      this.frames.push({ opcode, text, at: Date.now() });
      if (opcode === Op.close) this.endedAt ??= Date.now();
      this.buf = this.buf.subarray(offset + len);
    }
  }
}

async function register(base: string, ownerId: string): Promise<string> {
  const id = newId();
  assert.equal((await api(base, 'PUT', `/api/requests/${id}`, { ownerId })).status, 201);
  return id;
}

async function joined(url: string, token: string, ...requestIds: string[]) {
  const c = await RequestClient.connect(url, token);
  for (const requestId of requestIds) {
    assert.deepEqual(await c.ask('joinRoom', { requestId }), { ok: true, requestId });
  }
  return c;
}

describe('a socket that asks for history and never reads', () => {
  let server: WatchedServer;
  const SEND_BUFFER = 256 * 1024;
  const MESSAGES = 500;

  before(async () => {
    server = await startWatched({
      // spawnServer waits for the `listening` line, which is logged at info.
      LOG_LEVEL: 'info',
      SEND_BUFFER_MAX_BYTES: String(SEND_BUFFER),
      // The attack must meet the send-buffer bound, not the flood or rate limits.
      FLOOD_LIMIT: '1000000',
      REQUEST_RATE_LIMIT: '100000/1s',
    });
  });
  after(() => server.close());

  test('is dropped before its answers cost memory; the room carries on', async () => {
    const requestId = await register(server.url, '1');
    const lab = await joined(server.url, await userToken('7', LAB), requestId);
    const teacher = await joined(server.url, await userToken('1', TEACHER), requestId);
    // Control characters are escaped as \u00XX in JSON: six bytes each on the wire.
    const long = '\u0001'.repeat(4_990);
    for (let i = 0; i < MESSAGES; i += 25) {
      const batch = Array.from({ length: 25 }, (_, j) =>
        lab.ask('message', { requestId, message: `${i + j} ${long}` }),
      );
      for (const ack of await Promise.all(batch)) assert.equal(ack.ok, true);
    }
    const full = await api(server.url, 'GET', `/api/requests/${requestId}/messages?limit=500`);
    const pageBytes = Buffer.byteLength(JSON.stringify(full.body.messages));
    assert.ok(pageBytes > 14 * 1024 * 1024, `a full page is ${mb(pageBytes)}`);

    const baseline = await baselineOf(server);
    const dropsBefore = await disconnects(server, 'slow_consumer');
    const attacker = await RawChat.open(server, await userToken('1', TEACHER));
    attacker.send(`420${JSON.stringify(['joinRoom', { requestId }])}`);
    await attacker.until((f) => f.text.startsWith('430[{"ok":true'), 'the joinRoom ack');
    // From here on it reads nothing: the kernel buffers fill, then the server's.
    attacker.socket.pause();

    // Amplification the server must not pay: every packet asks for a full page.
    const bound = 96 * 1024 * 1024;
    let peak = server.rss();
    const sampler = setInterval(() => {
      peak = Math.max(peak, server.rss());
    }, 20);
    let sent = 0;
    let dropped = false;
    try {
      // Hundreds of packets whatever happens, and more until it is dropped.
      while (sent < 300 || (sent < 5_000 && !dropped)) {
        for (let i = 0; i < 10; i++, sent++) {
          attacker.send(
            `42${sent + 1}${JSON.stringify(['loadHistory', { requestId, limit: 500 }])}`,
          );
        }
        await sleep(30);
        dropped ||= (await disconnects(server, 'slow_consumer')) > dropsBefore;
        // Stops a server without the bound before it takes the machine with it.
        if (peak - baseline.rss > bound) break;
      }
      await eventually(
        'the attacker dropped as a slow consumer',
        () => peak - baseline.rss > bound || server.fds() <= baseline.fds,
        10_000,
      );
    } finally {
      clearInterval(sampler);
    }
    const amplification = sent * pageBytes;
    console.log(
      `never-reading socket: ${sent} loadHistory packets asking for ${mb(amplification)}; ` +
        `server RSS ${mb(baseline.rss)} -> peak ${mb(peak)}`,
    );
    assert.ok(
      peak - baseline.rss <= bound,
      `RSS grew by ${mb(peak - baseline.rss)} (bound ${mb(bound)})`,
    );
    assert.ok(bound * 10 < amplification, 'the attack asked for far more than the bound');
    assert.equal(await disconnects(server, 'slow_consumer'), dropsBefore + 1);
    await assertRecovered(server, baseline, { fdSlack: 0 });

    const live = await lab.ask('message', { requestId, message: 'after the attack' });
    assert.equal(live.ok, true);
    const got = await teacher.next('message', (m) => m.message === 'after the attack');
    assert.equal(got._id, live.message._id);
    attacker.socket.destroy();
    lab.close();
    teacher.close();
  });
});

describe('dead peers, floods and unfinished handshakes', () => {
  let server: WatchedServer;
  const FLOOD = 50;

  before(async () => {
    server = await startWatched({
      LOG_LEVEL: 'info',
      FLOOD_LIMIT: String(FLOOD),
      PING_INTERVAL_SECONDS: '1',
      HANDSHAKE_TIMEOUT_SECONDS: '1',
    });
    // SQLite opens some of its files lazily: let that happen before any baseline.
    await register(server.url, '1');
    (await RequestClient.connect(server.url, await userToken('7', LAB))).close();
    await sleep(1_500);
  });
  after(() => server.close());

  test('Engine.IO packets that are not events count toward FLOOD_LIMIT', async () => {
    const baseline = await baselineOf(server);
    const floods = await disconnects(server, 'flood');
    const chat = await RawChat.open(server, await userToken('7', LAB));
    // Noops, unasked-for pongs and CONNECTs to a namespace that does not exist.
    for (let i = 0; i < FLOOD + 10; i++) chat.send(['6', '3', '40/nowhere,'][i % 3] as string);
    await chat.ended(3_000);
    assert.ok(
      chat.frames.some((f) => f.text === '41'),
      'told it was disconnected, so it does not reconnect',
    );
    assert.equal(await disconnects(server, 'flood'), floods + 1);
    chat.socket.destroy();
    await assertRecovered(server, baseline, { fdSlack: 0 });
  });

  test('a burst of CONNECTs on one connection opens one socket at most', async () => {
    const baseline = await baselineOf(server);
    const token = await userToken('7', LAB);
    const chat = await RawChat.open(server);
    // All sent before the first token check is done: Socket.IO would add a socket for each.
    chat.socket.write(
      Buffer.concat(
        Array.from({ length: 20 }, () => clientFrame(Op.text, `40${JSON.stringify({ token })}`)),
      ),
    );
    await sleep(1_000);
    const sockets = chat.frames.filter((f) => f.text.startsWith('40{"sid"')).length;
    assert.ok(sockets <= 1, `${sockets} sockets opened on one connection`);
    chat.socket.destroy();
    await assertRecovered(server, baseline, { fdSlack: 0 });
  });

  test('a client that stops answering pings is dropped after about two intervals', async () => {
    const baseline = await baselineOf(server);
    const alive = await RequestClient.connect(server.url, await userToken('8', LAB));
    const silent = await RawChat.open(server, await userToken('7', LAB));
    const lastSent = Date.now();
    const endedAt = await silent.ended(6_000);
    const silence = endedAt - lastSent;
    assert.ok(silence >= 1_500 && silence <= 3_500, `dropped after ${silence} ms of silence`);
    assert.ok(
      silent.frames.some((f) => f.text === '2'),
      'pinged before being dropped',
    );
    // A client that answers stays, over the same intervals.
    assert.equal(alive.socket.connected, true);
    alive.close();
    silent.socket.destroy();
    await assertRecovered(server, baseline, { fdSlack: 0 });
  });

  test('a Socket.IO handshake never completed is cut after HANDSHAKE_TIMEOUT_SECONDS', async () => {
    const baseline = await baselineOf(server);
    const chat = await RawChat.open(server);
    const openedAt = Date.now();
    // It answers pings, so only the unfinished handshake can be why it is cut.
    let pongs = 0;
    const pong = setInterval(() => {
      const pings = chat.frames.filter((f) => f.text === '2').length;
      for (; pongs < pings; pongs++) chat.send('3');
    }, 20);
    try {
      const endedAt = await chat.ended(5_000);
      const took = endedAt - openedAt;
      // Its close starts early enough for a peer that ignores it to be gone
      // within the handshake time (1 s here), and never before half of it.
      assert.ok(took >= 400 && took <= 1_500, `cut after ${took} ms`);
    } finally {
      clearInterval(pong);
    }
    chat.socket.destroy();
    await assertRecovered(server, baseline, { fdSlack: 0 });
  });
});

describe('a long-polling handshake that never polls (PING_INTERVAL_SECONDS as by default)', () => {
  let server: WatchedServer;

  before(async () => {
    server = await startWatched({ HANDSHAKE_TIMEOUT_SECONDS: '1' });
  });
  after(() => server.close());

  test('a long-polling handshake that never polls is let go within seconds of HANDSHAKE_TIMEOUT_SECONDS, not 30 s', async () => {
    // Cheap for a client (one request on a kept-alive connection), a few KB
    // each for the server: they must not pile up for Engine.IO's 30 s.
    const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
    const open = await fetch(base);
    const sid = JSON.parse((await open.text()).slice(1)).sid as string;
    const openedAt = Date.now();
    let gone: number | undefined;
    while (gone === undefined && Date.now() - openedAt < 10_000) {
      await sleep(250);
      // A noop packet: accepted while the session lives, 400 once it is gone.
      const probe = await fetch(`${base}&sid=${sid}`, { method: 'POST', body: '6' });
      await probe.text();
      if (probe.status === 400) gone = Date.now() - openedAt;
    }
    assert.ok(gone !== undefined && gone <= 5_000, `the session lived ${gone ?? '> 10000'} ms`);
  });
});

describe('a flood of handshakes (HANDSHAKES_PENDING_MAX=3)', () => {
  let server: WatchedServer;

  before(async () => {
    server = await startWatched({ HANDSHAKES_PENDING_MAX: '3', HANDSHAKE_TIMEOUT_SECONDS: '2' });
  });
  after(() => server.close());

  const handshake = async () => {
    const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`);
    await res.text();
    return res.status;
  };

  test('past the bound new handshakes are refused until the pending ones go; connected clients never count', async () => {
    // Connected sockets have joined the namespace: they do not count.
    const token = await userToken('7', LAB);
    const connected = [];
    for (let i = 0; i < 3; i++) {
      // Labelled: a refusal here would mean connected clients count.
      const client = await RequestClient.connect(server.url, token).catch((err: Error) => {
        throw new Error(`connected client ${i} refused: ${err.message}`);
      });
      connected.push(client);
    }
    try {
      assert.deepEqual([await handshake(), await handshake(), await handshake()], [200, 200, 200]);
      assert.equal(await handshake(), 403, 'a fourth pending handshake');
      await assert.rejects(RequestClient.connect(server.url, token), /websocket error/);
      // The connected ones carry on meanwhile.
      assert.equal((await connected[0]?.ask('listRequests', {}))?.ok, true);
      // The pending ones are cut after HANDSHAKE_TIMEOUT_SECONDS and let go.
      const deadline = Date.now() + 8_000;
      while ((await handshake()) !== 200) {
        assert.ok(Date.now() < deadline, 'handshakes are allowed again');
        await sleep(250);
      }
      // That probe is pending itself, with any of the first three not cut yet
      // on a busy machine: a client gets in once they go.
      for (;;) {
        const client = await RequestClient.connect(server.url, token).catch(() => undefined);
        if (client) {
          client.close();
          break;
        }
        assert.ok(Date.now() < deadline, 'a client connects again');
        await sleep(250);
      }
    } finally {
      for (const c of connected) c.close();
    }
  });
});

/**
 * The old owner's socket must hear nothing in the request after the change.
 * Barrier: the LAB sender posts the message, then a marker in a second
 * request the old owner still owns; the old owner gets the marker, through
 * the same path, and nothing of the first request before it.
 */
async function ownerChange(
  put: (requestId: string) => Promise<void>,
  at: { oldOwner: string; lab: string; newOwner: string },
  registerOn: string,
) {
  const r1 = await register(registerOn, '1');
  const r2 = await register(registerOn, '1');
  const oldOwner = await joined(at.oldOwner, await userToken('1', TEACHER), r1, r2);
  const lab = await joined(at.lab, await userToken('7', LAB), r1, r2);
  const clients = [oldOwner, lab];
  try {
    // The path from the LAB sender to the old owner works before the change.
    assert.equal((await lab.ask('message', { requestId: r2, message: 'warm-up' })).ok, true);
    await oldOwner.next('message', (m) => m.message === 'warm-up');

    await put(r1);
    const newOwner = await joined(at.newOwner, await userToken('2', TEACHER), r1);
    clients.push(newOwner);
    assert.equal((await lab.ask('message', { requestId: r1, message: 'secret' })).ok, true);
    assert.equal((await lab.ask('message', { requestId: r2, message: 'marker' })).ok, true);
    await newOwner.next('message', (m) => m.message === 'secret');
    await oldOwner.next('message', (m) => m.message === 'marker');
    assert.deepEqual(
      oldOwner.of('message').filter((m) => m.requestId === r1),
      [],
      'the old owner heard the request after it changed hands',
    );
    const refused = await oldOwner.ask('message', { requestId: r1, message: 'still mine?' });
    assert.equal(refused.error_code, 'not_in_room');
  } finally {
    for (const c of clients) c.close();
  }
}

describe('owner change on one node', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(() => server.close());

  test("the previous owner's sockets leave the room at once", () =>
    ownerChange(
      async (r) => {
        const res = await api(server.url, 'PUT', `/api/requests/${r}`, { ownerId: '2' });
        assert.equal(res.status, 200);
      },
      { oldOwner: server.url, lab: server.url, newOwner: server.url },
      server.url,
    ));

  test('a user who is also LAB keeps the room', async () => {
    const r = await register(server.url, '1');
    const both = await joined(
      server.url,
      await userToken('1', { username: 'ana', roles: ['TEACHER', 'LAB'] }),
      r,
    );
    const lab = await joined(server.url, await userToken('7', LAB), r);
    assert.equal(
      (await api(server.url, 'PUT', `/api/requests/${r}`, { ownerId: '2' })).status,
      200,
    );
    assert.equal((await lab.ask('message', { requestId: r, message: 'for lab' })).ok, true);
    await both.next('message', (m) => m.message === 'for lab');
    both.close();
    lab.close();
  });
});

if (await requireServices('postgres', 'redis')) {
  describe('owner change across two nodes', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    let nodes: ChildServer[] = [];

    before(async () => {
      schema = await tempSchema();
      const env = {
        DATABASE_URL: schema.url,
        REDIS_URL,
        REDIS_PREFIX: tempRedisPrefix(),
        JWT_SECRET: SECRET,
        API_KEY,
      };
      nodes = await spawnServers(2, env);
      for (const n of nodes) {
        for (let i = 0; (await fetch(`${n.url}/readyz`)).status !== 200; i++) {
          if (i > 200) assert.fail('node not ready');
          await sleep(50);
        }
      }
    });
    after(async () => {
      await Promise.all(nodes.map((n) => n.stop('SIGTERM')));
      await schema.drop();
    });

    test("the change made through one node takes the old owner's socket on the other out", () => {
      const [A, B] = nodes as [ChildServer, ChildServer];
      return ownerChange(
        async (r) => {
          const res = await api(B.url, 'PUT', `/api/requests/${r}`, { ownerId: '2' });
          assert.equal(res.status, 200);
        },
        { oldOwner: A.url, lab: B.url, newOwner: A.url },
        A.url,
      );
    });
  });
}

if (await requireServices('postgres')) {
  describe('a joinRoom that fails after joining', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    let server: TestServer;

    before(async () => {
      schema = await tempSchema();
      server = await startServer({ DATABASE_URL: schema.url });
    });
    after(async () => {
      await server.close();
      await schema.drop();
    });

    test('leaves the socket out of the room', async () => {
      const requestId = await register(server.url, '1');
      const lab = await joined(server.url, await userToken('7', LAB), requestId);
      const name = new URL(schema.url).searchParams.get('schema') as string;
      const db = new pg.Client({ connectionString: PG_URL });
      await db.connect();
      const victim = await RequestClient.connect(server.url, await userToken('8', LAB));
      try {
        // Authorization reads `requests`; only the history read fails.
        await db.query(`ALTER TABLE "${name}".request_messages RENAME TO request_messages_away`);
        try {
          const ack = await victim.ask('joinRoom', { requestId });
          assert.deepEqual([ack.ok, ack.error_code], [false, 'internal_error']);
        } finally {
          await db.query(`ALTER TABLE "${name}".request_messages_away RENAME TO request_messages`);
        }
        assert.equal((await lab.ask('message', { requestId, message: 'not for you' })).ok, true);
        // Answered after the message would have reached it: the barrier.
        const refused = await victim.ask('message', { requestId, message: 'am I in?' });
        assert.equal(refused.error_code, 'not_in_room');
        assert.deepEqual(victim.of('message'), []);
        assert.deepEqual(victim.of('roomHistory'), []);
      } finally {
        await db.end();
        victim.close();
        lab.close();
      }
    });
  });
}
