/**
 * The Store conformance suite: every guarantee of `src/store/store.ts`,
 * written once and run against each backend (store-sqlite.test.ts,
 * store-postgres.test.ts). A backend passes when it is indistinguishable
 * from the others through the interface.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { newId } from '../src/core/ids.js';
import type { NewRequestMessage, StreamMessage } from '../src/core/messages.js';
import type { ModerationEffect, StreamBan } from '../src/core/stream-rules.js';
import { type OutboxEntry, outboxEntry, outboxEntryOf } from '../src/core/webhook-events.js';
import type { AddedRequestMessage, Store } from '../src/store/store.js';

/** One isolated place to store things (a temp file, a fresh schema). */
export interface StoreHarness {
  /** Opens a Store on this place; may be called again after `close()`. */
  open(): Promise<Store>;
  /** Removes the place and everything in it. */
  cleanup(): Promise<void>;
}

const iso = (ms: number) => new Date(Date.UTC(2026, 0, 1) + ms).toISOString();

let clock = 0;
/** The moderation effects, through the one store call that applies them (with a log entry). */
const moderate = (s: Store, key: string, effect: ModerationEffect) =>
  s.addModerationAction(
    key,
    {
      action: effect.kind,
      userId: null,
      messageId: null,
      by: '7',
      at: new Date(0).toISOString(),
      reason: null,
    },
    [],
    effect,
  );
const putBan = (s: Store, key: string, ban: StreamBan) => moderate(s, key, { kind: 'ban', ban });
const liftBan = async (s: Store, key: string, userId: string) =>
  (await moderate(s, key, { kind: 'unban', userId })) !== undefined;
/** Marks a chat deleted (the first deletion wins) and reads it back. */
const deleteChat = async (s: Store, key: string, id: string, by: string, at: string) => {
  await moderate(s, key, { kind: 'delete', id, by, at });
  return s.getStreamMessage(key, id);
};

const streamMessage = (streamKey: string, message: string, userId = '1'): StreamMessage => ({
  id: newId(),
  streamKey,
  userId,
  username: `user${userId}`,
  message,
  sentAt: iso(++clock),
  badges: [],
});

/** A page read with a `before` that names a row of its scope: always a page. */
function paged<T>(page: T | undefined): T {
  assert.ok(page !== undefined, '"before" names a row of this scope');
  return page;
}

const requestMessage = (
  requestId: string,
  message: string,
  senderId = '1',
  clientMessageId: string | null = null,
): NewRequestMessage => ({
  _id: newId(),
  requestId,
  sender: { id: senderId, username: `user${senderId}`, role: senderId === '1' ? 'TEACHER' : 'LAB' },
  message,
  createdAt: iso(++clock),
  clientMessageId,
});

export function storeSuite(name: string, harness: () => Promise<StoreHarness>): void {
  /** Runs `body` on a fresh store and always closes and removes it. */
  const withStore = async (body: (store: Store, h: StoreHarness) => Promise<void>) => {
    const h = await harness();
    const store = await h.open();
    try {
      await body(store, h);
    } finally {
      await store.close();
      await h.cleanup();
    }
  };

  describe(`Store conformance: ${name}`, () => {
    describe('streams', () => {
      it('creates, updates, ends and reopens a stream', () =>
        withStore(async (s) => {
          assert.equal(await s.getStream('live'), undefined);
          assert.deepEqual(await s.putStream('live', { title: 'Algebra', ownerId: '7' }), {
            created: true,
          });
          assert.deepEqual(await s.getStream('live'), {
            key: 'live',
            title: 'Algebra',
            ownerId: '7',
            endedAt: null,
          });
          assert.deepEqual(await s.putStream('live', { title: 'Geometry' }), { created: false });
          // Fields left out keep their value.
          assert.deepEqual(await s.getStream('live'), {
            key: 'live',
            title: 'Geometry',
            ownerId: '7',
            endedAt: null,
          });
          assert.equal(await s.endStream('live'), true);
          const ended = await s.getStream('live');
          assert.ok(ended?.endedAt, 'an ended stream has endedAt');
          assert.ok(!Number.isNaN(Date.parse(ended.endedAt)), 'endedAt is a date');
          assert.deepEqual(await s.putStream('live', {}), { created: false });
          assert.equal((await s.getStream('live'))?.endedAt, null, 'a PUT reopens it');
          assert.equal((await s.getStream('live'))?.title, 'Geometry');
        }));

      it('ending an unknown stream is false and creates nothing', () =>
        withStore(async (s) => {
          assert.equal(await s.endStream('ghost'), false);
          assert.equal(await s.getStream('ghost'), undefined);
        }));

      it('appends a batch in order and pages history with before/limit/hasMore', () =>
        withStore(async (s) => {
          await s.putStream('a', {});
          await s.putStream('b', {});
          const all = Array.from({ length: 25 }, (_, i) => streamMessage('a', `m${i}`));
          await s.appendStreamMessages(all.slice(0, 10));
          await s.appendStreamMessages([streamMessage('b', 'elsewhere')]);
          await s.appendStreamMessages(all.slice(10));
          await s.appendStreamMessages([]);

          const last = await s.streamHistory('a', { limit: 10 });
          assert.equal(last.hasMore, true);
          assert.deepEqual(last.messages, all.slice(15), 'newest page, oldest first, as stored');
          const middle = paged(await s.streamHistory('a', { before: all[15]?.id, limit: 10 }));
          assert.deepEqual(middle.messages, all.slice(5, 15));
          assert.equal(middle.hasMore, true);
          const first = paged(await s.streamHistory('a', { before: all[5]?.id, limit: 10 }));
          assert.deepEqual(first.messages, all.slice(0, 5));
          assert.equal(first.hasMore, false);
          const exact = paged(await s.streamHistory('a', { before: all[10]?.id, limit: 10 }));
          assert.deepEqual(exact.messages, all.slice(0, 10));
          assert.equal(exact.hasMore, false, 'no more when the page ends at the first message');

          assert.deepEqual((await s.streamHistory('b', { limit: 10 })).messages.length, 1);
          assert.deepEqual(await s.streamHistory('none', { limit: 10 }), {
            messages: [],
            hasMore: false,
          });
          // `before` naming a chat of another stream, or no chat, is no page at all:
          // an empty one would say "nothing older".
          const other = (await s.streamHistory('b', { limit: 1 })).messages[0];
          assert.equal(await s.streamHistory('a', { before: other?.id, limit: 10 }), undefined);
          assert.equal(await s.streamHistory('a', { before: newId(), limit: 10 }), undefined);
          assert.equal(await s.streamHistory('none', { before: newId(), limit: 10 }), undefined);
          // The first chat is a cursor too: nothing older, said as such.
          assert.deepEqual(await s.streamHistory('a', { before: all[0]?.id, limit: 10 }), {
            messages: [],
            hasMore: false,
          });
          // A deleted chat is kept for audit, and so is still a cursor.
          const gone = all[2] as StreamMessage;
          await deleteChat(s, 'a', gone.id, '7', iso(5));
          const past = paged(await s.streamHistory('a', { before: gone.id, limit: 10 }));
          assert.deepEqual(past, { messages: all.slice(0, 2), hasMore: false });
        }));

      it('orders by storage, not by the clock', () =>
        withStore(async (s) => {
          const late = { ...streamMessage('k', 'stored first'), sentAt: iso(10_000_000) };
          const early = { ...streamMessage('k', 'stored second'), sentAt: iso(0) };
          await s.appendStreamMessages([late, early]);
          assert.deepEqual((await s.streamHistory('k', { limit: 5 })).messages, [late, early]);
        }));

      it('stores a batch atomically: one bad message stores none of it', () =>
        withStore(async (s) => {
          const kept = streamMessage('k', 'kept');
          await s.appendStreamMessages([kept]);
          const batch = [streamMessage('k', 'x'), { ...streamMessage('k', 'dup'), id: kept.id }];
          await assert.rejects(s.appendStreamMessages(batch));
          assert.deepEqual((await s.streamHistory('k', { limit: 10 })).messages, [kept]);
        }));

      it('stores text exactly (unicode, quotes, newlines, long)', () =>
        withStore(async (s) => {
          const texts = ['hola ñandú 🎉', 'a\nb\tc', `"'; DROP TABLE x; --`, 'x'.repeat(5000)];
          const batch = texts.map((t) => streamMessage('k', t));
          await s.appendStreamMessages(batch);
          assert.deepEqual((await s.streamHistory('k', { limit: 10 })).messages, batch);
        }));
    });

    describe('requests', () => {
      it('registers a request; a new owner replaces the old', () =>
        withStore(async (s) => {
          const id = newId();
          assert.equal(await s.getRequest(id), undefined);
          assert.deepEqual(await s.putRequest(id, '1'), { created: true, previousOwnerId: null });
          assert.deepEqual(await s.getRequest(id), { id, ownerId: '1' });
          assert.deepEqual(await s.putRequest(id, '2'), { created: false, previousOwnerId: '1' });
          assert.deepEqual(await s.getRequest(id), { id, ownerId: '2' });
          assert.deepEqual(await s.putRequest(id, '2'), { created: false, previousOwnerId: '2' });
        }));

      it('reports each replaced owner exactly once under concurrent owner changes', () =>
        withStore(async (s) => {
          const id = newId();
          const owners = Array.from({ length: 12 }, (_, i) => `owner-${i}`);
          const results = await Promise.all(owners.map((o) => s.putRequest(id, o)));
          const final = (await s.getRequest(id))?.ownerId as string;
          // The calls form one chain: exactly one created the request, and every
          // owner but the last was replaced by exactly one later call.
          assert.equal(results.filter((r) => r.created).length, 1);
          const previous = results.map((r) => r.previousOwnerId).filter((p) => p !== null);
          assert.deepEqual(previous.sort(), owners.filter((o) => o !== final).sort());
        }));

      it('stores a message and returns it with empty receipts', () =>
        withStore(async (s) => {
          const r = newId();
          await s.putRequest(r, '1');
          const m = requestMessage(r, 'hola', '1', 'c-1');
          const { clientMessageId: _, ...expected } = m;
          const res = await s.addRequestMessage(m);
          assert.deepEqual(res, {
            message: { ...expected, attachments: [], deliveredTo: [], readBy: [] },
            duplicate: false,
            activity: {
              requestId: r,
              ownerId: '1',
              messageCount: 1,
              lastMessage: res.message,
              readers: [{ userId: '1', unread: 0 }],
            },
          });
          assert.deepEqual((await s.requestHistory(r, { limit: 10 })).messages, [res.message]);
        }));

      it('clientMessageId is idempotent per sender and request', () =>
        withStore(async (s) => {
          const r1 = newId();
          const r2 = newId();
          const first = await s.addRequestMessage(requestMessage(r1, 'one', '1', 'c-1'));
          const again = await s.addRequestMessage(requestMessage(r1, 'one (retry)', '1', 'c-1'));
          assert.equal(again.duplicate, true);
          assert.deepEqual(again.message, first.message, 'the stored original comes back');
          // Same client id from another sender, or in another request: new messages.
          const otherSender = await s.addRequestMessage(requestMessage(r1, 'two', '2', 'c-1'));
          const otherRequest = await s.addRequestMessage(requestMessage(r2, 'three', '1', 'c-1'));
          assert.equal(otherSender.duplicate, false);
          assert.equal(otherRequest.duplicate, false);
          // Without a client id nothing is deduplicated.
          await s.addRequestMessage(requestMessage(r1, 'same', '1'));
          await s.addRequestMessage(requestMessage(r1, 'same', '1'));
          const texts = (await s.requestHistory(r1, { limit: 10 })).messages.map((m) => m.message);
          assert.deepEqual(texts, ['one', 'two', 'same', 'same']);
        }));

      it('the duplicate carries the receipts recorded since', () =>
        withStore(async (s) => {
          const r = newId();
          const first = await s.addRequestMessage(requestMessage(r, 'one', '1', 'c-1'));
          await s.addReceipts(r, 'read', '2', [first.message._id], iso(99));
          const again = await s.addRequestMessage(requestMessage(r, 'one', '1', 'c-1'));
          assert.deepEqual(again.message.readBy, [{ userId: '2', at: iso(99) }]);
          assert.deepEqual(again.message.deliveredTo, [{ userId: '2', at: iso(99) }]);
        }));

      it('rejects a message whose id is taken, rather than claiming it stored', () =>
        withStore(async (s) => {
          const r = newId();
          const first = await s.addRequestMessage(requestMessage(r, 'one'));
          const clash = { ...requestMessage(r, 'two'), _id: first.message._id };
          await assert.rejects(s.addRequestMessage(clash));
          const withClientId = {
            ...requestMessage(r, 'three', '1', 'c-9'),
            _id: first.message._id,
          };
          await assert.rejects(s.addRequestMessage(withClientId));
          const texts = (await s.requestHistory(r, { limit: 10 })).messages.map((m) => m.message);
          assert.deepEqual(texts, ['one']);
        }));

      it('a group commit gives each write the outcome it would have alone', async () => {
        const at = (ms: number) => new Date(Date.UTC(2026, 0, 1) + ms);
        const event = (ms: number): OutboxEntry =>
          outboxEntry('stream.ended', { key: `k${ms}` }, { at: at(ms) });
        const r1 = newId();
        const r2 = newId();
        const before = requestMessage(r1, 'before', '2', 'c-0');
        const a = requestMessage(r1, 'a', '2', 'c-1');
        const writes = [
          { message: a, outbox: [event(1)] },
          { message: requestMessage(r2, 'b', '2') },
          // A taken id: refused alone, its events with it.
          { message: { ...requestMessage(r1, 'clash', '2'), _id: before._id }, outbox: [event(2)] },
          // A retry of a message stored before, and of one earlier in this batch.
          { message: requestMessage(r1, 'before (retry)', '2', 'c-0'), outbox: [event(3)] },
          { message: requestMessage(r1, 'a (retry)', '2', 'c-1') },
          { message: requestMessage(r1, 'c', '1'), outbox: [event(4)] },
          { message: requestMessage(r2, 'd', '3') },
        ];
        /** The same writes through `addRequestMessage`, one at a time, on a store of its own. */
        const alone = await (async () => {
          const h = await harness();
          const t = await h.open();
          try {
            await t.putRequest(r1, '1');
            await t.putRequest(r2, '1');
            await t.addRequestMessage(before);
            const out: Array<unknown> = [];
            for (const w of writes) {
              out.push(await t.addRequestMessage(w.message, w.outbox).catch(() => 'refused'));
            }
            return out;
          } finally {
            await t.close();
            await h.cleanup();
          }
        })();
        await withStore(async (s) => {
          await s.putRequest(r1, '1');
          await s.putRequest(r2, '1');
          const stored = await s.addRequestMessage(before);
          const outcomes = await s.addRequestMessages(writes);
          assert.deepEqual(
            outcomes.map((o) => (o.status === 'fulfilled' ? o.value : 'refused')),
            alone,
          );
          const [first, , , retry, again] = outcomes.map((o) =>
            o.status === 'fulfilled' ? o.value : undefined,
          );
          assert.equal(retry?.duplicate, true);
          assert.equal(retry?.message._id, stored.message._id);
          assert.equal(again?.duplicate, true);
          assert.equal(again?.message._id, first?.message._id);
          const texts = async (r: string) =>
            (await s.requestHistory(r, { limit: 10 })).messages.map((m) => m.message);
          assert.deepEqual(await texts(r1), ['before', 'a', 'c']);
          assert.deepEqual(await texts(r2), ['b', 'd']);
          const events = await s.claimWebhooks(10, iso(10_000_000), iso(10_001_000));
          assert.deepEqual(
            events.map((e) => e.data).sort(),
            ['{"key":"k1"}', '{"key":"k4"}'],
            'the events of stored messages only',
          );
          assert.deepEqual((await s.unreadTotals('1', '1', 10)).total, 4);
        });
      });

      it('a group commit keeps the order within each request and never deadlocks', () =>
        withStore(async (s) => {
          const requests = Array.from({ length: 6 }, () => newId());
          for (const r of requests) await s.putRequest(r, '1');
          // Concurrent batches touching the same requests in different orders.
          const batches = Array.from({ length: 4 }, (_, b) =>
            Array.from({ length: 30 }, (_, i) => ({
              message: requestMessage(
                requests[(i * (b + 1)) % requests.length] as string,
                `${b}:${i}`,
                String(2 + (i % 3)),
              ),
            })),
          );
          const outcomes = await Promise.all(batches.map((b) => s.addRequestMessages(b)));
          assert.ok(outcomes.flat().every((o) => o.status === 'fulfilled'));
          for (const r of requests) {
            const stored = (await s.requestHistory(r, { limit: 200 })).messages.map(
              (m) => m.message,
            );
            for (const [b, batch] of batches.entries()) {
              const mine = batch
                .filter((w) => w.message.requestId === r)
                .map((w) => w.message.message);
              assert.deepEqual(
                stored.filter((t) => t.startsWith(`${b}:`)),
                mine,
              );
            }
            const summary = await s.requestSummary(r, '9');
            assert.equal(summary?.unread, stored.length, 'every message counted once');
          }
        }));

      it('pages 150 messages of history', () =>
        withStore(async (s) => {
          const r = newId();
          const other = newId();
          const ids: string[] = [];
          for (let i = 0; i < 150; i++) {
            ids.push(
              (await s.addRequestMessage(requestMessage(r, `m${i}`, i % 2 ? '2' : '1'))).message
                ._id,
            );
            if (i % 50 === 0) await s.addRequestMessage(requestMessage(other, 'noise'));
          }
          const seen: string[] = [];
          let before: string | undefined;
          const pages: boolean[] = [];
          for (;;) {
            const page = paged(await s.requestHistory(r, { before, limit: 40 }));
            seen.unshift(...page.messages.map((m) => m._id));
            pages.push(page.hasMore);
            if (!page.hasMore) break;
            before = page.messages[0]?._id;
          }
          assert.deepEqual(pages, [true, true, true, false]);
          assert.deepEqual(seen, ids, 'every message once, in stored order');
          const newest = await s.requestHistory(r, { limit: 100 });
          assert.equal(newest.messages.length, 100);
          assert.equal(newest.messages[0]?.message, 'm50');
          assert.equal(newest.hasMore, true);
          const all = await s.requestHistory(r, { limit: 150 });
          assert.equal(all.hasMore, false);
          // A cursor of another request, or of no message, is no page at all.
          assert.equal(await s.requestHistory(r, { before: newId(), limit: 10 }), undefined);
          const noise = (await s.requestHistory(other, { limit: 1 })).messages[0]?._id;
          assert.ok(noise);
          assert.equal(await s.requestHistory(r, { before: noise, limit: 10 }), undefined);
          assert.equal(await s.requestHistory(newId(), { before: ids[5], limit: 10 }), undefined);
          assert.deepEqual(await s.requestHistory(newId(), { limit: 10 }), {
            messages: [],
            hasMore: false,
          });
          assert.deepEqual(await s.requestHistory(r, { before: ids[0], limit: 10 }), {
            messages: [],
            hasMore: false,
          });
          // A deleted message keeps its row, and so is still a cursor (m2 is user 1's).
          const gone = ids[2] as string;
          assert.ok(await s.changeRequestMessage(r, gone, '1', { deletedAt: iso(9) }));
          const past = paged(await s.requestHistory(r, { before: gone, limit: 10 }));
          assert.deepEqual(
            past.messages.map((m) => m._id),
            ids.slice(0, 2),
          );
          assert.equal(past.hasMore, false);
        }));
    });

    describe('receipts', () => {
      /** A request with messages from the teacher (1) and the lab (2). */
      const conversation = async (s: Store) => {
        const r = newId();
        await s.putRequest(r, '1');
        const ids: string[] = [];
        for (const [sender, text] of [
          ['1', 'a'],
          ['1', 'b'],
          ['2', 'c'],
          ['1', 'd'],
        ] as const) {
          ids.push((await s.addRequestMessage(requestMessage(r, text, sender))).message._id);
        }
        return { r, ids: ids as [string, string, string, string] };
      };

      it('delivered: records the new ones and returns only them, in stored order', () =>
        withStore(async (s) => {
          const { r, ids } = await conversation(s);
          const fresh = await s.addReceipts(r, 'delivered', '2', [ids[3], ids[0]], iso(1000));
          assert.deepEqual(fresh, [ids[0], ids[3]]);
          const again = await s.addReceipts(r, 'delivered', '2', [ids[0], ids[1]], iso(2000));
          assert.deepEqual(again, [ids[1]], 'only the new receipts come back');
          const byId = new Map(
            (await s.requestHistory(r, { limit: 10 })).messages.map((m) => [m._id, m]),
          );
          assert.deepEqual(byId.get(ids[0])?.deliveredTo, [{ userId: '2', at: iso(1000) }]);
          assert.deepEqual(byId.get(ids[1])?.deliveredTo, [{ userId: '2', at: iso(2000) }]);
          assert.deepEqual(byId.get(ids[0])?.readBy, []);
        }));

      it('read implies delivered; the first time wins for each kind', () =>
        withStore(async (s) => {
          const { r, ids } = await conversation(s);
          await s.addReceipts(r, 'delivered', '2', [ids[0]], iso(1000));
          assert.deepEqual(await s.addReceipts(r, 'read', '2', [ids[0], ids[1]], iso(2000)), [
            ids[0],
            ids[1],
          ]);
          assert.deepEqual(await s.addReceipts(r, 'read', '2', [ids[0]], iso(3000)), []);
          assert.deepEqual(await s.addReceipts(r, 'delivered', '2', [ids[1]], iso(3000)), []);
          const [m0, m1] = (await s.requestHistory(r, { limit: 10 })).messages;
          assert.deepEqual(m0?.deliveredTo, [{ userId: '2', at: iso(1000) }]);
          assert.deepEqual(m0?.readBy, [{ userId: '2', at: iso(2000) }]);
          assert.deepEqual(m1?.deliveredTo, [{ userId: '2', at: iso(2000) }]);
          assert.deepEqual(m1?.readBy, [{ userId: '2', at: iso(2000) }]);
        }));

      it('ignores ids unknown, of another request, or sent by the acking user', () =>
        withStore(async (s) => {
          const { r, ids } = await conversation(s);
          const other = await conversation(s);
          const fresh = await s.addReceipts(
            r,
            'read',
            '1',
            [newId(), other.ids[2], ids[0], ids[2], ids[2], 'not-an-id'],
            iso(1000),
          );
          assert.deepEqual(fresh, [ids[2]], 'only the lab message, once');
          const messages = (await s.requestHistory(r, { limit: 10 })).messages;
          assert.deepEqual(
            messages.map((m) => m.readBy.length),
            [0, 0, 1, 0],
          );
          const otherMessages = (await s.requestHistory(other.r, { limit: 10 })).messages;
          assert.ok(
            otherMessages.every((m) => m.readBy.length === 0 && m.deliveredTo.length === 0),
          );
          assert.deepEqual(await s.addReceipts(r, 'read', '2', [], iso(1000)), []);
        }));

      it('lists receipts of several users', () =>
        withStore(async (s) => {
          const { r, ids } = await conversation(s);
          await s.addReceipts(r, 'read', '3', [ids[0]], iso(2000));
          await s.addReceipts(r, 'read', '2', [ids[0]], iso(1000));
          const [m0] = paged(await s.requestHistory(r, { limit: 1, before: ids[1] })).messages;
          assert.deepEqual(m0?.readBy, [
            { userId: '2', at: iso(1000) },
            { userId: '3', at: iso(2000) },
          ]);
        }));
    });

    describe('webhook outbox', () => {
      const at = (ms: number) => new Date(Date.UTC(2026, 0, 1) + ms);
      const event = (ms: number, dueMs = ms, unlessRead?: string): OutboxEntry =>
        outboxEntry(
          'stream.ended',
          { key: `k${ms}` },
          { at: at(ms), dueAt: at(dueMs), unlessRead },
        );
      /** Claims at `ms` with a lease to `ms + 1000`. */
      const claim = (s: Store, ms: number, limit = 10) =>
        s.claimWebhooks(limit, iso(ms), iso(ms + 1000));

      it('commits events with a new message and drops them with a duplicate', () =>
        withStore(async (s) => {
          const r = newId();
          await s.putRequest(r, '1');
          const first = [event(1), event(2)];
          await s.addRequestMessage(requestMessage(r, 'hola', '1', 'c-1'), first);
          const again = await s.addRequestMessage(requestMessage(r, 'hola', '1', 'c-1'), [
            event(3),
          ]);
          assert.equal(again.duplicate, true);
          // Without a clientMessageId every message is new.
          const third = event(4);
          await s.addRequestMessage(requestMessage(r, 'otra', '1'), [third]);
          const claimed = await claim(s, 10_000);
          assert.deepEqual(
            claimed.map((e) => e.id),
            [first[0]?.id, first[1]?.id, third.id],
          );
          assert.deepEqual(claimed[0], {
            id: first[0]?.id,
            type: 'stream.ended',
            data: '{"key":"k1"}',
            createdAt: iso(1),
            attempts: 0,
            lastError: null,
            lastAttemptAt: null,
          });
        }));

      it('keeps every payload byte for byte in a group commit, shared by two events or not', () =>
        withStore(async (s) => {
          const r = newId();
          await s.putRequest(r, '1');
          const tricky = JSON.stringify({
            text: 'a "quoted" \\ back\\slash, {braces}, NULL, Señor 😀',
          });
          const shared = [
            outboxEntryOf('request.message.created', tricky, { at: new Date(1) }),
            outboxEntryOf('request.message.unread', tricky, {
              at: new Date(2),
              unlessRead: 'nobody-reads-this',
            }),
          ];
          const own = [
            outboxEntryOf('stream.ended', '{"key":"x,y"}', { at: new Date(3) }),
            outboxEntryOf('stream.ended', '{"key":"\\"}', { at: new Date(4) }),
          ];
          const outcomes = await s.addRequestMessages([
            { message: requestMessage(r, 'one', '1', 'c-shared'), outbox: shared },
            { message: requestMessage(r, 'two', '1', 'c-own'), outbox: own },
          ]);
          assert.deepEqual(
            outcomes.map((o) => o.status),
            ['fulfilled', 'fulfilled'],
          );
          const claimed = await claim(s, 10_000);
          assert.deepEqual(
            claimed.map((e) => [e.id, e.type, e.data, e.createdAt]),
            [...shared, ...own].map((e) => [e.id, e.type, e.data, e.createdAt]),
          );
        }));

      it('a message whose insert fails stores none of its events', () =>
        withStore(async (s) => {
          const r = newId();
          await s.putRequest(r, '1');
          const m = requestMessage(r, 'hola');
          await s.addRequestMessage(m);
          await assert.rejects(s.addRequestMessage({ ...m, clientMessageId: 'x' }, [event(1)]));
          assert.deepEqual(await claim(s, 10_000), []);
        }));

      it('leases a row to one claimer until the lease runs out, oldest due first', () =>
        withStore(async (s) => {
          const late = event(1, 50);
          const early = event(2, 20);
          await s.enqueueWebhooks([late, early, event(3, 5_000)]);
          assert.deepEqual(await claim(s, 10), [], 'nothing due yet');
          assert.deepEqual(
            (await claim(s, 100)).map((e) => e.id),
            [early.id, late.id],
          );
          assert.deepEqual(await claim(s, 500), [], 'leased until 1100');
          assert.deepEqual(
            (await claim(s, 1100, 1)).map((e) => e.id),
            [early.id],
            'an expired lease frees the row; the limit holds',
          );
          await s.completeWebhooks([early.id]);
          assert.deepEqual(
            (await claim(s, 2200)).map((e) => e.id),
            [late.id],
          );
          await s.releaseWebhook(late.id);
          assert.deepEqual(
            (await claim(s, 2300)).map((e) => [e.id, e.attempts]),
            [[late.id, 0]],
            'a released row is due again, no attempt counted',
          );
        }));

      it('completes many delivered rows in one call, leaving the others and ignoring unknown ids', () =>
        withStore(async (s) => {
          const events = Array.from({ length: 300 }, (_, i) => event(i + 1));
          await s.enqueueWebhooks(events);
          assert.equal((await claim(s, 10_000, 300)).length, 300);
          const kept = events.filter((_, i) => i % 100 === 7);
          const done = events.filter((e) => !kept.includes(e)).map((e) => e.id);
          await s.completeWebhooks([...done, 'msg_unknown']);
          await s.completeWebhooks([]);
          assert.equal(await s.webhookQueueDepth(iso(20_000)), kept.length);
          assert.deepEqual(
            (await claim(s, 20_000, 300)).map((e) => e.id),
            kept.map((e) => e.id),
            'only the rows not completed are left, and claimed again once their lease ran out',
          );
          await s.completeWebhooks(kept.map((e) => e.id));
          assert.equal(await s.webhookQueueDepth(iso(30_000)), 0);
        }));

      it('removes the delivered rows given to a claim in its transaction, never claiming them', () =>
        withStore(async (s) => {
          const events = Array.from({ length: 6 }, (_, i) => event(i + 1));
          await s.enqueueWebhooks(events);
          const first = await claim(s, 100, 3);
          assert.deepEqual(
            first.map((e) => e.id),
            events.slice(0, 3).map((e) => e.id),
          );
          // Past their lease, the three delivered rows would be due again: the
          // claim that removes them must not lease them too.
          const done = first.map((e) => e.id);
          const next = await s.claimWebhooks(10, iso(5_000), iso(6_000), [...done, 'msg_unknown']);
          assert.deepEqual(
            next.map((e) => e.id),
            events.slice(3).map((e) => e.id),
          );
          assert.equal(await s.webhookQueueDepth(iso(10_000)), 3, 'the delivered rows are gone');
          assert.deepEqual(
            (await claim(s, 10_000)).map((e) => e.id),
            events.slice(3).map((e) => e.id),
            'once their lease ran out, only the rows not delivered are claimed again',
          );
        }));

      it('counts failed attempts, keeps failed rows for the API, and retries them', () =>
        withStore(async (s) => {
          const e = event(1);
          await s.enqueueWebhooks([e]);
          await claim(s, 10);
          await s.recordWebhookFailure(e.id, {
            error: 'HTTP 500',
            at: iso(20),
            nextAttemptAt: iso(3_000),
          });
          assert.deepEqual(await claim(s, 2_000), [], 'not before its next attempt');
          const [retried] = await claim(s, 3_000);
          assert.equal(retried?.attempts, 1);
          assert.equal(retried?.lastError, 'HTTP 500');
          assert.equal(retried?.lastAttemptAt, iso(20));
          assert.deepEqual(await s.failedWebhooks(10), []);
          await s.recordWebhookFailure(e.id, {
            error: 'timeout',
            at: iso(3_100),
            nextAttemptAt: null,
          });
          assert.deepEqual(await claim(s, 99_000), [], 'a failed row is not sent again');
          assert.deepEqual(await s.webhookQueueDepth(iso(99_000)), 0);
          const failed = await s.failedWebhooks(10);
          assert.deepEqual(
            failed.map((f) => [f.id, f.attempts, f.lastError, f.lastAttemptAt]),
            [[e.id, 2, 'timeout', iso(3_100)]],
          );
          assert.equal(await s.retryWebhook('msg_unknown', iso(100_000)), false);
          assert.equal(await s.retryWebhook(e.id, iso(100_000)), true);
          assert.equal(await s.retryWebhook(e.id, iso(100_000)), false, 'no longer failed');
          assert.deepEqual(await s.failedWebhooks(10), []);
          const [again] = await claim(s, 100_000);
          assert.equal(again?.id, e.id, 'the same webhook-id');
          assert.equal(again?.attempts, 2);
          await s.completeWebhooks([e.id]);
          assert.deepEqual(await claim(s, 200_000), []);
        }));

      it('drops an unread check once its message is read, and sends it otherwise', () =>
        withStore(async (s) => {
          const r = newId();
          await s.putRequest(r, '1');
          const read = (await s.addRequestMessage(requestMessage(r, 'a', '1'))).message._id;
          const unread = (await s.addRequestMessage(requestMessage(r, 'b', '1'))).message._id;
          const checkRead = event(1, 100, read);
          const checkUnread = event(2, 100, unread);
          await s.enqueueWebhooks([checkRead, checkUnread]);
          assert.equal(await s.webhookQueueDepth(iso(50)), 0, 'checks not yet due are not queued');
          // Delivered is not read.
          await s.addReceipts(r, 'delivered', '2', [unread], iso(10));
          await s.addReceipts(r, 'read', '2', [read], iso(20));
          assert.equal(await s.webhookQueueDepth(iso(100)), 2);
          assert.deepEqual(
            (await claim(s, 100)).map((e) => e.id),
            [checkUnread.id],
          );
          // Once it has been attempted, the event stands even if the message is read later.
          await s.recordWebhookFailure(checkUnread.id, {
            error: 'HTTP 500',
            at: iso(110),
            nextAttemptAt: iso(200),
          });
          await s.addReceipts(r, 'read', '2', [unread], iso(150));
          assert.deepEqual(
            (await claim(s, 200)).map((e) => e.id),
            [checkUnread.id],
          );
        }));

      it('commits a read event with the receipts it names, and none without new ones', () =>
        withStore(async (s) => {
          const r = newId();
          await s.putRequest(r, '1');
          const a = (await s.addRequestMessage(requestMessage(r, 'a', '1'))).message._id;
          const b = (await s.addRequestMessage(requestMessage(r, 'b', '1'))).message._id;
          const seen: string[][] = [];
          const outbox = (fresh: string[]) => {
            seen.push(fresh);
            return outboxEntry(
              'request.message.read',
              { requestId: r, userId: '2', messages: fresh, at: iso(5) },
              { at: at(5) },
            );
          };
          assert.deepEqual(await s.addReceipts(r, 'read', '2', [b, a], iso(5), outbox), [a, b]);
          assert.deepEqual(await s.addReceipts(r, 'read', '2', [a], iso(6), outbox), []);
          assert.deepEqual(seen, [[a, b]], 'called once, with the new ids');
          const claimed = await claim(s, 10_000);
          assert.equal(claimed.length, 1);
          assert.deepEqual(JSON.parse(claimed[0]?.data ?? ''), {
            requestId: r,
            userId: '2',
            messages: [a, b],
            at: iso(5),
          });
        }));

      it('commits stream.ended only with the call that ended the stream', () =>
        withStore(async (s) => {
          await s.putStream('live', {});
          assert.equal(await s.endStream('nope', [event(1)]), false);
          assert.equal(await s.endStream('live', [event(2)]), true);
          assert.equal(await s.endStream('live', [event(3)]), true);
          assert.deepEqual(
            (await claim(s, 10_000)).map((e) => e.data),
            ['{"key":"k2"}'],
          );
        }));

      it('commits moderation events with the moderation log entry', () =>
        withStore(async (s) => {
          await s.putStream('mod', {});
          const event = outboxEntry('stream.user.banned', { key: 'mod', userId: '5', by: '9' });
          const logged = await s.addModerationAction(
            'mod',
            { action: 'ban', userId: '5', messageId: null, by: '9', at: iso(1), reason: null },
            [event],
          );
          await s.addModerationAction('mod', {
            action: 'unban',
            userId: '5',
            messageId: null,
            by: '9',
            at: iso(2),
            reason: null,
          });
          assert.deepEqual(
            (await s.moderationLog('mod', { limit: 10 })).actions.map((a) => a.action),
            ['unban', 'ban'],
          );
          assert.equal(typeof logged?.id, 'string');
          assert.deepEqual(
            (await claim(s, Date.now() + 10_000)).map((e) => e.id),
            [event.id],
          );
        }));

      it('stores a moderation effect with its log entry and events, and nothing when it changes nothing', () =>
        withStore(async (s) => {
          await s.putStream('fx', {});
          const chat: StreamMessage = {
            id: newId(),
            streamKey: 'fx',
            userId: '5',
            username: 'five',
            message: 'hola',
            sentAt: iso(0),
            badges: [],
          };
          await s.appendStreamMessages([chat]);
          const entry = (action: 'delete' | 'ban' | 'unban', at: number) => ({
            action,
            userId: '5',
            messageId: action === 'delete' ? chat.id : null,
            by: '9',
            at: iso(at),
            reason: null,
          });
          const del = { kind: 'delete', id: chat.id, by: '9', at: iso(1) } as const;
          const first = outboxEntry('stream.message.deleted', { key: 'fx', id: chat.id, by: '9' });
          assert.ok(await s.addModerationAction('fx', entry('delete', 1), [first], del));
          assert.equal((await s.getStreamMessage('fx', chat.id))?.deletedAt, iso(1));
          const again = outboxEntry('stream.message.deleted', { key: 'fx', id: chat.id, by: '8' });
          const second = { ...del, by: '8', at: iso(2) };
          assert.equal(
            await s.addModerationAction('fx', entry('delete', 2), [again], second),
            undefined,
          );
          assert.equal((await s.getStreamMessage('fx', chat.id))?.deletedBy, '9', 'the first wins');
          const missing = { ...del, id: newId() };
          assert.equal(
            await s.addModerationAction('fx', entry('delete', 3), [], missing),
            undefined,
          );

          const ban = { userId: '5', until: null, reason: null, by: '9', at: iso(4) };
          assert.ok(await s.addModerationAction('fx', entry('ban', 4), [], { kind: 'ban', ban }));
          assert.deepEqual(await s.streamBans('fx', iso(5)), [ban]);
          const lift = { kind: 'unban', userId: '5' } as const;
          assert.ok(await s.addModerationAction('fx', entry('unban', 6), [], lift));
          assert.deepEqual(await s.streamBans('fx', iso(7)), []);
          assert.equal(await s.addModerationAction('fx', entry('unban', 8), [], lift), undefined);

          assert.deepEqual(
            (await s.moderationLog('fx', { limit: 10 })).actions.map((a) => a.action),
            ['unban', 'ban', 'delete'],
          );
          assert.deepEqual(
            (await claim(s, Date.now() + 10_000)).map((e) => e.id),
            [first.id],
            'an action that changed nothing queues no event',
          );
        }));

      it('keeps pending and failed rows across close and reopen', () =>
        withStore(async (first, h) => {
          const pending = event(1);
          const failed = event(2);
          await first.enqueueWebhooks([pending, failed]);
          await claim(first, 10);
          await first.recordWebhookFailure(failed.id, {
            error: 'x',
            at: iso(20),
            nextAttemptAt: null,
          });
          await first.close();
          const s = await h.open();
          try {
            // The lease from before may stand (PostgreSQL) or be cleared (SQLite): after it, due.
            assert.deepEqual(
              (await claim(s, 5_000)).map((e) => e.id),
              [pending.id],
            );
            assert.deepEqual(
              (await s.failedWebhooks(10)).map((e) => e.id),
              [failed.id],
            );
          } finally {
            await s.close();
          }
        }));
    });

    describe('inbox, unread counters, edits and attachments', () => {
      const unreadOf = async (s: Store, r: string, userId: string) =>
        (await s.requestSummary(r, userId))?.unread;

      it('counts unread per user from counters kept with messages and reads', () =>
        withStore(async (s) => {
          const r = newId();
          await s.putRequest(r, '1');
          const a = await s.addRequestMessage(requestMessage(r, 'a', '1'));
          const b = await s.addRequestMessage(requestMessage(r, 'b', '2'));
          const c = await s.addRequestMessage(requestMessage(r, 'c', '3'));
          // Teacher 1 has two unread (from 2 and 3); lab 2 has a and c; lab 9 all three.
          assert.equal(await unreadOf(s, r, '1'), 2);
          assert.equal(await unreadOf(s, r, '2'), 2);
          assert.equal(await unreadOf(s, r, '9'), 3);
          // The activity of the last message names every reader with their count.
          assert.deepEqual(
            c.activity?.readers.sort((x, y) => x.userId.localeCompare(y.userId)),
            [
              { userId: '1', unread: 2 },
              { userId: '2', unread: 2 },
              { userId: '3', unread: 2 },
            ],
          );
          assert.equal(c.activity?.messageCount, 3);
          assert.equal(c.activity?.ownerId, '1');
          // Reading: own messages, unknown ids and repeats change nothing.
          await s.addReceipts(r, 'read', '1', [a.message._id, b.message._id, newId()], iso(50));
          assert.equal(await unreadOf(s, r, '1'), 1);
          await s.addReceipts(r, 'read', '1', [b.message._id], iso(51));
          assert.equal(await unreadOf(s, r, '1'), 1, 'a repeated read counts once');
          await s.addReceipts(r, 'delivered', '1', [c.message._id], iso(52));
          assert.equal(await unreadOf(s, r, '1'), 1, 'delivered is not read');
          await s.addReceipts(r, 'read', '1', [c.message._id], iso(53));
          assert.equal(await unreadOf(s, r, '1'), 0);
          const next = await s.addRequestMessage(requestMessage(r, 'd', '2'));
          assert.deepEqual(
            next.activity?.readers.find((x) => x.userId === '1'),
            { userId: '1', unread: 1 },
          );
          const dup = await s.addRequestMessage(requestMessage(r, 'd', '2', 'c-1'));
          const again = await s.addRequestMessage(requestMessage(r, 'd', '2', 'c-1'));
          assert.ok(dup.activity, 'a new message reports its activity');
          assert.equal(again.activity, undefined, 'a duplicate changed nothing');
          assert.equal(await unreadOf(s, r, '1'), 2);
        }));

      it("stores attachments; edits and deletes only the sender's live message", () =>
        withStore(async (s) => {
          const r = newId();
          await s.putRequest(r, '1');
          const attachments = [
            { url: 'https://files.test/a.png', name: 'a.png', contentType: 'image/png', size: 10 },
          ];
          const sent = await s.addRequestMessage({
            ...requestMessage(r, '', '2'),
            attachments,
          });
          assert.deepEqual(sent.message.attachments, attachments);
          const keep = await s.addRequestMessage(requestMessage(r, 'keep', '2'));
          const id = sent.message._id;
          assert.deepEqual((await s.getRequestMessage(r, id))?.attachments, attachments);
          assert.equal(await s.getRequestMessage(newId(), id), undefined, 'another request');

          assert.equal(
            await s.changeRequestMessage(r, id, '1', { message: 'x', editedAt: iso(60) }),
            undefined,
            'not the sender',
          );
          const edited = await s.changeRequestMessage(r, id, '2', {
            message: 'see photo',
            editedAt: iso(61),
          });
          assert.equal(edited?.message.message, 'see photo');
          assert.equal(edited?.message.editedAt, iso(61));
          assert.deepEqual(edited?.message.attachments, attachments);
          assert.equal(edited?.activity, undefined, 'an edit moves no counter');

          // Teacher 1 read it; lab 9 did not. Deleting takes it out of both counts.
          await s.addReceipts(r, 'read', '1', [id], iso(62));
          assert.equal(await unreadOf(s, r, '1'), 1);
          assert.equal(await unreadOf(s, r, '9'), 2);
          const deleted = await s.changeRequestMessage(r, id, '2', { deletedAt: iso(63) });
          assert.equal(deleted?.message.deletedAt, iso(63));
          assert.equal(deleted?.message.message, '');
          assert.deepEqual(deleted?.message.attachments, []);
          assert.equal(deleted?.activity?.messageCount, 1);
          assert.equal(deleted?.activity?.lastMessage?._id, keep.message._id);
          assert.equal(await unreadOf(s, r, '1'), 1);
          assert.equal(await unreadOf(s, r, '9'), 1);
          assert.equal(await unreadOf(s, r, '2'), 0);
          assert.equal(
            await s.changeRequestMessage(r, id, '2', { deletedAt: iso(64) }),
            undefined,
            'deleted once',
          );
          assert.equal(
            await s.changeRequestMessage(r, id, '2', { message: 'y', editedAt: iso(65) }),
            undefined,
            'a deleted message cannot be edited',
          );
          assert.deepEqual(await s.addReceipts(r, 'read', '9', [id], iso(66)), []);
          assert.equal(await unreadOf(s, r, '9'), 1, 'reading a deleted message counts nothing');
          const [gone] = (await s.requestHistory(r, { limit: 10 })).messages;
          assert.equal(gone?.deletedAt, iso(63));
          assert.equal(gone?.editedAt, iso(61));
          assert.equal(gone?.message, '');
          assert.deepEqual(gone?.attachments, []);
          const [plain] = (await s.requestHistory(r, { limit: 10 })).messages.slice(1);
          assert.equal('editedAt' in (plain as object), false, 'absent until edited');
          assert.equal('deletedAt' in (plain as object), false);
        }));

      it('lists the inbox by latest activity, paged, for lab and teacher', () =>
        withStore(async (s) => {
          const ids = Array.from({ length: 7 }, () => newId());
          for (const [i, r] of ids.entries()) await s.putRequest(r, i % 2 ? '1' : '5');
          // Activity order, oldest first: 3, 0, 5, 1, then 3 again; 2, 4, 6 stay silent.
          for (const i of [3, 0, 5, 1, 3]) {
            await s.addRequestMessage(requestMessage(ids[i] as string, `to ${i}`, '2'));
          }
          const lab = await s.listRequests({ userId: '2', limit: 3 });
          assert.deepEqual(
            lab.requests.map((x) => x.requestId),
            [ids[3], ids[1], ids[5]],
          );
          assert.equal(lab.hasMore, true);
          const rest = paged(await s.listRequests({ userId: '2', before: ids[5], limit: 3 }));
          assert.deepEqual(
            rest.requests.map((x) => x.requestId),
            [ids[0]],
          );
          assert.equal(rest.hasMore, false);
          const first = lab.requests[0];
          assert.equal(first?.lastMessage?.message, 'to 3');
          assert.equal(first?.ownerId, '1');
          assert.equal(first?.unread, 0, 'lab 2 sent them all');
          assert.equal(first?.updatedAt, first?.lastMessage?.createdAt);
          assert.equal((await s.listRequests({ userId: '8', limit: 1 })).requests[0]?.unread, 2);
          // Teacher 1 owns 1, 3, 5 and silent ones: their own requests, even without messages.
          const mine = await s.listRequests({ userId: '1', ownerId: '1', limit: 10 });
          assert.deepEqual(
            mine.requests.slice(0, 3).map((x) => [x.requestId, x.unread]),
            [
              [ids[3], 2],
              [ids[1], 1],
              [ids[5], 1],
            ],
          );
          assert.deepEqual(
            new Set(mine.requests.map((x) => x.requestId)),
            new Set([ids[1], ids[3], ids[5]]),
          );
          const teacher5 = await s.listRequests({ userId: '5', ownerId: '5', limit: 10 });
          assert.deepEqual(
            new Set(teacher5.requests.map((x) => x.requestId)),
            new Set([ids[0], ids[2], ids[4], ids[6]]),
          );
          assert.equal(teacher5.requests.find((x) => x.requestId === ids[2])?.lastMessage, null);
          // A cursor must name a request of this inbox: one that exists, the
          // teacher's own, one with messages for the lab.
          assert.equal(await s.listRequests({ userId: '2', before: newId(), limit: 3 }), undefined);
          assert.equal(await s.listRequests({ userId: '2', before: ids[2], limit: 3 }), undefined);
          const theirs = { userId: '1', ownerId: '1', limit: 10 };
          assert.equal(await s.listRequests({ ...theirs, before: ids[0] }), undefined);
          assert.equal(await s.listRequests({ ...theirs, before: newId() }), undefined);
          const own = mine.requests.at(-1)?.requestId;
          assert.deepEqual(await s.listRequests({ ...theirs, before: own }), {
            requests: [],
            hasMore: false,
          });
          assert.deepEqual(
            paged(await s.listRequests({ ...theirs, before: ids[1] })).requests.map(
              (x) => x.requestId,
            ),
            mine.requests.slice(2).map((x) => x.requestId),
          );
          assert.equal(await s.requestSummary(newId(), '1'), undefined);
        }));

      it('totals unread per user for the lab and for a teacher', () =>
        withStore(async (s) => {
          const [r1, r2, r3] = [newId(), newId(), newId()];
          await s.putRequest(r1, '1');
          await s.putRequest(r2, '1');
          await s.putRequest(r3, '4');
          const m1 = await s.addRequestMessage(requestMessage(r1, 'x', '2'));
          await s.addRequestMessage(requestMessage(r1, 'y', '2'));
          await s.addRequestMessage(requestMessage(r2, 'z', '1'));
          await s.addRequestMessage(requestMessage(r3, 'w', '4'));
          await s.addReceipts(r1, 'read', '1', [m1.message._id], iso(70));
          assert.deepEqual(await s.unreadTotals('1', '1', 10), {
            total: 1,
            requests: [{ requestId: r1, unread: 1 }],
          });
          assert.deepEqual(await s.unreadTotals('2', undefined, 10), {
            total: 2,
            requests: [
              { requestId: r3, unread: 1 },
              { requestId: r2, unread: 1 },
            ],
          });
          assert.deepEqual(await s.unreadTotals('2', undefined, 1), {
            total: 2,
            requests: [{ requestId: r3, unread: 1 }],
          });
          assert.deepEqual(await s.unreadTotals('9', '9', 10), { total: 0, requests: [] });
          // A new owner counts the request's messages as theirs; the old one no more.
          await s.putRequest(r1, '6');
          assert.equal((await s.unreadTotals('1', '1', 10)).total, 0);
          assert.equal((await s.unreadTotals('6', '6', 10)).total, 2);
        }));

      it('keeps the running unread totals equal to the per-request sum under random changes', () =>
        withStore(async (s) => {
          // A seeded generator: a failure replays the same sequence.
          let seed = 20261202;
          const rand = (n: number) => {
            seed = (seed * 1103515245 + 12345) % 2147483648;
            // The low bits of this generator cycle quickly; the high ones do not.
            return Math.floor(seed / 65536) % n;
          };
          const users = ['1', '2', '3', '4', '5'];
          const requests = Array.from({ length: 6 }, () => newId());
          const owners = new Map<string, string>();
          type Sent = { requestId: string; id: string; sender: string; deleted: boolean };
          const sent: Sent[] = [];
          const readBy = new Map<string, Set<string>>();
          for (const r of requests.slice(0, 4)) {
            const owner = users[rand(3)] as string;
            await s.putRequest(r, owner);
            owners.set(r, owner);
          }
          /** What each total must be, counted from what this test did. */
          const expected = (user: string, lab: boolean) =>
            sent.filter(
              (m) =>
                !m.deleted &&
                m.sender !== user &&
                !readBy.get(m.id)?.has(user) &&
                owners.has(m.requestId) &&
                (lab || owners.get(m.requestId) === user),
            ).length;
          /** The slow sum and list: every line of the user's inbox, page by page. */
          const slowWalk = async (user: string, lab: boolean) => {
            let sum = 0;
            const unread: Array<{ requestId: string; unread: number }> = [];
            let before: string | undefined;
            for (;;) {
              const page = paged(
                await s.listRequests({
                  userId: user,
                  ...(lab ? {} : { ownerId: user }),
                  ...(before ? { before } : {}),
                  limit: 2,
                }),
              );
              for (const line of page.requests) {
                sum += line.unread;
                if (line.unread > 0)
                  unread.push({ requestId: line.requestId, unread: line.unread });
              }
              if (!page.hasMore) return { sum, unread };
              before = page.requests.at(-1)?.requestId;
            }
          };
          for (let step = 0; step < 160; step++) {
            const op = rand(10);
            const r = requests[rand(requests.length)] as string;
            const user = users[rand(users.length)] as string;
            if (op < 4 && owners.has(r)) {
              const m = requestMessage(r, `m${step}`, user, rand(4) === 0 ? 'again' : null);
              const out =
                rand(2) === 0
                  ? await s.addRequestMessage(m)
                  : await s
                      .addRequestMessages([{ message: m }])
                      .then(([x]) => (x as PromiseFulfilledResult<AddedRequestMessage>).value);
              if (!out.duplicate) {
                sent.push({ requestId: r, id: m._id, sender: user, deleted: false });
              }
            } else if (op < 7) {
              const mine = sent.filter((m) => m.requestId === r);
              const ids = mine.filter(() => rand(2) === 0).map((m) => m.id);
              await s.addReceipts(r, 'read', user, ids, iso(step));
              for (const m of mine) {
                if (ids.includes(m.id) && m.sender !== user && !m.deleted) {
                  const set = readBy.get(m.id) ?? new Set<string>();
                  set.add(user);
                  readBy.set(m.id, set);
                }
              }
            } else if (op < 8) {
              const m = sent.filter((x) => !x.deleted)[rand(sent.length + 1)];
              if (m) {
                await s.changeRequestMessage(m.requestId, m.id, m.sender, { deletedAt: iso(step) });
                m.deleted = true;
              }
            } else {
              const owner = users[rand(users.length)] as string;
              await s.putRequest(r, owner);
              owners.set(r, owner);
            }
            for (const u of users) {
              for (const lab of [true, false]) {
                const { total, requests: list } = await s.unreadTotals(u, lab ? undefined : u, 3);
                const want = expected(u, lab);
                assert.equal(total, want, `step ${step}, user ${u}, lab ${lab}`);
                const slow = await slowWalk(u, lab);
                assert.equal(slow.sum, want, `slow sum, step ${step}, user ${u}`);
                // The unread list, from its index or its walk, is the inbox's first unread lines.
                assert.deepEqual(list, slow.unread.slice(0, 3), `list, step ${step}, user ${u}`);
              }
            }
          }
          assert.ok(sent.some((m) => m.deleted) && readBy.size > 0, 'the sequence did everything');
        }));
    });

    describe('durability', () => {
      it('keeps everything across close and reopen', () =>
        withStore(async (first, h) => {
          const r = newId();
          const chats = [streamMessage('k', 'one'), streamMessage('k', 'two')];
          await first.putStream('k', { title: 'T' });
          await first.endStream('k');
          await first.appendStreamMessages(chats);
          await first.putRequest(r, '1');
          const m = await first.addRequestMessage(requestMessage(r, 'hola', '1', 'c-1'));
          await first.addReceipts(r, 'read', '2', [m.message._id], iso(5));
          await first.close();

          const s = await h.open();
          try {
            assert.equal((await s.getStream('k'))?.title, 'T');
            assert.ok((await s.getStream('k'))?.endedAt);
            assert.deepEqual((await s.streamHistory('k', { limit: 10 })).messages, chats);
            assert.deepEqual(await s.getRequest(r), { id: r, ownerId: '1' });
            const [stored] = (await s.requestHistory(r, { limit: 10 })).messages;
            assert.deepEqual(stored?.readBy, [{ userId: '2', at: iso(5) }]);
            const again = await s.addRequestMessage(requestMessage(r, 'hola', '1', 'c-1'));
            assert.equal(again.duplicate, true, 'idempotency survives a restart');
            await s.appendStreamMessages([streamMessage('k', 'three')]);
            const texts = (await s.streamHistory('k', { limit: 10 })).messages.map(
              (x) => x.message,
            );
            assert.deepEqual(texts, ['one', 'two', 'three'], 'ordering continues after reopen');
            await s.ping();
          } finally {
            await s.close();
          }
        }));

      it('keeps the inbox counters across close and reopen', () =>
        withStore(async (first, h) => {
          const r = newId();
          await first.putRequest(r, '1');
          await first.addRequestMessage(requestMessage(r, 'a', '2'));
          await first.addRequestMessage(requestMessage(r, 'b', '2'));
          await first.close();
          const s = await h.open();
          try {
            const { requests } = await s.listRequests({ userId: '1', ownerId: '1', limit: 10 });
            assert.deepEqual(
              requests.map((x) => [x.requestId, x.unread, x.lastMessage?.message]),
              [[r, 2, 'b']],
            );
          } finally {
            await s.close();
          }
        }));

      it("keeps a stream's moderation state: settings, moderators, pin, title", () =>
        withStore(async (s) => {
          assert.equal(await s.getStreamControl('class'), undefined);
          assert.equal(await s.updateStreamControl('class', { paused: true }), false);
          await s.putStream('class', { title: 'Algebra', ownerId: '7' });
          assert.deepEqual(await s.getStreamControl('class'), {
            key: 'class',
            title: 'Algebra',
            ownerId: '7',
            moderators: [],
            slowModeSeconds: 0,
            membersOnly: false,
            paused: false,
            pinnedId: null,
          });
          const chat = streamMessage('class', 'pin me');
          await s.appendStreamMessages([chat]);
          assert.equal(
            await s.updateStreamControl('class', {
              slowModeSeconds: 30,
              membersOnly: true,
              moderators: ['8', '9'],
              pinnedId: chat.id,
            }),
            true,
          );
          assert.equal(
            await s.updateStreamControl('class', { paused: true, title: 'Geometry' }),
            true,
          );
          assert.deepEqual(await s.getStreamControl('class'), {
            key: 'class',
            title: 'Geometry',
            ownerId: '7',
            moderators: ['8', '9'],
            slowModeSeconds: 30,
            membersOnly: true,
            paused: true,
            pinnedId: chat.id,
          });
          // Unpinning a chat that is no longer the pinned one leaves the pin.
          assert.equal(await s.unpinStreamMessage('class', 'another-chat'), false);
          assert.equal((await s.getStreamControl('class'))?.pinnedId, chat.id);
          assert.equal(await s.unpinStreamMessage('class', chat.id), true);
          assert.equal((await s.getStreamControl('class'))?.pinnedId, null);
          assert.equal(await s.unpinStreamMessage('class', chat.id), false);
          await s.updateStreamControl('class', { pinnedId: null, membersOnly: false });
          const after = await s.getStreamControl('class');
          assert.equal(after?.pinnedId, null);
          assert.equal(after?.membersOnly, false);
          assert.equal(after?.paused, true, 'fields left out keep their value');
          // The earlier section-4 view is unchanged.
          assert.deepEqual(await s.getStream('class'), {
            key: 'class',
            title: 'Geometry',
            ownerId: '7',
            endedAt: null,
          });
        }));

      it('replaces the members allowlist whole', () =>
        withStore(async (s) => {
          await s.putStream('class', {});
          assert.deepEqual(await s.streamMembers('class'), []);
          await s.setStreamMembers('class', ['3', '1', '2', '1']);
          assert.deepEqual(await s.streamMembers('class'), ['1', '2', '3']);
          await s.setStreamMembers('class', ['2', '4']);
          assert.deepEqual(await s.streamMembers('class'), ['2', '4']);
          assert.deepEqual(await s.streamMembers('other'), []);
          await s.setStreamMembers('class', []);
          assert.deepEqual(await s.streamMembers('class'), []);
        }));

      it('stores bans and timeouts, lists those in force, lifts them', () =>
        withStore(async (s) => {
          await s.putStream('class', {});
          const ban = { userId: '5', until: null, reason: 'spam', by: '7', at: iso(1) };
          const timeout = { userId: '6', until: iso(1_000), reason: null, by: '7', at: iso(2) };
          const over = { userId: '9', until: iso(10), reason: null, by: 'api', at: iso(3) };
          await putBan(s, 'class', ban);
          await putBan(s, 'class', timeout);
          await putBan(s, 'class', over);
          await putBan(s, 'elsewhere', { ...ban, userId: '1' });
          assert.deepEqual(await s.streamBans('class', iso(500)), [ban, timeout]);
          assert.deepEqual(await s.streamBans('class', iso(5)), [ban, timeout, over]);
          // A new ban of the same user replaces the timeout.
          const banned = { ...timeout, until: null, reason: 'again', at: iso(4) };
          await putBan(s, 'class', banned);
          assert.deepEqual(await s.streamBans('class', iso(2_000)), [ban, banned]);
          assert.equal(await liftBan(s, 'class', '5'), true);
          assert.equal(await liftBan(s, 'class', '5'), false);
          assert.deepEqual(await s.streamBans('class', iso(2_000)), [banned]);
        }));

      it('deletes a chat for audit: kept with who and when, left out of recent chats', () =>
        withStore(async (s) => {
          await s.putStream('class', {});
          const chats = Array.from({ length: 5 }, (_, i) => streamMessage('class', `c${i}`));
          chats[1] = { ...(chats[1] as StreamMessage), badges: ['owner'] };
          await s.appendStreamMessages(chats);
          const [c0, c1, c2, c3, c4] = chats as [
            StreamMessage,
            StreamMessage,
            StreamMessage,
            StreamMessage,
            StreamMessage,
          ];
          assert.deepEqual(await s.getStreamMessage('class', c1.id), c1, 'badges are stored');
          assert.equal(await s.getStreamMessage('other', c1.id), undefined);
          const deleted = await deleteChat(s, 'class', c2.id, '7', iso(100));
          assert.deepEqual(deleted, { ...c2, deletedAt: iso(100), deletedBy: '7' });
          const again = await deleteChat(s, 'class', c2.id, '8', iso(200));
          assert.deepEqual(again, deleted, 'the first deletion is kept');
          assert.equal(await deleteChat(s, 'other', c3.id, '7', iso(1)), undefined);
          assert.equal(await deleteChat(s, 'class', newId(), '7', iso(1)), undefined);

          const all = await s.streamHistory('class', { limit: 10 });
          assert.deepEqual(all.messages, [c0, c1, deleted, c3, c4], 'history for the API keeps it');

          assert.deepEqual(await s.streamRecent('class', { limit: 10 }), {
            messages: [c0, c1, c3, c4],
            more: false,
            known: true,
          });
          assert.deepEqual(await s.streamRecent('class', { limit: 2 }), {
            messages: [c3, c4],
            more: true,
            known: true,
          });
          assert.deepEqual(await s.streamRecent('class', { after: c0.id, limit: 10 }), {
            messages: [c1, c3, c4],
            more: false,
            known: true,
          });
          assert.deepEqual(await s.streamRecent('class', { after: c0.id, limit: 2 }), {
            messages: [c3, c4],
            more: true,
            known: true,
          });
          assert.deepEqual(await s.streamRecent('class', { after: c4.id, limit: 2 }), {
            messages: [],
            more: false,
            known: true,
          });
          const unknown = await s.streamRecent('class', { after: newId(), limit: 3 });
          assert.deepEqual(unknown, { messages: [c1, c3, c4], more: true, known: false });
        }));

      it('logs moderation actions with ids that page the log, newest first', () =>
        withStore(async (s) => {
          await s.putStream('class', {});
          const logged = [];
          for (let i = 0; i < 5; i++) {
            logged.push(
              await s.addModerationAction('class', {
                action: i % 2 === 0 ? 'ban' : 'delete',
                userId: `${i}`,
                messageId: i % 2 === 0 ? null : newId(),
                by: '7',
                at: iso(i),
                reason: i === 0 ? 'spam' : null,
              }),
            );
          }
          await s.addModerationAction('other', {
            action: 'settings',
            userId: null,
            messageId: null,
            by: 'api',
            at: iso(9),
            reason: null,
          });
          const newest = [...logged].reverse();
          const page = await s.moderationLog('class', { limit: 3 });
          assert.deepEqual(page, { actions: newest.slice(0, 3), hasMore: true });
          const next = await s.moderationLog('class', { before: page.actions[2]?.id, limit: 3 });
          assert.deepEqual(next, { actions: newest.slice(3), hasMore: false });
          assert.deepEqual(await s.moderationLog('class', { before: logged[0]?.id, limit: 3 }), {
            actions: [],
            hasMore: false,
          });
          // Ids are one sequence over every stream: another stream's, or one
          // never given, is no cursor of this log, older ids or not.
          const elsewhere = (await s.moderationLog('other', { limit: 1 })).actions[0]?.id;
          assert.ok(elsewhere);
          assert.equal(await s.moderationLog('class', { before: elsewhere, limit: 3 }), undefined);
          const never = String(Number(elsewhere) + 1000);
          assert.equal(await s.moderationLog('class', { before: never, limit: 3 }), undefined);
          assert.equal(await s.moderationLog('none', { before: never, limit: 3 }), undefined);
          assert.equal((await s.moderationLog('other', { limit: 10 })).actions.length, 1);
          assert.deepEqual(await s.moderationLog('none', { limit: 10 }), {
            actions: [],
            hasMore: false,
          });
        }));

      it('ping resolves on an open store; close is idempotent', () =>
        withStore(async (s) => {
          await s.ping();
          await s.close();
          await s.close();
        }));
    });
  });
}

/**
 * A small history that moves every running unread total: messages both ways,
 * a read, a deletion and an owner change. For the migration tests, which
 * check the totals a migration fills against those kept as it happened.
 */
export async function seedUnreadHistory(store: Store): Promise<void> {
  const message = (requestId: string, senderId: string): NewRequestMessage => ({
    _id: newId(),
    requestId,
    sender: { id: senderId, username: `user${senderId}`, role: 'LAB' },
    message: 'x',
    createdAt: new Date().toISOString(),
    clientMessageId: null,
  });
  const [r1, r2] = [newId(), newId()];
  await store.putRequest(r1, '1');
  await store.putRequest(r2, '4');
  const a = await store.addRequestMessage(message(r1, '2'));
  await store.addRequestMessage(message(r1, '2'));
  const c = await store.addRequestMessage(message(r2, '1'));
  await store.addRequestMessage(message(r2, '3'));
  await store.addReceipts(r1, 'read', '1', [a.message._id], new Date().toISOString());
  await store.changeRequestMessage(r2, c.message._id, '1', { deletedAt: new Date().toISOString() });
  await store.putRequest(r2, '1');
}

/** Users 1–4's unread totals, as owners and as LAB, in that order. */
export const unreadTotalsOf = (s: Store) =>
  Promise.all(
    ['1', '2', '3', '4'].flatMap((u) => [
      s.unreadTotals(u, u, 10).then((x) => x.total),
      s.unreadTotals(u, undefined, 10).then((x) => x.total),
    ]),
  );

/** Users 1–4's unread lists, as owners and as LAB, in that order. */
export const unreadListsOf = (s: Store) =>
  Promise.all(
    ['1', '2', '3', '4'].flatMap((u) => [
      s.unreadTotals(u, u, 10).then((x) => x.requests),
      s.unreadTotals(u, undefined, 10).then((x) => x.requests),
    ]),
  );
