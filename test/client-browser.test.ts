/**
 * charla/client in a real browser (Debian's chromium through playwright-core):
 * the built ES modules are loaded as they are, with no bundler, and talk to a
 * real charla with the browser's own WebSocket and Socket.IO's browser build.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Browser } from 'playwright-core';
import { WebSocket } from 'ws';
import { RequestChat, type RequestMessage, StreamChat } from '../src/client/index.js';
import { newId } from '../src/core/ids.js';
import { browserSkip, launch, openPage } from './browser.js';
import { Recorder, until } from './client-helpers.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';

const skip = browserSkip();

const CLIENT_DIR = new URL('../src/client/', import.meta.url);
const SOCKET_IO_ESM = new URL(
  '../../node_modules/socket.io/client-dist/socket.io.esm.min.js',
  import.meta.url,
);

/** Serves the built client modules and Socket.IO's browser build from another origin than charla's. */
async function staticOrigin(): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const path = req.url ?? '/';
    if (path === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    let body: Buffer | string = '<!doctype html><title>charla client</title>';
    let type = 'text/html';
    const m = /^\/client\/([a-z-]+\.js)$/.exec(path);
    try {
      if (m) {
        body = readFileSync(new URL(m[1] as string, CLIENT_DIR));
        type = 'text/javascript';
      } else if (path === '/socket.io.esm.min.js') {
        body = readFileSync(SOCKET_IO_ESM);
        type = 'text/javascript';
      } else if (path !== '/') {
        res.writeHead(404).end();
        return;
      }
    } catch {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': type }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

describe('charla/client in a browser', { skip }, () => {
  let charla: TestServer;
  let origin: { url: string; server: Server };
  let browser: Browser;

  before(async () => {
    charla = await startServer({ STREAM_RATE_LIMIT: '1000/1s', REQUEST_RATE_LIMIT: '1000/1s' });
    origin = await staticOrigin();
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await new Promise((r) => origin?.server.close(r));
    await charla?.close();
  });

  it('StreamChat runs on the browser WebSocket: sends and receives', async () => {
    await api(charla.url, 'PUT', '/api/streams/web', {});
    const node = new Recorder(
      StreamChat.connect(charla.url, 'web', {
        WebSocket,
        token: await userToken('1', { username: 'ana' }),
      }),
    );
    const { page, problems } = await openPage(browser, origin.url);
    try {
      await node.chat.ready();
      const token = await userToken('2', { username: 'bea' });
      await page.evaluate(
        async ({ server, token }) => {
          const entry = '/client/index.js';
          const { StreamChat } = await import(entry);
          const g = globalThis as any;
          g.got = [];
          g.chat = StreamChat.connect(server, 'web', { token });
          g.chat.on('chat', (m: any) => g.got.push(m.message));
          await g.chat.ready();
          g.chat.send('from the browser');
        },
        { server: charla.url, token },
      );
      await until(() => node.texts().includes('from the browser'), 'the browser chat');
      node.chat.send('to the browser');
      await page.waitForFunction(() => (globalThis as any).got.includes('to the browser'));
      const got = await page.evaluate(() => (globalThis as any).got);
      assert.deepEqual(got, ['from the browser', 'to the browser']);
      assert.equal(node.chats.find((m) => m.message === 'from the browser')?.user, 'bea');
      await page.evaluate(() => (globalThis as any).chat.close());
      assert.deepEqual(problems, []);
    } finally {
      node.chat.close();
      await page.close();
    }
  });

  it("RequestChat runs on Socket.IO's browser build passed as io", async () => {
    const requestId = newId();
    await api(charla.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 });
    const lab = await RequestChat.connect(charla.url, {
      token: await userToken('7', { role: 'LAB' }),
    });
    const atLab: RequestMessage[] = [];
    lab.on('message', (m) => atLab.push(m));
    await lab.join(requestId);
    const { page, problems } = await openPage(browser, origin.url);
    try {
      const token = await userToken('1', { username: 'ana', role: 'TEACHER' });
      const sent = await page.evaluate(
        async ({ server, token, requestId }) => {
          const entry = '/client/index.js';
          const sio = '/socket.io.esm.min.js';
          const { RequestChat } = await import(entry);
          const { io } = await import(sio);
          const g = globalThis as any;
          g.got = [];
          g.chat = await RequestChat.connect(server, { token, io });
          g.chat.on('message', (m: any) => g.got.push(m.message));
          await g.chat.join(requestId);
          const m = await g.chat.send(requestId, 'hola from the browser');
          return m._id as string;
        },
        { server: charla.url, token, requestId },
      );
      await until(() => atLab.some((m) => m._id === sent), 'the browser message at the lab');
      await lab.send(requestId, 'hola back');
      await page.waitForFunction(() => (globalThis as any).got.includes('hola back'));
      await page.evaluate(() => (globalThis as any).chat.close());
      assert.deepEqual(problems, []);
    } finally {
      lab.close();
      await page.close();
    }
  });
});
