/**
 * The live classroom (protocol section 7) against peers that pick the keys
 * of the server's maps: a moderator who times out ever new user ids must not
 * grow what each node keeps of the stream's rules past the bans in force,
 * and viewers reset while their history is read (`?since=` that sends the
 * join to the store) must leave no viewer, descriptor or memory behind.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { newId } from '../src/core/ids.js';
import { recordBan } from '../src/core/stream-rules.js';
import {
  api,
  postInOrder,
  StreamClient,
  sleep,
  startServer,
  type TestServer,
  userToken,
} from './helpers.js';
import {
  assertRecovered,
  baselineOf,
  rawSocket,
  reset,
  startWatched,
  upgradeRequest,
  type WatchedServer,
} from './hostile.js';

describe('recordBan', () => {
  it('sweeps ended timeouts once the map has doubled, keeping bans and running timeouts', () => {
    const bans = new Map<string, number | null>();
    let now = 1_000;
    recordBan(bans, 'banned', null, now);
    recordBan(bans, 'long', now + 1_000_000, now);
    for (let i = 0; i < 100_000; i++) {
      now += 1;
      // Each timeout ends 10 ms after it was given.
      recordBan(bans, `user-${i}`, now + 10, now);
      assert.ok(bans.size <= 100, `${bans.size} entries at ${i}`);
    }
    assert.equal(bans.get('banned'), null);
    assert.equal(bans.get('long'), 1_001_000);
    assert.equal(bans.get('user-99999'), now + 10);
  });

  it('keeps every ban in force, however many', () => {
    const bans = new Map<string, number | null>();
    for (let i = 0; i < 10_000; i++) recordBan(bans, `user-${i}`, i % 2 ? null : 1e15, 0);
    assert.equal(bans.size, 10_000);
  });
});

describe('a moderator timing out ever new user ids', () => {
  let s: TestServer;
  const key = 'flooded';

  before(async () => {
    s = await startServer({ FLOOD_LIMIT: '1000000' });
    assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, { ownerId: '1' })).status, 201);
  });
  after(() => s.close());

  /** The node's cached bans of the stream (the map every chat is checked against). */
  function cachedBans(): number {
    const rooms = (s.app.streams as any).rooms as Map<
      string,
      { rules?: { bans: Map<string, unknown> } }
    >;
    const size = rooms.get(key)?.rules?.bans.size;
    assert.ok(size !== undefined, 'the stream is watched here');
    return size;
  }

  async function timeOut(owner: StreamClient, from: number, count: number): Promise<void> {
    for (let i = from; i < from + count; i++) {
      owner.send({ type: 'timeout', data: { userId: `u${i}`, seconds: 1 } });
    }
    // Frames are answered in order: the last broadcast means every one was applied.
    for (;;) {
      const f = await owner.next('moderation', 10_000);
      if (f.data.userId === `u${from + count - 1}`) return;
    }
  }

  it("leaves the node's rules holding only the timeouts still running", async () => {
    const owner = await StreamClient.connect(s.wsUrl, key, { token: await userToken('1') });
    const held = await StreamClient.connect(s.wsUrl, key, { token: await userToken('held') });
    const freed = await StreamClient.connect(s.wsUrl, key, { token: await userToken('u5') });
    try {
      await Promise.all([owner.next('history'), held.next('history'), freed.next('history')]);
      owner.send({ type: 'timeout', data: { userId: 'held', seconds: 600 } });
      await owner.next('moderation');
      await timeOut(owner, 0, 1_500);
      // Every timeout of the first 1,500 has ended one second after it was answered.
      await sleep(1_100);
      await timeOut(owner, 1_500, 1_500);
      const size = cachedBans();
      assert.ok(size <= 1 + 1_500 + 64, `${size} cached bans with at most 1,501 in force`);
      // What is in force still refuses; what ended refuses nothing.
      held.chat('still here?');
      assert.equal((await held.next('error')).data.error_code, 'timed_out');
      freed.chat('back');
      assert.equal((await freed.next('chat')).data.message, 'back');
    } finally {
      owner.close();
      held.close();
      freed.close();
    }
  });
});

describe('viewers reset while their history is read', () => {
  let s: WatchedServer;
  const key = 'resumed';

  before(async () => {
    s = await startWatched({ FLOOD_LIMIT: '1000000', STREAM_RATE_LIMIT: '100000/1s' });
    assert.equal((await api(s.url, 'PUT', `/api/streams/${key}`, { ownerId: '1' })).status, 201);
  });
  after(() => s.close());

  it('leaves no viewer behind; the stream carries on', async () => {
    const poster = await StreamClient.connect(s.wsUrl, key, { token: await userToken('2') });
    await poster.next('history');
    const posted = await postInOrder(
      poster,
      Array.from({ length: 300 }, (_, i) => `chat ${i}`),
    );
    const oldest = posted[0]?.data.id as string;
    const baseline = await baselineOf(s);
    // Older than the node's memory holds, unknown, malformed: each join reads the store.
    const sinces = [oldest, newId(), '%zz', 'x'.repeat(2_000), ''];
    for (let i = 0; i < 150; i++) {
      const socket = await rawSocket(s);
      socket.write(upgradeRequest(`/ws/streams/${key}/?since=${sinces[i % sinces.length]}`));
      // Reset before the upgrade is answered, right after, or while the history is on its way.
      if (i % 3 > 0) await sleep(i % 3);
      reset(socket);
    }
    const deadline = Date.now() + 5_000;
    for (;;) {
      const info = await api(s.url, 'GET', `/api/streams/${key}`);
      if (info.body.viewers === 1) break;
      assert.ok(Date.now() < deadline, `still ${info.body.viewers} viewers`);
      await sleep(50);
    }
    await assertRecovered(s, baseline, { fdSlack: 1 });
    const resumed = await StreamClient.connect(s.wsUrl, key, { query: `?since=${oldest}` });
    const history = await resumed.next('history');
    assert.equal(history.data.messages.length, 299);
    poster.chat('after the resets');
    assert.equal((await resumed.next('chat')).data.message, 'after the resets');
    poster.close();
    resumed.close();
  });
});
