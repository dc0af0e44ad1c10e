/**
 * Three charla processes behind no load balancer, one PostgreSQL schema and
 * one Redis prefix of their own: both chats work across nodes as on one, a
 * node killed outright loses nothing it acknowledged, and the nodes survive
 * Redis or PostgreSQL going away without a restart.
 *
 * Redis and PostgreSQL are reached through TCP proxies so the test can take
 * them away from these nodes without disturbing anything else that uses them.
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
  spawnServers,
  until,
  userToken,
} from './helpers.js';
import { ask, ready, requestSocket, ws } from './nodes.js';
import { PG_URL, REDIS_URL, requireServices, tempRedisPrefix, tempSchema } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

const chats = (c: StreamClient) => c.frames.filter((f) => f.type === 'chat').map((f) => f.data);

/** Receipt times of chats on one client, by message text: for latency figures. */
function timeChats(c: StreamClient): Map<string, number> {
  const at = new Map<string, number>();
  c.ws.on('message', (data) => {
    const f = JSON.parse(String(data));
    if (f.type === 'chat') at.set(f.data.message, performance.now());
  });
  return at;
}

/**
 * Posts warm-up chats until every viewer hears them: each node's broker
 * subscription for the stream is then live, so what follows reaches everyone.
 */
async function warmUp(poster: StreamClient, viewers: StreamClient[]) {
  let i = 0;
  await until(() => {
    if (viewers.every((v) => chats(v).some((c) => c.message.startsWith('warm-up')))) return true;
    poster.chat(`warm-up ${i++}`);
    return false;
  }, 'subscriptions on every node');
}

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
const figures = (sorted: number[]) =>
  `p50 ${percentile(sorted, 50).toFixed(1)} ms, p99 ${percentile(sorted, 99).toFixed(1)} ms, ` +
  `max ${percentile(sorted, 100).toFixed(1)} ms`;

if (await requireServices('postgres', 'redis')) {
  describe('three nodes, one PostgreSQL, one Redis', () => {
    let schema: Awaited<ReturnType<typeof tempSchema>>;
    const proxy = new TcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379));
    const pgProxy = new TcpProxy('127.0.0.1', Number(new URL(PG_URL).port || 5432));
    let env: Record<string, string>;
    let nodes: ChildServer[] = [];
    let A: ChildServer;
    let B: ChildServer;
    let C: ChildServer;

    before(async () => {
      schema = await tempSchema();
      await proxy.start();
      await pgProxy.start();
      const viaProxy = new URL(schema.url);
      viaProxy.port = String(pgProxy.port);
      env = {
        DATABASE_URL: viaProxy.toString(),
        REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
        REDIS_PREFIX: tempRedisPrefix(),
        JWT_SECRET: SECRET,
        API_KEY,
        STREAM_RATE_LIMIT: '10000/1s',
        REQUEST_RATE_LIMIT: '10000/1s',
        FLOOD_LIMIT: '100000',
      };
      // Started together: their migrations race on the advisory lock.
      nodes = await spawnServers(3, env);
      [A, B, C] = nodes as [ChildServer, ChildServer, ChildServer];
      for (const n of nodes) await until(() => ready(n), 'nodes to be ready');
    });

    after(async () => {
      const codes = await Promise.all(nodes.map((n) => n.stop('SIGTERM')));
      await proxy.stop();
      await pgProxy.stop();
      await schema.drop();
      assert.deepEqual(codes, [0, 0, 0], 'every node shut down cleanly');
    });

    it('viewers on every node receive posts from A and B in one shared order', async (t) => {
      assert.equal((await api(A.url, 'PUT', '/api/streams/multi', { title: 'm' })).status, 201);
      const pA = await StreamClient.connect(ws(A), 'multi', { token: await userToken('1') });
      const pB = await StreamClient.connect(ws(B), 'multi', { token: await userToken('2') });
      const c1 = await StreamClient.connect(ws(C), 'multi');
      const c2 = await StreamClient.connect(ws(C), 'multi');
      const viewers = [pA, pB, c1, c2];
      await warmUp(pA, viewers);
      await warmUp(pB, viewers);
      const arrivals = timeChats(c1);
      const sent = new Map<string, number>();

      const n = 100;
      for (let i = 0; i < n; i++) {
        for (const [poster, name] of [
          [pA, 'A'],
          [pB, 'B'],
        ] as const) {
          sent.set(`${name}${i}`, performance.now());
          poster.chat(`${name}${i}`);
        }
        if (i % 10 === 9) await new Promise((r) => setTimeout(r, 5));
      }
      const real = (c: StreamClient) => chats(c).filter((m) => !m.message.startsWith('warm-up'));
      await until(() => viewers.every((v) => real(v).length === 2 * n), 'every chat everywhere');

      const [first, ...others] = viewers.map((v) => real(v).map((m) => m.id));
      for (const other of others) assert.deepEqual(other, first, 'one order for all viewers');
      const texts = real(c1).map((m) => m.message as string);
      for (const p of ['A', 'B']) {
        assert.deepEqual(
          texts.filter((t) => t.startsWith(p)),
          Array.from({ length: n }, (_, i) => `${p}${i}`),
          `${p}'s chats in the order sent`,
        );
      }
      assert.deepEqual(real(c1)[0].userId, texts[0]?.startsWith('A') ? '1' : '2');

      const latencies = [...sent]
        .map(([text, t]) => (arrivals.get(text) as number) - t)
        .sort((x, y) => x - y);
      t.diagnostic(
        `burst of ${latencies.length} chats from A and B to a viewer on C: ${figures(latencies)}`,
      );

      // One chat at a time: the latency of a node hop through Redis, unloaded.
      const single: number[] = [];
      for (let i = 0; i < 50; i++) {
        const start = performance.now();
        pA.chat(`one ${i}`);
        await until(() => arrivals.has(`one ${i}`), 'the chat', 2_000);
        single.push((arrivals.get(`one ${i}`) as number) - start);
      }
      single.sort((x, y) => x - y);
      t.diagnostic(`one at a time, A to a viewer on C (50 chats): ${figures(single)}`);

      // Stored once, by the node that accepted each chat, in one table all nodes read.
      await until(async () => {
        const page = await api(B.url, 'GET', '/api/streams/multi/messages?limit=500');
        return page.body.messages?.filter((m: any) => /^[AB]\d/.test(m.message)).length === 2 * n;
      }, 'history on B to hold every chat');
      for (const c of viewers) c.close();
    });

    it('a stream ended through A closes its viewers on B and C with 4410', async () => {
      assert.equal((await api(A.url, 'PUT', '/api/streams/ending', {})).status, 201);
      const onB = await StreamClient.connect(ws(B), 'ending', { token: await userToken('2') });
      const onC = await StreamClient.connect(ws(C), 'ending');
      await warmUp(onB, [onB, onC]);
      assert.equal((await api(A.url, 'DELETE', '/api/streams/ending')).status, 200);
      for (const c of [onB, onC]) {
        const err = await c.next('error');
        assert.equal(err.data.error_code, 'stream_ended');
        assert.equal((await c.closed).code, 4410);
      }
      // New viewers anywhere are refused the same way.
      const late = await StreamClient.connect(ws(C), 'ending');
      assert.equal((await late.closed).code, 4410);
    });

    it('request chat: a teacher on A and lab staff on B, receipts both ways', async (t) => {
      const request = '6751b6df1ad14eaa13a0aa01';
      assert.equal(
        (await api(A.url, 'PUT', `/api/requests/${request}`, { ownerId: 1 })).status,
        201,
      );
      const teacher = await requestSocket(A, await userToken('1', { role: 'TEACHER' }));
      const lab = await requestSocket(B, await userToken('7', { role: 'LAB' }));
      const labElsewhere = await requestSocket(C, await userToken('7', { role: 'LAB' }));
      for (const s of [teacher, lab, labElsewhere]) {
        assert.equal((await ask(s.socket, 'joinRoom', { requestId: request })).ok, true);
      }

      const started = performance.now();
      const sent = await ask(teacher.socket, 'message', { requestId: request, message: 'hola' });
      assert.equal(sent.ok, true);
      const id = sent.message._id;
      await until(() => lab.of('message').some((m) => m._id === id), 'the message on B');
      t.diagnostic(`teacher on A to lab on B: ${(performance.now() - started).toFixed(1)} ms`);
      await until(() => labElsewhere.of('message').some((m) => m._id === id), 'the message on C');

      // Lab reads on B: the teacher on A and the lab's own socket on C hear it.
      const read = await ask(lab.socket, 'readMessages', { requestId: request, messages: [id] });
      assert.deepEqual(read.messages, [id]);
      for (const s of [teacher, labElsewhere]) {
        await until(
          () => s.of('messageReads').some((r) => r.userId === '7' && r.messages[0] === id),
          'the read receipt across nodes',
        );
      }
      assert.equal(lab.of('messageReads').length, 0, 'not echoed to the socket that read');

      // And the other way: lab on B writes, the teacher on A acknowledges.
      const reply = await ask(lab.socket, 'message', { requestId: request, message: 'listo' });
      await until(() => teacher.of('message').some((m) => m._id === reply.message._id), 'reply');
      await ask(teacher.socket, 'ackMessages', {
        requestId: request,
        messages: [reply.message._id],
      });
      for (const s of [lab, labElsewhere]) {
        await until(
          () => s.of('messagesDelivered').some((r) => r.userId === '1'),
          'the delivery receipt across nodes',
        );
      }
      const history = await api(C.url, 'GET', `/api/requests/${request}/messages`);
      const [first, second] = history.body.messages;
      assert.deepEqual(
        first.readBy.map((r: any) => r.userId),
        ['7'],
      );
      assert.deepEqual(
        first.deliveredTo.map((r: any) => r.userId),
        ['7'],
      );
      assert.deepEqual(
        second.deliveredTo.map((r: any) => r.userId),
        ['1'],
      );
      // One message at a time, teacher on A to lab on B: the node hop of the request chat.
      const hops: number[] = [];
      const acks: number[] = [];
      for (let i = 0; i < 50; i++) {
        const start = performance.now();
        const arrived = new Promise<number>((resolve) =>
          lab.socket.once('message', () => resolve(performance.now())),
        );
        const acked = ask(teacher.socket, 'message', { requestId: request, message: `hop ${i}` });
        assert.equal((await acked).ok, true);
        acks.push(performance.now() - start);
        hops.push((await arrived) - start);
      }
      t.diagnostic(
        `request chat, A to B (50 messages, one at a time): ${figures(hops.sort((a, b) => a - b))}`,
      );
      t.diagnostic(
        `acknowledgement on A (stored in PostgreSQL): ${figures(acks.sort((a, b) => a - b))}`,
      );

      const exceptions = [teacher, lab, labElsewhere].flatMap((s) => s.of('exception'));
      assert.deepEqual(exceptions, []);
      for (const s of [teacher, lab, labElsewhere]) s.socket.close();
    });

    it('requestUpdated reaches every socket of a user on other nodes, and follows reads', async (t) => {
      const request = '6751b6df1ad14eaa13a0aa31';
      const owner = await userToken('21', { role: 'TEACHER' });
      assert.equal(
        (await api(A.url, 'PUT', `/api/requests/${request}`, { ownerId: 21 })).status,
        201,
      );
      // The teacher on B and C and a lab colleague on C, none of them in the room.
      const tabB = await requestSocket(B, owner);
      const tabC = await requestSocket(C, owner);
      const colleague = await requestSocket(C, await userToken('27', { role: 'LAB' }));
      const sender = await requestSocket(A, await userToken('28', { role: 'LAB' }));
      assert.equal((await ask(sender.socket, 'joinRoom', { requestId: request })).ok, true);
      const started = performance.now();
      const sent = await ask(sender.socket, 'message', { requestId: request, message: 'ready' });
      const updated = (s: Awaited<ReturnType<typeof requestSocket>>, unread: number) =>
        until(
          () => s.of('requestUpdated').some((u) => u.requestId === request && u.unread === unread),
          `requestUpdated with unread ${unread}`,
        );
      await updated(tabB, 1);
      t.diagnostic(
        `message on A to the owner's inbox on B: ${(performance.now() - started).toFixed(1)} ms`,
      );
      await updated(tabC, 1);
      await updated(colleague, 1);
      const update = tabC.of('requestUpdated').find((u) => u.requestId === request);
      assert.equal(update.lastMessage._id, sent.message._id);

      // The teacher reads on B: their socket on C hears the new count.
      assert.equal((await ask(tabB.socket, 'joinRoom', { requestId: request })).ok, true);
      await ask(tabB.socket, 'readMessages', { requestId: request, messages: [sent.message._id] });
      await updated(tabC, 0);
      const unread = await api(C.url, 'GET', '/api/users/21/unread?role=TEACHER');
      assert.deepEqual(unread.body, { total: 0, requests: [] });
      const lab = await api(B.url, 'GET', '/api/users/27/unread?role=LAB');
      assert.ok(
        lab.body.requests.some((r: any) => r.requestId === request && r.unread === 1),
        JSON.stringify(lab.body),
      );
      for (const s of [tabB, tabC, colleague, sender]) s.socket.close();
    });

    it('typing is forwarded once per interval per user and request, whichever node each tab is on', async () => {
      const request = '6751b6df1ad14eaa13a0aa32';
      const owner = await userToken('31', { role: 'TEACHER' });
      assert.equal(
        (await api(A.url, 'PUT', `/api/requests/${request}`, { ownerId: 31 })).status,
        201,
      );
      const tabA = await requestSocket(A, owner);
      const tabB = await requestSocket(B, owner);
      const lab = await requestSocket(C, await userToken('37', { role: 'LAB' }));
      for (const s of [tabA, tabB, lab]) {
        assert.equal((await ask(s.socket, 'joinRoom', { requestId: request })).ok, true);
      }
      const first = await ask(tabA.socket, 'typing', { requestId: request });
      const second = await ask(tabB.socket, 'typing', { requestId: request });
      assert.equal(first.forwarded, true);
      assert.equal(second.forwarded, false, 'the other node knew of the first');
      await until(() => lab.of('userTyping').length === 1, 'one userTyping');
      await sleep(300);
      assert.equal(lab.of('userTyping').length, 1);
      for (const s of [tabA, tabB, lab]) s.socket.close();
    });

    it('a node killed with SIGKILL loses no acknowledged message', async (t) => {
      const request = '6751b6df1ad14eaa13a0aa02';
      assert.equal(
        (await api(A.url, 'PUT', `/api/requests/${request}`, { ownerId: 1 })).status,
        201,
      );
      const doomed = await spawnServer(env);
      t.after(() => doomed.stop('SIGKILL'));
      const teacher = await requestSocket(doomed, await userToken('1', { role: 'TEACHER' }));
      const lab = await requestSocket(B, await userToken('7', { role: 'LAB' }));
      t.after(() => {
        teacher.socket.close();
        lab.socket.close();
      });
      await ask(teacher.socket, 'joinRoom', { requestId: request });
      await ask(lab.socket, 'joinRoom', { requestId: request });

      // Many sends in flight when the node dies: some acknowledged, some not.
      const acked: string[] = [];
      let i = 0;
      const pump = setInterval(() => {
        for (let k = 0; k < 5; k++) {
          teacher.socket.emit('message', { requestId: request, message: `m${i++}` }, (r: any) => {
            if (r?.ok) acked.push(r.message._id);
          });
        }
      }, 2);
      t.after(() => clearInterval(pump));
      // One request's messages commit one after another (each moves the request's
      // counters), so on a loaded machine a hundred acks may take a while.
      await until(() => acked.length >= 100, 'a hundred acknowledgements', 60_000);
      doomed.child.kill('SIGKILL');
      await doomed.stop();
      clearInterval(pump);
      const ackedBeforeDeath = [...acked];
      teacher.socket.close();

      // The teacher comes back through another node and finds every acknowledged message.
      const back = await requestSocket(A, await userToken('1', { role: 'TEACHER' }));
      await ask(back.socket, 'joinRoom', { requestId: request });
      const stored = new Set<string>();
      let before: string | undefined;
      for (;;) {
        const page = await ask(back.socket, 'loadHistory', {
          requestId: request,
          before,
          limit: 500,
        });
        assert.equal(page.ok, true);
        for (const m of page.messages) stored.add(m._id);
        if (!page.hasMore) break;
        before = page.messages[0]._id;
      }
      const missing = ackedBeforeDeath.filter((id) => !stored.has(id));
      assert.deepEqual(missing, [], 'every acknowledged message is in history');
      assert.ok(ackedBeforeDeath.length >= 100);
      t.diagnostic(
        `sent ${i}, acknowledged ${ackedBeforeDeath.length} before SIGKILL, stored ${stored.size}`,
      );
      back.socket.close();
      lab.socket.close();
    });

    it('PostgreSQL going away: messages are refused, never falsely acknowledged, until it is back', async () => {
      const request = '6751b6df1ad14eaa13a0aa03';
      assert.equal(
        (await api(A.url, 'PUT', `/api/requests/${request}`, { ownerId: 1 })).status,
        201,
      );
      const lab = await requestSocket(B, await userToken('7', { role: 'LAB' }));
      const teacher = await requestSocket(A, await userToken('1', { role: 'TEACHER' }));
      await ask(lab.socket, 'joinRoom', { requestId: request });
      await ask(teacher.socket, 'joinRoom', { requestId: request });

      await pgProxy.cut();
      const during = await ask(lab.socket, 'message', { requestId: request, message: 'lost?' });
      assert.equal(during.ok, false);
      assert.equal(during.error_code, 'internal_error');
      const ready = await fetch(`${B.url}/readyz`);
      assert.equal(ready.status, 503);
      assert.equal(((await ready.json()) as { storage?: string }).storage, 'unavailable');
      assert.equal(lab.socket.connected, true, 'the client stays connected');

      await pgProxy.start();
      await until(async () => {
        const r = await ask(lab.socket, 'message', { requestId: request, message: 'back' });
        return r.ok === true;
      }, 'a message to be stored again');
      const history = await api(A.url, 'GET', `/api/requests/${request}/messages`);
      assert.deepEqual(
        history.body.messages.map((m: any) => m.message),
        ['back'],
        'nothing of the outage was stored',
      );
      await until(() => teacher.of('message').some((m) => m.message === 'back'), 'delivery');
      assert.equal(teacher.of('message').filter((m) => m.message === 'lost?').length, 0);
      lab.socket.close();
      teacher.socket.close();
    });

    it('Redis going away: nodes report not ready, keep their clients, and recover by themselves', async (t) => {
      assert.equal((await api(A.url, 'PUT', '/api/streams/outage', {})).status, 201);
      const pA = await StreamClient.connect(ws(A), 'outage', { token: await userToken('1') });
      const onC = await StreamClient.connect(ws(C), 'outage');
      await warmUp(pA, [onC]);

      await proxy.cut();
      for (const n of nodes)
        await until(async () => !(await ready(n)), 'not ready while Redis is away');
      const health = await fetch(`${C.url}/readyz`);
      assert.equal(health.status, 503);
      assert.notEqual(((await health.json()) as { broker?: string }).broker, 'ok');
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(onC.ws.readyState, onC.ws.OPEN, 'local clients stay connected');

      const downAt = performance.now();
      await proxy.start();
      for (const n of nodes) await until(() => ready(n), 'ready again');
      const recoveredMs = performance.now() - downAt;
      t.diagnostic(`nodes ready again ${recoveredMs.toFixed(0)} ms after Redis came back`);

      // The same connections, the same processes: fan-out resumes on its own.
      let i = 0;
      await until(() => {
        if (chats(onC).some((c) => c.message.startsWith('after'))) return true;
        pA.chat(`after ${i++}`);
        return false;
      }, 'a chat from A to reach C after the outage');
      for (const n of nodes) {
        assert.equal(n.child.exitCode, null, 'no node restarted');
        assert.equal((n.output().match(/redis connection lost/g) ?? []).length, 1);
        assert.equal((n.output().match(/redis connection recovered/g) ?? []).length, 1);
      }
      pA.close();
      onC.close();
    });
  });
}
