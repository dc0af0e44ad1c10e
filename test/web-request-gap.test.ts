/**
 * The request view after an absence longer than the library's catch-up: the
 * re-join's history says `gap`, and the view shows what the library holds
 * (no hole between what was seen before and the newest), says some messages
 * are not shown, and "Load earlier messages" goes back from there.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { RequestChat } from '../src/client/index.js';
import { browserSkip, launch, openPage, unlessRefused } from './browser.js';
import { registerRequest, startServer, type TestServer, userToken } from './helpers.js';
import { TcpProxy } from './tcp-proxy.js';

const skip = browserSkip();

describe('web client: a re-join with a gap', { skip }, () => {
  let server: TestServer;
  let browser: Browser;

  before(async () => {
    server = await startServer({ REQUEST_RATE_LIMIT: '1000/1s', HISTORY_PAGE: '3' });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test('shows what is held after the gap, says so, and pages back from there', async () => {
    const id = await registerRequest(server.url);
    const proxy = new TcpProxy('127.0.0.1', Number(new URL(server.url).port));
    await proxy.start();
    const lab = await RequestChat.connect(server.url, {
      token: await userToken('7', { username: 'lab7', role: 'LAB' }),
    });
    const token = await userToken('1', { username: 'ana', role: 'TEACHER' });
    const { page, context, problems } = await openPage(
      browser,
      `http://127.0.0.1:${proxy.port}/#view=request&request=${id}&token=${token}`,
    );
    try {
      await lab.join(id);
      const view = page.locator('#request-view');
      await view.locator('.status[data-state="live"]').waitFor();
      for (const text of ['seen 0', 'seen 1']) await lab.send(id, text);
      await view.locator('.msg', { hasText: 'seen 1' }).waitFor();
      await proxy.cut();
      await view.locator('.status[data-state="offline"]').waitFor();
      // One page with the re-join and five more (catchUpPages) fetch 18 of these 25.
      for (let i = 0; i < 25; i++) await lab.send(id, `missed ${i}`);
      await proxy.start();
      await view.locator('.msg', { hasText: 'missed 24' }).waitFor({ timeout: 30_000 });
      const shown = () => page.locator('#request-view .msg[data-id] .text').allTextContents();
      const held = Array.from({ length: 18 }, (_, i) => `missed ${i + 7}`);
      assert.deepEqual(await shown(), held);
      await view
        .locator('.notice')
        .getByText(/not shown/)
        .waitFor();
      await view.locator('.older').click();
      await view.locator('.msg', { hasText: 'missed 4' }).waitFor();
      assert.deepEqual(await shown(), ['missed 4', 'missed 5', 'missed 6', ...held]);
      assert.equal(await view.locator('.older').isHidden(), false);
      assert.deepEqual(unlessRefused(problems), []);
    } finally {
      await context.close();
      lab.close();
      await proxy.stop();
    }
  });
});
