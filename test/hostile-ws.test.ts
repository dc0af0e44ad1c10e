/**
 * Hostile clients against a real charla process on the live-stream WebSocket
 * endpoint: raw bytes on raw sockets, resets in the middle of upgrades,
 * half-open peers, floods of fragments and control frames, invalid UTF-8,
 * byte-at-a-time frames, readers that never read, dead peers and stalled
 * handshakes. After every attack the process must be alive, answer
 * `/healthz`, give its descriptors back, keep its memory bounded, and a
 * normal viewer on the same stream must still get the next chat and nothing
 * it should not have (protocol sections 5 and 6, README "Security").
 */
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { api, StreamClient, sleep, userToken } from './helpers.js';
import {
  assertRecovered,
  baselineOf,
  clientFrame,
  closeCodeIn,
  closedOf,
  cpuMs,
  eventually,
  mb,
  metricValue,
  Op,
  rawSocket,
  rawStream,
  readAll,
  reset,
  serverFrames,
  startWatched,
  upgradeRequest,
  type WatchedServer,
  waitFor,
  waitForClose,
  writeDrained,
} from './hostile.js';

const KEY = 'live';
const RSS_SLACK = 64 * 1024 * 1024;
const STREAM_GAUGE = 'charla_connections{chat="stream"}';

/** A server under attack, with a normal viewer and a poster on the same stream. */
interface Target {
  server: WatchedServer;
  baseline: { fds: number; rss: number };
  viewer: StreamClient;
  poster: StreamClient;
  /** Chats posted by this suite so far, in order: what the viewer must have received. */
  posted: string[];
}

async function target(env: Record<string, string>, key = KEY): Promise<Target> {
  const server = await startWatched(env);
  const created = await api(server.url, 'PUT', `/api/streams/${key}`, {});
  assert.ok(created.status < 300, `PUT stream: ${created.status}`);
  const viewer = await StreamClient.connect(server.wsUrl, key);
  const poster = await StreamClient.connect(server.wsUrl, key, {
    token: await userToken('poster'),
  });
  await viewer.next('auth');
  await poster.next('auth');
  return { server, baseline: await baselineOf(server), viewer, poster, posted: [] };
}

async function shutdown(t: Target | undefined): Promise<void> {
  if (t === undefined) return;
  t.viewer.close();
  t.poster.close();
  await t.server.close();
}

/**
 * The process survived and gave everything back: alive, `/healthz` answers,
 * descriptors near the baseline, RSS bounded, and the normal viewer gets a
 * chat posted now as the next chat after everything posted before (the
 * barrier: nothing unexpected came in between), with no error at all.
 */
async function assertUndisturbed(t: Target, what: string): Promise<void> {
  const { server } = t;
  assert.ok(server.alive(), `${what}: the server exited:\n${server.output().slice(-2000)}`);
  await assertRecovered(server, t.baseline, { rssSlackBytes: RSS_SLACK });
  const health = await fetch(`${server.url}/healthz`);
  assert.equal(health.status, 200, `${what}: /healthz`);
  const text = `after ${what} #${t.posted.length}`;
  t.posted.push(text);
  t.poster.chat(text);
  await t.viewer.collect('chat', t.posted.length, 8_000);
  const chats = t.viewer.frames.filter((f) => f.type === 'chat').map((f) => f.data.message);
  assert.deepEqual(chats, t.posted, `${what}: the viewer's chats`);
  const odd = t.viewer.frames.filter((f) => f.type !== 'chat' && f.type !== 'auth');
  assert.deepEqual(odd, [], `${what}: the viewer got frames it should not have`);
  assert.equal(t.viewer.ws.readyState, t.viewer.ws.OPEN, `${what}: the viewer was closed`);
  assert.ok(server.alive(), `${what}: the server exited:\n${server.output().slice(-2000)}`);
}

/** Runs an attack; when it fails because the process died, says so with the process's last words. */
async function attack(t: Target, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (err) {
    await sleep(200);
    assert.ok(t.server.alive(), `the server exited:\n${t.server.output().slice(-1500)}`);
    throw err;
  }
}

/** A frame with every field under the caller's control, lies included (for the fuzzer). */
function anyFrame(f: {
  fin: boolean;
  rsv: number;
  opcode: number;
  masked: boolean;
  payload: Uint8Array;
  declared: number | null;
}): Buffer {
  const len = f.declared ?? f.payload.length;
  const head: number[] = [(f.fin ? 0x80 : 0) | (f.rsv << 4) | f.opcode];
  const m = f.masked ? 0x80 : 0;
  if (len < 126) head.push(m | len);
  else if (len < 65536) head.push(m | 126, len >> 8, len & 0xff);
  else {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(len));
    head.push(m | 127, ...b);
  }
  if (f.masked) head.push(0xa1, 0xb2, 0xc3, 0xd4);
  return Buffer.concat([Buffer.from(head), Buffer.from(f.payload)]);
}

describe('hostile WebSocket clients against a charla process', () => {
  let t: Target;

  before(async () => {
    t = await target({
      SEND_BUFFER_MAX_BYTES: '65536',
      HANDSHAKE_TIMEOUT_SECONDS: '1',
      MAX_FRAME_BYTES: '4300000',
      STREAM_MESSAGE_MAX_CHARS: '16000',
      STREAM_RATE_LIMIT: '100000/1s',
    });
  });
  after(() => shutdown(t));

  it('survives 200 refused upgrades each followed by a TCP reset 0–5 ms later', async () => {
    const requests = [
      upgradeRequest('/nope'),
      upgradeRequest(`/ws/streams/${KEY}/`, { 'Sec-WebSocket-Key': null }),
      upgradeRequest(`/ws/streams/${KEY}/`, { 'Sec-WebSocket-Version': '8' }),
      upgradeRequest(`/ws/streams/${KEY}/`).replace(/^GET/, 'POST'),
      upgradeRequest('/ws/streams/%zz/', { 'Sec-WebSocket-Key': 'short' }),
    ];
    const delays = [0, 1, 2, 5];
    await attack(t, async () => {
      for (let batch = 0; batch < 10; batch++) {
        await Promise.all(
          Array.from({ length: 20 }, async (_, j) => {
            const i = batch * 20 + j;
            const socket = await rawSocket(t.server);
            socket.write(requests[i % requests.length] as string);
            const delay = delays[Math.floor(i / requests.length) % delays.length] as number;
            if (delay > 0) await sleep(delay);
            reset(socket);
          }),
        );
      }
    });
    await assertUndisturbed(t, 'refused upgrades reset');
  });

  it('survives 100 stream upgrades with unseen tokens reset 0–3 ms after sending', async () => {
    const tokens = await Promise.all(Array.from({ length: 100 }, (_, i) => userToken(String(i))));
    await attack(t, async () => {
      for (let batch = 0; batch < 10; batch++) {
        await Promise.all(
          Array.from({ length: 10 }, async (_, j) => {
            const i = batch * 10 + j;
            const socket = await rawSocket(t.server);
            socket.write(
              upgradeRequest(`/ws/streams/${KEY}/`, { Authorization: `Bearer ${tokens[i]}` }),
            );
            const delay = (i * 7) % 4;
            if (delay > 0) await sleep(delay);
            reset(socket);
          }),
        );
      }
    });
    await assertUndisturbed(t, 'stream upgrades reset during the token check');
  });

  it('releases refused and closed sockets within 5 s while the peers keep TCP open', async () => {
    const peers: Socket[] = [];
    const refusedRequests = [
      upgradeRequest('/nope'),
      upgradeRequest(`/ws/streams/${KEY}/`, { 'Sec-WebSocket-Key': null }),
      upgradeRequest(`/ws/streams/${KEY}/`, { 'Sec-WebSocket-Version': '8' }),
      upgradeRequest(`/ws/streams/${KEY}/`).replace(/^GET/, 'POST'),
    ];
    try {
      const refused = refusedRequests
        .flatMap((r) => [r, r, r])
        .map(async (request) => {
          const socket = await rawSocket(t.server, { allowHalfOpen: true });
          peers.push(socket);
          socket.write(request);
          const answer = await waitFor(socket, '\r\n\r\n');
          assert.match(answer, /^HTTP\/1\.1 4\d\d /);
        });
      const unknown = Array.from({ length: 10 }, async (_, i) => {
        const socket = await rawSocket(t.server, { allowHalfOpen: true });
        peers.push(socket);
        // The 101, the error frame and the close frame may come in one read.
        const closing = waitForClose(socket);
        socket.write(upgradeRequest(`/ws/streams/no-such-stream-${i}/`));
        const { code, bytes } = await closing;
        // Never answers the close frame and never sends its FIN.
        assert.equal(code, 4404);
        assert.match(bytes.toString('latin1'), /^HTTP\/1\.1 101 [\s\S]*stream_not_found/);
      });
      const closers = Array.from({ length: 10 }, async () => {
        const socket = await rawStream(t.server, KEY, {}, { allowHalfOpen: true });
        peers.push(socket);
        const echoed = waitForClose(socket);
        const code = Buffer.alloc(2);
        code.writeUInt16BE(1000);
        socket.write(clientFrame(Op.close, code));
        assert.equal((await echoed).code, 1000);
      });
      await Promise.all([...refused, ...unknown, ...closers]);
      const start = Date.now();
      await eventually(
        `descriptors back near ${t.baseline.fds} (now ${t.server.fds()}) with peers open`,
        () => t.server.fds() <= t.baseline.fds + 3,
        5_500,
      );
      const released = Date.now() - start;
      assert.ok(
        peers.every((p) => !p.destroyed),
        'the peers must still be open when the server has let go',
      );
      assert.equal(await metricValue(t.server.url, STREAM_GAUGE), 2, 'only the normal clients');
      console.log(`# ${peers.length} half-open peers released by the server in ${released} ms`);
    } finally {
      for (const p of peers) p.destroy();
    }
    await assertUndisturbed(t, 'half-open peers');
  });

  it('releases within 5 s upgrades whose peer sends its FIN right after, and keeps its side open', async () => {
    const tokens = await Promise.all(
      Array.from({ length: 200 }, (_, i) => userToken(String(1_000 + i))),
    );
    const peers: Socket[] = [];
    try {
      await Promise.all(
        tokens.map(async (token, i) => {
          const socket = await rawSocket(t.server, { allowHalfOpen: true });
          peers.push(socket);
          socket.on('data', () => {});
          // Half of them authenticated in the URL, half anonymous: the FIN
          // arrives while the server checks the stream (and the token).
          const query = i % 2 === 0 ? `?token=${token}` : '';
          socket.end(upgradeRequest(`/ws/streams/${KEY}/${query}`));
        }),
      );
      await eventually(
        `descriptors back near ${t.baseline.fds} (now ${t.server.fds()}) with peers half-open`,
        () => t.server.fds() <= t.baseline.fds + 3,
        5_500,
      );
      assert.equal(await metricValue(t.server.url, STREAM_GAUGE), 2, 'only the normal clients');
    } finally {
      for (const p of peers) p.destroy();
    }
    await assertUndisturbed(t, 'upgrades ended at once');
  });

  it('closes a fragment flood of empty continuation frames with bounded memory', async () => {
    const socket = await rawStream(t.server, KEY);
    const got: Buffer[] = [];
    socket.on('data', (c: Buffer) => got.push(c));
    await writeDrained(socket, clientFrame(Op.text, '{"type":', { fin: false }));
    const empty = clientFrame(Op.continuation, Buffer.alloc(0), { fin: false });
    const chunk = Buffer.concat(Array.from({ length: 174_763 }, () => empty)); // ~1 MB
    const closed = closedOf(socket);
    let sent = 0;
    let peak = t.server.rss();
    const deadline = Date.now() + 15_000;
    while (sent < 40 * 1024 * 1024 && Date.now() < deadline) {
      if (!(await writeDrained(socket, chunk))) break;
      sent += chunk.length;
      if (t.server.alive()) peak = Math.max(peak, t.server.rss());
    }
    socket.end();
    await Promise.race([closed, sleep(5_000)]);
    const code = closeCodeIn(Buffer.concat(got));
    console.log(
      `# fragment flood: ${mb(sent)} written, close ${code}, RSS ${mb(t.baseline.rss)} -> peak ${mb(peak)}`,
    );
    assert.ok(t.server.alive(), `the server exited:\n${t.server.output().slice(-1500)}`);
    assert.ok(
      peak <= t.baseline.rss + RSS_SLACK,
      `RSS peaked at ${mb(peak)} (baseline ${mb(t.baseline.rss)}) after ${mb(sent)} of fragments`,
    );
    assert.ok(socket.destroyed, 'the server never closed the flooding connection');
    assert.ok(code === 1008 || code === 1009, `close code ${code}`);
    await assertUndisturbed(t, 'fragment flood');
  });

  for (const [name, opcode] of [
    ['ping', Op.ping],
    ['pong', Op.pong],
  ] as const) {
    it(`closes a ${name} flood with 1008 (control frames count toward FLOOD_LIMIT)`, async () => {
      const socket = await rawStream(t.server, KEY);
      const closing = waitForClose(socket, 5_000);
      const one = clientFrame(opcode, 'x');
      socket.write(Buffer.concat(Array.from({ length: 1_000 }, () => one)));
      const { code, bytes } = await closing;
      assert.equal(code, 1008);
      const pongs = serverFrames(bytes).filter((f) => f.opcode === Op.pong).length;
      assert.ok(pongs <= 200, `${pongs} pongs answered before the flood close`);
      socket.destroy();
      await assertUndisturbed(t, `${name} flood`);
    });
  }

  it('answers invalid UTF-8 early in a 60,000-byte frame with 1007 at once', async () => {
    const socket = await rawStream(t.server, KEY);
    const closing = waitForClose(socket, 2_000);
    const payload = Buffer.alloc(60_000, 0x61);
    payload.write('{"type":"chat"', 0, 'latin1');
    payload[14] = 0xff;
    // Header (4), mask (4) and the first 32 payload bytes; the rest never comes.
    socket.write(clientFrame(Op.text, payload).subarray(0, 8 + 32));
    assert.equal((await closing).code, 1007);
    socket.destroy();
    await assertUndisturbed(t, 'invalid UTF-8 mid-frame');
  });

  it('answers invalid UTF-8 at the start of an unfinished second fragment with 1007', async () => {
    const socket = await rawStream(t.server, KEY);
    const closing = waitForClose(socket, 2_000);
    socket.write(clientFrame(Op.text, '{"type":"chat","data":', { fin: false }));
    const payload = Buffer.alloc(60_000, 0x61);
    payload[0] = 0xc3; // a two-byte sequence...
    payload[1] = 0x28; // ...whose second byte is not a continuation byte
    socket.write(clientFrame(Op.continuation, payload, { fin: false }).subarray(0, 8 + 16));
    assert.equal((await closing).code, 1007);
    socket.destroy();
    await assertUndisturbed(t, 'invalid UTF-8 mid-fragment');
  });

  // At 60 KB in 8-byte pieces the cost of each read (a syscall and an
  // event-loop turn) hides any copying: the process spent ~100-130 ms with
  // either decoder. So the frame is 4 MB (MAX_FRAME_BYTES on this server) in
  // 256-byte pieces: a decoder that copies what it holds on every read
  // copies gigabytes.
  it('reassembles a 4 MB frame sent 256 bytes at a time for little CPU', async () => {
    const socket = await rawStream(t.server, KEY);
    socket.setNoDelay(true);
    const message = JSON.stringify({ type: 'chat', data: { message: 'y'.repeat(4_000_000) } });
    const bytes = clientFrame(Op.text, message);
    // Anonymous: the whole frame is answered with not_authenticated. That answer is the barrier.
    const answered = waitFor(socket, /not_authenticated|message_too_long/, 60_000);
    const before = cpuMs(t.server.pid);
    const started = Date.now();
    for (let off = 0; off < bytes.length; off += 256) {
      socket.write(bytes.subarray(off, off + 256));
      if ((off / 256) % 4 === 3) await new Promise((r) => setImmediate(r));
    }
    await answered;
    const spent = cpuMs(t.server.pid) - before;
    console.log(
      `# ${mb(bytes.length)} in ${Math.ceil(bytes.length / 256)} writes of 256 bytes: server CPU ${spent} ms, ${Date.now() - started} ms wall`,
    );
    assert.ok(spent < 750, `the server spent ${spent} ms of CPU on one 4 MB frame`);
    socket.destroy();
    await assertUndisturbed(t, 'slow reassembly');
  });

  it('drops a viewer that never reads while the others get every chat', async () => {
    const lazy = await rawStream(t.server, KEY);
    lazy.pause(); // never reads again
    const slowBefore = await metricValue(
      t.server.url,
      'charla_disconnects_total{reason="slow_consumer"}',
    );
    const big = 'z'.repeat(15_000);
    let peak = t.server.rss();
    let dropped = false;
    for (let round = 0; round < 20 && !dropped; round++) {
      // A new poster per round keeps each connection under FLOOD_LIMIT.
      const poster = await StreamClient.connect(t.server.wsUrl, KEY, {
        token: await userToken('flooder'),
      });
      for (let i = 0; i < 50; i++) {
        const text = `bulk ${round}.${i} ${big}`;
        t.posted.push(text);
        poster.chat(text);
      }
      await t.viewer.collect('chat', t.posted.length, 15_000);
      poster.close();
      peak = Math.max(peak, t.server.rss());
      const slow = await metricValue(
        t.server.url,
        'charla_disconnects_total{reason="slow_consumer"}',
      );
      dropped = slow > slowBefore;
    }
    assert.ok(dropped, 'the viewer that never reads was never dropped');
    console.log(
      `# never-reading viewer dropped after ${t.posted.length} chats; RSS peak ${mb(peak)}`,
    );
    assert.ok(peak <= t.baseline.rss + RSS_SLACK, `RSS peaked at ${mb(peak)}`);
    await eventually(
      'the lazy connection forgotten',
      () => t.server.fds() <= t.baseline.fds + 3,
      5_000,
    );
    lazy.destroy();
    await assertUndisturbed(t, 'a viewer that never reads');
  });

  // HANDSHAKE_TIMEOUT_SECONDS is the HTTP server's headersTimeout, checked every second.
  it('cuts an upgrade whose headers trickle one byte per 300 ms', async () => {
    const socket = await rawSocket(t.server);
    const request = upgradeRequest(`/ws/streams/${KEY}/`);
    const closed = closedOf(socket);
    let cut = false;
    void closed.then(() => {
      cut = true;
    });
    const start = Date.now();
    for (let i = 0; i < request.length && !cut && Date.now() - start < 5_000; i++) {
      socket.write(request[i] as string);
      await sleep(300);
    }
    const elapsed = Date.now() - start;
    socket.destroy();
    assert.ok(cut, `the trickling upgrade was still open after ${elapsed} ms`);
    await assertUndisturbed(t, 'slowloris upgrade');
  });

  it('never crashes nor leaks on random bytes after a good upgrade (property)', async () => {
    const frameArb = fc.oneof(
      {
        weight: 4,
        arbitrary: fc
          .record({
            fin: fc.boolean(),
            rsv: fc.oneof({ weight: 5, arbitrary: fc.constant(0) }, fc.integer({ min: 1, max: 7 })),
            opcode: fc.constantFrom(0, 1, 1, 2, 3, 8, 9, 10, 11, 15),
            masked: fc.oneof({ weight: 6, arbitrary: fc.constant(true) }, fc.constant(false)),
            payload: fc.uint8Array({ maxLength: 300 }),
            declared: fc.option(
              fc.constantFrom(0, 1, 125, 126, 200, 65_535, 65_536, 70_000, 2 ** 40, 2 ** 53 - 1),
              { freq: 4 },
            ),
          })
          .map(anyFrame),
      },
      {
        weight: 2,
        arbitrary: fc
          .constantFrom(
            clientFrame(Op.text, '{"type":"chat","data":{"message":"hi"}}'),
            clientFrame(Op.text, '{"type":"auth","data":{"token":"x.y.z"}}'),
            clientFrame(Op.text, 'ok', { fin: false }),
            clientFrame(Op.continuation, 'more', { fin: false }),
            clientFrame(Op.continuation, '', { fin: true }),
            clientFrame(Op.close, Buffer.from([0x03, 0xe8])),
            clientFrame(Op.close, Buffer.from([0x03])),
            clientFrame(Op.ping, 'p'),
            clientFrame(Op.text, Buffer.from([0xf0, 0x9f, 0x98])),
          )
          .map((b) => Buffer.from(b)),
      },
      {
        weight: 1,
        arbitrary: fc.uint8Array({ minLength: 1, maxLength: 64 }).map((b) => Buffer.from(b)),
      },
    );
    const connectionArb = fc.record({
      frames: fc.array(frameArb, { minLength: 1, maxLength: 12 }),
      cuts: fc.array(fc.nat(), { maxLength: 6 }),
      ending: fc.constantFrom('reset', 'end', 'destroy-later', 'reset-mid'),
    });
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(connectionArb, { minLength: 1, maxLength: 3 }), async (conns) => {
        runs++;
        await Promise.all(
          conns.map(async ({ frames, cuts, ending }) => {
            const socket = await rawStream(t.server, KEY);
            const bytes = Buffer.concat(frames);
            const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort(
              (a, b) => a - b,
            );
            let from = 0;
            for (const [n, to] of [...points, bytes.length].entries()) {
              if (ending === 'reset-mid' && n === 1) break;
              if (to > from && !socket.destroyed) socket.write(bytes.subarray(from, to));
              from = to;
              await new Promise((r) => setImmediate(r));
            }
            if (ending === 'reset' || ending === 'reset-mid') reset(socket);
            else if (ending === 'end') socket.end();
            else {
              await sleep(20);
              socket.destroy();
            }
          }),
        );
        assert.ok(t.server.alive(), `the server exited:\n${t.server.output().slice(-2000)}`);
        assert.ok(t.server.rss() <= t.baseline.rss + RSS_SLACK, `RSS ${mb(t.server.rss())}`);
        assert.ok(
          t.server.fds() <= t.baseline.fds + 3 + 3 * runs,
          `descriptors ${t.server.fds()} (baseline ${t.baseline.fds})`,
        );
      }),
      { numRuns: 100, endOnFailure: true },
    );
    await assertUndisturbed(t, 'random bytes');
  });
});

describe('heartbeat against a charla process (PING_INTERVAL_SECONDS=1)', () => {
  let t: Target;

  before(async () => {
    t = await target({ PING_INTERVAL_SECONDS: '1' }, 'beat');
  });
  after(() => shutdown(t));

  it('drops a raw viewer that never answers pings within 4 s, keeps a ws client', async () => {
    const wsClient = await StreamClient.connect(t.server.wsUrl, 'beat', {
      token: await userToken('alive'),
    });
    const wsSince = Date.now();
    const raw = await rawStream(t.server, 'beat');
    const start = Date.now();
    const got: Buffer[] = [];
    raw.on('data', (c: Buffer) => got.push(c));
    await Promise.race([closedOf(raw), sleep(6_000)]);
    const elapsed = Date.now() - start;
    assert.ok(raw.destroyed, 'the silent raw viewer was never dropped');
    assert.ok(elapsed <= 4_000, `dropped after ${elapsed} ms`);
    const pings = serverFrames(Buffer.concat(got)).filter((f) => f.opcode === Op.ping).length;
    assert.ok(pings >= 1, 'the server never pinged');
    console.log(`# silent viewer dropped after ${elapsed} ms, ${pings} ping(s) sent to it`);
    // The ws client (answering pings) is kept over at least as long.
    await sleep(Math.max(0, elapsed + 500 - (Date.now() - wsSince)));
    wsClient.chat('still here');
    const chat = await wsClient.next('chat', 3_000);
    assert.equal(chat.data.message, 'still here');
    t.posted.push('still here');
    wsClient.close();
    await wsClient.closed;
    await assertUndisturbed(t, 'heartbeat');
  });
});

describe('pings from a viewer that never reads (FLOOD_LIMIT out of the way)', () => {
  let t: Target;

  before(async () => {
    t = await target({ FLOOD_LIMIT: '100000000', SEND_BUFFER_MAX_BYTES: '65536' }, 'pinger');
  });
  after(() => shutdown(t));

  it('drops it once its unread pongs pass SEND_BUFFER_MAX_BYTES; memory stays bounded', async () => {
    const slow = await metricValue(
      t.server.url,
      'charla_disconnects_total{reason="slow_consumer"}',
    );
    const socket = await rawStream(t.server, 'pinger');
    socket.pause();
    const ping = clientFrame(Op.ping, Buffer.alloc(125, 0x61));
    const chunk = Buffer.concat(Array.from({ length: 8_000 }, () => ping)); // ~1 MB of pings
    let sent = 0;
    let peak = t.server.rss();
    let dropped = slow;
    const deadline = Date.now() + 10_000;
    while (sent < 64 * 1024 * 1024 && Date.now() < deadline) {
      const written = await Promise.race([
        writeDrained(socket, chunk),
        sleep(1_000).then(() => true),
      ]);
      if (!written) break;
      sent += chunk.length;
      peak = Math.max(peak, t.server.rss());
      dropped = await metricValue(t.server.url, 'charla_disconnects_total{reason="slow_consumer"}');
      if (dropped > slow) break;
    }
    console.log(`# ${mb(sent)} of pings, RSS ${mb(t.baseline.rss)} -> peak ${mb(peak)}`);
    assert.equal(dropped, slow + 1, `not dropped after ${mb(sent)} of pings`);
    assert.ok(peak <= t.baseline.rss + RSS_SLACK, `RSS peaked at ${mb(peak)}`);
    socket.destroy();
    await assertUndisturbed(t, 'unread pongs');
  });
});

describe('stalled token check on the upgrade (JWKS that never answers)', () => {
  let server: WatchedServer | undefined;
  let jwks: Server;
  const stalled: Socket[] = [];

  before(async () => {
    jwks = createServer((s) => {
      stalled.push(s); // accepts and never answers
      s.on('error', () => {});
    });
    await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', () => r()));
    const port = (jwks.address() as { port: number }).port;
    server = await startWatched({
      JWT_SECRET: '',
      JWKS_URL: `http://127.0.0.1:${port}/jwks.json`,
      HANDSHAKE_TIMEOUT_SECONDS: '1',
    });
  });
  after(async () => {
    await server?.close();
    for (const s of stalled) s.destroy();
    await new Promise((r) => jwks.close(r));
  });

  it('answers 503 (or cuts) within a few seconds and stays up', async () => {
    const s = server as WatchedServer;
    assert.equal((await api(s.url, 'PUT', '/api/streams/jw', {})).status < 300, true);
    const baseline = await baselineOf(s);
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
    const exp = Math.floor(Date.now() / 1000) + 3600;
    const answers = await Promise.all(
      Array.from({ length: 5 }, async (_, i) => {
        const token = `${b64({ alg: 'RS256', typ: 'JWT', kid: 'k' })}.${b64({ user_id: String(i), exp })}.${Buffer.from('sig').toString('base64url')}`;
        const socket = await rawSocket(s);
        const start = Date.now();
        socket.write(upgradeRequest('/ws/streams/jw/', { Authorization: `Bearer ${token}` }));
        // Either the upgrade is refused (503, or cut) or the key set's own fetch
        // timeout turns the token down first: a 101 whose auth answer is false.
        const answer = await Promise.race([
          waitFor(socket, /HTTP\/1\.1 503|"authenticated":false/, 6_000).catch(() => ''),
          readAll(socket, 6_000).then((b) => b.toString('latin1')),
        ]);
        socket.destroy();
        return { answer, ms: Date.now() - start };
      }),
    );
    for (const { answer, ms } of answers) {
      assert.ok(ms < 4_000, `answered after ${ms} ms`);
      assert.ok(
        answer === '' ||
          answer.startsWith('HTTP/1.1 503') ||
          (answer.startsWith('HTTP/1.1 101') && answer.includes('"invalid_token"')),
        `answer: ${JSON.stringify(answer.slice(0, 80))}`,
      );
    }
    console.log(
      `# stalled JWKS: answers ${answers.map((a) => `${a.answer.slice(9, 12) || 'cut'} in ${a.ms} ms`).join(', ')}`,
    );
    assert.ok(s.alive(), 'the server exited');
    assert.equal((await fetch(`${s.url}/healthz`)).status, 200);
    // An anonymous viewer still gets in and hears its auth answer.
    const viewer = await StreamClient.connect(s.wsUrl, 'jw');
    assert.equal((await viewer.next('auth')).data.authenticated, false);
    viewer.close();
    await assertRecovered(s, baseline, { rssSlackBytes: RSS_SLACK });
  });
});
