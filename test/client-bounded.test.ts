/** The client library's pure parts: backoff with jitter, the bounded set, typed errors. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BoundedSet, backoffDelay, ChatClientError } from '../src/client/index.js';

describe('backoffDelay', () => {
  it('doubles from the initial delay up to the ceiling, within the jitter band', () => {
    const opts = { initialDelayMs: 100, maxDelayMs: 1_000, jitter: 0.5 };
    const bases = [100, 200, 400, 800, 1_000, 1_000];
    for (const [attempt, base] of bases.entries()) {
      for (let i = 0; i < 200; i++) {
        const d = backoffDelay(attempt, opts);
        assert.ok(
          d >= base / 2 && d <= base,
          `attempt ${attempt}: ${d} outside [${base / 2}, ${base}]`,
        );
      }
    }
    assert.equal(backoffDelay(3, { ...opts, jitter: 0 }), 800);
    assert.ok(backoffDelay(10_000, opts) <= 1_000);
  });

  it('spreads clients that retry together', () => {
    const delays = new Set(Array.from({ length: 50 }, () => backoffDelay(4)));
    assert.ok(delays.size > 10, `only ${delays.size} distinct delays`);
  });
});

describe('BoundedSet', () => {
  it('keeps at most its capacity and forgets the oldest first', () => {
    const s = new BoundedSet<string>(3);
    for (const k of ['a', 'b', 'c', 'd']) assert.equal(s.add(k), true);
    assert.equal(s.size, 3);
    assert.equal(s.has('a'), false);
    assert.equal(s.add('b'), false);
    assert.throws(() => new BoundedSet(0), RangeError);
  });
});

describe('ChatClientError', () => {
  it('carries the server error_code and retry_after_ms', () => {
    const e = ChatClientError.fromPayload(
      { error_code: 'rate_limited', message: 'slow down', retry_after_ms: 1500 },
      'message',
    );
    assert.ok(e instanceof Error);
    assert.equal(e.code, 'rate_limited');
    assert.equal(e.retryAfterMs, 1500);
    assert.equal(e.event, 'message');
    assert.equal(e.message, 'slow down');
  });
});
