/**
 * Webhook ids: the `webhook-id` format, uniqueness, and the order that keeps
 * the outbox's primary-key index growing at its end.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { newWebhookId } from '../src/core/webhook-events.js';

describe('newWebhookId', () => {
  it('is msg_ and 32 hex digits, never the same twice', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 20_000; i++) {
      const id = newWebhookId();
      assert.match(id, /^msg_[0-9a-f]{32}$/);
      ids.add(id);
    }
    assert.equal(ids.size, 20_000);
  });

  it('sorts ids made in later milliseconds after earlier ones', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      ids.push(newWebhookId());
      await new Promise((r) => setTimeout(r, 2));
    }
    assert.deepEqual([...ids].sort(), ids);
  });
});
