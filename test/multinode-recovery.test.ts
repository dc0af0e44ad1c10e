/**
 * A node cut off from Redis misses what other nodes publish meanwhile, and
 * what it publishes itself reaches nobody. Once it is back, what every node
 * keeps in memory of those publications (a stream's rules, whether it ended,
 * who is in a request's room) agrees with the store again, without a restart.
 *
 * Each of the two nodes reaches Redis through its own TCP proxy, so the test
 * can cut one node off while the other stays connected.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
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
import { answerTo, ask, ready, requestSocket, viewer, ws } from './nodes.js';
import { REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

const OWNER = '100';

if (await requireServices('postgres', 'redis')) {
  describe('a node back from a Redis outage catches up with what it missed', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    const redisPort = Number(new URL(REDIS_URL).port || 6379);
    const proxyA = new TcpProxy('127.0.0.1', redisPort);
    const proxyB = new TcpProxy('127.0.0.1', redisPort);
    let A: ChildServer;
    let B: ChildServer;
    let env: Record<string, string>;
    let n = 0;

    /** Runs `meanwhile` while B is cut off from Redis, and waits until B is back. */
    async function whileBIsCutOff(meanwhile: () => Promise<void>) {
      await proxyB.cut();
      await until(async () => !(await ready(B)), 'B to notice the outage');
      await meanwhile();
      await proxyB.start();
      await until(() => ready(B), 'B to be back');
    }

    const newStream = async () => {
      const key = `rc-${++n}`;
      const put = await api(A.url, 'PUT', `/api/streams/${key}`, { ownerId: OWNER });
      assert.equal(put.status, 201);
      return key;
    };

    before(async () => {
      schema = await tempSchema();
      await proxyA.start();
      await proxyB.start();
      env = {
        DATABASE_URL: schema.url,
        REDIS_PREFIX: tempRedisPrefix(),
        JWT_SECRET: SECRET,
        API_KEY,
        STREAM_VIEWERS_INTERVAL_MS: '200',
      };
      A = await spawnServer({ ...env, REDIS_URL: `redis://127.0.0.1:${proxyA.port}` });
      B = await spawnServer({ ...env, REDIS_URL: `redis://127.0.0.1:${proxyB.port}` });
      for (const node of [A, B]) await until(() => ready(node), 'nodes to be ready');
    });

    after(async () => {
      const codes = await Promise.all([A, B].map((node) => node?.stop('SIGTERM')));
      await proxyA.stop();
      await proxyB.stop();
      await schema.drop();
      assert.deepEqual(codes, [0, 0], 'every node shut down cleanly');
    });

    it('a ban and settings made on A during the outage hold on B once it is back', async () => {
      const key = await newStream();
      const owner = await viewer(A, key, OWNER);
      const onB = await viewer(B, key, '7');
      await whileBIsCutOff(async () => {
        owner.send({ type: 'ban', data: { userId: '7' } });
        assert.equal((await owner.next('moderation')).data.action, 'ban');
        assert.equal(
          (await api(A.url, 'PATCH', `/api/streams/${key}`, { paused: true })).status,
          200,
        );
      });
      await until(
        () => onB.all.some((f) => f.type === 'stream' && f.data.paused === true),
        'B to show the pause it missed',
      );
      assert.equal((await answerTo(onB, 'still here?')).data.error_code, 'banned');
      owner.close();
      onB.close();
    });

    it('a ban made on B during the outage holds on A once B is back', async () => {
      const key = await newStream();
      const onA = await viewer(A, key, '8');
      const onB = await viewer(B, key, '9');
      await whileBIsCutOff(async () => {
        const ban = await api(B.url, 'PUT', `/api/streams/${key}/bans/8`, {});
        assert.equal(ban.status, 200);
      });
      await sleep(500);
      assert.equal((await answerTo(onA, 'still here?')).data.error_code, 'banned');
      onA.close();
      onB.close();
    });

    it('a stream ended on A during the outage closes its viewers on B once it is back', async () => {
      const key = await newStream();
      const onB = await viewer(B, key, '10');
      await whileBIsCutOff(async () => {
        assert.equal((await api(A.url, 'DELETE', `/api/streams/${key}`)).status, 200);
      });
      const closed = await Promise.race([onB.closed, sleep(5_000).then(() => undefined)]);
      assert.deepEqual(closed, { code: 4410, reason: 'stream_ended' });
    });

    it('a join on B after the outage gets, in its history, the chats and deletions it missed', async () => {
      const key = await newStream();
      const poster = await viewer(A, key, '11');
      const owner = await viewer(A, key, OWNER);
      // B watches throughout: its memory of the stream's newest chats is warm.
      const onB = await viewer(B, key, '12');
      const first = await answerTo(poster, 'before');
      await until(() => onB.frames.some((f) => f.data.id === first.data.id), 'the chat on B');
      await viewer(B, key, '13');
      await whileBIsCutOff(async () => {
        await answerTo(poster, 'during');
        owner.send({ type: 'delete', data: { id: first.data.id } });
        await owner.next('delete');
      });
      const late = await StreamClient.connect(ws(B), key, { token: await userToken('14') });
      const history = await late.next('history');
      assert.deepEqual(
        history.data.messages.map((m: { message: string }) => m.message),
        ['during'],
      );
      for (const c of [poster, owner, onB, late]) c.close();
    });

    it("a chat deleted on A during the outage is deleted for B's viewers once B is back", async () => {
      const key = await newStream();
      const poster = await viewer(A, key, '15');
      const owner = await viewer(A, key, OWNER);
      const onB = await viewer(B, key, '16');
      const doomed = await answerTo(poster, 'doomed');
      const kept = await answerTo(poster, 'kept');
      await until(() => onB.frames.some((f) => f.data.id === kept.data.id), 'the chats on B');
      await whileBIsCutOff(async () => {
        owner.send({ type: 'delete', data: { id: doomed.data.id } });
        assert.deepEqual((await owner.next('delete')).data, { id: doomed.data.id, by: OWNER });
      });
      await until(
        () => onB.frames.some((f) => f.type === 'delete'),
        "B's viewer to get the deletion it missed",
      );
      // The same frame a live deletion sends, for the deleted chat only.
      assert.deepEqual(
        onB.frames.filter((f) => f.type === 'delete').map((f) => f.data),
        [{ id: doomed.data.id, by: OWNER }],
      );
      for (const c of [poster, owner, onB]) c.close();
    });

    it("a chat deleted through B's API during its outage is deleted for A's viewers once B is back", async () => {
      const key = await newStream();
      const onA = await viewer(A, key, '17');
      const chat = await answerTo(onA, 'doomed');
      const onB = await viewer(B, key, '18');
      await whileBIsCutOff(async () => {
        const del = await api(B.url, 'DELETE', `/api/streams/${key}/messages/${chat.data.id}`);
        assert.equal(del.status, 200);
      });
      await until(
        () => onA.frames.some((f) => f.type === 'delete'),
        "A's viewer to get the deletion it missed",
      );
      assert.deepEqual(onA.frames.find((f) => f.type === 'delete')?.data, {
        id: chat.data.id,
        by: 'api',
      });
      onA.close();
      onB.close();
    });

    it('a node whose memory of chats is off sends the deletions made since the outage began', async () => {
      // C keeps no chats in memory (it cannot tell which it sent), and reaches Redis directly.
      const C = await spawnServer({ ...env, REDIS_URL, STREAM_HISTORY_CACHE_STREAMS: '0' });
      try {
        await until(() => ready(C), 'C to be ready');
        const key = await newStream();
        const onC = await viewer(C, key, '24');
        const early = await answerTo(onC, 'deleted before');
        const late = await answerTo(onC, 'deleted during');
        const del = (id: string) => api(B.url, 'DELETE', `/api/streams/${key}/messages/${id}`);
        assert.equal((await del(early.data.id)).status, 200);
        await until(() => onC.frames.some((f) => f.type === 'delete'), 'the first deletion on C');
        await whileBIsCutOff(async () => {
          assert.equal((await del(late.data.id)).status, 200);
        });
        const deletes = () => onC.frames.filter((f) => f.type === 'delete').map((f) => f.data);
        await until(
          () => deletes().some((d) => d.id === late.data.id),
          "C's viewer to get the deletion it missed",
        );
        // The window starts a little before the outage (clocks, and changes
        // stamped before they are published): a deletion just before it may
        // come again, as a repeat of the same frame.
        for (const d of deletes()) {
          assert.ok([early.data.id, late.data.id].includes(d.id));
          assert.equal(d.by, 'api');
        }
        onC.close();
      } finally {
        assert.equal(await C.stop('SIGTERM'), 0);
      }
    });

    it('bans, timeouts and unbans made during the outage reach the other side as moderation frames', async () => {
      const key = await newStream();
      const owner = await viewer(A, key, OWNER);
      const onA = await viewer(A, key, '29');
      const onB = await viewer(B, key, '28');
      const ban = (userId: string, body: object = {}) =>
        api(A.url, 'PUT', `/api/streams/${key}/bans/${userId}`, body);
      assert.equal((await ban('32')).status, 200);
      const before = (c: StreamClient) => c.frames.filter((f) => f.type === 'moderation').length;
      await until(() => before(onB) === 1, 'the first ban on B');
      await whileBIsCutOff(async () => {
        owner.send({ type: 'ban', data: { userId: '30' } });
        owner.send({ type: 'timeout', data: { userId: '31', seconds: 600 } });
        owner.send({ type: 'unban', data: { userId: '32' } });
        for (let i = 0; i < 3; i++) await owner.next('moderation');
        const onBsApi = await api(B.url, 'PUT', `/api/streams/${key}/bans/33`, {});
        assert.equal(onBsApi.status, 200);
      });
      const told = (c: StreamClient) =>
        c.frames
          .filter((f) => f.type === 'moderation')
          .slice(1)
          .map((f) => f.data)
          .sort((x, y) => x.userId.localeCompare(y.userId));
      await until(() => told(onB).length >= 4, "B's viewer to be told what it missed");
      await until(() => told(onA).length >= 4, "A's viewer to be told what it missed");
      await sleep(300);
      // B's viewer missed all four; A's missed only B's own ban, and hears nothing twice.
      const expected = [
        { action: 'ban', userId: '30', by: OWNER },
        { action: 'timeout', userId: '31', seconds: 600, by: OWNER },
        { action: 'unban', userId: '32', by: OWNER },
        { action: 'ban', userId: '33', by: 'api' },
      ];
      assert.deepEqual(told(onB), expected);
      assert.deepEqual(told(onA), expected);
      for (const c of [owner, onA, onB]) c.close();
    });

    it("a request message edited and one deleted on A during the outage change for B's room members once B is back", async () => {
      const request = '6751b6df1ad14eaa13a0bb02';
      assert.equal(
        (await api(A.url, 'PUT', `/api/requests/${request}`, { ownerId: '3' })).status,
        201,
      );
      const teacher = await requestSocket(A, await userToken('3', { role: 'TEACHER' }));
      const lab = await requestSocket(B, await userToken('19', { role: 'LAB' }));
      assert.equal((await ask(teacher.socket, 'joinRoom', { requestId: request })).ok, true);
      assert.equal((await ask(lab.socket, 'joinRoom', { requestId: request })).ok, true);
      const first = await ask(teacher.socket, 'message', { requestId: request, message: 'first' });
      const second = await ask(teacher.socket, 'message', {
        requestId: request,
        message: 'second',
      });
      const third = await ask(teacher.socket, 'message', { requestId: request, message: 'third' });
      await until(() => lab.of('message').length === 3, 'the messages on B');

      let edited: any;
      let deleted: any;
      await whileBIsCutOff(async () => {
        edited = await ask(teacher.socket, 'editMessage', {
          requestId: request,
          messageId: first.message._id,
          message: 'first, edited',
        });
        assert.equal(edited.ok, true);
        deleted = await ask(teacher.socket, 'deleteMessage', {
          requestId: request,
          messageId: second.message._id,
        });
        assert.equal(deleted.ok, true);
      });
      await until(
        () => lab.of('messageUpdated').length > 0 && lab.of('messageDeleted').length > 0,
        'B to send the edit and the deletion it missed',
      );
      // As the live events: the whole edited Message, and the deletion's three fields.
      assert.deepEqual(lab.of('messageUpdated'), [edited.message]);
      assert.deepEqual(lab.of('messageDeleted'), [
        { requestId: request, messageId: second.message._id, deletedAt: deleted.deletedAt },
      ]);
      assert.ok(!lab.of('messageUpdated').some((m) => m._id === third.message._id));
      teacher.socket.close();
      lab.socket.close();
    });

    it("an owner change made on A during the outage takes the previous owner's sockets on B out of the room", async () => {
      const request = '6751b6df1ad14eaa13a0bb01';
      assert.equal(
        (await api(A.url, 'PUT', `/api/requests/${request}`, { ownerId: '1' })).status,
        201,
      );
      const previous = await requestSocket(B, await userToken('1', { role: 'TEACHER' }));
      const lab = await requestSocket(A, await userToken('7', { role: 'LAB' }));
      assert.equal((await ask(previous.socket, 'joinRoom', { requestId: request })).ok, true);
      assert.equal((await ask(lab.socket, 'joinRoom', { requestId: request })).ok, true);
      await ask(lab.socket, 'message', { requestId: request, message: 'before' });
      await until(() => previous.of('message').length === 1, 'the first message on B');

      await whileBIsCutOff(async () => {
        const put = await api(A.url, 'PUT', `/api/requests/${request}`, { ownerId: '2' });
        assert.equal(put.status, 200);
      });
      await sleep(500);
      assert.equal(
        (await ask(lab.socket, 'message', { requestId: request, message: 'after' })).ok,
        true,
      );
      lab.socket.emit('typing', { requestId: request });
      await sleep(500);
      assert.deepEqual(
        previous.of('message').map((m) => m.message),
        ['before'],
      );
      assert.deepEqual(previous.of('userTyping'), []);
      const refused = await ask(previous.socket, 'message', { requestId: request, message: 'x' });
      assert.equal(refused.error_code, 'not_in_room');
      previous.socket.close();
      lab.socket.close();
    });
  });
}
