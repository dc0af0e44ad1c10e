import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ChatError } from '../src/core/errors.js';
import {
  decodeStreamFrame,
  encodeAuth,
  encodeChat,
  encodeError,
} from '../src/transport/stream-codec.js';

const code = (text: string) => {
  try {
    decodeStreamFrame(text);
  } catch (e) {
    assert.ok(e instanceof ChatError);
    return e.code;
  }
  return 'ok';
};

describe('decodeStreamFrame', () => {
  it('decodes auth and chat frames', () => {
    assert.deepEqual(decodeStreamFrame('{"type":"chat","data":{"message":"hola"}}'), {
      type: 'chat',
      data: { message: 'hola' },
    });
    assert.deepEqual(decodeStreamFrame('{"type":"auth","data":{"token":"t","x":1}}'), {
      type: 'auth',
      data: { token: 't' },
    });
  });
  it('names what is wrong', () => {
    const cases: Array<[string, string]> = [
      ['', 'invalid_json'],
      ['{', 'invalid_json'],
      ['hola', 'invalid_json'],
      ['null', 'invalid_payload'],
      ['[]', 'invalid_payload'],
      ['"chat"', 'invalid_payload'],
      ['42', 'invalid_payload'],
      ['{}', 'invalid_payload'],
      ['{"type":1,"data":{}}', 'invalid_payload'],
      ['{"data":{"message":"x"}}', 'invalid_payload'],
      ['{"type":"dance","data":{}}', 'unknown_type'],
      ['{"type":"chat"}', 'invalid_payload'],
      ['{"type":"chat","data":null}', 'invalid_payload'],
      ['{"type":"chat","data":[]}', 'invalid_payload'],
      ['{"type":"chat","data":"hola"}', 'invalid_payload'],
      ['{"type":"chat","data":{}}', 'invalid_payload'],
      ['{"type":"chat","data":{"message":5}}', 'invalid_payload'],
      ['{"type":"chat","data":{"message":null}}', 'invalid_payload'],
      ['{"type":"chat","data":{"message":["a"]}}', 'invalid_payload'],
      ['{"type":"auth","data":{"token":{}}}', 'invalid_payload'],
      ['{"type":"chat","data":{"__proto__":{"message":"x"}}}', 'invalid_payload'],
      ['{"__proto__":{"type":"chat"},"data":{"message":"x"}}', 'invalid_payload'],
    ];
    for (const [text, expected] of cases) assert.equal(code(text), expected, text);
  });
});

describe('encoders', () => {
  it('write the contract shapes', () => {
    const chat = JSON.parse(
      encodeChat({
        id: '6751b6df1ad14eaa13a03313',
        streamKey: 'k',
        userId: '1',
        username: 'ana',
        message: 'hola',
        sentAt: '2026-11-22T10:00:00.000Z',
        badges: ['owner'],
      }),
    );
    assert.deepEqual(chat, {
      type: 'chat',
      data: {
        user: 'ana',
        message: 'hola',
        id: '6751b6df1ad14eaa13a03313',
        userId: '1',
        sentAt: '2026-11-22T10:00:00.000Z',
        badges: ['owner'],
      },
    });
    assert.deepEqual(JSON.parse(encodeAuth(true)), { type: 'auth', data: { authenticated: true } });
    assert.deepEqual(JSON.parse(encodeAuth(false)), {
      type: 'auth',
      data: { authenticated: false },
    });
    assert.deepEqual(
      JSON.parse(encodeError(new ChatError('rate_limited', 'slow', { retryAfterMs: 5 }))),
      {
        type: 'error',
        data: { error_code: 'rate_limited', message: 'slow', retry_after_ms: 5 },
      },
    );
  });
});
