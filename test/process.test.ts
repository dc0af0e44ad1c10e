/** charla as its own process: start-up, dev mode, configuration errors, logs, shutdown, restart. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SignJWT } from 'jose';
import {
  API_KEY,
  api,
  MAIN,
  SECRET,
  StreamClient,
  spawnServer,
  tempDir,
  userToken,
} from './helpers.js';
import { RequestClient } from './request-client.js';

const dir = tempDir();
after(() => rmSync(dir, { recursive: true, force: true }));

const baseEnv = (name: string) => ({
  DATABASE_URL: `sqlite:${join(dir, `${name}.db`)}`,
  JWT_SECRET: SECRET,
  API_KEY,
});

describe('start-up', () => {
  it('in dev mode prints the URL, the API key and tokens that work', async () => {
    // In its own directory: dev mode keeps its credentials in ./data/dev.json.
    const server = await spawnServer(
      { DATABASE_URL: `sqlite:${join(dir, 'dev.db')}` },
      { cwd: dir },
    );
    try {
      await waitForOutput(server.output, /viewer token/);
      const out = server.output();
      const token = (label: string) => new RegExp(`${label} token\\s+(\\S+)`).exec(out)?.[1] ?? '';
      const apiKey = /API key\s+(\S+)/.exec(out)?.[1] ?? '';
      assert.ok(out.includes(server.url));
      const wsUrl = server.url.replace(/^http/, 'ws');
      // The demo TEACHER owns the demo stream: their chats carry the owner badge.
      for (const [label, name, badges] of [
        ['TEACHER', 'ana', ['owner']],
        ['LAB', 'lab', []],
        ['viewer', 'viewer', []],
      ] as const) {
        const c = await StreamClient.connect(wsUrl, 'demo', { query: `?token=${token(label)}` });
        assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: true } });
        c.chat(`hola from ${label}`);
        const chat = await c.next('chat');
        assert.equal(chat.data.user, name);
        assert.deepEqual(chat.data.badges, badges);
        c.close();
      }
      assert.equal((await api(server.url, 'PUT', '/api/streams/new', {}, apiKey)).status, 201);
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  it('stops on a bad variable with one line naming it, exit code 1', () => {
    const r = spawnSync(process.execPath, [MAIN], {
      env: { PATH: process.env.PATH, STREAM_RATE_LIMIT: 'lots' },
      encoding: 'utf8',
    });
    assert.equal(r.status, 1);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0] as string, /STREAM_RATE_LIMIT/);
  });

  it('names the variable when the storage or the listening address fails at start', async () => {
    const busy = await spawnServer(baseEnv('busy-port'));
    try {
      const port = new URL(busy.url).port;
      const cases: Array<[Record<string, string>, RegExp]> = [
        [{ DATABASE_URL: 'postgres://postgres@127.0.0.1:1/test' }, /DATABASE_URL/],
        [{ HOST: '192.0.2.1' }, /HOST=192\.0\.2\.1/], // TEST-NET-1: on no machine
        [{ PORT: port }, new RegExp(`PORT=${port}`)],
      ];
      for (const [env, name] of cases) {
        const r = spawnSync(process.execPath, [MAIN], {
          env: { PATH: process.env.PATH, LOG_LEVEL: 'silent', ...baseEnv('bad-start'), ...env },
          encoding: 'utf8',
          timeout: 10_000,
        });
        assert.equal(r.status, 1, r.stderr);
        const lines = r.stderr.trim().split('\n');
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0] as string, name);
      }
    } finally {
      assert.equal(await busy.stop(), 0);
    }
  });

  it('refuses production without a JWT key and an API key', () => {
    for (const env of [{ API_KEY: 'k' }, { JWT_SECRET: SECRET }]) {
      const r = spawnSync(process.execPath, [MAIN], {
        env: { PATH: process.env.PATH, NODE_ENV: 'production', ...env },
        encoding: 'utf8',
      });
      assert.equal(r.status, 1);
      assert.match(r.stderr, /JWT_SECRET|API_KEY/);
    }
  });

  it('refuses a short JWT_SECRET in production, in one line naming it', () => {
    const r = spawnSync(process.execPath, [MAIN], {
      env: { PATH: process.env.PATH, NODE_ENV: 'production', JWT_SECRET: 's', API_KEY: 'k' },
      encoding: 'utf8',
      // A server that accepts the secret would listen for ever.
      timeout: 10_000,
    });
    assert.equal(r.status, 1);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0] as string, /JWT_SECRET/);
  });

  it('outside production, warns about a short JWT_SECRET and prints a generated API key', async () => {
    const server = await spawnServer({
      DATABASE_URL: `sqlite:${join(dir, 'generated-key.db')}`,
      JWT_SECRET: 'tiny-secret',
    });
    try {
      await waitForOutput(server.output, /generated API key/);
      await waitForOutput(server.output, /"level":40.*JWT_SECRET/);
      const out = server.output();
      const line = out.split('\n').find((l) => l.includes('generated API key')) ?? '';
      assert.ok(!line.startsWith('{'), 'a plain line, not a JSON log record');
      assert.match(line, /changes at every start/);
      const key = /: (\S+)$/.exec(line)?.[1] ?? '';
      assert.equal((await api(server.url, 'PUT', '/api/streams/gen', {}, key)).status, 201);
      const logs = out.split('\n').filter((l) => l.startsWith('{'));
      assert.ok(!logs.some((l) => l.includes(key)), 'the key is not in the JSON logs');
      assert.ok(
        logs.some((l) => /"level":40/.test(l) && l.includes('JWT_SECRET')),
        'a warning names JWT_SECRET',
      );
      assert.ok(!out.includes('tiny-secret'), 'the secret itself is never printed');
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  it('in production, a token without exp is refused as invalid_token', async () => {
    const server = await spawnServer({ ...baseEnv('prod-exp'), NODE_ENV: 'production' });
    const wsUrl = server.url.replace(/^http/, 'ws');
    try {
      await api(server.url, 'PUT', '/api/streams/prod', {});
      const noExp = await new SignJWT({ user_id: '1' })
        .setProtectedHeader({ alg: 'HS256' })
        .sign(new TextEncoder().encode(SECRET));
      const c = await StreamClient.connect(wsUrl, 'prod', { token: noExp });
      assert.equal((await c.next()).data.error_code, 'invalid_token');
      assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: false } });
      c.auth(await userToken('1'));
      assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: true } });
      c.close();
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });
});

describe('logs', () => {
  it('never contain a token', async () => {
    const server = await spawnServer({ ...baseEnv('logs'), LOG_LEVEL: 'trace' });
    const wsUrl = server.url.replace(/^http/, 'ws');
    const good = await userToken('1');
    const expired = await userToken('2', {}, { expiresIn: Math.floor(Date.now() / 1000) - 5 });
    try {
      await api(server.url, 'PUT', '/api/streams/logged', {});
      const a = await StreamClient.connect(wsUrl, 'logged', { query: `?token=${good}` });
      const b = await StreamClient.connect(wsUrl, 'logged', { token: expired });
      const c = await StreamClient.connect(wsUrl, 'nope', { query: `?token=${good}` });
      await a.next('auth');
      a.auth('not-a-token');
      a.auth(expired);
      await a.collect('auth', 3);
      await b.next('auth');
      await c.closed;
      a.close();
      b.close();
    } finally {
      assert.equal(await server.stop(), 0);
    }
    const out = server.output();
    assert.ok(out.length > 0);
    for (const secret of [good, expired, 'not-a-token', API_KEY, SECRET]) {
      assert.ok(!out.includes(secret), `log output contains ${secret.slice(0, 12)}…`);
    }
  });
});

describe('shutdown and restart', () => {
  it('a SIGTERM as soon as it listens, while dev mode is still being set up, exits 0', async () => {
    // Dev mode registers its demo stream and request after listening; clients
    // may already be connected then, and the signal must be handled as later.
    const cwd = join(dir, 'early-signal');
    mkdirSync(cwd);
    for (let i = 0; i < 3; i++) {
      const server = await spawnServer(
        { DATABASE_URL: `sqlite:${join(cwd, 'dev.db')}`, LOG_LEVEL: 'info' },
        { cwd },
      );
      assert.equal(await server.stop('SIGTERM'), 0, server.output());
    }
  });

  it('closes clients with 1001, stores every accepted chat, exits 0, and the chats survive', async () => {
    const env = baseEnv('restart');
    const first = await spawnServer(env);
    const wsUrl = first.url.replace(/^http/, 'ws');
    await api(first.url, 'PUT', '/api/streams/durable', {});
    const c = await StreamClient.connect(wsUrl, 'durable', { token: await userToken('5') });
    await c.next('auth');
    for (let i = 0; i < 20; i++) c.chat(`keep ${i}`);
    const sent = (await c.collect('chat', 20)).map((f) => f.data.id);
    const closed = c.closed;
    assert.equal(await first.stop('SIGTERM'), 0);
    assert.equal((await closed).code, 1001);

    const second = await spawnServer(env);
    try {
      const history = await api(second.url, 'GET', '/api/streams/durable/messages');
      assert.deepEqual(
        history.body.messages.map((m: { id: string }) => m.id),
        sent,
      );
    } finally {
      assert.equal(await second.stop('SIGINT'), 0);
    }
  });

  it('a connection that never finished its request holds the exit at most a few seconds, and a second signal does not cut the shutdown short', async () => {
    const server = await spawnServer(baseEnv('half-request'));
    const { port } = new URL(server.url);
    // A preconnect with nothing sent, and one with half its headers.
    const silent = connect(Number(port), '127.0.0.1');
    const partial = connect(Number(port), '127.0.0.1');
    for (const socket of [silent, partial]) {
      socket.on('error', () => {});
      await once(socket, 'connect');
    }
    partial.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    const teacher = await RequestClient.connect(
      server.url,
      await userToken('1', { role: 'TEACHER' }),
    );
    const told = new Promise<string>((resolve) => teacher.socket.once('disconnect', resolve));
    const started = Date.now();
    const exit = server.stop('SIGTERM');
    await sleep(200);
    server.child.kill('SIGTERM');
    assert.equal(await exit, 0, server.output());
    const took = Date.now() - started;
    assert.ok(took < 6_000, `exited after ${took} ms`);
    // Told as a server disconnect, not a lost transport.
    assert.equal(await told, 'io server disconnect');
    teacher.close();
    silent.destroy();
    partial.destroy();
  });

  it('request chat: messages in flight at SIGTERM are stored and acknowledged, or refused', async (t) => {
    const env = {
      ...baseEnv('restart-requests'),
      REQUEST_RATE_LIMIT: '1000/1s',
      FLOOD_LIMIT: '1000',
    };
    const first = await spawnServer(env);
    const requestId = '6751b6df1ad14eaa13a0cc01';
    await api(first.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 });
    const teacher = await RequestClient.connect(
      first.url,
      await userToken('1', { role: 'TEACHER' }),
    );
    assert.equal((await teacher.ask('joinRoom', { requestId })).ok, true);
    // 300 sends; SIGTERM as soon as the first is acknowledged, while the rest are
    // in flight: every acknowledgement must stand after the restart.
    const total = 300;
    let answered = 0;
    let firstAnswer: () => void = () => {};
    const started = new Promise<void>((resolve) => {
      firstAnswer = resolve;
    });
    const answers = Array.from({ length: total }, (_, i) =>
      teacher.socket
        .timeout(5_000)
        .emitWithAck('message', { requestId, message: `m${i}` })
        .catch(() => ({ ok: false }))
        .finally(() => {
          answered++;
          firstAnswer();
        }),
    );
    await started;
    const exit = first.stop('SIGTERM');
    const inFlight = total - answered;
    const acked = (await Promise.all(answers))
      .filter((a: any) => a.ok)
      .map((a: any) => a.message._id as string);
    assert.equal(await exit, 0);
    teacher.close();
    assert.ok(inFlight > 0, 'no message was in flight at SIGTERM');
    t.diagnostic(`${inFlight} of ${total} in flight at SIGTERM`);

    const second = await spawnServer(env);
    try {
      const history = await api(second.url, 'GET', `/api/requests/${requestId}/messages?limit=500`);
      const stored = new Set(history.body.messages.map((m: { _id: string }) => m._id));
      t.diagnostic(
        `${acked.length} of ${total} acknowledged before the exit, ${stored.size} stored`,
      );
      assert.deepEqual(
        acked.filter((id) => !stored.has(id)),
        [],
        `every acknowledged message is stored (${acked.length} acknowledged, ${stored.size} stored)`,
      );
    } finally {
      assert.equal(await second.stop('SIGINT'), 0);
    }
  });
});

async function waitForOutput(output: () => string, pattern: RegExp, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pattern.test(output())) {
    if (Date.now() > deadline) throw new Error(`no ${pattern} in output:\n${output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
