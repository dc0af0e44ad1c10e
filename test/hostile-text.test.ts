/**
 * Text no store can keep (U+0000, unpaired surrogates) against a charla
 * process on PostgreSQL, which refuses U+0000 in text and jsonb: on every
 * surface that stores what a client sends (chats, moderation frames, request
 * messages and their attachments, the server API, token claims) it is
 * `invalid_payload` (or `invalid_token`), nothing is stored, nobody else sees
 * anything, and no server error is logged. Before, one such stream chat
 * failed the batch it was written with, and the other users' chats in it
 * were never stored.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { newId } from '../src/core/ids.js';
import { api, StreamClient as SC, sleep, userToken } from './helpers.js';
import { startWatched, type WatchedServer } from './hostile.js';
import { RequestClient, settle } from './request-client.js';
import { requireServices, tempSchema } from './services.js';

const NUL = 'a\u0000b';
const LONE = 'a\ud800b';
const LAB = { role: 'LAB' };

if (await requireServices('postgres')) {
  describe('unstorable text on PostgreSQL', () => {
    let s: WatchedServer;
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    const key = 'classroom';

    before(async () => {
      schema = await tempSchema();
      s = await startWatched({
        DATABASE_URL: schema.url,
        ATTACHMENT_URL_PREFIXES: 'https://cdn.example/',
      });
      const put = await api(s.url, 'PUT', `/api/streams/${key}`, { ownerId: '1', title: 'math' });
      assert.equal(put.status, 201);
    });
    after(async () => {
      await s.close();
      await schema.drop();
    });

    /** No error-level line in the server's log. */
    function assertNoServerError(): void {
      const errors = s
        .output()
        .split('\n')
        .filter((line) => /"level":(50|60)/.test(line));
      assert.deepEqual(errors, [], 'a client sent it: not a server error');
      assert.ok(s.alive());
    }

    async function storedChats(): Promise<string[]> {
      const res = await api(s.url, 'GET', `/api/streams/${key}/messages?limit=500`);
      assert.equal(res.status, 200);
      return res.body.messages.map((m: { message: string }) => m.message);
    }

    test("a chat with U+0000 is refused and the other users' chats of its turn are stored", async () => {
      const ana = await SC.connect(s.wsUrl, key, { token: await userToken('2') });
      const eve = await SC.connect(s.wsUrl, key, { token: await userToken('3') });
      try {
        // Both joined (their history is out); then sent together, as one batch.
        await Promise.all([ana.next('history'), eve.next('history')]);
        ana.chat('innocent');
        eve.chat(NUL);
        eve.chat(LONE);
        ana.chat('innocent too');
        assert.equal((await eve.next('error')).data.error_code, 'invalid_payload');
        assert.equal((await eve.next('error')).data.error_code, 'invalid_payload');
        const deadline = Date.now() + 5_000;
        let stored: string[] = [];
        while (Date.now() < deadline) {
          stored = await storedChats();
          if (stored.length >= 2) break;
          await sleep(50);
        }
        assert.deepEqual(stored, ['innocent', 'innocent too']);
        const seen = await eve.collect('chat', 2);
        assert.deepEqual(
          seen.map((f) => f.data.message),
          ['innocent', 'innocent too'],
        );
      } finally {
        ana.close();
        eve.close();
      }
      assertNoServerError();
    });

    test('moderation frames naming unstorable users or reasons are invalid_payload', async () => {
      const owner = await SC.connect(s.wsUrl, key, { token: await userToken('1') });
      const viewer = await SC.connect(s.wsUrl, key, { token: await userToken('5') });
      try {
        await owner.next('history');
        for (const data of [
          { userId: NUL },
          { userId: LONE },
          { userId: '9', reason: NUL },
          { userId: '9', reason: LONE },
        ]) {
          owner.send({ type: 'ban', data });
          const err = await owner.next('error');
          assert.equal(err.data.error_code, 'invalid_payload', JSON.stringify(data));
        }
        owner.send({ type: 'timeout', data: { userId: NUL, seconds: 60 } });
        assert.equal((await owner.next('error')).data.error_code, 'invalid_payload');
        // A barrier: the next broadcast is this unban, and nothing came before it.
        owner.send({ type: 'unban', data: { userId: 'barrier' } });
        const barrier = await viewer.next('moderation');
        assert.equal(barrier.data.userId, 'barrier');
        const bans = await api(s.url, 'GET', `/api/streams/${key}/bans`);
        assert.deepEqual(bans.body, { bans: [] });
      } finally {
        owner.close();
        viewer.close();
      }
      assertNoServerError();
    });

    test('the server API refuses unstorable titles, ids and reasons', async () => {
      // A body that fails its schema is 422, a path that names nothing storable 400.
      const refused: Array<[string, string, unknown, number]> = [
        ['PUT', `/api/streams/${key}`, { title: NUL }, 422],
        ['PUT', '/api/streams/other', { ownerId: NUL }, 422],
        ['PATCH', `/api/streams/${key}`, { title: LONE }, 422],
        ['PATCH', `/api/streams/${key}`, { moderators: ['7', NUL] }, 422],
        ['PUT', `/api/streams/${key}/members`, { userIds: ['7', NUL] }, 422],
        ['PUT', `/api/streams/${key}/bans/9`, { reason: NUL }, 422],
        ['PUT', `/api/requests/${newId()}`, { ownerId: NUL }, 422],
        ['PUT', `/api/streams/${key}/bans/a%00b`, {}, 400],
        ['PUT', `/api/streams/${key}/bans/a%ED%A0%80b`, {}, 400],
        ['DELETE', `/api/streams/${key}/bans/a%00b`, undefined, 400],
        ['GET', '/api/users/a%00b/unread?role=LAB', undefined, 400],
      ];
      for (const [method, path, body, status] of refused) {
        const res = await api(s.url, method, path, body);
        assert.equal(res.status, status, `${method} ${path}: ${JSON.stringify(res.body)}`);
        assert.equal(res.body.error_code, 'invalid_payload');
      }
      const info = await api(s.url, 'GET', `/api/streams/${key}`);
      assert.equal(info.body.title, 'math');
      assert.deepEqual(info.body.moderators, []);
      assert.equal((await api(s.url, 'GET', '/api/streams/other')).status, 404);
      const log = await api(s.url, 'GET', `/api/streams/${key}/moderation-log`);
      assert.deepEqual(
        log.body.actions.filter((a: { action: string }) => a.action !== 'unban'),
        [],
      );
      assertNoServerError();
    });

    test('request messages, client ids, attachments and edits with unstorable text', async () => {
      const requestId = newId();
      assert.equal(
        (await api(s.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' })).status,
        201,
      );
      const lab = await RequestClient.connect(s.url, await userToken('7', LAB));
      const other = await RequestClient.connect(s.url, await userToken('8', LAB));
      try {
        for (const c of [lab, other]) {
          assert.equal((await c.ask('joinRoom', { requestId })).ok, true);
        }
        const file = { url: 'https://cdn.example/a.png', name: 'a.png', contentType: 'image/png' };
        const sent = await lab.ask('message', { requestId, message: 'fine' });
        assert.equal(sent.ok, true);
        const refused = [
          { message: NUL },
          { message: LONE },
          { message: 'x', clientMessageId: NUL },
          { message: 'x', attachments: [{ ...file, name: NUL, size: 1 }] },
          { message: 'x', attachments: [{ ...file, name: LONE, size: 1 }] },
          { message: '', attachments: [{ ...file, url: `${file.url}${NUL}`, size: 1 }] },
        ];
        const answers = await Promise.all(
          refused.map((p) => lab.ask('message', { requestId, ...p })),
        );
        for (const [i, a] of answers.entries()) {
          assert.equal(a.ok, false, JSON.stringify(refused[i]));
          assert.equal(a.error_code, 'invalid_payload', JSON.stringify(refused[i]));
        }
        const messageId = sent.message._id;
        const edit = await lab.ask('editMessage', { requestId, messageId, message: NUL });
        assert.equal(edit.error_code, 'invalid_payload');
        // A barrier: the next message the other socket gets is this one.
        assert.equal((await lab.ask('message', { requestId, message: 'barrier' })).ok, true);
        await other.next('message', (m) => m.message === 'barrier');
        await settle();
        assert.deepEqual(
          other.of('message').map((m) => m.message),
          ['fine', 'barrier'],
        );
        assert.deepEqual(other.of('messageUpdated'), []);
        const history = await api(s.url, 'GET', `/api/requests/${requestId}/messages`);
        assert.deepEqual(
          history.body.messages.map((m: { message: string; editedAt?: string }) => [
            m.message,
            m.editedAt,
          ]),
          [
            ['fine', undefined],
            ['barrier', undefined],
          ],
        );
      } finally {
        lab.close();
        other.close();
      }
      assertNoServerError();
    });

    test('a token whose user id or name cannot be stored is invalid_token', async () => {
      const token = await userToken('9', { username: NUL });
      const viewer = await SC.connect(s.wsUrl, key, { token });
      try {
        assert.equal((await viewer.next('error')).data.error_code, 'invalid_token');
        assert.deepEqual((await viewer.next('auth')).data, { authenticated: false });
      } finally {
        viewer.close();
      }
      const refusal = await RequestClient.refusal(s.url, {
        auth: { token: await userToken(LONE, LAB) },
      });
      assert.equal(refusal.message, 'unauthorized');
      assertNoServerError();
    });
  });
}
