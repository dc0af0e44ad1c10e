/**
 * docs/asyncapi.yaml is a valid AsyncAPI document and says what the code does:
 * the stream chat's client payloads are the zod schemas the server validates
 * with, the error codes are the registry's, and the server frames have the
 * fields the encoder writes. A change on either side fails here until the other
 * follows.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { before, test } from 'node:test';
import { Parser } from '@asyncapi/parser';
import { z } from 'zod';
import { ChatError, ERROR_CODES } from '../src/core/errors.js';
import { WEBHOOK_TYPES } from '../src/core/webhook-events.js';
import { requestClientFields } from '../src/transport/request-codec.js';
import {
  encodeBroadcast,
  encodeChat,
  encodeError,
  encodeHistory,
  streamClientData,
} from '../src/transport/stream-codec.js';

const DOC = new URL('../../docs/asyncapi.yaml', import.meta.url);

type Json = Record<string, any>;
let doc: Json;

/** The schema's structure alone: descriptions and the parser's own ids do not count. */
function structure(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(structure);
  if (typeof schema !== 'object' || schema === null) return schema;
  const out: Json = {};
  for (const [k, v] of Object.entries(schema)) {
    if (k === 'description' || k === '$schema' || k.startsWith('x-parser-')) continue;
    out[k] = structure(v);
  }
  return out;
}

before(async () => {
  const { document, diagnostics } = await new Parser().parse(readFileSync(DOC, 'utf8'));
  // Severity 0 is an error, 1 a warning: the document must have neither.
  const problems = diagnostics.filter((d) => d.severity <= 1);
  assert.deepEqual(
    problems.map((d) => `${d.path.join('.')}: ${d.message}`),
    [],
  );
  assert.ok(document, 'the parser returned no document');
  doc = document.json() as Json;
});

test('the document is AsyncAPI 3 with both chats', () => {
  assert.match(doc.asyncapi, /^3\./);
  assert.equal(doc.channels.stream.address, '/ws/streams/{key}/');
  assert.equal(doc.channels.requestChat.address, '/socket.io/');
});

test('stream client payloads are the zod schemas the server validates with', () => {
  for (const [type, name] of [
    ['auth', 'StreamAuthData'],
    ['chat', 'StreamChatData'],
    ['delete', 'StreamDeleteData'],
    ['timeout', 'StreamTimeoutData'],
    ['ban', 'StreamBanData'],
    ['unban', 'StreamUnbanData'],
    ['settings', 'StreamSettingsData'],
    ['pin', 'StreamPinData'],
  ] as const) {
    const fromCode = z.toJSONSchema(streamClientData[type], { io: 'input', target: 'draft-7' });
    assert.deepEqual(structure(doc.components.schemas[name]), structure(fromCode), name);
  }
  assert.deepEqual(
    Object.keys(doc.channels.stream.messages)
      .map((m) => doc.channels.stream.messages[m])
      .filter((m: Json) => m.title?.endsWith('(client)'))
      .map((m: Json) => m.name)
      .sort(),
    Object.keys(streamClientData).sort(),
  );
});

test('request chat client payloads are the zod schemas the server validates with', () => {
  const messages = Object.values(doc.channels.requestChat.messages) as Json[];
  const clientEvents = Object.keys(requestClientFields) as Array<keyof typeof requestClientFields>;
  for (const event of clientEvents) {
    const documented = messages.find((m) => m.name === event && m.title !== 'message (server)');
    assert.ok(documented, `${event} is documented`);
    const fromCode = z.toJSONSchema(requestClientFields[event], { io: 'input', target: 'draft-7' });
    assert.deepEqual(structure(documented.payload), structure(fromCode), event);
  }
});

test('error codes are the registry', () => {
  assert.deepEqual(doc.components.schemas.ErrorCode.enum, [...ERROR_CODES]);
});

test('server frames carry the fields the encoder writes', () => {
  const chat = JSON.parse(
    encodeChat({
      id: '6751b6df1ad14eaa13a03313',
      streamKey: 'demo',
      userId: '1',
      username: 'ana',
      message: 'hola',
      sentAt: '2026-11-22T10:00:00.000Z',
      badges: [],
    }),
  );
  const out = doc.components.schemas.StreamChatOut;
  assert.deepEqual(Object.keys(chat.data).sort(), [...out.required].sort());
  assert.deepEqual(Object.keys(out.properties).sort(), [...out.required].sort());

  const error = JSON.parse(
    encodeError(new ChatError('rate_limited', undefined, { retryAfterMs: 5 })),
  );
  const payload = doc.components.schemas.ErrorPayload;
  assert.deepEqual(Object.keys(error.data).sort(), Object.keys(payload.properties).sort());
});

test('the webhook messages are the event types charla sends', () => {
  const types = Object.values(doc.channels.webhooks.messages).map(
    (m: any) => m.payload.properties.type.const,
  );
  assert.deepEqual(types.sort(), [...WEBHOOK_TYPES].sort());
});

test('classroom server frames carry the fields the encoder writes', () => {
  const chat = {
    id: '6751b6df1ad14eaa13a03313',
    streamKey: 'demo',
    userId: '1',
    username: 'ana',
    message: 'hola',
    sentAt: '2026-11-22T10:00:00.000Z',
    badges: ['owner' as const],
  };
  const fields = (name: string) => {
    const schema = doc.components.schemas[name];
    assert.deepEqual(Object.keys(schema.properties).sort(), [...schema.required].sort(), name);
    return [...schema.required].sort();
  };
  const stream = JSON.parse(
    encodeBroadcast({
      type: 'stream',
      data: {
        key: 'demo',
        title: null,
        viewers: 3,
        slowModeSeconds: 0,
        membersOnly: false,
        paused: false,
        pinned: chat,
      },
    }),
  );
  assert.equal(stream.type, 'stream');
  assert.deepEqual(Object.keys(stream.data).sort(), fields('StreamStateOut'));
  assert.deepEqual(Object.keys(stream.data.pinned).sort(), fields('StreamChatOut'));
  const history = JSON.parse(
    encodeHistory([JSON.stringify(JSON.parse(encodeChat(chat)).data)], true),
  );
  assert.equal(history.type, 'history');
  assert.deepEqual(Object.keys(history.data).sort(), fields('StreamHistoryOut'));
  const deleted = JSON.parse(encodeBroadcast({ type: 'delete', data: { id: chat.id, by: '7' } }));
  assert.deepEqual(Object.keys(deleted.data).sort(), fields('StreamDeletedOut'));
  const moderation = JSON.parse(
    encodeBroadcast({
      type: 'moderation',
      data: { action: 'timeout', userId: '5', seconds: 60, by: '7' },
    }),
  );
  const out = doc.components.schemas.StreamModerationOut;
  assert.deepEqual(Object.keys(moderation.data).sort(), Object.keys(out.properties).sort());
  for (const [type, name] of [
    ['stream', 'StreamState'],
    ['history', 'StreamHistory'],
    ['delete', 'StreamDeleted'],
    ['moderation', 'StreamModeration'],
  ] as const) {
    assert.equal(doc.components.messages[name].payload.properties.type.const, type, name);
  }
});
