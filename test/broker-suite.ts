/**
 * The Broker conformance suite: the guarantees of `src/broker/broker.ts`,
 * written once and run against each backend (broker-memory.test.ts,
 * broker-redis.test.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Broker } from '../src/broker/broker.js';

export interface BrokerHarness {
  /**
   * A broker as one node of `deployment` opens it. Nodes of one deployment
   * share fan-out; different deployments (different prefixes) must not.
   * A single-node backend may return the same broker for every node.
   */
  node(deployment?: 'a' | 'b'): Promise<Broker>;
  /** Closes every broker it opened and removes what they left behind. */
  cleanup(): Promise<void>;
}

const PROBE = '\u0000probe';

/** Collects what one subscription receives, without the readiness probes. */
class Inbox {
  readonly got: string[] = [];
  probed = false;
  readonly handler = (payload: string) => {
    if (payload === PROBE) this.probed = true;
    else this.got.push(payload);
  };
}

async function until(cond: () => boolean, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Subscriptions may take effect asynchronously (a SUBSCRIBE in flight): publish
 * probes on the topic until every inbox has seen one, so what follows is heard.
 */
async function settle(publisher: Broker, topic: string, inboxes: Inbox[]): Promise<void> {
  const timer = setInterval(() => publisher.publish(topic, PROBE), 10);
  publisher.publish(topic, PROBE);
  try {
    await until(() => inboxes.every((i) => i.probed), 'subscriptions to take effect');
  } finally {
    clearInterval(timer);
  }
}

export function brokerSuite(name: string, harness: () => Promise<BrokerHarness>): void {
  const withHarness = async (body: (h: BrokerHarness) => Promise<void>) => {
    const h = await harness();
    try {
      await body(h);
    } finally {
      await h.cleanup();
    }
  };

  describe(`Broker conformance: ${name}`, () => {
    it('delivers to every subscriber, the publishing node included, payloads untouched', () =>
      withHarness(async (h) => {
        const a = await h.node();
        const b = await h.node();
        const onA = new Inbox();
        const onB = new Inbox();
        a.subscribe('t', onA.handler);
        b.subscribe('t', onB.handler);
        await settle(a, 't', [onA, onB]);
        const payloads = [
          '{"kind":"chat","message":{"text":"hola ñandú 🎉"}}',
          'not json at all',
          '',
          'line\nbreak\r\n\ttab "quotes" \\ backslash',
          'x'.repeat(64 * 1024),
          '{"kind":"chat"', // a fragment: the broker never parses
        ];
        for (const p of payloads) a.publish('t', p);
        await until(() => onB.got.length === payloads.length, 'all payloads on b');
        await until(() => onA.got.length === payloads.length, 'all payloads on a');
        assert.deepEqual(onA.got, payloads);
        assert.deepEqual(onB.got, payloads);
      }));

    it('every subscriber on every node sees one order, each publisher its own in sequence', () =>
      withHarness(async (h) => {
        const a = await h.node();
        const b = await h.node();
        const inboxes = [new Inbox(), new Inbox(), new Inbox(), new Inbox()];
        inboxes.forEach((inbox, i) => {
          (i % 2 ? b : a).subscribe('order', inbox.handler);
        });
        await settle(a, 'order', inboxes);
        await settle(b, 'order', inboxes);
        const n = 300;
        for (let i = 0; i < n; i++) {
          a.publish('order', `a${i}`);
          b.publish('order', `b${i}`);
          if (i % 50 === 0) await new Promise((r) => setImmediate(r));
        }
        await until(() => inboxes.every((x) => x.got.length === 2 * n), 'every message');
        const [first, ...others] = inboxes.map((x) => x.got);
        for (const other of others) assert.deepEqual(other, first);
        for (const p of ['a', 'b']) {
          const own = (first as string[]).filter((m) => m.startsWith(p));
          assert.deepEqual(
            own,
            Array.from({ length: n }, (_, i) => `${p}${i}`),
          );
        }
      }));

    it('unsubscribe stops one handler and leaves the others', () =>
      withHarness(async (h) => {
        const a = await h.node();
        const b = await h.node();
        const kept = new Inbox();
        const dropped = new Inbox();
        const sameNode = new Inbox();
        b.subscribe('u', kept.handler);
        const off = a.subscribe('u', dropped.handler);
        a.subscribe('u', sameNode.handler);
        await settle(a, 'u', [kept, dropped, sameNode]);
        a.publish('u', 'before');
        await until(() => kept.got.length === 1 && dropped.got.length === 1, 'first message');
        off();
        off();
        a.publish('u', 'after');
        b.publish('u', 'after, from b');
        await until(() => kept.got.length === 3 && sameNode.got.length === 3, 'later messages');
        assert.deepEqual(dropped.got, ['before']);
        assert.deepEqual(sameNode.got, ['before', 'after', 'after, from b']);
      }));

    it('a node that unsubscribes its last handler and subscribes again hears the topic', () =>
      withHarness(async (h) => {
        const a = await h.node();
        const b = await h.node();
        const first = new Inbox();
        b.subscribe('re', first.handler)();
        const second = new Inbox();
        b.subscribe('re', second.handler);
        await settle(a, 're', [second]);
        a.publish('re', 'hello');
        await until(() => second.got.length === 1, 'the message');
        assert.deepEqual(first.got, []);
      }));

    it('topics and deployments (prefixes) are isolated', () =>
      withHarness(async (h) => {
        const a = await h.node('a');
        const otherTopic = new Inbox();
        const otherDeployment = new Inbox();
        const mine = new Inbox();
        const b = await h.node('b');
        a.subscribe('stream:x', mine.handler);
        a.subscribe('stream:y', otherTopic.handler);
        b.subscribe('stream:x', otherDeployment.handler);
        await settle(a, 'stream:x', [mine]);
        await settle(a, 'stream:y', [otherTopic]);
        await settle(b, 'stream:x', [otherDeployment]);
        a.publish('stream:x', 'for deployment a, topic x');
        // Published after: once it arrives, anything leaked would have too.
        b.publish('stream:x', 'marker b');
        a.publish('stream:y', 'marker y');
        await until(
          () => otherDeployment.got.length > 0 && otherTopic.got.length > 0 && mine.got.length > 0,
          'markers',
        );
        assert.deepEqual(mine.got, ['for deployment a, topic x']);
        assert.deepEqual(otherDeployment.got, ['marker b']);
        assert.deepEqual(otherTopic.got, ['marker y']);
      }));

    it('once subscribed() resolves, what any node publishes is heard; publishCounted counts the subscribers', () =>
      withHarness(async (h) => {
        const a = await h.node();
        const b = await h.node();
        const onA = new Inbox();
        const onB = new Inbox();
        a.subscribe('counted', onA.handler);
        b.subscribe('counted', onB.handler);
        // No probes: the subscriptions are in effect when subscribed() says so.
        await Promise.all([a.subscribed('counted'), b.subscribed('counted')]);
        assert.equal(await b.publishCounted('counted', 'first'), 2);
        await until(() => onA.got.length === 1 && onB.got.length === 1, 'the message');
        assert.deepEqual([onA.got, onB.got], [['first'], ['first']]);
        assert.equal(await a.publishCounted('nobody listens', 'x'), 0);
        await a.subscribed('never subscribed');
      }));

    it('ping resolves once the backend is reachable; close is idempotent', () =>
      withHarness(async (h) => {
        const a = await h.node();
        let ok = false;
        await until(() => {
          void a.ping().then(
            () => {
              ok = true;
            },
            () => {},
          );
          return ok;
        }, 'ping to resolve');
        await a.close();
        await a.close();
      }));
  });
}
