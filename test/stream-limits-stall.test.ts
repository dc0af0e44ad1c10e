/**
 * A Redis that keeps its connections but stops answering must not hold
 * stream chats: the count waits at most a moment for Redis, then the chat is
 * counted on this node, as while Redis is unreachable. A real Redis behind a
 * TCP proxy that stops passing Redis's answers on.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import type { Identity } from '../src/core/identity.js';
import { api, sleep, startServer, type TestServer } from './helpers.js';
import { REDIS_URL, requireServices, tempRedisPrefix } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

const eva: Identity = { userId: '7', username: 'eva', roles: [], expiresAt: undefined };

/** `promise`, or a failure naming `what` after `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

if (await requireServices('redis')) {
  describe('stream limits while Redis does not answer', () => {
    let proxy: TcpProxy;
    let node: TestServer;
    const prefix = tempRedisPrefix();
    const redis = new Redis(REDIS_URL);

    before(async () => {
      proxy = new TcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379));
      await proxy.start();
      node = await startServer({
        REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
        REDIS_PREFIX: prefix,
        STREAM_RATE_LIMIT: '2/10s',
      });
      assert.equal((await api(node.url, 'PUT', '/api/streams/stall', {})).status, 201);
      // The counters' connection is ready once a chat is counted in Redis (until then they count here).
      for (let i = 0; ; i++) {
        assert.ok(i < 200, 'no chat was ever counted in Redis');
        await node.app.streams.post('stall', { ...eva, userId: `warm-${i}` }, 'warming up');
        if ((await redis.exists(`${prefix}limit:rate:stall\u0000warm-${i}`)) === 1) break;
        await sleep(20);
      }
    });

    after(async () => {
      proxy.resume('service');
      await node?.close();
      await proxy?.stop();
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
      redis.disconnect();
    });

    it('a chat is counted on the node after a moment, and the rate still holds there', async () => {
      const streams = node.app.streams;
      proxy.pause('service');
      const t0 = performance.now();
      const sent = await within(streams.post('stall', eva, 'counted here'), 3_000, 'the chat');
      const waited = performance.now() - t0;
      assert.equal(sent.message, 'counted here');
      assert.ok(waited >= 400 && waited < 2_000, `accepted after ${waited.toFixed(0)} ms`);
      // The node's own count of the rate: its 2 chats in 10 s are spent by the second one here.
      await within(streams.post('stall', eva, 'second here'), 3_000, 'the second chat');
      await assert.rejects(
        within(streams.post('stall', eva, 'third here'), 3_000, 'the third chat'),
        (err: { code?: string }) => err.code === 'rate_limited',
      );
    });
  });
}
