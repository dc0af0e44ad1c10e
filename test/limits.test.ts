import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ChatError } from '../src/core/errors.js';
import {
  checkMessageText,
  FloodCounter,
  isStorableText,
  parseRate,
  RateLimiter,
} from '../src/core/limits.js';

describe('parseRate', () => {
  it('reads N/<seconds>s', () => {
    assert.deepEqual(parseRate('20/30s'), { count: 20, windowMs: 30_000 });
    assert.deepEqual(parseRate(' 60 / 0.5s '), { count: 60, windowMs: 500 });
    assert.deepEqual(parseRate('1/86400s'), { count: 1, windowMs: 86_400_000 });
  });
  it('refuses anything else', () => {
    for (const bad of [
      '',
      '20',
      '20/30',
      '0/30s',
      '20/0s',
      'a/30s',
      '20/30m',
      '-1/30s',
      '1/86401s',
      '1/99999999999999999s',
    ]) {
      assert.equal(parseRate(bad), undefined, bad);
    }
  });
});

describe('RateLimiter', () => {
  it('allows count per window, then refuses with the wait until the window ends', () => {
    let now = 1_000_000;
    const rl = new RateLimiter({ count: 3, windowMs: 3000 }, () => now);
    rl.take('a');
    now += 1000;
    rl.take('a');
    rl.take('a');
    try {
      rl.take('a');
      assert.fail('should be limited');
    } catch (e) {
      assert.ok(e instanceof ChatError);
      assert.equal(e.code, 'rate_limited');
      assert.equal(e.retryAfterMs, 2000);
      assert.deepEqual(e.toPayload().retry_after_ms, 2000);
    }
    now += 1999;
    assert.throws(() => rl.take('a'), { code: 'rate_limited', retryAfterMs: 1 });
    now += 1;
    rl.take('a');
    rl.take('a');
    rl.take('a');
    assert.throws(() => rl.take('a'), { code: 'rate_limited', retryAfterMs: 3000 });
  });
  it('never lets more than count through within one window, however they are spread', () => {
    let now = 0;
    const rl = new RateLimiter({ count: 60, windowMs: 30_000 }, () => now);
    let accepted = 0;
    // One attempt every 100 ms for 29.9 s: a refilling bucket would take about 120.
    for (let i = 0; i < 300; i++, now += 100) {
      try {
        rl.take('a');
        accepted++;
      } catch {}
    }
    assert.equal(accepted, 60);
  });
  it('keeps keys apart', () => {
    const now = 0;
    const rl = new RateLimiter({ count: 1, windowMs: 1000 }, () => now);
    rl.take('a');
    rl.take('b');
    assert.throws(() => rl.take('a'), { code: 'rate_limited' });
  });
  it('forgets keys whose window ended, so memory follows active users', () => {
    let now = 0;
    const rl = new RateLimiter({ count: 2, windowMs: 1000 }, () => now);
    for (let i = 0; i < 100; i++) rl.take(`u${i}`);
    assert.equal(rl.size, 100);
    now += 5000;
    rl.take('late');
    assert.equal(rl.size, 1);
  });
});

describe('FloodCounter', () => {
  it('trips past the limit within 10 s and resets in the next window', () => {
    const f = new FloodCounter(3);
    assert.equal(f.hit(0), false);
    assert.equal(f.hit(1), false);
    assert.equal(f.hit(2), false);
    assert.equal(f.hit(3), true);
    assert.equal(f.hit(10_000), false);
  });
});

describe('checkMessageText', () => {
  it('refuses empty and whitespace-only text', () => {
    assert.throws(() => checkMessageText('', 10), { code: 'empty_message' });
    assert.throws(() => checkMessageText(' \n\t ', 10), { code: 'empty_message' });
  });
  it('refuses text that shows as nothing: invisible format characters and blank glyphs', () => {
    for (const blank of [
      '\u200b',
      '\u200d\u200c',
      '\u2060\ufeff',
      '\u180e',
      '\u3164',
      '\u2800',
      '\u00ad',
      ' \u200f ',
    ]) {
      assert.throws(
        () => checkMessageText(blank, 10),
        { code: 'empty_message' },
        JSON.stringify(blank),
      );
    }
    // Emoji joined by U+200D and text with a zero-width space are not blank.
    assert.equal(checkMessageText('👩\u200d💻', 10), '👩\u200d💻');
    assert.equal(checkMessageText('a\u200b', 10), 'a\u200b');
  });
  it('lets blank text through when asked (a message with attachments), but never too long', () => {
    assert.equal(checkMessageText('', 10, true), '');
    assert.throws(() => checkMessageText(' '.repeat(11), 10, true), { code: 'message_too_long' });
  });
  it('refuses text with an unpaired surrogate', () => {
    assert.throws(() => checkMessageText('a\ud800b', 10), { code: 'invalid_payload' });
    assert.equal(checkMessageText('a\ud83d\ude00', 10), 'a😀');
  });
  it('refuses U+0000, which PostgreSQL cannot store', () => {
    assert.throws(() => checkMessageText('a\u0000b', 10), { code: 'invalid_payload' });
  });
  it('counts code points, not UTF-16 units', () => {
    assert.equal(checkMessageText('😀'.repeat(10), 10), '😀'.repeat(10));
    assert.throws(() => checkMessageText('😀'.repeat(11), 10), { code: 'message_too_long' });
    assert.throws(() => checkMessageText('a'.repeat(11), 10), { code: 'message_too_long' });
    assert.equal(checkMessageText('a'.repeat(10), 10).length, 10);
  });
});

describe('isStorableText', () => {
  it('accepts any well-formed text but U+0000', () => {
    for (const ok of ['', 'ana', '😀', '\u0001\u001f', '\ufffd', 'a\ud83d\ude00b']) {
      assert.equal(isStorableText(ok), true, JSON.stringify(ok));
    }
    for (const bad of ['\u0000', 'a\u0000', '\ud800', 'a\udfffb', '\ude00\ud83d']) {
      assert.equal(isStorableText(bad), false, JSON.stringify(bad));
    }
  });
});
