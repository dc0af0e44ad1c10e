/**
 * The request-chat core (`src/core/requests.ts`) without any transport, over a
 * real SQLite store: who may act, in which order refusals happen, and that a
 * refusal leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { loadConfig } from '../src/config.js';
import { Gate } from '../src/core/gate.js';
import type { Identity } from '../src/core/identity.js';
import { newId } from '../src/core/ids.js';
import { fitPage, Requests } from '../src/core/requests.js';
import { Metrics } from '../src/observability/metrics.js';
import { SqliteStore } from '../src/store/sqlite.js';

const { limits, desk } = loadConfig({
  JWT_SECRET: 'x'.repeat(32),
  REQUEST_RATE_LIMIT: '2/60s',
  REQUEST_MESSAGE_MAX_CHARS: '20',
  HISTORY_PAGE: '3',
  HISTORY_MAX_PAGE: '5',
  STREAM_HISTORY_ON_JOIN: '5',
});

const who = (userId: string, ...roles: string[]): Identity => ({
  userId,
  username: `u${userId}`,
  roles,
  expiresAt: undefined,
});
const owner = who('1', 'TEACHER');
const lab = who('7', 'LAB');

describe('Requests', () => {
  let store: SqliteStore;
  let requests: Requests;
  let id: string;

  beforeEach(async () => {
    store = new SqliteStore(':memory:');
    requests = new Requests({
      store,
      limits,
      desk,
      metrics: new Metrics(),
      log: pino({ level: 'silent' }),
    });
    id = newId();
    await requests.put(id, '1');
  });

  it('authorizes LAB and the owning TEACHER, under the role they act in', async () => {
    assert.equal(await requests.authorize(lab, id), 'LAB');
    assert.equal(await requests.authorize(owner, id), 'TEACHER');
    // LAB wins when a user holds both roles and does not own the request.
    assert.equal(await requests.authorize(who('9', 'TEACHER', 'LAB'), id), 'LAB');
  });

  it('refuses everyone else, and unknown requests', async () => {
    for (const identity of [who('2', 'TEACHER'), who('1'), who('1', 'STUDENT')]) {
      await assert.rejects(requests.authorize(identity, id), { code: 'forbidden' });
    }
    await assert.rejects(requests.authorize(lab, newId()), { code: 'not_found' });
  });

  it('stores a message with the role it was sent under', async () => {
    const { message, duplicate } = await requests.send(owner, id, 'hola', undefined);
    assert.equal(duplicate, false);
    assert.deepEqual(message.sender, { id: '1', username: 'u1', role: 'TEACHER' });
    assert.deepEqual((await requests.history(id, { limit: 10 })).messages, [message]);
  });

  it('refuses bad text before spending the rate limit, and stores nothing', async () => {
    await assert.rejects(requests.send(lab, id, ' ', undefined), { code: 'empty_message' });
    await assert.rejects(requests.send(lab, id, 'x'.repeat(21), undefined), {
      code: 'message_too_long',
    });
    await assert.rejects(requests.send(who('2', 'TEACHER'), id, 'hi', undefined), {
      code: 'forbidden',
    });
    // The two refused sends of this user cost nothing: two are still allowed.
    await requests.send(lab, id, 'one', undefined);
    await requests.send(lab, id, 'two', undefined);
    const third = requests.send(lab, id, 'three', undefined);
    await assert.rejects(third, (err: { code: string; retryAfterMs: number }) => {
      assert.equal(err.code, 'rate_limited');
      // The rest of the 60 s window the first message opened.
      assert.ok(err.retryAfterMs > 50_000 && err.retryAfterMs <= 60_000);
      return true;
    });
    const texts = (await requests.history(id, { limit: 10 })).messages.map((m) => m.message);
    assert.deepEqual(texts, ['one', 'two']);
  });

  it('a retried clientMessageId is a duplicate, and costs no second message', async () => {
    const first = await requests.send(lab, id, 'once', 'k');
    const again = await requests.send(lab, id, 'once', 'k');
    assert.equal(again.duplicate, true);
    assert.deepEqual(again.message, first.message);
    assert.equal((await requests.history(id, { limit: 10 })).messages.length, 1);
  });

  it('receipts: deduplicated ids, at most HISTORY_MAX_PAGE, only new ones returned', async () => {
    const { message } = await requests.send(owner, id, 'x', undefined);
    const r = await requests.receipts(lab, id, 'read', [message._id, message._id]);
    assert.deepEqual(r.messages, [message._id]);
    assert.deepEqual((await requests.receipts(lab, id, 'delivered', [message._id])).messages, []);
    const tooMany = Array.from({ length: 6 }, () => newId());
    await assert.rejects(requests.receipts(lab, id, 'delivered', tooMany), {
      code: 'invalid_payload',
    });
    await assert.rejects(requests.receipts(who('3'), id, 'read', [message._id]), {
      code: 'forbidden',
    });
  });

  it('edits and deletions spend the same rate limit as messages; refusals spend none', async () => {
    const { message } = await requests.send(lab, id, 'one', undefined);
    await assert.rejects(requests.edit(owner, id, message._id, 'x'), { code: 'forbidden' });
    await assert.rejects(requests.edit(lab, id, message._id, ' '), { code: 'empty_message' });
    const edited = await requests.edit(lab, id, message._id, 'two');
    assert.equal(edited.message.message, 'two');
    // REQUEST_RATE_LIMIT is 2/60s here: the message and the edit took both.
    await assert.rejects(requests.remove(lab, id, message._id), { code: 'rate_limited' });
    const [stored] = (await requests.history(id, { limit: 10 })).messages;
    assert.equal(stored?.deletedAt, undefined);
    assert.equal(stored?.message, 'two');
  });

  it('page sizes: HISTORY_PAGE by default, at most HISTORY_MAX_PAGE', () => {
    assert.equal(requests.pageLimit(undefined), 3);
    assert.equal(requests.pageLimit(5), 5);
    assert.throws(() => requests.pageLimit(6), { code: 'invalid_payload' });
  });

  it('flush waits for writes under way', async () => {
    let done = false;
    void requests.send(lab, id, 'pending', undefined).then(() => {
      done = true;
    });
    await requests.flush();
    assert.equal(done, true);
  });
});

describe('bounds on what one client can cost', () => {
  it('fitPage keeps the newest messages that fit, at least one, and says there is more', () => {
    const messages = ['a', 'b', 'c', 'd'].map((m) => ({ m: m.repeat(10) }));
    const one = Buffer.byteLength(JSON.stringify(messages[0]));
    assert.deepEqual(fitPage({ messages, hasMore: false }, one * 4), { messages, hasMore: false });
    assert.deepEqual(fitPage({ messages, hasMore: false }, one * 2 + 1), {
      messages: messages.slice(2),
      hasMore: true,
    });
    assert.deepEqual(fitPage({ messages, hasMore: false }, 1), {
      messages: messages.slice(3),
      hasMore: true,
    });
    assert.deepEqual(fitPage({ messages: [], hasMore: false }, 1), {
      messages: [],
      hasMore: false,
    });
  });

  it('a Gate runs a few at once, queues a few more in order and refuses the rest', async () => {
    const gate = new Gate(1, 1, () => new Error('refused'));
    const order: string[] = [];
    let release: () => void = () => {};
    const first = gate.run(
      () =>
        new Promise<void>((resolve) => {
          order.push('first');
          release = resolve;
        }),
    );
    const second = gate.run(async () => {
      order.push('second');
    });
    await assert.rejects(
      gate.run(async () => {}),
      /refused/,
    );
    assert.deepEqual(order, ['first']);
    release();
    await Promise.all([first, second]);
    assert.deepEqual(order, ['first', 'second']);
    await gate.run(async () => {
      order.push('third');
    });
    assert.deepEqual(order.at(-1), 'third');
  });
});
