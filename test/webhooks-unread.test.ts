/**
 * `request.message.unread` carries the message as it is when the event is
 * sent: edited text and `editedAt`, not the text as first stored; nothing for
 * a deleted message. From a real charla on SQLite and on PostgreSQL to a real
 * receiver that verifies every signature, failing each reminder's first
 * attempt so that the retry shows the same body under the same `webhook-id`.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { startServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';
import { requireServices, tempSchema } from './services.js';
import { WebhookReceiver } from './webhook-receiver.js';

const open: Array<{ close(): unknown }> = [];
after(async () => {
  for (const x of open.reverse()) await x.close();
});

async function editedReminders(databaseUrl?: string) {
  const receiver = await WebhookReceiver.start();
  open.push(receiver);
  const server = await startServer({
    WEBHOOK_URL: receiver.url,
    WEBHOOK_SECRET: receiver.secret,
    WEBHOOK_RETRY_BASE_SECONDS: '0.05',
    WEBHOOK_RETRY_MAX_SECONDS: '0.2',
    WEBHOOK_POLL_MS: '50',
    WEBHOOK_UNREAD_AFTER_SECONDS: '1.5',
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
  });
  open.push(server);
  const requestId = '6751b6df1ad14eaa13a0ee21';
  const put = await fetch(`${server.url}/api/requests/${requestId}`, {
    method: 'PUT',
    headers: { 'x-api-key': 'test-api-key', 'content-type': 'application/json' },
    body: JSON.stringify({ ownerId: '1' }),
  });
  assert.equal(put.status, 201);
  const teacher = await RequestClient.connect(
    server.url,
    await userToken('1', { role: 'TEACHER' }),
  );
  open.push({ close: () => teacher.close() });
  assert.equal((await teacher.ask('joinRoom', { requestId })).ok, true);
  const send = async (message: string) => {
    const ack = await teacher.ask('message', { requestId, message });
    assert.equal(ack.ok, true);
    return ack.message as { _id: string; createdAt: string };
  };
  const edited = await send('first draft');
  const untouched = await send('as sent');
  const deleted = await send('sent by mistake');
  const edit = await teacher.ask('editMessage', {
    requestId,
    messageId: edited._id,
    message: 'final text',
  });
  assert.equal(edit.ok, true);
  const again = await teacher.ask('editMessage', {
    requestId,
    messageId: edited._id,
    message: 'final text, really',
  });
  assert.equal(again.ok, true);
  const removed = await teacher.ask('deleteMessage', { requestId, messageId: deleted._id });
  assert.equal(removed.ok, true);

  await receiver.until(
    () => receiver.deliveredOf('request.message.created').length === 3,
    'the created events',
    10_000,
  );
  // The next two attempts, the unread events' first, fail: the retry must send the same bytes.
  receiver.script = ['error500', 'error500'];
  const unread = () => receiver.deliveredOf('request.message.unread');
  await receiver.until(() => unread().length >= 2, 'the unread events', 10_000);
  // A barrier: created events of later messages arrive after any late unread one.
  const marker = await send('marker');
  await receiver.until(
    () =>
      receiver.deliveredOf('request.message.created').some((a) => a.event.data._id === marker._id),
    'the marker',
    10_000,
  );
  assert.deepEqual(receiver.rejected, [], 'every signature verifies');
  const byId = new Map(unread().map((a) => [a.event.data._id, a.event.data]));
  assert.deepEqual(
    [...byId.keys()].sort(),
    [edited._id, untouched._id].sort(),
    'none for the deleted one',
  );
  const last = again.message as { editedAt: string };
  assert.equal(byId.get(edited._id)?.message, 'final text, really', 'the text as edited');
  assert.equal(byId.get(edited._id)?.editedAt, last.editedAt);
  assert.equal(byId.get(edited._id)?.createdAt, edited.createdAt);
  assert.equal(byId.get(untouched._id)?.message, 'as sent');
  assert.equal(byId.get(untouched._id)?.editedAt, undefined);
  // The created event keeps the message as it was stored.
  const created = receiver
    .deliveredOf('request.message.created')
    .find((a) => a.event.data._id === edited._id);
  assert.equal(created?.event.data.message, 'first draft');
  // Retries: one body per webhook-id, the failed first attempt included.
  const bodies = new Map<string, Set<string>>();
  for (const a of receiver.attempts) bodies.set(a.id, (bodies.get(a.id) ?? new Set()).add(a.body));
  const unreadIds = unread().map((a) => a.id);
  for (const id of unreadIds) assert.equal(bodies.get(id)?.size, 1, `one body for ${id}`);
  assert.ok(
    receiver.attempts.some((a) => unreadIds.includes(a.id) && a.answer === 'error500'),
    'an unread event was retried',
  );
}

describe('request.message.unread after an edit', () => {
  it('carries the edited message on SQLite', () => editedReminders());
});

if (await requireServices('postgres')) {
  describe('request.message.unread after an edit on PostgreSQL', () => {
    it('carries the edited message', async () => {
      const schema = await tempSchema();
      try {
        await editedReminders(schema.url);
      } finally {
        while (open.length > 0) await open.pop()?.close();
        await schema.drop();
      }
    });
  });
}
