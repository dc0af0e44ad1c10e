/**
 * The Broker conformance suite against the machine's Redis, each test under
 * its own prefix; then what happens when Redis goes away and comes back.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import type { Broker } from '../src/broker/broker.js';
import { RedisBroker } from '../src/broker/redis.js';
import { brokerSuite } from './broker-suite.js';
import { until } from './helpers.js';
import { REDIS_URL, requireServices, tempRedisPrefix } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

const silent = pino({ level: 'silent' });

/** A logger that keeps its lines, to check what was logged (and how often). */
function recordingLogger() {
  const lines: Array<{ msg: string; level: number }> = [];
  const log = pino(
    { level: 'info' },
    new Writable({
      write(chunk, _enc, done) {
        lines.push(JSON.parse(String(chunk)));
        done();
      },
    }),
  );
  return { log, count: (msg: string) => lines.filter((l) => l.msg.startsWith(msg)).length };
}

const pingOk = (b: Broker) =>
  b.ping().then(
    () => true,
    () => false,
  );

/** Publishes until `got` holds `payload`: the subscription is live end to end. */
async function heard(from: Broker, topic: string, got: string[], payload: string) {
  await until(() => {
    if (got.includes(payload)) return true;
    from.publish(topic, payload);
    return false;
  }, `"${payload}" to come through`);
}

if (await requireServices('redis')) {
  brokerSuite('redis', async () => {
    const prefixes = { a: tempRedisPrefix(), b: tempRedisPrefix() };
    const opened: Broker[] = [];
    return {
      async node(deployment = 'a') {
        const broker = new RedisBroker({
          url: REDIS_URL,
          prefix: prefixes[deployment],
          log: silent,
        });
        opened.push(broker);
        return broker;
      },
      async cleanup() {
        await Promise.all(opened.map((b) => b.close()));
      },
    };
  });

  describe('Redis lost and back', () => {
    it('keeps its subscriptions, reports not ready meanwhile, logs loss and recovery once', async () => {
      const proxy = new TcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379));
      await proxy.start();
      const prefix = tempRedisPrefix();
      const rec = recordingLogger();
      const node = new RedisBroker({
        url: `redis://127.0.0.1:${proxy.port}`,
        prefix,
        log: rec.log,
      });
      // The other node reaches Redis directly: the outage is this node's alone.
      const other = new RedisBroker({ url: REDIS_URL, prefix, log: silent });
      try {
        const got: string[] = [];
        node.subscribe('t', (p) => got.push(p));
        await heard(other, 't', got, 'before');
        await node.ping();

        await proxy.cut();
        await until(async () => !(await pingOk(node)), 'ping to fail');
        node.publish('t', 'lost while down'); // dropped, not delivered late
        await new Promise((r) => setTimeout(r, 500));
        assert.equal(await pingOk(node), false, 'still not ready while Redis is away');

        await proxy.start();
        await until(() => pingOk(node), 'ping to recover');
        await heard(other, 't', got, 'after');
        const own: string[] = [];
        other.subscribe('own', (p) => own.push(p));
        await heard(node, 'own', own, 'published by the recovered node');
        assert.ok(!got.includes('lost while down'));
        assert.equal(rec.count('redis connection lost'), 1);
        assert.equal(rec.count('redis connection recovered'), 1);
      } finally {
        await node.close();
        await other.close();
        await proxy.stop();
      }
    });

    it('recovers when Redis kills its connections (CLIENT KILL by name)', async () => {
      const prefix = tempRedisPrefix();
      const node = new RedisBroker({ url: REDIS_URL, prefix, log: silent });
      const admin = new Redis(REDIS_URL);
      try {
        const got: string[] = [];
        node.subscribe('t', (p) => got.push(p));
        await heard(node, 't', got, 'before');
        const list = (await admin.client('LIST')) as string;
        const ids = list
          .split('\n')
          .filter((line) => line.includes(` name=${prefix}`))
          .map((line) => /id=(\d+)/.exec(line)?.[1]);
        assert.equal(ids.length, 2, 'one publisher and one subscriber connection, named');
        for (const id of ids) await admin.client('KILL', 'ID', id as string);
        await heard(node, 't', got, 'after');
        await node.ping();
      } finally {
        await node.close();
        admin.disconnect();
      }
    });
  });
}
