/**
 * Property-based fuzzing of the stream endpoint: thousands of random and
 * hostile frames. The server must stay up, answer every bad frame with one
 * error code from the contract, store and deliver exactly the valid chats,
 * and keep serving a normal viewer on the same stream.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { ERROR_CODES } from '../src/core/errors.js';
import { api, StreamClient, startServer, type TestServer, userToken } from './helpers.js';

const MAX_CHARS = 50;

type Sent = { text: string } | { binary: Uint8Array };

const keyArb = fc.constantFrom(
  'type',
  'data',
  'message',
  'token',
  '__proto__',
  'constructor',
  'prototype',
);
const hostileValue = fc.oneof(
  fc.constantFrom(
    '__proto__',
    'chat',
    'auth',
    '',
    ' ',
    1e308,
    -0,
    Number.MAX_SAFE_INTEGER + 2,
    null,
    true,
  ),
  fc.string({ maxLength: MAX_CHARS + 5 }),
  fc.jsonValue({ maxDepth: 3 }),
);
const objectArb = fc.dictionary(keyArb, hostileValue, { maxKeys: 4 });

const frameArb: fc.Arbitrary<Sent> = fc.oneof(
  // Random bytes, as binary and as text.
  fc.uint8Array({ maxLength: 200 }).map((binary) => ({ binary })),
  fc.uint8Array({ maxLength: 200 }).map((b) => ({ text: Buffer.from(b).toString('latin1') })),
  fc.string({ unit: 'grapheme', maxLength: 200 }).map((text) => ({ text })),
  // Any JSON at all.
  fc.jsonValue({ maxDepth: 4 }).map((v) => ({ text: JSON.stringify(v) ?? 'null' })),
  // Frames shaped almost like the protocol, with hostile keys and values.
  fc
    .record({
      type: fc.oneof(fc.constantFrom('chat', 'auth'), hostileValue),
      data: fc.oneof(objectArb, hostileValue),
    })
    .map((v) => ({ text: JSON.stringify(v) })),
  objectArb.map((data) => ({ text: `{"type":"chat","data":${JSON.stringify(data)}}` })),
  fc
    .string({ maxLength: 80 })
    .map((m) => ({ text: JSON.stringify({ type: 'chat', data: { message: m } }) })),
  // Deep nesting, huge numbers and raw __proto__ keys that JSON.stringify would not write.
  fc.integer({ min: 100, max: 20_000 }).map((n) => ({ text: `${'['.repeat(n)}${']'.repeat(n)}` })),
  fc.integer({ min: 100, max: 5_000 }).map((n) => ({
    text: `{"type":"chat","data":${'{"data":'.repeat(n)}{}${'}'.repeat(n)}}`,
  })),
  fc.constantFrom(
    { text: '{"type":"chat","data":{"message":1e400}}' },
    { text: '{"type":"chat","data":{"message":123456789012345678901234567890}}' },
    { text: '{"__proto__":{"type":"chat"},"data":{"message":"x"}}' },
    { text: '{"type":"chat","data":{"__proto__":{"message":"x"}}}' },
    { text: '{"type":"chat","__proto__":{"data":{"message":"x"}}}' },
    { text: '{"type":"chat","data":{"message":"x","__proto__":null}}' },
    { text: '{"type":"constructor","data":{}}' },
    { text: '{"type":"__proto__","data":{}}' },
    { text: '{"type":"chat","data":{"message":"\\ud800"}}' },
  ),
);

/** The independent oracle: is this frame a chat the server must accept? */
function isValidChat(sent: Sent): string | undefined {
  if (!('text' in sent)) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(sent.text);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  if (!Object.hasOwn(o, 'type') || o.type !== 'chat' || !Object.hasOwn(o, 'data')) return undefined;
  const d = o.data;
  if (typeof d !== 'object' || d === null || Array.isArray(d) || !Object.hasOwn(d, 'message')) {
    return undefined;
  }
  const m = (d as Record<string, unknown>).message;
  if (typeof m !== 'string' || m.trim() === '' || [...m].length > MAX_CHARS) return undefined;
  if (/\p{Cs}/u.test(m)) return undefined;
  return m;
}

const isAuthFrame = (sent: Sent) => 'text' in sent && /"type"\s*:\s*"auth"/.test(sent.text);

let s: TestServer;
before(async () => {
  s = await startServer({
    STREAM_MESSAGE_MAX_CHARS: String(MAX_CHARS),
    STREAM_RATE_LIMIT: '1000000/1s',
    FLOOD_LIMIT: '1000000',
  });
  assert.equal((await api(s.url, 'PUT', '/api/streams/fuzz', {})).status, 201);
});
after(() => s.close());

const send = (c: StreamClient, sent: Sent) =>
  'binary' in sent ? c.ws.send(sent.binary, { binary: true }) : c.ws.send(sent.text);

describe('fuzzing the stream endpoint', () => {
  it('answers every hostile frame from a signed-in user with one error, and accepts only valid chats', async () => {
    const fuzzer = await StreamClient.connect(s.wsUrl, 'fuzz', { token: await userToken('fz') });
    const viewer = await StreamClient.connect(s.wsUrl, 'fuzz');
    await fuzzer.next('auth');
    await viewer.next('auth');
    const codes = new Set<string>(ERROR_CODES);
    let expectedChats: string[] = [];
    let frames = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          frameArb.filter((f) => !isAuthFrame(f)),
          { minLength: 1, maxLength: 40 },
        ),
        async (batch) => {
          const before = fuzzer.frames.length;
          const valid: string[] = [];
          for (const sent of batch) {
            send(fuzzer, sent);
            const m = isValidChat(sent);
            if (m !== undefined) valid.push(m);
          }
          frames += batch.length;
          const replies = await waitFor(fuzzer, before, batch.length);
          const chats = replies.filter((r) => r.type === 'chat').map((r) => r.data.message);
          const errors = replies.filter((r) => r.type === 'error');
          assert.deepEqual(chats, valid);
          assert.equal(errors.length, batch.length - valid.length);
          for (const e of errors) assert.ok(codes.has(e.data.error_code), e.data.error_code);
          expectedChats = expectedChats.concat(valid);
        },
      ),
      { numRuns: 300 },
    );
    assert.ok(frames >= 1000, `only ${frames} frames`);
    // The viewer saw exactly the valid chats, in order, and nothing else.
    const seen = await viewer.collect('chat', expectedChats.length);
    assert.deepEqual(
      seen.map((f) => f.data.message),
      expectedChats,
    );
    assert.deepEqual(
      new Set(viewer.frames.map((f) => f.type)),
      new Set(expectedChats.length ? ['auth', 'chat'] : ['auth']),
    );
    await s.app.streams.flush();
    const stored = await s.app.store.streamHistory('fuzz', { limit: 100_000 });
    assert.deepEqual(
      stored.messages.map((m) => m.message),
      expectedChats,
    );
    fuzzer.close();
    viewer.close();
  });

  it('answers every frame from an anonymous viewer with an error, auth frames included', async () => {
    const fuzzer = await StreamClient.connect(s.wsUrl, 'fuzz');
    const viewer = await StreamClient.connect(s.wsUrl, 'fuzz');
    await fuzzer.next('auth');
    await viewer.next('auth');
    const storedBefore = (await s.app.store.streamHistory('fuzz', { limit: 100_000 })).messages
      .length;
    await fc.assert(
      fc.asyncProperty(fc.array(frameArb, { minLength: 1, maxLength: 40 }), async (batch) => {
        const errorsBefore = fuzzer.frames.filter((f) => f.type === 'error').length;
        for (const sent of batch) send(fuzzer, sent);
        const errors = await fuzzer.collect('error', errorsBefore + batch.length);
        assert.equal(errors.length, errorsBefore + batch.length);
      }),
      { numRuns: 150 },
    );
    assert.ok(
      fuzzer.frames.every(
        (f) => f.type === 'error' || (f.type === 'auth' && !f.data.authenticated),
      ),
    );
    // Still up, nothing stored, and a normal viewer keeps receiving.
    assert.equal((await api(s.url, 'GET', '/healthz', undefined, null)).status, 200);
    await s.app.streams.flush();
    assert.equal(
      (await s.app.store.streamHistory('fuzz', { limit: 100_000 })).messages.length,
      storedBefore,
    );
    assert.deepEqual(viewer.rest(), []);
    const poster = await StreamClient.connect(s.wsUrl, 'fuzz', { token: await userToken('ok') });
    await poster.next('auth');
    poster.chat('still here');
    assert.equal((await viewer.next('chat')).data.message, 'still here');
    for (const c of [fuzzer, viewer, poster]) c.close();
  });
});

/** Waits until `c` has received `count` frames after the first `from`, and returns them. */
async function waitFor(c: StreamClient, from: number, count: number) {
  const deadline = Date.now() + 5000;
  while (c.frames.length < from + count) {
    if (Date.now() > deadline)
      throw new Error(`expected ${count} replies, got ${c.frames.length - from}`);
    await new Promise((r) => setTimeout(r, 2));
  }
  return c.frames.slice(from, from + count);
}
