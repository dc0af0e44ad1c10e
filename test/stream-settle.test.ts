/**
 * "Every node stored what it published", with no server: several nodes'
 * StoreSettle on one in-memory broker (each subscription stands for a node),
 * their writes driven by the test.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { MemoryBroker } from '../src/broker/memory.js';
import { RedisBroker } from '../src/broker/redis.js';
import { StoreSettle } from '../src/core/stream-settle.js';
import { until } from './helpers.js';
import { REDIS_URL, requireServices, tempRedisPrefix } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

/** A node's pending writes: `flush()` resolves once the test lets them finish. */
class Writes {
  private release: (() => void) | undefined;
  private writing: Promise<void> = Promise.resolve();
  flushes = 0;
  /** A write starts; flushes wait for it until `finish()`. */
  start(): void {
    this.writing = new Promise((resolve) => {
      this.release = resolve;
    });
  }
  finish(): void {
    this.release?.();
  }
  readonly flush = () => {
    this.flushes++;
    return this.writing;
  };
}

function nodes(n: number, maxMs = 1_000) {
  const broker = new MemoryBroker();
  const log = pino({ level: 'silent' });
  const list = Array.from({ length: n }, (_, i) => {
    const writes = new Writes();
    const settle = new StoreSettle({ broker, log, node: `n${i}`, flush: writes.flush, maxMs });
    return { writes, settle };
  });
  return { broker, list };
}

/** Whether `p` has settled after the pending callbacks ran, and how. */
async function state<T>(p: Promise<T>): Promise<{ done: boolean; value?: T }> {
  let out: { done: boolean; value?: T } = { done: false };
  void p.then((value) => {
    out = { done: true, value };
  });
  await new Promise((r) => setImmediate(r));
  return out;
}

describe('StoreSettle', () => {
  it("waits for every node's writes in flight, then answers true", async () => {
    const { list } = nodes(3);
    const [a, b, c] = list as [(typeof list)[0], (typeof list)[0], (typeof list)[0]];
    b.writes.start();
    const settled = a.settle.settled();
    assert.deepEqual(await state(settled), { done: false }, 'B is still writing');
    b.writes.finish();
    assert.deepEqual(await state(settled), { done: true, value: true });
    // Every node was asked once.
    assert.deepEqual(
      list.map((x) => x.writes.flushes),
      [1, 1, 1],
    );
    for (const x of [a, b, c]) x.settle.close();
  });

  it('a node that never finishes its write ends the wait after maxMs with false', async () => {
    const { list } = nodes(2, 50);
    const [a, b] = list as [(typeof list)[0], (typeof list)[0]];
    b.writes.start();
    const t0 = performance.now();
    // The wait's timer does not keep a process alive by itself; a server does.
    const alive = setInterval(() => {}, 1_000);
    assert.equal(await a.settle.settled(), false);
    clearInterval(alive);
    assert.ok(performance.now() - t0 >= 45);
    for (const x of list) x.settle.close();
  });

  it('joins waiting together share requests: one in flight, one queued', async () => {
    const { list } = nodes(2);
    const [a, b] = list as [(typeof list)[0], (typeof list)[0]];
    b.writes.start();
    const first = a.settle.settled();
    // Asked while the first request is in flight: not covered by it, all share the next one.
    const later = Array.from({ length: 20 }, () => a.settle.settled());
    await state(first);
    assert.equal(b.writes.flushes, 1, 'one request so far');
    b.writes.finish();
    assert.deepEqual(await Promise.all([first, ...later]), Array(21).fill(true));
    assert.equal(b.writes.flushes, 2, 'two requests in all');
    for (const x of list) x.settle.close();
  });

  it('close ends the waits with false and stops answering', async () => {
    const { list } = nodes(2);
    const [a, b] = list as [(typeof list)[0], (typeof list)[0]];
    b.writes.start();
    const waiting = a.settle.settled();
    a.settle.close();
    assert.equal(await waiting, false);
    b.settle.close();
  });
});

if (await requireServices('redis')) {
  describe('StoreSettle on a Redis that does not answer', () => {
    it('still answers false within maxMs', async () => {
      const redis = new TcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379));
      redis.hold();
      await redis.start();
      const log = pino({ level: 'silent' });
      const broker = new RedisBroker({
        url: `redis://127.0.0.1:${redis.port}`,
        prefix: tempRedisPrefix(),
        log,
      });
      const settle = new StoreSettle({
        broker,
        log,
        node: 'n0',
        flush: async () => {},
        maxMs: 200,
      });
      try {
        const t0 = performance.now();
        const outcome = await Promise.race([
          settle.settled(),
          new Promise((r) => setTimeout(() => r('still waiting'), 2_000)),
        ]);
        assert.equal(outcome, false);
        assert.ok(performance.now() - t0 < 1_000, 'bounded by maxMs');
      } finally {
        // Redis answers again: what was queued meanwhile is answered, not cut.
        redis.release();
        await until(
          () =>
            broker.ping().then(
              () => true,
              () => false,
            ),
          'Redis again',
        );
        settle.close();
        await broker.close();
        await redis.stop();
      }
    });
  });
}
