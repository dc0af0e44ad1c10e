/**
 * Webhooks from charla as its own process: a node SIGKILLed in the middle of
 * deliveries loses none of its events (they go out after the restart, with
 * the ids they had), and three nodes on one PostgreSQL send each event once.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import {
  API_KEY,
  api,
  type ChildServer,
  SECRET,
  sleep,
  spawnServer,
  tempDir,
  userToken,
} from './helpers.js';
import { RequestClient } from './request-client.js';
import { requireServices, tempSchema } from './services.js';
import { WebhookReceiver } from './webhook-receiver.js';

const dir = tempDir();
after(() => rmSync(dir, { recursive: true, force: true }));

const webhookEnv = (receiver: WebhookReceiver) => ({
  JWT_SECRET: SECRET,
  API_KEY,
  WEBHOOK_URL: receiver.url,
  WEBHOOK_SECRET: receiver.secret,
  WEBHOOK_RETRY_BASE_SECONDS: '0.05',
  WEBHOOK_RETRY_MAX_SECONDS: '0.5',
  WEBHOOK_MAX_ATTEMPTS: '50',
  WEBHOOK_POLL_MS: '50',
  WEBHOOK_UNREAD_AFTER_SECONDS: '3600',
  REQUEST_RATE_LIMIT: '1000/1s',
  FLOOD_LIMIT: '5000',
});

/** A teacher on `node` sends `n` messages to `requestId`; resolves with the acknowledged ids. */
async function sendMessages(node: ChildServer, requestId: string, n: number, tag: string) {
  const teacher = await RequestClient.connect(node.url, await userToken('1', { role: 'TEACHER' }));
  try {
    assert.equal((await teacher.ask('joinRoom', { requestId })).ok, true);
    const acks = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        teacher.ask('message', { requestId, message: `${tag} ${i}` }),
      ),
    );
    assert.ok(acks.every((a) => a.ok));
    return acks.map((a) => a.message._id as string);
  } finally {
    teacher.close();
  }
}

describe('webhooks across a SIGKILL', () => {
  it('events being sent and queued when the node is killed are delivered after the restart', async (t) => {
    // Every attempt hangs until the sender's timeout: the kill lands mid-delivery.
    const receiver = await WebhookReceiver.start({ faults: { hang: 1 } });
    const env = {
      ...webhookEnv(receiver),
      DATABASE_URL: `sqlite:${join(dir, 'kill.db')}`,
      WEBHOOK_TIMEOUT_MS: '5000',
      WEBHOOK_CONCURRENCY: '4',
    };
    const first = await spawnServer(env);
    const requestId = '6751b6df1ad14eaa13a0ff01';
    let second: ChildServer | undefined;
    try {
      await api(first.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 });
      const sent = await sendMessages(first, requestId, 20, 'before the kill');
      await receiver.until(() => receiver.attempts.length >= 4, 'deliveries under way', 5_000);
      const hung = new Set(receiver.attempts.map((a) => a.id));
      first.child.kill('SIGKILL');
      await first.stop();
      t.diagnostic(`${hung.size} deliveries under way at the kill, ${sent.length} events stored`);

      receiver.faults = {};
      second = await spawnServer(env);
      await receiver.until(
        () => receiver.deliveredOf('request.message.created').length === sent.length,
        'every event after the restart',
      );
      assert.deepEqual(
        receiver
          .deliveredOf('request.message.created')
          .map((a) => a.event.data._id)
          .sort(),
        [...sent].sort(),
      );
      for (const id of hung) {
        assert.ok(receiver.delivered().has(id), `${id}, cut by the kill, is sent with its id`);
      }
      assert.deepEqual(receiver.rejected, []);
    } finally {
      if (first.child.exitCode === null && first.child.signalCode === null)
        first.child.kill('SIGKILL');
      if (second) assert.equal(await second.stop(), 0);
      await receiver.close();
    }
  });
});

describe('webhooks across a SIGTERM', () => {
  it('cuts the sends under way, exits 0 well before their timeout, and sends them after the restart', async () => {
    const receiver = await WebhookReceiver.start({ faults: { hang: 1 } });
    const env = {
      ...webhookEnv(receiver),
      DATABASE_URL: `sqlite:${join(dir, 'term.db')}`,
      WEBHOOK_TIMEOUT_MS: '8000',
    };
    const first = await spawnServer(env);
    const requestId = '6751b6df1ad14eaa13a0ff04';
    let second: ChildServer | undefined;
    try {
      await api(first.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 });
      const sent = await sendMessages(first, requestId, 5, 'before the stop');
      await receiver.until(() => receiver.attempts.length >= 5, 'deliveries under way', 5_000);
      const started = Date.now();
      assert.equal(await first.stop('SIGTERM'), 0);
      const took = Date.now() - started;
      assert.ok(took < 4_000, `stopped in ${took} ms, not after the 8 s send timeout`);
      receiver.faults = {};
      second = await spawnServer(env);
      await receiver.until(
        () => receiver.deliveredOf('request.message.created').length === sent.length,
        'every event after the restart',
      );
      const ids = new Set(receiver.attempts.map((a) => a.id));
      assert.equal(ids.size, sent.length, 'the same webhook-ids before and after');
    } finally {
      if (second) assert.equal(await second.stop(), 0);
      await receiver.close();
    }
  });
});

if (await requireServices('postgres')) {
  describe('webhooks from three nodes on PostgreSQL', () => {
    it('send each event once', async (t) => {
      const receiver = await WebhookReceiver.start();
      const schema = await tempSchema();
      const env = { ...webhookEnv(receiver), DATABASE_URL: schema.url, WEBHOOK_TIMEOUT_MS: '5000' };
      const nodes: ChildServer[] = [];
      try {
        for (let i = 0; i < 3; i++) nodes.push(await spawnServer(env));
        const requestId = '6751b6df1ad14eaa13a0ff02';
        await api(nodes[0]?.url as string, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 });
        const sent = (
          await Promise.all(nodes.map((n, i) => sendMessages(n, requestId, 40, `node ${i}`)))
        ).flat();
        for (const [i, n] of nodes.entries()) {
          await api(n.url, 'PUT', `/api/streams/s${i}`, {});
          await api(n.url, 'DELETE', `/api/streams/s${i}`);
        }
        const expected = sent.length + nodes.length;
        await receiver.until(() => receiver.delivered().size === expected, 'every event');
        // Time for a second copy, if any node were to send one.
        await sleep(1_000);
        const counts = [...receiver.okCounts().values()];
        t.diagnostic(`${receiver.attempts.length} attempts for ${expected} events`);
        assert.equal(receiver.delivered().size, expected);
        assert.deepEqual(
          counts.filter((c) => c !== 1),
          [],
          'no event sent twice',
        );
        assert.equal(receiver.attempts.length, expected, 'one attempt per event');
        assert.deepEqual(
          receiver
            .deliveredOf('request.message.created')
            .map((a) => a.event.data._id)
            .sort(),
          [...sent].sort(),
        );
        assert.deepEqual(receiver.rejected, []);
      } finally {
        await Promise.all(nodes.map((n) => n.stop()));
        await receiver.close();
        await schema.drop();
      }
    });

    it('a node killed mid-delivery: another sends its events once the leases run out', async (t) => {
      // Attempts hang past the 1 s timeout until the kill; a lease is 2 × 1 s + 5 s.
      const receiver = await WebhookReceiver.start({ faults: { hang: 1 } });
      const schema = await tempSchema();
      const env = { ...webhookEnv(receiver), DATABASE_URL: schema.url, WEBHOOK_TIMEOUT_MS: '1000' };
      const [victim, survivor] = [await spawnServer(env), await spawnServer(env)];
      try {
        const requestId = '6751b6df1ad14eaa13a0ff03';
        await api(victim.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 });
        const sent = await sendMessages(victim, requestId, 20, 'doomed node');
        await receiver.until(() => receiver.attempts.length >= 1, 'a delivery under way', 5_000);
        victim.child.kill('SIGKILL');
        await victim.stop();
        const killedAt = Date.now();
        receiver.faults = {};
        await receiver.until(
          () => receiver.deliveredOf('request.message.created').length === sent.length,
          'every event from the surviving node',
          30_000,
        );
        t.diagnostic(`all delivered ${Date.now() - killedAt} ms after the kill`);
        assert.deepEqual(
          receiver
            .deliveredOf('request.message.created')
            .map((a) => a.event.data._id)
            .sort(),
          [...sent].sort(),
        );
      } finally {
        if (victim.child.exitCode === null && victim.child.signalCode === null) {
          victim.child.kill('SIGKILL');
        }
        assert.equal(await survivor.stop(), 0);
        await receiver.close();
        await schema.drop();
      }
    });
  });
}
