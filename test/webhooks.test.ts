/**
 * Webhooks (protocol section 9) from a real charla on SQLite to a real
 * receiver that verifies every signature with `standardwebhooks` and fails,
 * drops or times out at random: what must arrive, once or more, with the same
 * `webhook-id` and body on every attempt; unread events; the failed-event API.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { streamEvents } from '../src/core/webhook-events.js';
import { retryDelayMs, retryScheduleMs } from '../src/core/webhooks.js';
import { api, StreamClient, sleep, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';
import { type Faults, WebhookReceiver } from './webhook-receiver.js';

const open: Array<{ close(): unknown }> = [];
after(async () => {
  for (const x of open.reverse()) await x.close();
});

/** A server whose webhooks go to a fresh receiver; fast schedule unless `env` says otherwise. */
async function setup(faults: Faults = {}, env: Record<string, string> = {}) {
  const receiver = await WebhookReceiver.start({ faults });
  const server = await startServer({
    WEBHOOK_URL: receiver.url,
    WEBHOOK_SECRET: receiver.secret,
    WEBHOOK_RETRY_BASE_SECONDS: '0.05',
    WEBHOOK_RETRY_MAX_SECONDS: '0.4',
    WEBHOOK_MAX_ATTEMPTS: '40',
    WEBHOOK_TIMEOUT_MS: '300',
    WEBHOOK_POLL_MS: '50',
    REQUEST_RATE_LIMIT: '1000/1s',
    FLOOD_LIMIT: '5000',
    ...env,
  });
  open.push(receiver, server);
  return { receiver, server };
}

async function conversation(server: TestServer, requestId: string) {
  await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' });
  const teacher = await RequestClient.connect(
    server.url,
    await userToken('1', { role: 'TEACHER' }),
  );
  const lab = await RequestClient.connect(server.url, await userToken('2', { role: 'LAB' }));
  open.push({ close: () => teacher.close() }, { close: () => lab.close() });
  for (const c of [teacher, lab]) assert.equal((await c.ask('joinRoom', { requestId })).ok, true);
  const send = async (text: string, clientMessageId?: string) => {
    const ack = await teacher.ask('message', { requestId, message: text, clientMessageId });
    assert.equal(ack.ok, true);
    return ack.message as { _id: string };
  };
  const read = async (ids: string[]) => {
    const ack = await lab.ask('readMessages', { requestId, messages: ids });
    assert.equal(ack.ok, true);
    return ack as { messages: string[]; at: string };
  };
  return { teacher, lab, send, read };
}

describe('webhooks', () => {
  it('every event arrives at least once through 500s, drops and timeouts, same id and body on each attempt', async (t) => {
    const { receiver, server } = await setup({ error500: 0.25, drop: 0.1, hang: 0.1 });
    receiver.script = ['hang', 'error500', 'drop'];
    t.diagnostic(`receiver seed ${receiver.seed}`);
    const requestId = '6751b6df1ad14eaa13a0ee01';
    const chat = await conversation(server, requestId);
    const sent: string[] = [];
    for (let i = 0; i < 30; i++) sent.push((await chat.send(`m${i}`, `c${i}`))._id);
    // A retried clientMessageId is the same message: no second event.
    await chat.send('m0', 'c0');
    const reads = [await chat.read(sent.slice(0, 10)), await chat.read(sent.slice(5, 20))];
    assert.deepEqual(
      reads.map((r) => r.messages.length),
      [10, 10],
    );
    assert.equal((await api(server.url, 'PUT', '/api/streams/live', {})).status, 201);
    assert.equal((await api(server.url, 'DELETE', '/api/streams/live')).status, 200);
    assert.equal((await api(server.url, 'DELETE', '/api/streams/live')).status, 200);

    await receiver.until(
      () =>
        receiver.deliveredOf('request.message.created').length === 30 &&
        receiver.deliveredOf('request.message.read').length === 2 &&
        receiver.deliveredOf('stream.ended').length === 1,
      'every event',
    );
    await sleep(300);
    assert.deepEqual(receiver.rejected, [], 'every signature verifies');
    const created = receiver.deliveredOf('request.message.created');
    assert.deepEqual(created.map((a) => a.event.data._id).sort(), [...sent].sort());
    assert.equal(created.length, 30, 'one event per message, none for the retried one');
    const message = created.find((a) => a.event.data._id === sent[0])?.event;
    assert.equal(message?.type, 'request.message.created');
    assert.deepEqual(
      { ...message?.data, createdAt: undefined },
      {
        _id: sent[0],
        requestId,
        sender: { id: '1', username: 'user1', role: 'TEACHER' },
        message: 'm0',
        createdAt: undefined,
        attachments: [],
        deliveredTo: [],
        readBy: [],
      },
    );
    assert.equal(message?.timestamp, message?.data.createdAt);
    const readData = receiver
      .deliveredOf('request.message.read')
      .map((a) => a.event.data)
      .sort((a, b) => a.at.localeCompare(b.at));
    assert.deepEqual(
      readData,
      reads.map((r) => ({ requestId, userId: '2', messages: r.messages, at: r.at })),
    );
    assert.deepEqual(
      receiver.deliveredOf('stream.ended').map((a) => a.event.data),
      [{ key: 'live' }],
      'ending an ended stream again is no new event',
    );

    // Retries: the same webhook-id carries the same bytes every time.
    const bodies = new Map<string, Set<string>>();
    for (const a of receiver.attempts) {
      bodies.set(a.id, (bodies.get(a.id) ?? new Set()).add(a.body));
    }
    assert.ok(
      [...bodies.values()].every((b) => b.size === 1),
      'one body per webhook-id',
    );
    const retried = [...receiver.okCounts().keys()].filter(
      (id) => receiver.attempts.filter((a) => a.id === id).length > 1,
    );
    t.diagnostic(`${receiver.attempts.length} attempts, ${retried.length} events retried`);
    assert.ok(retried.length > 0, 'some events needed retries');
    for (const answer of ['hang', 'error500', 'drop'] as const) {
      assert.ok(
        receiver.attempts.some((a) => a.answer === answer),
        `some attempts got ${answer}`,
      );
    }
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /charla_webhook_deliveries_total\{result="delivered"\} 33/);
    assert.match(metrics, /charla_webhook_deliveries_total\{result="retry"\} [1-9]/);
    assert.match(metrics, /charla_webhook_queue_depth \d+/);
  });

  it('sends request.message.unread for a message nobody read in time, and not for one read', async () => {
    const { receiver, server } = await setup({}, { WEBHOOK_UNREAD_AFTER_SECONDS: '1.5' });
    const chat = await conversation(server, '6751b6df1ad14eaa13a0ee02');
    const read = await chat.send('read me');
    const unread = await chat.send('nobody reads me');
    const late = await chat.send('read too late');
    const deleted = await chat.send('deleted before anyone read it');
    const removed = await chat.teacher.ask('deleteMessage', {
      requestId: '6751b6df1ad14eaa13a0ee02',
      messageId: deleted._id,
    });
    assert.equal(removed.ok, true);
    await chat.read([read._id]);
    await receiver.until(
      () => receiver.deliveredOf('request.message.unread').length >= 2,
      'the unread events',
      5_000,
    );
    await chat.read([late._id]);
    await sleep(500);
    const unreadIds = receiver.deliveredOf('request.message.unread').map((a) => a.event.data._id);
    assert.deepEqual(unreadIds.sort(), [unread._id, late._id].sort(), 'none for the deleted one');
    const event = receiver.deliveredOf('request.message.unread')[0]?.event;
    assert.equal(event?.data.requestId, '6751b6df1ad14eaa13a0ee02');
    assert.equal(
      event?.data.message === 'nobody reads me' || event?.data.message === 'read too late',
      true,
    );
    // The event's timestamp is when it became due: stored time plus the delay.
    const due = Date.parse(event?.data.createdAt) + 1500;
    assert.equal(Date.parse(event?.timestamp), due);
  });

  it('keeps an event that ran out of attempts as failed; the API sends it again with the same id', async () => {
    const { receiver, server } = await setup(
      { error500: 1 },
      { WEBHOOK_MAX_ATTEMPTS: '3', WEBHOOK_UNREAD_AFTER_SECONDS: '0' },
    );
    const chat = await conversation(server, '6751b6df1ad14eaa13a0ee03');
    const m = await chat.send('hola');
    let failed: any;
    await receiver.until(() => receiver.attempts.length >= 3, 'three attempts', 5_000);
    const deadline = Date.now() + 5_000;
    while (Date.now() < deadline) {
      failed = await api(server.url, 'GET', '/api/webhooks/failed');
      if (failed.body.events?.length === 1) break;
      await sleep(50);
    }
    assert.equal(failed.status, 200);
    const [event] = failed.body.events;
    assert.equal(event.type, 'request.message.created');
    assert.equal(event.attempts, 3);
    assert.equal(event.lastError, 'HTTP 500');
    assert.ok(Date.parse(event.lastAttemptAt) > 0);
    assert.equal(event.payload.type, 'request.message.created');
    assert.equal(event.payload.data._id, m._id);
    assert.match(event.id, /^msg_[0-9a-f]{32}$/);
    await sleep(300);
    assert.equal(receiver.attempts.length, 3, 'no attempt after the last');
    assert.ok(receiver.attempts.every((a) => a.id === event.id));

    assert.equal(
      (await api(server.url, 'GET', '/api/webhooks/failed', undefined, null)).status,
      401,
    );
    assert.equal((await api(server.url, 'GET', '/api/webhooks/failed?limit=0')).status, 400);
    const unknown = await api(server.url, 'POST', '/api/webhooks/failed/msg_nope/retry');
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error_code, 'not_found');

    // A retry that fails again puts it back on the list after one more attempt.
    assert.equal(
      (await api(server.url, 'POST', `/api/webhooks/failed/${event.id}/retry`)).status,
      202,
    );
    await receiver.until(() => receiver.attempts.length === 4, 'the retried attempt', 5_000);
    await sleep(200);
    const again = await api(server.url, 'GET', '/api/webhooks/failed');
    assert.deepEqual(
      again.body.events.map((e: any) => [e.id, e.attempts]),
      [[event.id, 4]],
    );

    receiver.faults = {};
    assert.equal(
      (await api(server.url, 'POST', `/api/webhooks/failed/${event.id}/retry`)).status,
      202,
    );
    await receiver.until(() => receiver.delivered().has(event.id), 'the delivery', 5_000);
    await sleep(100);
    assert.deepEqual((await api(server.url, 'GET', '/api/webhooks/failed')).body.events, []);
    assert.equal(
      await server.app.store.webhookQueueDepth(new Date(Date.now() + 1e9).toISOString()),
      0,
      'WEBHOOK_UNREAD_AFTER_SECONDS=0: no unread check was stored',
    );
    const bodies = new Set(receiver.attempts.map((a) => a.body));
    assert.equal(bodies.size, 1, 'the same body on every attempt');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /charla_webhook_deliveries_total\{result="failed"\} 2/);
    assert.match(metrics, /charla_webhook_deliveries_total\{result="delivered"\} 1/);
  });

  it('sends stream.message.deleted, stream.user.banned and stream.user.timed_out for moderation', async () => {
    const { receiver, server } = await setup();
    assert.equal((await api(server.url, 'PUT', '/api/streams/mod', { ownerId: '1' })).status, 201);
    const c = await StreamClient.connect(server.wsUrl, 'mod', { token: await userToken('5') });
    open.push({ close: () => c.close() });
    await c.next('auth');
    c.chat('spam');
    const { id } = (await c.next('chat')).data;
    assert.equal((await api(server.url, 'DELETE', `/api/streams/mod/messages/${id}`)).status, 200);
    // Deleting it again changes nothing: success, and no second event.
    assert.equal((await api(server.url, 'DELETE', `/api/streams/mod/messages/${id}`)).status, 200);
    assert.equal(
      (await api(server.url, 'PUT', '/api/streams/mod/bans/5', { reason: 'spam' })).status,
      200,
    );
    assert.equal(
      (await api(server.url, 'PUT', '/api/streams/mod/bans/6', { seconds: 60 })).status,
      200,
    );
    // An unban is no webhook event.
    assert.equal((await api(server.url, 'DELETE', '/api/streams/mod/bans/6')).status, 200);
    await receiver.until(() => receiver.delivered().size >= 3, 'the moderation events', 5_000);
    await sleep(200);
    const events = [...receiver.delivered().values()].map((a) => [a.event.type, a.event.data]);
    assert.deepEqual(
      events.sort((a, b) => String(a[0]).localeCompare(String(b[0]))),
      [
        ['stream.message.deleted', { key: 'mod', id, by: 'api' }],
        ['stream.user.banned', { key: 'mod', userId: '5', by: 'api', reason: 'spam' }],
        ['stream.user.timed_out', { key: 'mod', userId: '6', by: 'api', seconds: 60 }],
      ],
    );
  });

  it('sends the moderation events committed through the typed builders and enqueue', async () => {
    const { receiver, server } = await setup();
    const webhooks = server.app.webhooks;
    assert.ok(webhooks);
    await server.app.store.enqueueWebhooks([
      streamEvents.messageDeleted({ key: 'live', id: 'm1', by: '9' }),
      streamEvents.userBanned({ key: 'live', userId: '5', by: '9', reason: 'spam' }),
    ]);
    await webhooks.enqueue('stream.user.timed_out', {
      key: 'live',
      userId: '6',
      by: '9',
      seconds: 60,
    });
    await receiver.until(() => receiver.delivered().size === 3, 'the three events', 5_000);
    const byType = Object.fromEntries(
      [...receiver.delivered().values()].map((a) => [a.event.type, a.event.data]),
    );
    assert.deepEqual(byType, {
      'stream.message.deleted': { key: 'live', id: 'm1', by: '9' },
      'stream.user.banned': { key: 'live', userId: '5', by: '9', reason: 'spam' },
      'stream.user.timed_out': { key: 'live', userId: '6', by: '9', seconds: 60 },
    });
  });

  it('retries after WEBHOOK_RETRY_BASE_SECONDS, not at the next poll', async () => {
    const { receiver, server } = await setup(
      {},
      {
        WEBHOOK_RETRY_BASE_SECONDS: '0.3',
        WEBHOOK_RETRY_MAX_SECONDS: '10',
        WEBHOOK_POLL_MS: '5000',
      },
    );
    receiver.script = ['error500'];
    const chat = await conversation(server, '6751b6df1ad14eaa13a0ee05');
    await chat.send('hola');
    await receiver.until(() => receiver.delivered().size === 1, 'the retried event', 4_000);
    const [first, second] = receiver.attempts;
    assert.equal(first?.answer, 'error500');
    assert.equal(second?.id, first?.id);
    const waited = (second?.at ?? 0) - (first?.at ?? 0);
    assert.ok(waited >= 300, `retried after ${waited} ms, before the base`);
    assert.ok(waited < 1_500, `retried after ${waited} ms, with the next poll 5 s away`);
  });

  it('without WEBHOOK_URL stores no events and the API says so', async () => {
    const server = await startServer();
    open.push(server);
    const chat = await conversation(server, '6751b6df1ad14eaa13a0ee04');
    await chat.send('hola');
    const res = await api(server.url, 'GET', '/api/webhooks/failed');
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { events: [] });
    const retry = await api(server.url, 'POST', '/api/webhooks/failed/msg_none/retry');
    assert.equal(retry.status, 404);
    assert.equal(
      await server.app.store.webhookQueueDepth(new Date(Date.now() + 1e9).toISOString()),
      0,
    );
  });
});

describe('retry schedule', () => {
  it('doubles from the base with jitter, capped, and with the defaults lasts a few hours', () => {
    assert.equal(
      retryDelayMs(1, 10_000, 3_600_000, () => 0),
      10_000,
      'never before the base',
    );
    assert.equal(
      retryDelayMs(1, 10_000, 3_600_000, () => 0.5),
      11_250,
    );
    assert.equal(
      retryDelayMs(2, 10_000, 3_600_000, () => 0),
      20_000,
    );
    assert.equal(
      retryDelayMs(4, 10_000, 3_600_000, () => 0.99),
      99_800,
    );
    assert.equal(
      retryDelayMs(30, 10_000, 3_600_000, () => 0.99),
      3_600_000,
    );
    // 10 s, 20 s, … 2560 s, then 3600 s twice: 11 waits between 12 attempts.
    assert.equal(retryScheduleMs(12, 10_000, 3_600_000), 12_310_000);
  });
});
