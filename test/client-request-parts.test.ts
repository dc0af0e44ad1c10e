/**
 * RequestChat's parts with no socket: the history merge of a room
 * (src/client/request-history.ts) and the pending-send queue
 * (src/client/request-outbox.ts), driven by a scripted host that answers
 * each `message` as the test says. The whole client against a real charla is
 * in test/client-request.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BoundedSet, ChatClientError, type RequestMessage } from '../src/client/index.js';
import type { Answer } from '../src/client/request-answer.js';
import { catchUp, RoomMessages } from '../src/client/request-history.js';
import {
  type MessagePayload,
  Outbox,
  OutboxBudget,
  type OutboxHost,
  packetBytes,
} from '../src/client/request-outbox.js';

const R = 'a'.repeat(24);

function msg(id: string, second: number, text = id): RequestMessage {
  return {
    _id: id,
    requestId: R,
    sender: { id: '1', username: 'ana', role: 'TEACHER' },
    message: text,
    createdAt: new Date(Date.UTC(2026, 0, 1, 0, 0, second)).toISOString(),
    deliveredTo: [],
    readBy: [],
  };
}

describe('RoomMessages', () => {
  it('merges pages and live messages once each, in server order, and says what was new', () => {
    const seen = new BoundedSet<string>(100);
    const room = new RoomMessages(10, seen);
    assert.deepEqual(
      room.merge([msg('b', 2), msg('a', 1)]).map((m) => m._id),
      ['a', 'b'],
    );
    // A re-join's page repeats what is held and brings what was missed.
    assert.deepEqual(
      room.merge([msg('b', 2), msg('d', 4), msg('c', 3)]).map((m) => m._id),
      ['c', 'd'],
    );
    assert.deepEqual(
      room.all().map((m) => m._id),
      ['a', 'b', 'c', 'd'],
    );
    // Same second: ties go by id, as the server orders them.
    room.merge([msg('e2', 5), msg('e1', 5)]);
    assert.deepEqual(
      room.all().map((m) => m._id),
      ['a', 'b', 'c', 'd', 'e1', 'e2'],
    );
    assert.equal(seen.has('e2'), true);
    assert.equal(room.oldest()?._id, 'a');
    // Nothing without an id gets in.
    assert.deepEqual(room.merge([null as unknown as RequestMessage, { _id: 7 } as never]), []);
    assert.equal(room.all().length, 6);
  });

  it('keeps the newest `limit` messages and then knows older ones exist', () => {
    const room = new RoomMessages(3, new BoundedSet(100));
    room.merge([msg('a', 1), msg('b', 2), msg('c', 3)]);
    assert.equal(room.hasMore, false);
    room.merge([msg('d', 4)]);
    assert.deepEqual(
      room.all().map((m) => m._id),
      ['b', 'c', 'd'],
    );
    assert.equal(room.hasMore, true);
  });

  it('records a receipt once per user, blanks a deleted message, takes edits only of held ones', () => {
    const room = new RoomMessages(10, new BoundedSet(100));
    room.merge([msg('a', 1), msg('b', 2)]);
    const read = { requestId: R, userId: '2', messages: ['a', 'zz'], at: 'T1' };
    room.applyReceipts(read, 'readBy');
    room.applyReceipts({ ...read, at: 'T2' }, 'readBy');
    assert.deepEqual(room.all()[0]?.readBy, [{ userId: '2', at: 'T1' }]);
    room.applyReceipts({ ...read, messages: 'a' as never }, 'readBy');
    assert.equal(room.all()[0]?.readBy.length, 1);

    room.update({ ...msg('b', 2, 'edited'), editedAt: 'T3' });
    room.update(msg('x', 9));
    assert.equal(room.all()[1]?.message, 'edited');
    assert.equal(room.all().length, 2);

    room.merge([
      { ...msg('c', 3), attachments: [{ url: 'u', name: 'n', contentType: 't', size: 1 }] },
    ]);
    room.removed({ requestId: R, messageId: 'c', deletedAt: 'T4' });
    const c = room.all()[2];
    assert.deepEqual([c?.message, c?.attachments, c?.deletedAt], ['', [], 'T4']);
  });

  it('catches up after a re-join by paging back until it reaches what it held', async () => {
    const room = { requestId: R, messages: new RoomMessages(50, new BoundedSet(100)) };
    room.messages.merge([msg('a', 1)]);
    const held = room.messages.ids();
    const pages: Record<string, RequestMessage[]> = {
      d: [msg('b', 2), msg('c', 3)],
      b: [msg('a', 1)],
    };
    const asked: unknown[] = [];
    const ask = async (event: string, payload: object): Promise<Answer> => {
      asked.push([event, payload]);
      const before = (payload as { before: string }).before;
      return { ok: true, messages: pages[before] ?? [], hasMore: true };
    };
    const newest = { messages: [msg('d', 4), msg('e', 5)], hasMore: true };
    const { older, gap } = await catchUp(ask, R, newest, held, 5);
    assert.deepEqual(
      older.map((m) => m._id),
      ['a', 'b', 'c'],
    );
    assert.equal(gap, false);
    // Nothing is merged by the catch-up itself: one cut short leaves what is held as it was.
    assert.deepEqual(
      room.messages.all().map((m) => m._id),
      ['a'],
    );
    const added = room.messages.merge(older.concat(newest.messages));
    assert.deepEqual(
      added.map((m) => m._id),
      ['b', 'c', 'd', 'e'],
    );
    // It stopped at the page that holds `a`, the message it already had.
    assert.deepEqual(asked, [
      ['loadHistory', { requestId: R, before: 'd' }],
      ['loadHistory', { requestId: R, before: 'b' }],
    ]);
    assert.deepEqual(
      room.messages.all().map((m) => m._id),
      ['a', 'b', 'c', 'd', 'e'],
    );
  });

  it('says gap when more were missed than maxPages pages, and records edits and deletions of held ones', async () => {
    const room = { requestId: R, messages: new RoomMessages(50, new BoundedSet(100)) };
    room.messages.merge([msg('a', 1), msg('b', 2), msg('c', 3)]);
    const held = room.messages.ids();
    const ask = async (_event: string, payload: object): Promise<Answer> => {
      const before = (payload as { before: string }).before;
      return before === 'g'
        ? { ok: true, messages: [msg('e', 5), msg('f', 6)], hasMore: true }
        : { ok: true, messages: [msg('d', 4)], hasMore: true };
    };
    const newest = { messages: [msg('g', 7), msg('h', 8)], hasMore: true };
    const short = await catchUp(ask, R, newest, held, 1);
    room.messages.merge(short.older.concat(newest.messages));
    assert.deepEqual(
      short.older.map((m) => m._id),
      ['e', 'f'],
    );
    assert.equal(short.gap, true, 'd was never fetched');

    const changes = { edited: [] as RequestMessage[], deleted: [] as RequestMessage[] };
    const added = room.messages.merge(
      [
        { ...msg('a', 1, 'edited'), editedAt: 'T1' },
        { ...msg('b', 2, ''), deletedAt: 'T2' },
        msg('c', 3),
      ],
      changes,
    );
    assert.deepEqual(added, []);
    assert.deepEqual(
      changes.edited.map((m) => m.message),
      ['edited'],
    );
    assert.deepEqual(
      changes.deleted.map((m) => m._id),
      ['b'],
    );
    room.messages.drop(held);
    assert.deepEqual(
      room.messages.all().map((m) => m._id),
      ['e', 'f', 'g', 'h'],
    );
    assert.equal(room.messages.hasMore, true);
  });
});

/** A host whose `ask` waits for the test to answer each `message`, one at a time. */
function scriptedHost(over: Partial<OutboxHost> = {}) {
  const calls: Array<{ payload: MessagePayload; answer: (a: Answer | undefined) => void }> = [];
  const stored: RequestMessage[] = [];
  let rejoins = 0;
  const host: OutboxHost = {
    canSend: () => true,
    connected: () => true,
    ask: (_event, payload) =>
      new Promise<Answer>((resolve, reject) =>
        calls.push({
          payload: payload as MessagePayload,
          answer: (a) => (a === undefined ? reject(new Error('no ack')) : resolve(a)),
        }),
      ),
    stored: (m) => {
      stored.push(m);
    },
    rejoin: () => {
      rejoins++;
    },
    later: (_ms, fn) => queueMicrotask(fn),
    ...over,
  };
  return { host, calls, stored, rejoins: () => rejoins };
}

const payload = (id: string): MessagePayload => ({
  requestId: R,
  message: id,
  clientMessageId: `cm-${id}`,
});
const turn = () => new Promise((r) => setImmediate(r));
const limits = (budget: OutboxBudget) => ({
  budget,
  maxAttempts: 3,
  timeoutMs: 60_000,
  maxPacketBytes: 65_536,
});

describe('Outbox', () => {
  it('sends one message at a time, in order, and resolves each with the stored copy', async () => {
    const { host, calls, stored } = scriptedHost();
    const box = new Outbox(host, {
      budget: new OutboxBudget(10),
      maxAttempts: 3,
      timeoutMs: 60_000,
      maxPacketBytes: 65_536,
    });
    const first = box.add(payload('1'));
    const second = box.add(payload('2'));
    assert.equal(calls.length, 1, 'the second waits for the first');
    calls[0]?.answer({ ok: true, message: msg('m1', 1, '1') });
    assert.equal((await first)._id, 'm1');
    await turn();
    assert.equal(calls.length, 2);
    assert.equal(calls[1]?.payload.clientMessageId, 'cm-2');
    calls[1]?.answer({ ok: true, message: msg('m2', 2, '2') });
    assert.equal((await second)._id, 'm2');
    assert.deepEqual(
      stored.map((m) => m._id),
      ['m1', 'm2'],
    );
  });

  it('retries with the same clientMessageId after a lost ack and a rate limit', async () => {
    const { host, calls } = scriptedHost();
    const box = new Outbox(host, {
      budget: new OutboxBudget(10),
      maxAttempts: 5,
      timeoutMs: 60_000,
      maxPacketBytes: 65_536,
    });
    const sent = box.add(payload('1'));
    calls[0]?.answer(undefined);
    await turn();
    calls[1]?.answer({ ok: false, error_code: 'rate_limited', message: 'slow', retry_after_ms: 1 });
    await turn();
    calls[2]?.answer({ ok: true, message: msg('m1', 1) });
    assert.equal((await sent)._id, 'm1');
    assert.deepEqual(
      calls.map((c) => c.payload.clientMessageId),
      ['cm-1', 'cm-1', 'cm-1'],
    );
  });

  it('gives up on a refusal no retry can pass, and after maxAttempts', async () => {
    const { host, calls } = scriptedHost();
    const box = new Outbox(host, {
      budget: new OutboxBudget(10),
      maxAttempts: 2,
      timeoutMs: 60_000,
      maxPacketBytes: 65_536,
    });
    const empty = box.add(payload('1'));
    const slow = box.add(payload('2'));
    calls[0]?.answer({ ok: false, error_code: 'empty_message', message: 'empty' });
    await assert.rejects(empty, (e: ChatClientError) => e.code === 'empty_message');
    await turn();
    calls[1]?.answer({ ok: false, error_code: 'internal_error', message: 'x' });
    await turn();
    calls[2]?.answer({ ok: false, error_code: 'internal_error', message: 'x' });
    await assert.rejects(slow, (e: ChatClientError) => e.code === 'internal_error');
    assert.equal(calls.length, 3);
  });

  it('joins the room again on not_in_room before sending again', async () => {
    const { host, calls, rejoins } = scriptedHost();
    const box = new Outbox(host, {
      budget: new OutboxBudget(10),
      maxAttempts: 3,
      timeoutMs: 60_000,
      maxPacketBytes: 65_536,
    });
    const sent = box.add(payload('1'));
    calls[0]?.answer({ ok: false, error_code: 'not_in_room', message: 'join' });
    await turn();
    assert.equal(rejoins(), 1);
    assert.equal(calls.length, 1, 'nothing goes until the room is joined again');
    box.pump();
    calls[1]?.answer({ ok: true, message: msg('m1', 1) });
    assert.equal((await sent)._id, 'm1');
  });

  it('counts an attempt lost with the connection, and gives up with not_connected after maxAttempts', async () => {
    let up = true;
    const { host, calls } = scriptedHost({ connected: () => up, canSend: () => up });
    const box = new Outbox(host, {
      budget: new OutboxBudget(10),
      maxAttempts: 2,
      timeoutMs: 60_000,
      maxPacketBytes: 65_536,
    });
    // The server closes the connection each time this one is sent (a packet over its MAX_FRAME_BYTES).
    const doomed = box.add(payload('1'));
    const next = box.add(payload('2'));
    up = false;
    calls[0]?.answer(undefined);
    await turn();
    assert.equal(calls.length, 1, 'nothing goes while offline');
    up = true;
    box.pump();
    assert.equal(calls[1]?.payload.clientMessageId, 'cm-1', 'sent again after the reconnect');
    up = false;
    calls[1]?.answer(undefined);
    await assert.rejects(doomed, (e: ChatClientError) => e.code === 'not_connected');
    up = true;
    box.pump();
    assert.equal(calls[2]?.payload.clientMessageId, 'cm-2', 'the next one goes');
    calls[2]?.answer({ ok: true, message: msg('m2', 2) });
    assert.equal((await next)._id, 'm2');
  });

  it('gives a message up after the third drop while it is in flight, whatever maxAttempts says', async () => {
    let up = true;
    const { host, calls } = scriptedHost({ connected: () => up, canSend: () => up });
    const box = new Outbox(host, { ...limits(new OutboxBudget(10)), maxAttempts: 10 });
    const doomed = box.add(payload('1'));
    let settled = false;
    doomed
      .catch(() => undefined)
      .finally(() => {
        settled = true;
      });
    for (const i of [0, 1, 2]) {
      assert.equal(settled, false);
      up = false;
      calls[i]?.answer(undefined);
      await turn();
      up = true;
      box.pump();
    }
    assert.equal(calls.length, 3, 'not sent a fourth time');
    await assert.rejects(doomed, (e: ChatClientError) => e.code === 'not_connected');
  });

  it('refuses a packet over maxPacketBytes at once, with message_too_long', async () => {
    const budget = new OutboxBudget(5);
    const { host, calls } = scriptedHost();
    const box = new Outbox(host, { ...limits(budget), maxPacketBytes: 1_000 });
    assert.throws(
      () => box.add({ ...payload('1'), message: 'é'.repeat(500) }),
      (e: ChatClientError) => e.code === 'message_too_long',
    );
    assert.equal(budget.queued, 0);
    assert.equal(calls.length, 0);
    assert.ok(packetBytes({ ...payload('1'), message: 'é'.repeat(500) }) > 1_000);
    const fits = box.add({ ...payload('2'), message: 'x'.repeat(500) });
    assert.equal(calls.length, 1);
    box.rejectAll(new ChatClientError('closed'));
    await assert.rejects(fits, (e: ChatClientError) => e.code === 'closed');
  });

  it('bounds what waits over every room, and rejects all that wait when told to', async () => {
    const budget = new OutboxBudget(2);
    const { host } = scriptedHost({ canSend: () => false });
    const a = new Outbox(host, limits(budget));
    const b = new Outbox(host, limits(budget));
    const waiting = [a.add(payload('1')), b.add(payload('2'))];
    assert.throws(
      () => b.add(payload('3')),
      (e: ChatClientError) => e.code === 'queue_full',
    );
    assert.equal(budget.queued, 2);
    a.rejectAll(new ChatClientError('closed'));
    b.rejectAll(new ChatClientError('closed'));
    for (const p of waiting) await assert.rejects(p, (e: ChatClientError) => e.code === 'closed');
    assert.equal(budget.queued, 0);
  });

  it('gives up a message that waited longer than timeoutMs', async () => {
    const { host } = scriptedHost({ canSend: () => false });
    const budget = new OutboxBudget(5);
    const box = new Outbox(host, { ...limits(budget), timeoutMs: 20 });
    await assert.rejects(box.add(payload('1')), (e: ChatClientError) => e.code === 'timeout');
    assert.equal(budget.queued, 0);
  });
});
