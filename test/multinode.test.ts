/**
 * Three charla processes behind no load balancer, one PostgreSQL schema and
 * one Redis prefix of their own: the live-stream chat works across nodes as
 * on one, and survives Redis going away without a restart of charla.
 *
 * Redis is reached through a TCP proxy so the test can take it away from
 * these three nodes without disturbing anything else that uses it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  API_KEY,
  api,
  type ChildServer,
  SECRET,
  StreamClient,
  spawnServer,
  userToken,
} from './helpers.js';
import { REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const ws = (node: ChildServer) => node.url.replace(/^http/, 'ws');
const chats = (c: StreamClient) => c.frames.filter((f) => f.type === 'chat').map((f) => f.data);
const ready = async (node: ChildServer) => (await fetch(`${node.url}/readyz`)).status === 200;

/** Receipt times of chats on one client, by message text: for latency figures. */
function timeChats(c: StreamClient): Map<string, number> {
  const at = new Map<string, number>();
  c.ws.on('message', (data) => {
    const f = JSON.parse(String(data));
    if (f.type === 'chat') at.set(f.data.message, performance.now());
  });
  return at;
}

/**
 * Posts warm-up chats until every viewer hears them: each node's broker
 * subscription for the stream is then live, so what follows reaches everyone.
 */
async function warmUp(poster: StreamClient, viewers: StreamClient[]) {
  let i = 0;
  await until(() => {
    if (viewers.every((v) => chats(v).some((c) => c.message.startsWith('warm-up')))) return true;
    poster.chat(`warm-up ${i++}`);
    return false;
  }, 'subscriptions on every node');
}

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
const figures = (sorted: number[]) =>
  `p50 ${percentile(sorted, 50).toFixed(1)} ms, p99 ${percentile(sorted, 99).toFixed(1)} ms, ` +
  `max ${percentile(sorted, 100).toFixed(1)} ms`;

if (await requireServices('postgres', 'redis')) {
  describe('three nodes, one PostgreSQL, one Redis', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    const proxy = new TcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379));
    let nodes: ChildServer[] = [];
    let A: ChildServer;
    let B: ChildServer;
    let C: ChildServer;

    before(async () => {
      schema = await tempSchema();
      await proxy.start();
      const env = {
        DATABASE_URL: schema.url,
        REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
        REDIS_PREFIX: tempRedisPrefix(),
        JWT_SECRET: SECRET,
        API_KEY,
        STREAM_RATE_LIMIT: '10000/1s',
      };
      // Started together: their migrations race on the advisory lock.
      nodes = await Promise.all([spawnServer(env), spawnServer(env), spawnServer(env)]);
      [A, B, C] = nodes as [ChildServer, ChildServer, ChildServer];
      for (const n of nodes) await until(() => ready(n), 'nodes to be ready');
    });

    after(async () => {
      const codes = await Promise.all(nodes.map((n) => n.stop('SIGTERM')));
      await proxy.stop();
      await schema.drop();
      assert.deepEqual(codes, [0, 0, 0], 'every node shut down cleanly');
    });

    it('viewers on every node receive posts from A and B in one shared order', async (t) => {
      assert.equal((await api(A.url, 'PUT', '/api/streams/multi', { title: 'm' })).status, 201);
      const pA = await StreamClient.connect(ws(A), 'multi', { token: await userToken('1') });
      const pB = await StreamClient.connect(ws(B), 'multi', { token: await userToken('2') });
      const c1 = await StreamClient.connect(ws(C), 'multi');
      const c2 = await StreamClient.connect(ws(C), 'multi');
      const viewers = [pA, pB, c1, c2];
      await warmUp(pA, viewers);
      await warmUp(pB, viewers);
      const arrivals = timeChats(c1);
      const sent = new Map<string, number>();

      const n = 100;
      for (let i = 0; i < n; i++) {
        for (const [poster, name] of [
          [pA, 'A'],
          [pB, 'B'],
        ] as const) {
          sent.set(`${name}${i}`, performance.now());
          poster.chat(`${name}${i}`);
        }
        if (i % 10 === 9) await new Promise((r) => setTimeout(r, 5));
      }
      const real = (c: StreamClient) => chats(c).filter((m) => !m.message.startsWith('warm-up'));
      await until(() => viewers.every((v) => real(v).length === 2 * n), 'every chat everywhere');

      const [first, ...others] = viewers.map((v) => real(v).map((m) => m.id));
      for (const other of others) assert.deepEqual(other, first, 'one order for all viewers');
      const texts = real(c1).map((m) => m.message as string);
      for (const p of ['A', 'B']) {
        assert.deepEqual(
          texts.filter((t) => t.startsWith(p)),
          Array.from({ length: n }, (_, i) => `${p}${i}`),
          `${p}'s chats in the order sent`,
        );
      }
      assert.deepEqual(real(c1)[0].userId, texts[0]?.startsWith('A') ? '1' : '2');

      const latencies = [...sent]
        .map(([text, t]) => (arrivals.get(text) as number) - t)
        .sort((x, y) => x - y);
      t.diagnostic(
        `burst of ${latencies.length} chats from A and B to a viewer on C: ${figures(latencies)}`,
      );

      // One chat at a time: the latency of a node hop through Redis, unloaded.
      const single: number[] = [];
      for (let i = 0; i < 50; i++) {
        const start = performance.now();
        pA.chat(`one ${i}`);
        await until(() => arrivals.has(`one ${i}`), 'the chat', 2_000);
        single.push((arrivals.get(`one ${i}`) as number) - start);
      }
      single.sort((x, y) => x - y);
      t.diagnostic(`one at a time, A to a viewer on C (50 chats): ${figures(single)}`);

      // Stored once, by the node that accepted each chat, in one table all nodes read.
      await until(async () => {
        const page = await api(B.url, 'GET', '/api/streams/multi/messages?limit=500');
        return page.body.messages?.filter((m: any) => /^[AB]\d/.test(m.message)).length === 2 * n;
      }, 'history on B to hold every chat');
      for (const c of viewers) c.close();
    });

    it('a stream ended through A closes its viewers on B and C with 4410', async () => {
      assert.equal((await api(A.url, 'PUT', '/api/streams/ending', {})).status, 201);
      const onB = await StreamClient.connect(ws(B), 'ending', { token: await userToken('2') });
      const onC = await StreamClient.connect(ws(C), 'ending');
      await warmUp(onB, [onB, onC]);
      assert.equal((await api(A.url, 'DELETE', '/api/streams/ending')).status, 200);
      for (const c of [onB, onC]) {
        const err = await c.next('error');
        assert.equal(err.data.error_code, 'stream_ended');
        assert.equal((await c.closed).code, 4410);
      }
      // New viewers anywhere are refused the same way.
      const late = await StreamClient.connect(ws(C), 'ending');
      assert.equal((await late.closed).code, 4410);
    });

    it('Redis going away: nodes report not ready, keep their clients, and recover by themselves', async (t) => {
      assert.equal((await api(A.url, 'PUT', '/api/streams/outage', {})).status, 201);
      const pA = await StreamClient.connect(ws(A), 'outage', { token: await userToken('1') });
      const onC = await StreamClient.connect(ws(C), 'outage');
      await warmUp(pA, [onC]);

      await proxy.cut();
      for (const n of nodes)
        await until(async () => !(await ready(n)), 'not ready while Redis is away');
      const health = await fetch(`${C.url}/readyz`);
      assert.equal(health.status, 503);
      assert.notEqual(((await health.json()) as { broker?: string }).broker, 'ok');
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(onC.ws.readyState, onC.ws.OPEN, 'local clients stay connected');

      const downAt = performance.now();
      await proxy.start();
      for (const n of nodes) await until(() => ready(n), 'ready again');
      const recoveredMs = performance.now() - downAt;
      t.diagnostic(`nodes ready again ${recoveredMs.toFixed(0)} ms after Redis came back`);

      // The same connections, the same processes: fan-out resumes on its own.
      let i = 0;
      await until(() => {
        if (chats(onC).some((c) => c.message.startsWith('after'))) return true;
        pA.chat(`after ${i++}`);
        return false;
      }, 'a chat from A to reach C after the outage');
      for (const n of nodes) {
        assert.equal(n.child.exitCode, null, 'no node restarted');
        assert.equal((n.output().match(/redis connection lost/g) ?? []).length, 1);
        assert.equal((n.output().match(/redis connection recovered/g) ?? []).length, 1);
      }
      pA.close();
      onC.close();
    });
  });
}
