/**
 * The client library across a server restart in the middle of a
 * conversation: a real charla process on a SQLite file is stopped with
 * SIGTERM and started again on the same port, while `StreamChat` and
 * `RequestChat` clients (real `ws` and `socket.io-client` underneath) keep
 * talking. Nothing may be lost or duplicated.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { RequestChat, type RequestMessage, StreamChat } from '../src/client/index.js';
import { newId } from '../src/core/ids.js';
import { Recorder, spawnCharla, until } from './client-helpers.js';
import { API_KEY, api, type ChildServer, SECRET, tempDir, userToken } from './helpers.js';

const dir = tempDir();
after(() => rmSync(dir, { recursive: true, force: true }));

const fast = { initialDelayMs: 50, maxDelayMs: 300 };
/** Generous waits: these tests run beside the rest of the suite on a busy machine. */
const SLOW = 20_000;

const envFor = (name: string) => ({
  DATABASE_URL: `sqlite:${join(dir, `${name}.db`)}`,
  JWT_SECRET: SECRET,
  API_KEY,
  STREAM_RATE_LIMIT: '1000/1s',
  REQUEST_RATE_LIMIT: '1000/1s',
});

/** Stops `server` with SIGTERM and starts it again on the same port and database. */
async function restart(
  server: ChildServer,
  env: Record<string, string>,
  whileDown: () => void | Promise<void>,
): Promise<ChildServer> {
  const port = new URL(server.url).port;
  assert.equal(await server.stop('SIGTERM'), 0);
  await whileDown();
  return spawnCharla({ ...env, PORT: port });
}

const unique = <T>(xs: T[]) => new Set(xs).size === xs.length;

describe('a server restart in the middle of a conversation', () => {
  it('stream chat: every client reconnects by itself; nothing is lost or duplicated', async () => {
    const env = envFor('stream');
    let server = await spawnCharla(env);
    assert.equal((await api(server.url, 'PUT', '/api/streams/class', {})).status, 201);
    const ana = new Recorder(
      StreamChat.connect(server.url, 'class', {
        WebSocket,
        token: await userToken('1', { username: 'ana' }),
        reconnect: fast,
      }),
    );
    const viewer = new Recorder(
      StreamChat.connect(server.url, 'class', { WebSocket, reconnect: fast }),
    );
    try {
      await Promise.all([ana.chat.ready(), viewer.chat.ready()]);
      for (let i = 0; i < 3; i++) ana.chat.send(`before ${i}`);
      await until(
        () => viewer.chats.length === 3 && ana.chats.length === 3,
        'the first chats',
        SLOW,
      );

      server = await restart(server, env, async () => {
        await until(
          () => [ana, viewer].every((r) => r.of('close').some((c) => c.code === 1001)),
          'close 1001 on both clients',
          SLOW,
        );
        assert.ok([ana, viewer].every((r) => r.of('close').every((c) => c.willReconnect)));
        // Written while the server is down: they wait in the outbox.
        ana.chat.send('while down 0');
        ana.chat.send('while down 1');
        assert.equal(ana.chat.pending, 2);
      });

      await Promise.all([ana.chat.ready(), viewer.chat.ready()]);
      await until(() => ana.texts().includes('while down 1'), 'the waiting chats, stored', SLOW);
      ana.chat.send('after');
      await until(() => viewer.texts().includes('after'), 'the chat after the restart', SLOW);

      const expected = [
        'before 0',
        'before 1',
        'before 2',
        'while down 0',
        'while down 1',
        'after',
      ];
      const stored = (await api(server.url, 'GET', '/api/streams/class/messages?limit=500')).body
        .messages as Array<{ id: string; message: string }>;
      assert.deepEqual(
        stored.map((m) => m.message),
        expected,
        'each chat stored once',
      );
      assert.deepEqual(ana.texts(), expected, 'the sender saw each of its chats once');

      const history = viewer.of('history').flatMap((h) => h.messages) as Array<{ id: string }>;
      const seen = [...viewer.chats.map((m) => m.id), ...history.map((m) => m.id)];
      assert.ok(unique(seen), 'the viewer got no chat twice');
      const storedIds = stored.map((m) => m.id);
      assert.ok(
        seen.every((id) => storedIds.includes(id)),
        'the viewer got only stored chats',
      );
      for (const text of ['before 0', 'before 1', 'before 2', 'after']) {
        assert.ok(viewer.texts().includes(text), `the viewer got "${text}"`);
      }
      // The resumed connection's history (`?since=`) brought what was sent while the viewer was away.
      assert.ok(
        viewer.of('history').some((h) => h.resumed),
        'a resumed history',
      );
      assert.deepEqual(
        stored.map((m) => m.id).filter((id) => !seen.includes(id)),
        [],
        'the viewer missed nothing',
      );
    } finally {
      ana.chat.close();
      viewer.chat.close();
      assert.equal(await server.stop('SIGTERM'), 0);
    }
  });

  it('request chat: rooms are joined again, waiting messages are delivered once', async () => {
    const env = envFor('request');
    let server = await spawnCharla(env);
    const requestId = newId();
    assert.equal(
      (await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 })).status,
      201,
    );
    const options = { reconnect: fast, ackTimeoutMs: 2_000 };
    const teacher = await RequestChat.connect(server.url, {
      token: await userToken('1', { username: 'ana', role: 'TEACHER' }),
      ...options,
    });
    const lab = await RequestChat.connect(server.url, {
      token: await userToken('7', { username: 'lab', role: 'LAB' }),
      ...options,
    });
    const atLab: RequestMessage[] = [];
    const atTeacher: RequestMessage[] = [];
    lab.on('message', (m) => atLab.push(m));
    teacher.on('message', (m) => atTeacher.push(m));
    const rejoined: string[] = [];
    for (const [who, c] of [
      ['teacher', teacher],
      ['lab', lab],
    ] as const) {
      c.on('history', (h) => {
        if (h.rejoined) rejoined.push(who);
      });
    }
    try {
      await teacher.join(requestId);
      await lab.join(requestId);
      for (let i = 0; i < 3; i++) await teacher.send(requestId, `before ${i}`);
      await lab.send(requestId, 'lab before');
      await until(() => atLab.length === 3 && atTeacher.length === 1, 'the first messages', SLOW);

      let whileDown: Array<Promise<RequestMessage>> = [];
      server = await restart(server, env, async () => {
        await until(() => !teacher.connected && !lab.connected, 'both disconnected', SLOW);
        whileDown = [
          teacher.send(requestId, 'while down 0'),
          teacher.send(requestId, 'while down 1'),
          lab.send(requestId, 'lab while down'),
          teacher.send(requestId, 'while down 2'),
        ];
        assert.equal(teacher.pending, 3);
        assert.equal(lab.pending, 1);
      });

      const acked = await Promise.all(whileDown);
      assert.deepEqual(
        acked.map((m) => m.message),
        ['while down 0', 'while down 1', 'lab while down', 'while down 2'],
      );
      const after1 = await teacher.send(requestId, 'after');
      const after2 = await lab.send(requestId, 'lab after');
      await until(
        () =>
          atLab.some((m) => m._id === after1._id) && atTeacher.some((m) => m._id === after2._id),
        'the messages after the restart',
        SLOW,
      );
      assert.deepEqual(rejoined.sort(), ['lab', 'teacher']);

      const stored = (await api(server.url, 'GET', `/api/requests/${requestId}/messages?limit=500`))
        .body.messages as RequestMessage[];
      const teacherTexts = [
        'before 0',
        'before 1',
        'before 2',
        'while down 0',
        'while down 1',
        'while down 2',
        'after',
      ];
      const labTexts = ['lab before', 'lab while down', 'lab after'];
      const storedTexts = stored.map((m) => m.message);
      assert.ok(unique(stored.map((m) => m._id)));
      assert.deepEqual(
        storedTexts.filter((x) => teacherTexts.includes(x)),
        teacherTexts,
        "the teacher's messages, each stored once, in order",
      );
      assert.deepEqual(
        storedTexts.filter((x) => labTexts.includes(x)),
        labTexts,
        "the lab's messages, each stored once, in order",
      );
      assert.equal(stored.length, teacherTexts.length + labTexts.length);

      // Each side was told of every message of the other exactly once…
      assert.deepEqual(atLab.map((m) => m.message).sort(), [...teacherTexts].sort());
      assert.deepEqual(atTeacher.map((m) => m.message).sort(), [...labTexts].sort());
      // …and holds the whole conversation, in the server's order.
      for (const c of [teacher, lab]) {
        assert.deepEqual(
          c.messages(requestId).map((m) => m._id),
          stored.map((m) => m._id),
        );
      }
    } finally {
      teacher.close();
      lab.close();
      assert.equal(await server.stop('SIGTERM'), 0);
    }
  });
});
