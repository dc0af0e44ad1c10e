/**
 * `StreamChat.moderate()` (charla/client) against a real charla: each
 * moderator frame comes back as the broadcast it causes, a viewer who does not
 * moderate is refused, and nothing is sent while the connection is down.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { ChatClientError, StreamChat } from '../src/client/index.js';
import { Recorder, until } from './client-helpers.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';

describe('StreamChat.moderate against charla', () => {
  let s: TestServer;
  const chats: StreamChat[] = [];
  const open = async (key: string, userId: string) => {
    const c = StreamChat.connect(s.url, key, {
      WebSocket,
      token: await userToken(userId),
      reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
    });
    chats.push(c);
    return new Recorder(c);
  };

  before(async () => {
    s = await startServer();
    assert.equal((await api(s.url, 'PUT', '/api/streams/class', { ownerId: '1' })).status, 201);
  });
  after(async () => {
    for (const c of chats) c.close();
    await s.close();
    // The restarted server keeps its directory; it goes here.
    rmSync(s.dir, { recursive: true, force: true });
  });

  it('the owner deletes, pins, times out and sets; everyone hears each broadcast', async () => {
    const owner = await open('class', '1');
    const student = await open('class', '2');
    await Promise.all([owner.chat.ready(), student.chat.ready()]);
    const moderation: unknown[] = [];
    student.chat.on('moderation', (m) => moderation.push(m));

    student.chat.send('first');
    student.chat.send('second');
    await until(() => owner.chats.length === 2, 'two chats');
    const [first, second] = owner.chats.map((m) => m.id);

    owner.chat.moderate({ type: 'delete', id: String(first) });
    await until(() => student.of('delete').length === 1, 'the delete broadcast');
    assert.deepEqual(student.of('delete'), [{ id: first, by: '1' }]);

    owner.chat.moderate({ type: 'pin', id: String(second) });
    await until(() => student.of('stream').some((x) => x.pinned?.id === second), 'the pin');

    owner.chat.moderate({ type: 'settings', slowModeSeconds: 30, paused: true });
    await until(
      () => student.of('stream').some((x) => x.slowModeSeconds === 30 && x.paused === true),
      'the new settings',
    );

    owner.chat.moderate({ type: 'timeout', userId: '2', seconds: 60 });
    await until(() => moderation.length === 1, 'the timeout broadcast');
    assert.deepEqual(moderation, [{ action: 'timeout', userId: '2', seconds: 60, by: '1' }]);
  });

  it('a viewer who does not moderate gets forbidden; a closed client throws', async () => {
    const student = await open('class', '3');
    await student.chat.ready();
    student.chat.moderate({ type: 'settings', paused: false });
    await until(() => student.of('error').length === 1, 'the refusal');
    assert.equal((student.of('error')[0] as ChatClientError).code, 'forbidden');

    student.chat.close();
    assert.throws(
      () => student.chat.moderate({ type: 'pin', id: null }),
      (e: unknown) => e instanceof ChatClientError && e.code === 'closed',
    );
  });

  it('while the connection is down, moderate() throws not_connected and sends nothing', async () => {
    const owner = await open('class', '1');
    await owner.chat.ready();
    const port = new URL(s.url).port;
    const dir = s.dir;
    await s.app.close();
    await until(() => !owner.chat.connected, 'the drop');
    assert.throws(
      () => owner.chat.moderate({ type: 'settings', paused: false }),
      (e: unknown) => e instanceof ChatClientError && e.code === 'not_connected',
    );
    s = await startServer({ DATA_DIR: dir, PORT: port });
    await owner.chat.ready();
    // A barrier: an action after the reconnect, heard back.
    owner.chat.moderate({ type: 'settings', slowModeSeconds: 5 });
    await until(() => owner.of('stream').some((x) => x.slowModeSeconds === 5), 'the barrier');
    // Nothing waited for the connection: the stream is still paused, as the first test left it.
    const state = await api(s.url, 'GET', '/api/streams/class');
    assert.equal((state.body as { paused: boolean }).paused, true);
  });
});
