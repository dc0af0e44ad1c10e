/**
 * The per-stream memory of newest chats, with no server: seeding merged with
 * what was heard meanwhile, deletions, its bounds, and when it must say "ask
 * the store".
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { StreamMessage } from '../src/core/messages.js';
import { RecentCache, RecentChats, type RecentLimits } from '../src/core/stream-recent.js';

const LIMITS: RecentLimits = { chats: 5, bytes: 1_000_000, streams: 2 };

const chat = (id: string, message = `text ${id}`): StreamMessage => ({
  id,
  streamKey: 's',
  userId: '1',
  username: 'user1',
  message,
  sentAt: '2026-01-01T00:00:00.000Z',
  badges: [],
});
const ids = (list: StreamMessage[] | undefined) => list?.map((m) => m.id);

describe('RecentChats', () => {
  it('answers nothing until seeded', () => {
    const r = new RecentChats(LIMITS);
    r.add(chat('a'));
    assert.equal(r.newest(1), undefined);
    assert.equal(r.after('a'), undefined);
  });

  it('merges what was heard during the read after the store, once each', () => {
    const r = new RecentChats(LIMITS);
    r.add(chat('c'));
    r.add(chat('d'));
    assert.equal(r.seed({ messages: [chat('a'), chat('b'), chat('c')], more: false }), true);
    assert.deepEqual(ids(r.newest(5)), ['a', 'b', 'c', 'd']);
    r.add(chat('e'));
    assert.deepEqual(ids(r.newest(2)), ['d', 'e']);
    assert.deepEqual(ids(r.after('b')), ['c', 'd', 'e']);
    assert.deepEqual(ids(r.after('e')), []);
    assert.equal(r.after('zz'), undefined);
  });

  it('a chat deleted during the read is not brought back by what was heard', () => {
    const r = new RecentChats(LIMITS);
    r.add(chat('b'));
    r.remove('b');
    r.remove('a');
    assert.equal(r.seed({ messages: [chat('a')], more: false }), true);
    assert.deepEqual(ids(r.newest(5)), []);
  });

  it('removes deleted chats; without the whole stream, fewer than asked means the store', () => {
    const r = new RecentChats(LIMITS);
    r.seed({ messages: ['a', 'b', 'c', 'd', 'e'].map((id) => chat(id)), more: true });
    assert.deepEqual(ids(r.newest(3)), ['c', 'd', 'e']);
    r.remove('d');
    assert.deepEqual(ids(r.newest(3)), ['b', 'c', 'e']);
    r.remove('a');
    r.remove('b');
    assert.equal(r.newest(3), undefined, 'older chats exist that it does not hold');
    assert.deepEqual(ids(r.newest(2)), ['c', 'e']);
  });

  it('keeps at most `chats`, and within `bytes`, the oldest dropped first', () => {
    const r = new RecentChats({ ...LIMITS, bytes: 700 });
    r.seed({ messages: [], more: false });
    for (const id of ['a', 'b', 'c', 'd', 'e', 'f']) r.add(chat(id));
    assert.equal(r.size, 5);
    assert.equal(r.after('a'), undefined);
    assert.equal(r.newest(6), undefined, 'a was dropped: no longer the whole stream');
    r.add(chat('g', 'x'.repeat(400)));
    assert.ok(r.size < 5);
    assert.equal(ids(r.newest(1))?.[0], 'g');
  });

  it('counts the user id toward `bytes` too', () => {
    const r = new RecentChats({ ...LIMITS, bytes: 2_500 });
    r.seed({ messages: [], more: false });
    for (const id of ['a', 'b', 'c']) r.add({ ...chat(id, 'hi'), userId: 'u'.repeat(900) });
    assert.equal(r.size, 2, 'three chats of 900-character ids weigh more than 2,500');
  });

  it('gives up a seed when more deletions arrive during the read than it holds chats', () => {
    const r = new RecentChats(LIMITS);
    for (let i = 0; i < 6; i++) r.remove(`x${i}`);
    assert.equal(r.seed({ messages: [chat('a')], more: false }), false);
    assert.equal(r.newest(1), undefined);
  });
});

describe('RecentCache', () => {
  it('holds `streams` streams, dropping the one joined longest ago', () => {
    const cache = new RecentCache(LIMITS);
    const a = cache.open('a');
    cache.open('b');
    cache.touch('a', a);
    cache.open('c');
    assert.equal(cache.get('b'), undefined);
    assert.equal(cache.get('a'), a);
    assert.equal(cache.streamCount, 2);
    cache.drop('a', new RecentChats(LIMITS));
    assert.equal(cache.get('a'), a, 'only the same cache is dropped');
    cache.drop('a');
    assert.equal(cache.get('a'), undefined);
  });

  it('is off with streams: 0', () => {
    assert.equal(new RecentCache({ ...LIMITS, streams: 0 }).enabled, false);
  });
});
