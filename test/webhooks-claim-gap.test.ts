/**
 * The delivery worker on a real SQLite outbox while its sends are under way:
 * events committed one after another in quick succession, each with its
 * nudge, are claimed together once CLAIM_GAP_MS after the last claim, not one
 * claim per commit; with nothing under way, a nudge claims at once.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { outboxEntry } from '../src/core/webhook-events.js';
import { type WebhookSender, Webhooks } from '../src/core/webhooks.js';
import { createLogger } from '../src/observability/log.js';
import { Metrics } from '../src/observability/metrics.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { Store } from '../src/store/store.js';
import { sleep, tempDir } from './helpers.js';

const dir = tempDir('charla-claim-gap-');
after(() => rmSync(dir, { recursive: true, force: true }));

/** Sends held until the test answers them. */
class HeldSender implements WebhookSender {
  readonly held: Array<{ id: string; resolve: () => void }> = [];
  send(id: string, _body: string, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      this.held.push({ id, resolve });
      signal.addEventListener('abort', () => reject(new Error('stopped')), { once: true });
    });
  }
  answerAll(): void {
    for (const s of this.held.splice(0)) s.resolve();
  }
  close(): void {}
}

async function until(what: string, ok: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

const nextTurn = () => new Promise((r) => setImmediate(r));

async function setup() {
  const store = new SqliteStore(join(dir, `outbox-${Date.now()}-${Math.random()}.db`));
  const claims: number[] = [];
  const counted = new Proxy(store, {
    get(target, key, receiver) {
      if (key === 'claimWebhooks') {
        return async (...args: Parameters<Store['claimWebhooks']>) => {
          const rows = await target.claimWebhooks(...args);
          claims.push(rows.length);
          return rows;
        };
      }
      const value = Reflect.get(target, key, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  }) as Store;
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
    },
    metrics: new Metrics(),
    log: createLogger('silent'),
  });
  /** Commits one event and nudges, as a store call with its outbox row does. */
  const commit = async (i: number) => {
    await store.enqueueWebhooks([outboxEntry('stream.ended', { key: `k${i}` })]);
    webhooks.nudge();
  };
  const close = async () => {
    sender.answerAll();
    await webhooks.stop();
    await store.close();
  };
  return { webhooks, sender, claims, commit, close };
}

describe('webhook worker claims while busy', () => {
  it('claims at once when idle, and events committed within CLAIM_GAP_MS of the last claim together while busy', async () => {
    const w = await setup();
    try {
      w.webhooks.start();
      await until('the first, empty claim', () => w.claims.length === 1);
      // Nothing under way: the nudge claims at once.
      await w.commit(0);
      await until('the first send', () => w.sender.held.length === 1);
      assert.deepEqual(w.claims, [0, 1]);
      // One commit per turn, as a busy node's group commits come, the first send still held.
      for (let i = 1; i <= 4; i++) {
        await w.commit(i);
        await nextTurn();
      }
      await until('the four sends', () => w.sender.held.length === 5);
      const busy = w.claims.slice(2);
      assert.equal(
        busy.reduce((a, b) => a + b, 0),
        4,
      );
      assert.ok(busy.length < 4, `fewer claims than commits: ${JSON.stringify(busy)}`);
    } finally {
      await w.close();
    }
  });
});
