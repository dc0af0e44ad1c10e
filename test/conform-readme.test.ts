/**
 * The README's "Trying it by hand" stream example, against a real server: the
 * chat frame it shows is the one a client receives, field for field.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { api, StreamClient, startServer, type TestServer, userToken } from './helpers.js';

const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

/** The README's example of the frame both terminals receive. */
function readmeChatExample(): Record<string, unknown> {
  const section = README.slice(README.indexOf('## Trying it by hand'));
  const m = /Both terminals receive\s+`(\{"type":"chat".*?\}\})`/s.exec(section);
  assert.ok(m, 'the README shows the chat frame of its example');
  return JSON.parse((m[1] as string).replace(/\s+/g, ' ')) as Record<string, unknown>;
}

describe('README examples', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(() => server.close());

  it('"Trying it by hand": the chat frame has exactly the fields the README shows', async () => {
    const example = readmeChatExample() as { type: string; data: Record<string, unknown> };
    assert.equal((await api(server.url, 'PUT', '/api/streams/demo', {})).status, 201);
    const token = await userToken('3', { username: 'viewer' });
    const c = await StreamClient.connect(server.wsUrl, 'demo', { query: `?token=${token}` });
    try {
      await c.next('auth');
      c.chat('hola');
      const chat = await c.next('chat');
      assert.equal(chat.type, example.type);
      assert.deepEqual(Object.keys(chat.data).sort(), Object.keys(example.data).sort());
      for (const [field, value] of Object.entries(example.data)) {
        if (value !== '…') assert.deepEqual(chat.data[field], value, field);
      }
    } finally {
      c.close();
    }
  });
});
