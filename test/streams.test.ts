/**
 * The live-stream core (`src/core/streams.ts`) with an in-memory transport
 * that records what each viewer was handed, over the in-process broker and a
 * real SQLite store.
 */
import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { MemoryBroker } from '../src/broker/memory.js';
import { loadConfig } from '../src/config.js';
import type { Identity } from '../src/core/identity.js';
import type { StreamMessage } from '../src/core/messages.js';
import { type StreamInfo, Streams, type StreamViewer } from '../src/core/streams.js';
import { Metrics } from '../src/observability/metrics.js';
import { SqliteStore } from '../src/store/sqlite.js';

const limits = loadConfig({
  JWT_SECRET: 'x'.repeat(32),
  STREAM_RATE_LIMIT: '3/60s',
  STREAM_MESSAGE_MAX_CHARS: '10',
}).limits;

const user = (userId: string): Identity => ({
  userId,
  username: `u${userId}`,
  roles: [],
  expiresAt: undefined,
});

type Frame = { n: number; text: string };

/** A viewer that records the frames it is handed and whether the stream ended. */
class Recorder implements StreamViewer<Frame> {
  frames: Frame[] = [];
  ended = false;
  history: StreamMessage[] | undefined;
  private welcomed!: () => void;
  readonly joined = new Promise<void>((resolve) => {
    this.welcomed = resolve;
  });
  deliver(frame: Frame): boolean {
    this.frames.push(frame);
    return true;
  }
  streamEnded(): void {
    this.ended = true;
  }
  welcome(_info: StreamInfo, history: StreamMessage[]): void {
    this.history = history;
    this.welcomed();
  }
}

/** Joins and waits for the viewer's history. */
async function joined(streams: Streams<Frame>, key: string, v: Recorder): Promise<void> {
  streams.join(key, v);
  await v.joined;
}

describe('Streams', () => {
  let store: SqliteStore;
  let encoded: number;
  let streams: Streams<Frame>;

  beforeEach(async () => {
    store = new SqliteStore(':memory:');
    encoded = 0;
    streams = new Streams({
      store,
      broker: new MemoryBroker(),
      limits,
      metrics: new Metrics(),
      log: pino({ level: 'silent' }),
      encode: (m: StreamMessage) => ({ n: ++encoded, text: m.message }),
      encodeBroadcast: (b) => ({ n: 0, text: b.type }),
    });
    await streams.put('live', { title: 'Live' });
  });

  it('encodes each chat once and hands the same frame to every viewer, in one order', async () => {
    const viewers = [new Recorder(), new Recorder(), new Recorder()];
    for (const v of viewers) await joined(streams, 'live', v);
    await streams.post('live', user('1'), 'a');
    await streams.post('live', user('2'), 'b');
    assert.equal(encoded, 2, 'one encoding per chat, not per viewer');
    for (const v of viewers)
      assert.deepEqual(
        v.frames.map((f) => f.text),
        ['a', 'b'],
      );
    assert.equal(viewers[0]?.frames[0], viewers[2]?.frames[0], 'the very same frame object');
  });

  it('keeps streams apart', async () => {
    const here = new Recorder();
    const there = new Recorder();
    await joined(streams, 'live', here);
    await joined(streams, 'other', there);
    await streams.post('live', user('1'), 'only here');
    assert.equal(there.frames.length, 0);
  });

  it('refuses anonymous, empty and too-long chats: nothing sent, nothing stored', async () => {
    const v = new Recorder();
    await joined(streams, 'live', v);
    await assert.rejects(streams.post('live', null, 'hi'), { code: 'not_authenticated' });
    await assert.rejects(streams.post('live', user('1'), '  '), { code: 'empty_message' });
    await assert.rejects(streams.post('live', user('1'), 'x'.repeat(11)), {
      code: 'message_too_long',
    });
    await streams.flush();
    assert.equal(v.frames.length, 0);
    assert.deepEqual((await streams.history('live', { limit: 10 })).messages, []);
  });

  it('rate limits per user and stream, after validation', async () => {
    for (let i = 0; i < 3; i++) await streams.post('live', user('1'), `${i}`);
    await assert.rejects(streams.post('live', user('1'), 'more'), { code: 'rate_limited' });
    // Bad input is named as such even with the budget spent.
    await assert.rejects(streams.post('live', user('1'), ' '), { code: 'empty_message' });
    await streams.post('live', user('2'), 'user 2');
    await streams.post('other', user('1'), 'stream 2');
  });

  it('stores what it delivered, in the same order, once flushed', async () => {
    const posted = [];
    for (const t of ['a', 'b', 'c']) posted.push(await streams.post('live', user('1'), t));
    await streams.flush();
    const { messages } = await streams.history('live', { limit: 10 });
    assert.deepEqual(messages, posted);
  });

  it('ending a stream tells its viewers and forgets them', async () => {
    const v = new Recorder();
    await joined(streams, 'live', v);
    assert.equal(await streams.end('live'), true);
    assert.equal(v.ended, true);
    assert.equal(streams.viewerCount, 0);
    assert.equal(await streams.status('live'), 'ended');
    assert.equal(await streams.end('nope'), false);
  });

  it('a viewer that leaves receives nothing more', async () => {
    const v = new Recorder();
    await joined(streams, 'live', v);
    streams.leave('live', v);
    await streams.post('live', user('1'), 'gone');
    assert.equal(v.frames.length, 0);
    assert.equal(streams.viewerCount, 0);
  });
});
