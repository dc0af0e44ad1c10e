/**
 * Group commit of request messages, with real socket.io-client sockets against
 * a real server on SQLite and on PostgreSQL: the messages of one event-loop
 * turn share one transaction, each acknowledgement means its message is
 * durable (a SIGKILL right after loses none), a refused message is refused
 * alone, and a repeated clientMessageId is still one message.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ChatError } from '../src/core/errors.js';
import { GroupCommit } from '../src/core/group-commit.js';
import { newId } from '../src/core/ids.js';
import { Metrics } from '../src/observability/metrics.js';
import { SqliteStore } from '../src/store/sqlite.js';
import {
  API_KEY,
  api,
  SECRET,
  spawnServer,
  startServer,
  type TestServer,
  tempDir,
  until,
  userToken,
} from './helpers.js';
import { RequestClient } from './request-client.js';
import { requireServices, tempSchema } from './services.js';

const LAB = { username: 'lab', role: 'LAB' };
const TEACHER = { username: 'ana', role: 'TEACHER' };

/** One sample of `/metrics` (0 when absent). */
async function sample(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? 0 : Number(line.slice(name.length + 1));
}

const COMMITS = 'charla_store_commit_seconds_count{op="request_message"}';
const BATCHED = 'charla_request_batch_messages_sum';

const postgres = await requireServices('postgres');
const backends: Array<
  ['sqlite' | 'postgres', () => Promise<{ env: Record<string, string>; drop(): Promise<void> }>]
> = [['sqlite', async () => ({ env: {}, drop: async () => {} })]];
if (postgres) {
  backends.push([
    'postgres',
    async () => {
      const schema = await tempSchema();
      return { env: { DATABASE_URL: schema.url }, drop: schema.drop };
    },
  ]);
}

for (const [backend, place] of backends) {
  describe(`group commit on ${backend}`, () => {
    let server: TestServer;
    let drop: () => Promise<void>;
    const clients: RequestClient[] = [];

    before(async () => {
      const p = await place();
      drop = p.drop;
      server = await startServer({
        REQUEST_RATE_LIMIT: '10000/1s',
        FLOOD_LIMIT: '10000',
        ...p.env,
      });
    });
    after(async () => {
      for (const c of clients) c.close();
      await server.close();
      await drop();
    });

    const register = async () => {
      const id = newId();
      assert.equal(
        (await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId: 1 })).status,
        201,
      );
      return id;
    };
    const joined = async (token: string, requestId: string) => {
      const c = await RequestClient.connect(server.url, token);
      clients.push(c);
      assert.equal((await c.ask('joinRoom', { requestId })).ok, true);
      return c;
    };
    const history = async (requestId: string) =>
      (await api(server.url, 'GET', `/api/requests/${requestId}/messages?limit=500`)).body
        .messages as Array<{ _id: string; message: string }>;

    test('messages from many sockets share transactions, and each ack means stored', async () => {
      const senders = await Promise.all(
        Array.from({ length: 10 }, async (_, i) => {
          const requestId = await register();
          return { requestId, lab: await joined(await userToken(String(100 + i), LAB), requestId) };
        }),
      );
      const commits0 = await sample(server.url, COMMITS);
      const batched0 = await sample(server.url, BATCHED);
      // Each socket sends 20 without waiting: one read of a socket holds several.
      const acks = await Promise.all(
        senders.flatMap(({ lab, requestId }) =>
          Array.from({ length: 20 }, (_, k) =>
            lab.ask('message', { requestId, message: `m${k}` }).then(async (ack) => {
              assert.equal(ack.ok, true);
              // Acknowledged: another reader (the HTTP API) sees it stored.
              const stored = await history(requestId);
              assert.ok(stored.some((m) => m._id === ack.message._id));
              return ack;
            }),
          ),
        ),
      );
      assert.equal(acks.length, 200);
      const commits = (await sample(server.url, COMMITS)) - commits0;
      const batched = (await sample(server.url, BATCHED)) - batched0;
      assert.equal(batched, 200, 'every message went through a group commit');
      assert.ok(commits > 0 && commits <= 200 / 4, `${commits} transactions for 200 messages`);
      // Sent without waiting, they may be stored in any order (authorization
      // reads race on PostgreSQL, as before group commit), but each once.
      for (const { requestId } of senders) {
        const texts = (await history(requestId)).map((m) => m.message);
        assert.deepEqual(texts.sort(), Array.from({ length: 20 }, (_, k) => `m${k}`).sort());
      }
    });

    test('a refused message is refused alone; a repeated clientMessageId is one message', async () => {
      const requestId = await register();
      const lab = await joined(await userToken('200', LAB), requestId);
      const teacher = await joined(await userToken('1', TEACHER), requestId);
      // All in one turn of the server: sent back to back on one socket.
      const [a, tooLong, again, b] = await Promise.all([
        lab.ask('message', { requestId, message: 'a', clientMessageId: 'c-1' }),
        lab.ask('message', { requestId, message: 'x'.repeat(5_001) }),
        lab.ask('message', { requestId, message: 'a (retry)', clientMessageId: 'c-1' }),
        lab.ask('message', { requestId, message: 'b' }),
      ]);
      assert.equal(a.ok, true);
      assert.equal(tooLong.ok, false);
      assert.equal(b.ok, true);
      assert.equal(again.ok, true);
      assert.equal(again.message._id, a.message._id, 'the retry answers with the original');
      const later = await lab.ask('message', {
        requestId,
        message: 'later',
        clientMessageId: 'c-1',
      });
      assert.equal(later.message._id, a.message._id);
      // Whichever of the two was stored first is the message; the other answers with it.
      const stored = (await history(requestId)).map((m) => m.message);
      assert.equal(stored.length, 2);
      assert.ok(stored.includes('b'));
      const kept = stored.find((m) => m !== 'b');
      assert.equal(kept, a.message.message);
      assert.ok(['a', 'a (retry)'].includes(kept as string));
      await until(() => teacher.of('message').length >= 2, 'the teacher hears a and b');
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(
        teacher
          .of('message')
          .map((m: { message: string }) => m.message)
          .sort(),
        [kept, 'b'].sort(),
        'a duplicate is not delivered again',
      );
      // The inbox counts each stored message once.
      const summary = await teacher.ask('listRequests', {});
      const line = summary.requests.find((r: { requestId: string }) => r.requestId === requestId);
      assert.equal(line?.unread, 2);
    });
  });
}

describe('durability of group commits', () => {
  const dir = tempDir();
  after(() => rmSync(dir, { recursive: true, force: true }));
  const places: Array<[string, () => Promise<{ url: string; drop(): Promise<void> }>]> = [
    ['sqlite', async () => ({ url: `sqlite:${join(dir, 'kill.db')}`, drop: async () => {} })],
  ];
  if (postgres) places.push(['postgres', tempSchema]);

  for (const [backend, place] of places) {
    test(`${backend}: SIGKILL right after acknowledgements loses none of them`, async (t) => {
      const { url, drop } = await place();
      const env = {
        DATABASE_URL: url,
        JWT_SECRET: SECRET,
        API_KEY,
        REQUEST_RATE_LIMIT: '10000/1s',
        FLOOD_LIMIT: '10000',
      };
      try {
        const first = await spawnServer(env);
        const requestId = newId();
        await api(first.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 });
        const sockets = await Promise.all(
          Array.from({ length: 5 }, async (_, i) => {
            const c = await RequestClient.connect(first.url, await userToken(String(300 + i), LAB));
            assert.equal((await c.ask('joinRoom', { requestId })).ok, true);
            return c;
          }),
        );
        const acked: string[] = [];
        let killed = false;
        // Senders keep one message in flight each until the kill; the kill
        // comes right after an acknowledgement, while others are committing.
        const loops = sockets.map(async (c, i) => {
          for (let k = 0; !killed; k++) {
            const ack = await c.socket
              .timeout(5_000)
              .emitWithAck('message', { requestId, message: `${i}:${k}` })
              .catch(() => undefined);
            if (!ack?.ok) return;
            acked.push(ack.message._id);
            if (acked.length === 300 && !killed) {
              killed = true;
              first.child.kill('SIGKILL');
            }
          }
        });
        await Promise.all(loops);
        await first.stop();
        for (const c of sockets) c.close();
        const second = await spawnServer(env);
        try {
          const stored = new Set<string>();
          let before: string | undefined;
          for (;;) {
            const q = before === undefined ? '' : `&before=${before}`;
            const page = await api(
              second.url,
              'GET',
              `/api/requests/${requestId}/messages?limit=200${q}`,
            );
            for (const m of page.body.messages) stored.add(m._id);
            if (!page.body.hasMore) break;
            before = page.body.messages[0]._id;
          }
          t.diagnostic(`${acked.length} acknowledged, ${stored.size} stored`);
          assert.ok(acked.length >= 300);
          assert.deepEqual(
            acked.filter((id) => !stored.has(id)),
            [],
          );
        } finally {
          await second.stop('SIGINT');
        }
      } finally {
        await drop();
      }
    });
  }
});

describe('group commit queue bound', () => {
  test('refuses messages beyond maxQueued with rate_limited, stores the rest, and carries on', async () => {
    const dir = tempDir();
    const store = new SqliteStore(join(dir, 'bound.db'));
    try {
      const requestId = newId();
      await store.putRequest(requestId, '1');
      const commit = new GroupCommit({ store, metrics: new Metrics(), maxBatch: 4, maxQueued: 10 });
      const write = (i: number) => ({
        message: {
          _id: newId(),
          requestId,
          sender: { id: '2', username: 'lab', role: 'LAB' },
          message: `m${i}`,
          createdAt: new Date().toISOString(),
          clientMessageId: null,
        },
      });
      // All in one turn: the first batch starts only after it.
      const results = await Promise.allSettled(
        Array.from({ length: 25 }, (_, i) => commit.add(write(i))),
      );
      const stored = results.filter((r) => r.status === 'fulfilled').length;
      const refused = results.filter(
        (r) => r.status === 'rejected' && (r.reason as ChatError).code === 'rate_limited',
      );
      assert.equal(stored, 10);
      assert.equal(refused.length, 15);
      assert.ok(((refused[0] as PromiseRejectedResult).reason as ChatError).retryAfterMs);
      assert.equal((await store.requestHistory(requestId, { limit: 100 })).messages.length, 10);
      // Once the queue drains, messages are taken again.
      await commit.add(write(99));
      assert.equal((await store.requestHistory(requestId, { limit: 100 })).messages.length, 11);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
