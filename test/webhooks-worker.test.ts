/**
 * The delivery worker's use of the store, on a real SQLite outbox: rows are
 * claimed ahead (twice the slots), a freed slot takes the next row in the
 * same turn, sends answered together leave the outbox in one statement (the
 * next claim's, when one is due), claims come in batches rather than one per
 * send, a stop hands every unsent row back, and a retry due before the next
 * poll still goes out on time while the other slots are busy, and events
 * committed while sends are under way are claimed together, once
 * CLAIM_GAP_MS after the last claim. Answers are
 * removed once as many as the slots wait, or after REMOVE_AFTER_MS. The sender
 * here answers when the test says, so that "together" is exact.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { WebhookConfig } from '../src/config.js';
import { outboxEntry } from '../src/core/webhook-events.js';
import { REMOVE_AFTER_MS, type WebhookSender, Webhooks } from '../src/core/webhooks.js';
import { createLogger } from '../src/observability/log.js';
import { Metrics } from '../src/observability/metrics.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { Store } from '../src/store/store.js';
import { sleep, tempDir } from './helpers.js';

const dir = tempDir('charla-worker-');
after(() => rmSync(dir, { recursive: true, force: true }));

/** Sends held until the test answers them. */
class HeldSender implements WebhookSender {
  readonly held: Array<{ id: string; resolve: () => void; reject: (e: Error) => void }> = [];
  readonly sent: string[] = [];
  send(id: string, _body: string, signal: AbortSignal): Promise<void> {
    this.sent.push(id);
    return new Promise((resolve, reject) => {
      this.held.push({ id, resolve, reject });
      signal.addEventListener('abort', () => reject(new Error('stopped')), { once: true });
    });
  }
  /** Answers the first `n` held sends in one turn. */
  answer(n: number, err?: Error): string[] {
    const batch = this.held.splice(0, n);
    for (const s of batch) {
      if (err) s.reject(err);
      else s.resolve();
    }
    return batch.map((s) => s.id);
  }
  close(): void {}
}

async function until(what: string, ok: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

let n = 0;
/** A worker on a fresh SQLite store; the poll is far off, so every claim seen is an early one. */
async function setup(events: number, config: Partial<WebhookConfig> = {}) {
  const store = new SqliteStore(join(dir, `outbox-${n++}.db`));
  const calls = {
    claims: [] as number[],
    /** Per claim, how many delivered rows it removed too. */
    claimedWith: [] as number[],
    /** Every removal of delivered rows, on its own or with a claim. */
    completes: [] as string[][],
  };
  // The real store, with its calls counted on the way through.
  const counted = new Proxy(store, {
    get(target, key, receiver) {
      if (key === 'claimWebhooks') {
        return async (...args: Parameters<Store['claimWebhooks']>) => {
          const rows = await target.claimWebhooks(...args);
          calls.claims.push(rows.length);
          const completed = args[3] ?? [];
          if (completed.length > 0) calls.completes.push([...completed]);
          calls.claimedWith.push(completed.length);
          return rows;
        };
      }
      if (key === 'completeWebhooks') {
        return (ids: readonly string[]) => {
          calls.completes.push([...ids]);
          return target.completeWebhooks(ids);
        };
      }
      const value = Reflect.get(target, key, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  }) as Store;
  const ids: string[] = [];
  const entries = Array.from({ length: events }, (_, i) => {
    const e = outboxEntry('stream.ended', { key: `k${i}` });
    ids.push(e.id);
    return e;
  });
  await store.enqueueWebhooks(entries);
  const sender = new HeldSender();
  const webhooks = new Webhooks({
    store: counted,
    sender,
    config: {
      url: 'http://127.0.0.1:1/unused',
      secret: 'whsec_unused',
      maxAttempts: 5,
      retryBaseMs: 50,
      retryMaxMs: 50,
      unreadAfterMs: 0,
      timeoutMs: 1_000,
      pollMs: 60_000,
      concurrency: 8,
      ...config,
    },
    metrics: new Metrics(),
    log: createLogger('silent'),
  });
  const pending = async () => store.webhookQueueDepth(new Date(Date.now() + 10_000).toISOString());
  const close = async () => {
    await webhooks.stop();
    await store.close();
  };
  return { store, webhooks, sender, calls, ids, pending, close };
}

describe('webhook worker', () => {
  it('claims twice the slots, fills a freed slot in the same turn, and removes answers with the next claim', async () => {
    const w = await setup(20);
    try {
      w.webhooks.start();
      await until('the first sends', () => w.sender.held.length === 8);
      await until('the first claim', () => w.calls.claims.length === 1);
      assert.deepEqual(w.calls.claims, [16], 'eight to send and eight ahead');
      const first = w.sender.answer(8);
      // The eight claimed ahead go out as the answers come, before any store call.
      await until('the next sends', () => w.sender.held.length === 8);
      assert.equal(w.sender.sent.length, 16);
      await until('the second claim', () => w.calls.claims.length === 2);
      assert.deepEqual(w.calls.claims, [16, 4], 'eight queued: one claim for what is left');
      assert.deepEqual(w.calls.completes, [first], 'the eight answers removed by that claim');
      assert.deepEqual(w.calls.claimedWith, [0, 8]);
      const second = w.sender.answer(8);
      await until('the last four', () => w.sender.held.length === 4);
      const last = w.sender.answer(4);
      await until('every delete', () => w.calls.completes.flat().length === 20);
      assert.deepEqual(w.calls.completes.flat().sort(), [...first, ...second, ...last].sort());
      assert.deepEqual([...w.sender.sent].sort(), [...w.ids].sort(), 'each event sent once');
      assert.equal(await w.pending(), 0);
    } finally {
      await w.close();
    }
  });

  it('claims again only once no more than the slots are queued, and removes fewer answers than the slots after a while', async () => {
    const w = await setup(40);
    try {
      w.webhooks.start();
      await until(
        'the first claim',
        () => w.calls.claims.length === 1 && w.sender.held.length === 8,
      );
      const answeredAt = Date.now();
      const one = w.sender.answer(1);
      await until('the first delete', () => w.calls.completes.length === 1);
      assert.ok(
        Date.now() - answeredAt >= REMOVE_AFTER_MS - 5,
        'one answer waits for others to be removed with',
      );
      assert.deepEqual(w.calls.completes, [one], 'removed on its own: fifteen still queued');
      w.webhooks.nudge();
      await sleep(100);
      assert.deepEqual(w.calls.claims, [16], 'no claim while more than eight are queued');
      assert.equal(w.sender.held.length, 8, 'the freed slot took a row claimed ahead');
      const seven = w.sender.answer(7);
      await until('the refill', () => w.calls.claims.length === 2);
      assert.deepEqual(w.calls.claims, [16, 8], 'eight queued: eight more claimed');
      assert.deepEqual(w.calls.claimedWith, [0, 0], 'seven answers: not yet removed');
      await until('the second delete', () => w.calls.completes.length === 2);
      assert.deepEqual(w.calls.completes, [one, seven], 'the seven removed together');
    } finally {
      w.sender.answer(w.sender.held.length);
      await w.close();
    }
  });

  it('hands back the rows being sent and those claimed ahead when stopped, and removes the delivered', async () => {
    const w = await setup(20);
    w.webhooks.start();
    await until('the first claim', () => w.calls.claims.length === 1 && w.sender.held.length === 8);
    const delivered = w.sender.answer(2);
    await until('two more sends', () => w.sender.sent.length === 10);
    await w.webhooks.stop();
    const now = new Date().toISOString();
    const later = new Date(Date.now() + 60_000).toISOString();
    const left = await w.store.claimWebhooks(100, now, later);
    await w.store.close();
    assert.equal(left.length, 18, 'every row not delivered, claimable again at once');
    assert.deepEqual(
      left.map((e) => e.id).sort(),
      w.ids.filter((id) => !delivered.includes(id)).sort(),
    );
    assert.ok(
      left.every((e) => e.attempts === 0),
      'a stop counts no attempt',
    );
  });

  it('sends a retry due before the poll while the other slots stay busy', async () => {
    const w = await setup(8);
    try {
      w.webhooks.start();
      await until('the first batch', () => w.sender.held.length === 8);
      const [failed] = w.sender.answer(1, new Error('HTTP 500'));
      // The retry is due 50-63 ms later; the poll is a minute away and seven sends are held.
      await until('the retry', () => w.sender.held.some((s) => s.id === failed), 2_000);
      assert.equal(w.sender.sent.filter((id) => id === failed).length, 2, 'the same id again');
      w.sender.answer(8);
      await until('the outbox to empty', () => w.calls.completes.flat().length === 8);
      assert.equal(await w.pending(), 0);
    } finally {
      await w.close();
    }
  });
  it('claims at once when idle, and events committed within CLAIM_GAP_MS of the last claim together while busy', async () => {
    const w = await setup(0);
    /** Commits one event and nudges, as a store call with its outbox row does. */
    const commit = async (i: number) => {
      await w.store.enqueueWebhooks([outboxEntry('stream.ended', { key: `gap${i}` })]);
      w.webhooks.nudge();
    };
    try {
      w.webhooks.start();
      await until('the first, empty claim', () => w.calls.claims.length === 1);
      // Nothing under way: the nudge claims at once.
      await commit(0);
      await until('the first send', () => w.sender.held.length === 1);
      assert.deepEqual(w.calls.claims, [0, 1]);
      // One commit per turn, as a busy node's group commits come, the first send still held.
      for (let i = 1; i <= 4; i++) {
        await commit(i);
        await new Promise((r) => setImmediate(r));
      }
      await until('the four sends', () => w.sender.held.length === 5);
      const busy = w.calls.claims.slice(2);
      assert.equal(
        busy.reduce((a, b) => a + b, 0),
        4,
      );
      assert.ok(busy.length < 4, `fewer claims than commits: ${JSON.stringify(busy)}`);
    } finally {
      w.sender.answer(w.sender.held.length);
      await w.close();
    }
  });
});
