/**
 * Slow mode and the stream rate limit counted in Redis by two nodes at once:
 * a chat either refuses spends nothing of the other, `retry_after_ms` is the
 * wait that is left, and a chat in slow mode costs one Redis round trip.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import {
  api,
  joinStream,
  type StreamClient,
  sleep,
  startServer,
  type TestServer,
} from './helpers.js';
import { REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';

const OWNER = '100';

/** Sends `text` from `c`: 'sent' once it comes back, else the refusal's data. */
async function post(c: StreamClient, text: string): Promise<any> {
  const from = c.all.length;
  c.chat(text);
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    for (const f of c.all.slice(from)) {
      if (f.type === 'error') return f.data;
      if (f.type === 'chat' && f.data.message === text) return 'sent';
    }
    await sleep(5);
  }
  throw new Error(`no answer to ${text}: ${JSON.stringify(c.all.slice(from))}`);
}

/** Sets slow mode through node `via` and waits until `viewers` (one per node) were told. */
async function slowMode(via: TestServer, key: string, seconds: number, viewers: StreamClient[]) {
  const marks = viewers.map((v) => v.all.length);
  const res = await api(via.url, 'PATCH', `/api/streams/${key}`, { slowModeSeconds: seconds });
  assert.equal(res.status, 200);
  for (const [i, v] of viewers.entries()) {
    const deadline = Date.now() + 5000;
    while (
      !v.all.slice(marks[i]).some((f) => f.type === 'stream' && f.data.slowModeSeconds === seconds)
    ) {
      assert.ok(Date.now() < deadline, 'the new slow mode never reached every node');
      await sleep(5);
    }
  }
}

if (await requireServices('postgres', 'redis')) {
  describe('slow mode and the rate limit counted in Redis across two nodes', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    let prefix: string;
    let one: TestServer;
    let two: TestServer;
    let n = 0;

    /** A stream on both nodes and user `id` connected to each of them. */
    const setUp = async (id: string) => {
      const key = `lr-${++n}`;
      assert.equal(
        (await api(one.url, 'PUT', `/api/streams/${key}`, { ownerId: OWNER })).status,
        201,
      );
      const a = (await joinStream(one.wsUrl, key, id)).c;
      const b = (await joinStream(two.wsUrl, key, id)).c;
      return { key, a, b };
    };

    before(async () => {
      schema = await tempSchema();
      prefix = tempRedisPrefix();
      const env = {
        DATABASE_URL: schema.url,
        REDIS_URL,
        REDIS_PREFIX: prefix,
        STREAM_RATE_LIMIT: '2/5s',
      };
      one = await startServer(env);
      two = await startServer(env);
    });

    after(async () => {
      await one?.close();
      await two?.close();
      await schema?.drop();
      const redis = new Redis(REDIS_URL);
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
      redis.disconnect();
    });

    it('a chat slow mode refuses on one node spends no rate on the other', async () => {
      const { key, a, b } = await setUp('1');
      await slowMode(one, key, 30, [a, b]);
      assert.equal(await post(a, 'first'), 'sent');
      const slow = await post(b, 'too soon');
      assert.equal(slow.error_code, 'slow_mode');
      assert.ok(
        slow.retry_after_ms > 25_000 && slow.retry_after_ms <= 30_000,
        `retry_after_ms ${slow.retry_after_ms}`,
      );
      assert.equal((await post(a, 'too soon again')).error_code, 'slow_mode');
      // Out of slow mode the rate window still has room for the second of its two chats.
      await slowMode(two, key, 0, [a, b]);
      assert.equal(await post(b, 'second'), 'sent');
      const rate = await post(a, 'third');
      assert.equal(rate.error_code, 'rate_limited');
      assert.ok(rate.retry_after_ms > 0 && rate.retry_after_ms <= 5000);
      a.close();
      b.close();
    });

    it('a chat the rate refuses on one node does not start the slow-mode wait on the other', async () => {
      const { key, a, b } = await setUp('2');
      assert.equal(await post(a, 'first'), 'sent');
      assert.equal(await post(b, 'second'), 'sent');
      await slowMode(one, key, 30, [a, b]);
      const rate = await post(b, 'third');
      assert.equal(rate.error_code, 'rate_limited');
      assert.ok(rate.retry_after_ms > 0 && rate.retry_after_ms <= 5000);
      // Its wait told the truth: once it is over, the chat goes through, on either node.
      await sleep(rate.retry_after_ms + 50);
      assert.equal(await post(a, 'third, later'), 'sent');
      // And that chat is the one that started slow mode's wait, on both nodes.
      const slow = await post(b, 'fourth');
      assert.equal(slow.error_code, 'slow_mode');
      assert.ok(
        slow.retry_after_ms > 25_000 && slow.retry_after_ms <= 30_000,
        `retry_after_ms ${slow.retry_after_ms}`,
      );
      a.close();
      b.close();
    });

    it('a chat in slow mode is one Redis round trip; the owner makes none', async () => {
      const key = `lr-${++n}`;
      assert.equal(
        (await api(one.url, 'PUT', `/api/streams/${key}`, { ownerId: OWNER })).status,
        201,
      );
      const users = await Promise.all(
        ['31', '32', '33', '34'].map(
          async (id, i) => (await joinStream((i % 2 ? two : one).wsUrl, key, id)).c,
        ),
      );
      const owner = (await joinStream(one.wsUrl, key, OWNER)).c;
      await slowMode(one, key, 30, [users[0] as StreamClient, users[1] as StreamClient]);

      // MONITOR sees every client's commands; this prefix's counters are this file's alone.
      const watcher = new Redis(REDIS_URL);
      const monitor = await watcher.monitor();
      const calls: string[][] = [];
      const marker = `${prefix}marker`;
      let marked = false;
      monitor.on('monitor', (_time: string, args: string[], source: string) => {
        if (args.includes(marker)) marked = true;
        else if (source !== 'lua' && args.some((a) => a.startsWith(`${prefix}limit:`))) {
          calls.push(args);
        }
      });
      const probe = new Redis(REDIS_URL);
      try {
        await sleep(50);
        for (const [i, c] of users.entries()) assert.equal(await post(c, `hola ${i}`), 'sent');
        assert.equal((await post(users[0] as StreamClient, 'again')).error_code, 'slow_mode');
        for (let i = 0; i < 3; i++) assert.equal(await post(owner, `owner ${i}`), 'sent');
        // Redis runs commands in order: once MONITOR shows this one, it has shown the chats'.
        await probe.exists(marker);
        const deadline = Date.now() + 5000;
        while (!marked) {
          assert.ok(Date.now() < deadline, 'MONITOR never showed the marker');
          await sleep(5);
        }
        assert.equal(
          calls.length,
          5,
          `one command per counted chat: ${JSON.stringify(calls.map((c) => c[0]))}`,
        );
      } finally {
        monitor.disconnect();
        watcher.disconnect();
        probe.disconnect();
        for (const c of [...users, owner]) c.close();
      }
    });
  });
}
