/**
 * A change a moderator or the platform makes through one node's HTTP API is
 * in force on every node once the call has answered: the next chat of the
 * user it concerns, sent at once through another node, is judged by it.
 * Three charla processes on one PostgreSQL schema and one Redis prefix.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { API_KEY, api, type ChildServer, SECRET, spawnServers, until } from './helpers.js';
import { answerTo, ready, viewer } from './nodes.js';
import { REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';

const ROUNDS = 30;

if (await requireServices('postgres', 'redis')) {
  describe('API changes hold on every node once answered', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    let nodes: ChildServer[] = [];
    let A: ChildServer;
    let B: ChildServer;
    let C: ChildServer;

    before(async () => {
      schema = await tempSchema();
      nodes = await spawnServers(3, {
        DATABASE_URL: schema.url,
        REDIS_URL,
        REDIS_PREFIX: tempRedisPrefix(),
        JWT_SECRET: SECRET,
        API_KEY,
        STREAM_RATE_LIMIT: '10000/1s',
        FLOOD_LIMIT: '100000',
      });
      [A, B, C] = nodes as [ChildServer, ChildServer, ChildServer];
      for (const node of nodes) await until(() => ready(node), 'nodes to be ready');
    });

    after(async () => {
      const codes = await Promise.all(nodes.map((node) => node.stop('SIGTERM')));
      await schema.drop();
      assert.deepEqual(codes, [0, 0, 0], 'every node shut down cleanly');
    });

    it('a ban through A refuses, and an unban through B lets through, the next chat on C', async () => {
      assert.equal((await api(A.url, 'PUT', '/api/streams/bans', {})).status, 201);
      const answers: string[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const user = `u${i}`;
        const c = await viewer(C, 'bans', user);
        assert.equal((await api(A.url, 'PUT', `/api/streams/bans/bans/${user}`, {})).status, 200);
        const refused = await answerTo(c, `banned ${i}`);
        answers.push(refused.type === 'error' ? refused.data.error_code : 'accepted');
        assert.equal((await api(B.url, 'DELETE', `/api/streams/bans/bans/${user}`)).status, 200);
        const accepted = await answerTo(c, `unbanned ${i}`);
        answers.push(accepted.type === 'error' ? accepted.data.error_code : 'accepted');
        c.close();
      }
      assert.deepEqual(
        answers,
        Array.from({ length: ROUNDS }, () => ['banned', 'accepted']).flat(),
      );
    });
  });
}
