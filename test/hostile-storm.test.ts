/**
 * A node's restart, as its clients see it: thousands of Socket.IO clients
 * connecting at once. In a file of its own: its 2,500 clients keep a test
 * process busy for a while after they close.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { io } from 'socket.io-client';
import { userToken } from './helpers.js';
import { eventually, startWatched, type WatchedServer } from './hostile.js';

const LAB = { username: 'lab', role: 'LAB' };

describe('a reconnect storm with the default HANDSHAKES_PENDING_MAX', () => {
  let server: WatchedServer;

  before(async () => {
    server = await startWatched();
  });
  after(() => server.close());

  test('2,500 clients connecting at once over long-polling all get in', async () => {
    // The bound is for floods of handshakes that never join: every client of
    // a node's restart reconnects at once, and their handshakes pile up while
    // the node works through them. Refused, each would wait out its backoff.
    const baseline = server.fds();
    const token = await userToken('7', LAB);
    const clients = Array.from({ length: 2_500 }, () =>
      io(server.url, {
        auth: { token },
        transports: ['polling'],
        reconnection: false,
        forceNew: true,
        timeout: 30_000,
      }),
    );
    try {
      const refused = await Promise.all(
        clients.map(
          (c) =>
            new Promise<string | undefined>((resolve) => {
              c.once('connect', () => resolve(undefined));
              c.once('connect_error', (e) => resolve(e.message));
            }),
        ),
      );
      const failed = refused.filter((r) => r !== undefined);
      assert.equal(failed.length, 0, `${failed.length} refused: ${[...new Set(failed)]}`);
    } finally {
      for (const c of clients) c.close();
    }
    // Every client's connection is let go once it closes.
    await eventually('the clients let go', () => server.fds() <= baseline + 20, 15_000);
  });
});
