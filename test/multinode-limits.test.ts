/**
 * Limits that hold for a user whichever node each of their connections is
 * on: two charla instances on one PostgreSQL schema and one Redis prefix.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { io, type Socket } from 'socket.io-client';
import { api, startServer, type TestServer, userToken } from './helpers.js';
import { REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';

const REQUEST = '6751b6df1ad14eaa13a03313';

async function teacherSocket(server: TestServer, token: string): Promise<Socket> {
  const socket = io(server.url, {
    auth: { token },
    transports: ['websocket'],
    reconnection: false,
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  const joined = await socket.timeout(5_000).emitWithAck('joinRoom', { requestId: REQUEST });
  assert.equal(joined.ok, true);
  return socket;
}

const send = (socket: Socket, message: string): Promise<any> =>
  socket.timeout(5_000).emitWithAck('message', { requestId: REQUEST, message });

if (await requireServices('postgres', 'redis')) {
  describe('request rate limits shared through Redis', () => {
    it("a user's REQUEST_RATE_LIMIT is spent across nodes, not per node", async () => {
      const schema = await tempSchema();
      const env = {
        DATABASE_URL: schema.url,
        REDIS_URL,
        REDIS_PREFIX: tempRedisPrefix(),
        REQUEST_RATE_LIMIT: '3/60s',
      };
      const one = await startServer(env);
      const two = await startServer(env);
      const sockets: Socket[] = [];
      try {
        assert.equal(
          (await api(one.url, 'PUT', `/api/requests/${REQUEST}`, { ownerId: '7' })).status,
          201,
        );
        const token = await userToken('7', { role: 'TEACHER' });
        const a = await teacherSocket(one, token);
        const b = await teacherSocket(two, token);
        sockets.push(a, b);
        for (const [socket, text] of [
          [a, 'one'],
          [b, 'two'],
          [a, 'three'],
        ] as const) {
          assert.equal((await send(socket, text)).ok, true, text);
        }
        const refused = await send(b, 'four');
        assert.equal(refused.ok, false);
        assert.equal(refused.error_code, 'rate_limited');
        assert.ok(refused.retry_after_ms > 50_000, JSON.stringify(refused));
        assert.equal((await send(a, 'five')).error_code, 'rate_limited');
        // The refused messages were stored nowhere.
        const stored = await api(two.url, 'GET', `/api/requests/${REQUEST}/messages`);
        assert.deepEqual(
          stored.body.messages.map((m: { message: string }) => m.message),
          ['one', 'two', 'three'],
        );
      } finally {
        for (const socket of sockets) socket.close();
        await one.close();
        await two.close();
        await schema.drop();
      }
    });
  });
}
