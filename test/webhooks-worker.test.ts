/**
 * The delivery worker's use of the store, on a real SQLite outbox: sends
 * answered together leave the outbox in one delete, freed slots are refilled
 * in batches rather than one claim per send, and a retry due before the
 * next poll still goes out on time while the other slots are busy. The
 * sender here answers when the test says, so that "together" is exact.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { WebhookConfig } from '../src/config.js';
import { outboxEntry } from '../src/core/webhook-events.js';
import { type WebhookSender, Webhooks } from '../src/core/webhooks.js';
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
  send(id: string): Promise<void> {
    this.sent.push(id);
    return new Promise((resolve, reject) => this.held.push({ id, resolve, reject }));
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
  const calls = { claims: [] as number[], completes: [] as string[][] };
  // The real store, with its calls counted on the way through.
  const counted = new Proxy(store, {
    get(target, key, receiver) {
      if (key === 'claimWebhooks') {
        return async (...args: Parameters<Store['claimWebhooks']>) => {
          const rows = await target.claimWebhooks(...args);
          calls.claims.push(rows.length);
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
  it('removes the sends answered in one turn with one delete, and claims a batch after them', async () => {
    const w = await setup(20);
    try {
      w.webhooks.start();
      await until('the first batch', () => w.sender.held.length === 8);
      assert.deepEqual(w.calls.claims, [8]);
      const first = w.sender.answer(8);
      await until('the second batch', () => w.sender.held.length === 8);
      assert.deepEqual(w.calls.completes, [first], 'one delete for the eight');
      assert.deepEqual(w.calls.claims, [8, 8], 'one claim refills the eight slots');
      const second = w.sender.answer(8);
      await until('the last four', () => w.sender.held.length === 4);
      const last = w.sender.answer(4);
      await until('the last delete', () => w.calls.completes.length === 3);
      assert.deepEqual(w.calls.completes, [first, second, last]);
      assert.deepEqual([...w.sender.sent].sort(), [...w.ids].sort(), 'each event sent once');
      assert.equal(await w.pending(), 0);
    } finally {
      await w.close();
    }
  });

  it('refills freed slots only once half of them are free, unless none is busy', async () => {
    const w = await setup(30);
    try {
      w.webhooks.start();
      await until('the first batch', () => w.sender.held.length === 8);
      w.sender.answer(1);
      await until('the first delete', () => w.calls.completes.length === 1);
      w.sender.answer(2);
      await until('the second delete', () => w.calls.completes.length === 2);
      w.webhooks.nudge();
      await sleep(100);
      assert.deepEqual(w.calls.claims, [8], 'three of eight slots free: no claim yet');
      assert.equal(w.sender.held.length, 5);
      w.sender.answer(1);
      await until('the refill', () => w.calls.claims.length === 2);
      assert.deepEqual(w.calls.claims, [8, 4], 'four free slots are refilled by one claim');
      await until('eight sends again', () => w.sender.held.length === 8);
      // With nothing under way, an early claim is always worth it.
      w.sender.answer(8);
      await until('the third claim', () => w.calls.claims.length === 3);
      assert.deepEqual(w.calls.claims, [8, 4, 8]);
    } finally {
      w.sender.answer(w.sender.held.length);
      await w.close();
    }
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
});
