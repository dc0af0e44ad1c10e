/**
 * Closing a node whose Redis answers, stalls (accepts connections and answers
 * nothing) or is gone: the close ends in bounded time and leaves no promise
 * rejected without a handler, which would end a process run with Node's
 * default `--unhandled-rejections=throw`. A real Redis behind a TCP proxy,
 * real socket.io-client and `ws` clients, a real SQLite file.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { newId } from '../src/core/ids.js';
import {
  API_KEY,
  api,
  joinStream,
  postInOrder,
  SECRET,
  sleep,
  spawnServer,
  startServer,
  type TestServer,
  tempDir,
  until,
  userToken,
} from './helpers.js';
import { RequestClient } from './request-client.js';
import { REDIS_URL, requireServices, tempRedisPrefix } from './services.js';
import { TcpProxy } from './tcp-proxy.js';

/** protocol section 1 allows 10 s for the whole process; the node's own close takes far less. */
const CLOSE_BOUND_MS = 5_000;
/**
 * How long after the close a late rejection is still waited for: ioredis
 * destroys a connection that does not close when asked after 2 s (its
 * `disconnectTimeout`), and only then fails the commands it still held.
 */
const AFTER_CLOSE_MS = 2_500;

const ready = async (s: TestServer) => (await fetch(`${s.url}/readyz`)).status === 200;

/** A node on Redis through `proxy`, with a request room and a stream that have each had a chat. */
async function busyNode(proxy: TcpProxy) {
  const server = await startServer({
    REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
    REDIS_PREFIX: tempRedisPrefix(),
    // The history of a join made while Redis stalls waits for it no longer than this.
    STREAM_HISTORY_SETTLE_MS: '300',
  });
  await until(() => ready(server), 'the node to reach Redis');
  const requestId = newId();
  assert.equal(
    (await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' })).status,
    201,
  );
  const teacher = await RequestClient.connect(
    server.url,
    await userToken('1', { role: 'TEACHER' }),
  );
  assert.deepEqual(await teacher.ask('joinRoom', { requestId }), { ok: true, requestId });
  assert.equal((await teacher.ask('message', { requestId, message: 'hola' })).ok, true);
  const key = `shutdown-${newId()}`;
  assert.equal((await api(server.url, 'PUT', `/api/streams/${key}`, { ownerId: '1' })).status, 201);
  const viewer = await joinStream(server.wsUrl, key, '2');
  await postInOrder(viewer.c, ['hola']);
  const clients: Array<{ close(): void }> = [teacher, viewer.c];
  return { server, teacher, viewer: viewer.c, requestId, clients };
}

/**
 * Closes the node and resolves with how long it took and every rejection
 * left unhandled from the close until AFTER_CLOSE_MS after it.
 */
async function closeWatched(server: TestServer): Promise<{ ms: number; unhandled: unknown[] }> {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  try {
    const started = Date.now();
    const closed = await Promise.race([
      server.close().then(() => true),
      sleep(CLOSE_BOUND_MS).then(() => false),
    ]);
    const ms = Date.now() - started;
    assert.ok(closed, `the node is still closing after ${CLOSE_BOUND_MS} ms`);
    await sleep(AFTER_CLOSE_MS);
    return { ms, unhandled };
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
}

const described = (unhandled: unknown[]) =>
  unhandled.map((r) => (r instanceof Error ? r.message : String(r))).join('; ');

if (await requireServices('redis')) {
  describe('closing a node on Redis', () => {
    const port = Number(new URL(REDIS_URL).port || 6379);

    /** Closes what a test left open, if its assertions stopped it first. */
    const cleanUp = async (
      node: Awaited<ReturnType<typeof busyNode>> | undefined,
      proxy: TcpProxy,
    ) => {
      for (const c of node?.clients ?? []) c.close();
      if (node) await Promise.race([node.server.close(), sleep(CLOSE_BOUND_MS)]);
      proxy.release();
      proxy.resume('service');
      await proxy.stop();
    };

    it('closes promptly and cleanly while Redis answers', async (t) => {
      const proxy = new TcpProxy('127.0.0.1', port);
      await proxy.start();
      let node: Awaited<ReturnType<typeof busyNode>> | undefined;
      try {
        node = await busyNode(proxy);
        const { ms, unhandled } = await closeWatched(node.server);
        t.diagnostic(`closed in ${ms} ms`);
        assert.deepEqual(unhandled, [], described(unhandled));
      } finally {
        await cleanUp(node, proxy);
      }
    });

    for (const outage of ['stops answering', 'stalls', 'is gone'] as const) {
      it(`closes within ${CLOSE_BOUND_MS} ms, no rejection left unhandled, while Redis ${outage}`, async (t) => {
        const proxy = new TcpProxy('127.0.0.1', port);
        await proxy.start();
        let node: Awaited<ReturnType<typeof busyNode>> | undefined;
        try {
          node = await busyNode(proxy);
          const { server, teacher, viewer, requestId } = node;
          if (outage === 'stops answering') {
            // The connections stay open and nothing comes back on them.
            proxy.pause('service');
          } else {
            // The open connections drop; the node's reconnects get no answer, or are refused.
            if (outage === 'stalls') proxy.hold();
            await proxy.cut();
            if (outage === 'stalls') await proxy.start();
          }
          await until(async () => !(await ready(server)), 'the node to see Redis away');
          // Work that reaches Redis while it is away: a room broadcast, a stream
          // chat (dropped, as the broker drops what is published meanwhile), a new stream's join.
          assert.equal((await teacher.ask('message', { requestId, message: 'away' })).ok, true);
          viewer.chat('away');
          const key = `shutdown-${newId()}`;
          assert.equal(
            (await api(server.url, 'PUT', `/api/streams/${key}`, { ownerId: '1' })).status,
            201,
          );
          node.clients.push((await joinStream(server.wsUrl, key, '3')).c);

          const { ms, unhandled } = await closeWatched(server);
          t.diagnostic(`closed in ${ms} ms`);
          assert.deepEqual(unhandled, [], described(unhandled));
        } finally {
          await cleanUp(node, proxy);
        }
      });
    }

    it('SIGTERM with Redis not answering: the process exits 0, in the time section 1 allows', async () => {
      const proxy = new TcpProxy('127.0.0.1', port);
      await proxy.start();
      const dir = tempDir();
      const node = await spawnServer({
        DATABASE_URL: `sqlite:${join(dir, 'charla.db')}`,
        JWT_SECRET: SECRET,
        API_KEY,
        REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
        REDIS_PREFIX: tempRedisPrefix(),
      });
      let teacher: RequestClient | undefined;
      try {
        await until(async () => (await fetch(`${node.url}/readyz`)).status === 200, 'Redis');
        const requestId = newId();
        await api(node.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' });
        teacher = await RequestClient.connect(node.url, await userToken('1', { role: 'TEACHER' }));
        await teacher.ask('joinRoom', { requestId });
        proxy.pause('service');
        assert.equal((await teacher.ask('message', { requestId, message: 'away' })).ok, true);
        const started = Date.now();
        const code = await node.stop('SIGTERM');
        const ms = Date.now() - started;
        assert.equal(code, 0, node.output());
        assert.ok(ms < CLOSE_BOUND_MS, `exited after ${ms} ms`);
      } finally {
        teacher?.close();
        await node.stop('SIGKILL');
        proxy.resume('service');
        await proxy.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
