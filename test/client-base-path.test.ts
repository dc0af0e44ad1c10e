/**
 * charla behind a reverse proxy that serves it under a path (`/chat/`): both
 * clients of charla/client take the same base URL, `http://host/chat`, and
 * reach charla's endpoints under it, as the stream chat always did.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { RequestChat, StreamChat } from '../src/client/index.js';
import { newId } from '../src/core/ids.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';

const PREFIX = '/chat';

/** Forwards WebSocket upgrades under PREFIX to charla, without the prefix; anything else is 404. */
function prefixProxy(target: number): Server {
  const sockets = new Set<Socket>();
  const proxy = createServer((_req, res) => res.writeHead(404).end());
  proxy.on('upgrade', (req, socket: Socket, head: Buffer) => {
    const url = req.url ?? '';
    if (!url.startsWith(`${PREFIX}/`)) {
      socket.destroy();
      return;
    }
    const upstream = connect(target, '127.0.0.1', () => {
      const lines = [`${req.method} ${url.slice(PREFIX.length)} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      }
      upstream.write(`${lines.join('\r\n')}\r\n\r\n`);
      upstream.write(head);
      socket.pipe(upstream).pipe(socket);
    });
    for (const s of [socket, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        socket.destroy();
        upstream.destroy();
      });
    }
  });
  proxy.on('close', () => {
    for (const s of sockets) s.destroy();
  });
  return proxy;
}

describe('charla/client under a path prefix', () => {
  let server: TestServer;
  let proxy: Server;
  let base: string;

  before(async () => {
    server = await startServer();
    proxy = prefixProxy(Number(new URL(server.url).port));
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}${PREFIX}`;
  });
  after(async () => {
    await new Promise((r) => proxy?.close(r));
    proxy?.closeAllConnections();
    await server?.close();
  });

  it('StreamChat and RequestChat both reach charla through the same base URL', async () => {
    const key = 'prefixed';
    assert.equal((await api(server.url, 'PUT', `/api/streams/${key}`, {})).status, 201);
    const requestId = newId();
    assert.equal(
      (await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' })).status,
      201,
    );
    const token = await userToken('1', { username: 'ana', role: 'TEACHER' });

    const stream = StreamChat.connect(base, key, { token, WebSocket, reconnect: false });
    await stream.ready();
    assert.equal(stream.authenticated, true);
    stream.close();

    const chat = await RequestChat.connect(base, { token, reconnect: { maxAttempts: 1 } });
    try {
      await chat.join(requestId);
      const sent = await chat.send(requestId, 'hola');
      assert.equal(sent.message, 'hola');
    } finally {
      chat.close();
    }
  });
});
