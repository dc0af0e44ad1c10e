/**
 * The request view while charla is out of reach: a message written in one
 * request and still waiting (◷) is sent once charla is back, even when the
 * person has meanwhile opened another request from the inbox; and coming back
 * to the first request shows it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { newId } from '../src/core/ids.js';
import { browserSkip, launch, openPage, unlessRefused } from './browser.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';
import { TcpProxy } from './tcp-proxy.js';

const skip = browserSkip();

describe('web client: switching requests while offline', { skip }, () => {
  let server: TestServer;
  let browser: Browser;

  before(async () => {
    server = await startServer();
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test('a message waiting in one request is sent once, after another request was opened', async () => {
    const [first, second] = [newId(), newId()];
    for (const id of [first, second]) {
      assert.equal(
        (await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId: '1' })).status,
        201,
      );
    }
    const proxy = new TcpProxy('127.0.0.1', Number(new URL(server.url).port));
    await proxy.start();
    try {
      const token = await userToken('1', { username: 'ana', role: 'TEACHER' });
      const { page, context, problems } = await openPage(
        browser,
        `http://127.0.0.1:${proxy.port}/#view=request&request=${first}&token=${token}`,
      );
      await page.locator('#request-view .status[data-state="live"]').waitFor();
      await page.locator(`#request-view .inbox-list li[data-request-id="${second}"]`).waitFor();

      await proxy.cut();
      await page.locator('#request-view .status[data-state="offline"]').waitFor();
      const input = page.locator('#request-view .composer input');
      await input.fill('Escrito sin conexión');
      await input.press('Enter');
      await page
        .locator('#request-view .msg.mine.pending', { hasText: 'Escrito sin conexión' })
        .waitFor();
      // Another request, from the inbox, before charla is back.
      await page
        .locator(`#request-view .inbox-list li[data-request-id="${second}"] button`)
        .click();
      await page
        .locator('#request-view .who-value.mono')
        .and(page.locator(`[title="${second}"]`))
        .waitFor();

      await proxy.start();
      await page.locator('#request-view .status[data-state="live"]').waitFor({ timeout: 20_000 });
      const stored = async () => {
        const r = await api(server.url, 'GET', `/api/requests/${first}/messages`);
        return (r.body as { messages: Array<{ message: string }> }).messages.map((m) => m.message);
      };
      const deadline = Date.now() + 10_000;
      while ((await stored()).length === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.deepEqual(await stored(), ['Escrito sin conexión']);

      // Back in the first request, the message is there, sent.
      await page.locator(`#request-view .inbox-list li[data-request-id="${first}"] button`).click();
      await page
        .locator('#request-view .msg.mine', { hasText: 'Escrito sin conexión' })
        .locator('.tick[data-state="sent"]')
        .waitFor();
      await page.locator('#request-view .composer input:enabled').waitFor();
      assert.deepEqual(unlessRefused(problems), []);
      await context.close();
    } finally {
      await proxy.stop();
    }
  });
});
