/**
 * The latency histograms measure what they say against a real server and
 * clients, and docs/grafana/charla.json queries only metrics that /metrics
 * really exports.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { parseEvent } from '../src/core/stream-events.js';
import { api, StreamClient, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';

const DASHBOARD = new URL('../../docs/grafana/charla.json', import.meta.url);
const REQUEST = '6751b6df1ad14eaa13a0b001';

let server: TestServer;

before(async () => {
  server = await startServer({ STREAM_RATE_LIMIT: '100/1s' });
});
after(() => server.close());

/** `/metrics` as text, and the value of one sample (0 when absent). */
async function scrape(): Promise<{ text: string; value(sample: string): number }> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return {
    text,
    value(sample: string) {
      const line = text.split('\n').find((l) => l.startsWith(`${sample} `));
      return line === undefined ? 0 : Number(line.slice(sample.length + 1));
    },
  };
}

describe('latency histograms', () => {
  it('delivery: one observation per chat (not per viewer), when it reached the sockets', async () => {
    await api(server.url, 'PUT', '/api/streams/lat', {});
    const viewers = await Promise.all(
      [1, 2, 3].map(async (i) => {
        const c = await StreamClient.connect(server.wsUrl, 'lat', {
          token: await userToken(String(i)),
        });
        await c.next('auth');
        return c;
      }),
    );
    const count = 'charla_delivery_latency_seconds_count{chat="stream"}';
    const start = (await scrape()).value(count);
    const chats = 10;
    for (let i = 0; i < chats; i++) viewers[0]?.chat(`m${i}`);
    for (const v of viewers) await v.collect('chat', chats);
    // The observation follows the write in the same turn; a scrape is a later request.
    const m = await scrape();
    assert.equal(m.value(count) - start, chats);
    const sum = m.value('charla_delivery_latency_seconds_sum{chat="stream"}');
    assert.ok(sum > 0 && sum < chats * 5, `sum ${sum}`);
    // Every chat was under 5 s: all of them are in the last finite bucket.
    assert.equal(
      m.value('charla_delivery_latency_seconds_bucket{le="5",chat="stream"}'),
      m.value(count),
    );
    for (const v of viewers) v.close();
  });

  it('store commits, by operation, and request chat acknowledgements, by event', async () => {
    await api(server.url, 'PUT', `/api/requests/${REQUEST}`, { ownerId: 1 });
    const before = await scrape();
    const teacher = await RequestClient.connect(
      server.url,
      await userToken('1', { role: 'TEACHER' }),
    );
    const lab = await RequestClient.connect(server.url, await userToken('2', { role: 'LAB' }));
    assert.equal((await teacher.ask('joinRoom', { requestId: REQUEST })).ok, true);
    assert.equal((await lab.ask('joinRoom', { requestId: REQUEST })).ok, true);
    const sent = await teacher.ask('message', { requestId: REQUEST, message: 'hola' });
    assert.equal(sent.ok, true);
    await lab.ask('readMessages', { requestId: REQUEST, messages: [sent.message._id] });
    // A refused event is acknowledged too, and timed.
    assert.equal((await lab.ask('message', { requestId: REQUEST, message: '' })).ok, false);
    teacher.close();
    lab.close();

    const m = await scrape();
    const delta = (s: string) => m.value(s) - before.value(s);
    assert.equal(delta('charla_store_commit_seconds_count{op="request_message"}'), 1);
    assert.equal(delta('charla_store_commit_seconds_count{op="receipts"}'), 1);
    assert.equal(delta('charla_ack_latency_seconds_count{event="joinRoom"}'), 2);
    assert.equal(delta('charla_ack_latency_seconds_count{event="message"}'), 2);
    assert.equal(delta('charla_ack_latency_seconds_count{event="readMessages"}'), 1);
    assert.ok(m.value('charla_ack_latency_seconds_sum{event="message"}') > 0);
    // The stream chats of the test before were stored in batches, each timed.
    assert.ok(m.value('charla_store_commit_seconds_count{op="stream_messages"}') >= 1);
  });

  it('a broker event with a bad acceptance time falls back to the message time', () => {
    const message = {
      id: '6751b6df1ad14eaa13a0b002',
      streamKey: 'k',
      userId: '1',
      username: 'ana',
      message: 'hola',
      sentAt: new Date().toISOString(),
      badges: [],
    };
    const ok = parseEvent(JSON.stringify({ kind: 'chat', message, at: 1.5 }));
    assert.deepEqual(ok, { kind: 'chat', message, at: 1.5 });
    for (const at of ['soon', null, [1]]) {
      assert.deepEqual(parseEvent(JSON.stringify({ kind: 'chat', message, at })), {
        kind: 'chat',
        message,
      });
    }
  });
});

describe('docs/grafana/charla.json', () => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8'));
  const queries: string[] = dashboard.panels.flatMap((p: any) =>
    p.targets.map((t: any) => t.expr as string),
  );
  queries.push(
    ...dashboard.templating.list
      .filter((v: any) => v.type === 'query')
      .map((v: any) => v.query.query ?? v.query),
  );

  it('has panels with queries', () => {
    assert.ok(dashboard.panels.length >= 8);
    for (const p of dashboard.panels) assert.ok(p.targets.length > 0, p.title);
  });

  it('queries only metrics that /metrics exports, with their labels', async () => {
    const { text } = await scrape();
    // The series each family exports: histograms as _bucket, _sum and _count.
    const series = new Map<string, Set<string>>();
    for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      const names =
        type === 'histogram'
          ? [`${name}_bucket`, `${name}_sum`, `${name}_count`]
          : [name as string];
      for (const n of names) series.set(n, new Set(['instance', 'job', 'le']));
    }
    // Label names as each metric declares them (a family with no sample yet has
    // none in the output), and Prometheus's own.
    for (const metric of server.app.metrics.registry.getMetricsAsArray()) {
      const { name, labelNames = [] } = metric as unknown as {
        name: string;
        labelNames?: string[];
      };
      for (const [n, labels] of series) {
        if (n === name || n.startsWith(`${name}_`)) for (const l of labelNames) labels.add(l);
      }
    }
    for (const q of queries) {
      const used = [...q.matchAll(/\b((?:charla|nodejs|process)_\w+)(\{[^}]*\})?/g)];
      assert.ok(used.length > 0, `names no charla, nodejs or process metric: ${q}`);
      for (const [, name, selector] of used) {
        assert.ok(series.has(name as string), `${name} is not exported by /metrics (in: ${q})`);
        for (const [, label] of (selector ?? '').matchAll(/(\w+)\s*[=!]~?"/g)) {
          assert.ok(
            series.get(name as string)?.has(label as string),
            `${name} has no label ${label} (in: ${q})`,
          );
        }
      }
      for (const [, label] of q.matchAll(/\bby \(([^)]*)\)/g)) {
        for (const l of (label as string).split(',').map((s) => s.trim())) {
          assert.ok(
            used.some(([, name]) => series.get(name as string)?.has(l)),
            `no metric of "${q}" has the label ${l}`,
          );
        }
      }
    }
  });
});
