/**
 * What one node publishes on the `inbox` topic for the other nodes
 * (src/transport/request-updates.ts): the payloads of a message's inbox
 * updates, built with the last message encoded once for all of them, are
 * exactly `JSON.stringify` of each frame, and another node reading the topic
 * delivers the same updates as the publishing one.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryBroker } from '../src/broker/memory.js';
import type { RequestMessage } from '../src/core/messages.js';
import {
  INBOX_TOPIC,
  type RequestUpdate,
  RequestUpdates,
  type UpdateTarget,
} from '../src/transport/request-updates.js';

const message = (text: string): RequestMessage => ({
  _id: '6751b6df1ad14eaa13a0bb01',
  requestId: '6751b6df1ad14eaa13a0bb02',
  sender: { id: '7', username: 'lab "seven"', role: null },
  message: text,
  createdAt: '2026-12-03T07:40:00.123Z',
  attachments: [
    { url: 'https://example.org/a?b=c&d=\u00e9', name: 'a\nb', contentType: 'text/plain', size: 1 },
  ],
  deliveredTo: [],
  readBy: [{ userId: '1', at: '2026-12-03T07:41:00.000Z' }],
});

describe('inbox update payloads', () => {
  for (const [name, last] of [
    [
      'a message with quotes, escapes, controls and non-ASCII text',
      message('a "b" \\ \u0001 \u2028 é 😀'),
    ],
    ['no last message', null],
  ] as const) {
    it(`are JSON.stringify of each frame: ${name}`, () => {
      const broker = new MemoryBroker();
      const payloads: string[] = [];
      // Another node on the topic: it gets the string and parses it.
      broker.subscribe(INBOX_TOPIC, (p) => payloads.push(p));
      const here: Array<[UpdateTarget, RequestUpdate]> = [];
      const there: Array<[UpdateTarget, RequestUpdate]> = [];
      const updates = new RequestUpdates(
        broker,
        { flushMs: 0, maxTracked: 10 },
        (t, u) => here.push([t, u]),
        (err) => assert.fail(String(err)),
      );
      const other = new RequestUpdates(
        broker,
        { flushMs: 0, maxTracked: 10 },
        (t, u) => there.push([t, u]),
        (err) => assert.fail(String(err)),
      );
      const requestId = 'r"1\u2028';
      const counts: Array<[UpdateTarget, number]> = [
        [{ rooms: ['lab'], except: ['user:1', 'lab:"7"'] }, 3],
        [{ rooms: ['user:1'], except: [] }, 0],
        [{ rooms: ['lab:"7"'], except: [] }, 12],
      ];
      updates.publishCounts(requestId, last, counts);
      const frames = counts.map(([t, unread]) => ({
        rooms: t.rooms,
        except: t.except,
        update: { requestId, lastMessage: last, unread },
      }));
      assert.deepEqual(
        payloads,
        frames.map((f) => JSON.stringify(f)),
      );
      const expected = frames.map((f) => [{ rooms: f.rooms, except: f.except }, f.update]);
      // Both nodes deliver what the publishing node meant, the same way.
      assert.deepEqual(
        here.map(([t, u]) => [{ rooms: t.rooms, except: t.except }, u]),
        expected,
      );
      assert.deepEqual(
        there.map(([t, u]) => [{ rooms: t.rooms, except: t.except }, u]),
        expected,
      );
      updates.close();
      other.close();
    });
  }
});
