/**
 * Recoveries that overlap: a node hears a second `broker:recovered` while it
 * still catches up with the first (another node back meanwhile, or the same
 * Redis flapping). What its viewers were shown before the first still decides
 * what they are told, and a request room's missed changes go out once per
 * pass, not once per announcement.
 *
 * B reaches Redis and PostgreSQL through TCP proxies: the test cuts its Redis
 * and holds one of its store reads. The second announcement is published on
 * Redis as another node would publish it.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import {
  API_KEY,
  api,
  type ChildServer,
  SECRET,
  StreamClient,
  sleep,
  spawnServer,
  until,
  userToken,
} from './helpers.js';
import { ask, ready, requestSocket, ws } from './nodes.js';
import { PG_URL, REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

const OWNER = '100';
/** The store's read of a stream's record (`getStream`), which a recovery makes for each stream. */
const STREAM_READ = 'SELECT key, title, owner_id, ended_at FROM streams';

if (await requireServices('postgres', 'redis')) {
  describe('recoveries announced while a node still catches up with one', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    const redisB = new TcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379));
    const dbB = new TcpProxy('127.0.0.1', Number(new URL(PG_URL).port || 5432));
    let A: ChildServer;
    let B: ChildServer;
    let prefix: string;
    let redis: Redis;

    /** What another node publishes when it is back: it may have missed what came since `since`. */
    const announce = (since: number) =>
      redis.publish(`${prefix}broker:recovered`, JSON.stringify({ node: randomUUID(), since }));

    /** Cuts B off from Redis, runs `meanwhile`, and gives Redis back to B. */
    async function cutB(meanwhile: () => Promise<void>) {
      await redisB.cut();
      await until(async () => !(await ready(B)), 'B to notice the outage');
      await meanwhile();
      await redisB.start();
    }

    before(async () => {
      schema = await tempSchema();
      prefix = tempRedisPrefix();
      await redisB.start();
      await dbB.start();
      const env = {
        DATABASE_URL: schema.url,
        REDIS_PREFIX: prefix,
        JWT_SECRET: SECRET,
        API_KEY,
        // No periodic `stream` frames: the only one a viewer gets is a recovery's.
        STREAM_VIEWERS_INTERVAL_MS: '600000',
      };
      A = await spawnServer({ ...env, REDIS_URL });
      const dbUrl = new URL(schema.url);
      dbUrl.port = String(dbB.port);
      B = await spawnServer({
        ...env,
        DATABASE_URL: dbUrl.toString(),
        REDIS_URL: `redis://127.0.0.1:${redisB.port}`,
      });
      for (const node of [A, B]) await until(() => ready(node), 'nodes to be ready');
      redis = new Redis(REDIS_URL);
    });

    after(async () => {
      dbB.resume('client');
      redis?.disconnect();
      const codes = await Promise.all([A, B].map((node) => node?.stop('SIGTERM')));
      await redisB.stop();
      await dbB.stop();
      await schema.drop();
      assert.deepEqual(codes, [0, 0], 'every node shut down cleanly');
    });

    it("a slow mode set during B's outage reaches B's viewer though a second recovery comes during B's read", async () => {
      const key = 'overlap-1';
      assert.equal(
        (await api(A.url, 'PUT', `/api/streams/${key}`, { ownerId: OWNER })).status,
        201,
      );
      const onB = await StreamClient.connect(ws(B), key, { token: await userToken('7') });
      assert.equal((await onB.next('stream')).data.slowModeSeconds, 0);
      await onB.next('history');
      const slowMode = () =>
        onB.all.filter((f) => f.type === 'stream').map((f) => f.data.slowModeSeconds);

      const since = Date.now();
      await cutB(async () => {
        const patch = await api(A.url, 'PATCH', `/api/streams/${key}`, { slowModeSeconds: 30 });
        assert.equal(patch.status, 200);
        // B's recovery reads the stream's rules and its record; the record's read waits.
        dbB.pauseAt('client', STREAM_READ);
      });
      await until(() => dbB.seen() === 1, "B's recovery to read the stream's record");
      // A chat is checked against the rules read again: once it is echoed, B has them.
      onB.chat('hello');
      for (;;) if ((await onB.next('chat', 5_000)).data.message === 'hello') break;
      // Another node announces its recovery, before B's first one is done.
      await announce(since);
      await until(() => dbB.seen() >= 2, 'B to read the stream again for that recovery');
      await sleep(300);
      dbB.resume('client');
      await until(() => slowMode().length > 1, "B's viewer to be told of the slow mode", 3_000);
      assert.deepEqual(slowMode(), [0, 30]);
      onB.close();
    });

    it("a request edit missed by B goes to B's member once per pass, however many recoveries are announced", async () => {
      const request = '6751b6df1ad14eaa13a0cc01';
      assert.equal(
        (await api(A.url, 'PUT', `/api/requests/${request}`, { ownerId: '3' })).status,
        201,
      );
      const teacher = await requestSocket(A, await userToken('3', { role: 'TEACHER' }));
      const lab = await requestSocket(B, await userToken('19', { role: 'LAB' }));
      assert.equal((await ask(teacher.socket, 'joinRoom', { requestId: request })).ok, true);
      assert.equal((await ask(lab.socket, 'joinRoom', { requestId: request })).ok, true);
      const sent = await ask(teacher.socket, 'message', { requestId: request, message: 'first' });
      await until(() => lab.of('message').length === 1, 'the message on B');

      const since = Date.now();
      await cutB(async () => {
        const edit = await ask(teacher.socket, 'editMessage', {
          requestId: request,
          messageId: sent.message._id,
          message: 'first, edited',
        });
        assert.equal(edit.ok, true);
      });
      await until(() => lab.of('messageUpdated').length === 1, "B's own recovery to send the edit");
      await sleep(300);

      // Three recoveries announced back to back, while B's store reads wait.
      dbB.pause('client');
      for (let i = 0; i < 3; i++) await announce(since);
      await sleep(300);
      dbB.resume('client');
      await until(() => lab.of('messageUpdated').length > 1, 'B to send the edit again');
      await sleep(1_000);
      const again = lab.of('messageUpdated').length - 1;
      // The pass the first announcement started, and one more for the other two.
      assert.ok(again <= 2, `the edit sent again ${again} times`);
      for (const m of lab.of('messageUpdated')) assert.equal(m.message, 'first, edited');
      teacher.socket.close();
      lab.socket.close();
    });
  });
}
