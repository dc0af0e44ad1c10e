/**
 * The web client under a busy conversation: the request view keeps a bounded
 * number of bubbles (the oldest go, "Load earlier messages" brings them back),
 * and the stream view draws a burst of chats with one layout per frame, not
 * one per chat.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { newId } from '../src/core/ids.js';
import { browserSkip, launch, openPage } from './browser.js';
import { api, StreamClient, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';

const skip = browserSkip();
/** What each view keeps on the page (web/conversation.js, web/stream.js). */
const KEEP = 500;

const bubbles = (page: Page) => page.locator('#request-view .messages > li');

/** Waits for `n` rows in `selector` by reading the DOM only: no layout of its own. */
async function rows(page: Page, selector: string, n: number): Promise<void> {
  // A function, not a string: a string predicate is eval'd in the page, which
  // the page's CSP (no 'unsafe-eval') refuses once the first check is false.
  await page.waitForFunction(
    ([sel, count]) => (globalThis as any).document.querySelectorAll(sel).length >= count,
    [selector, n] as const,
    { polling: 100, timeout: 30_000 },
  );
}

describe('web client: bounded under a busy conversation', { skip }, () => {
  let server: TestServer;
  let browser: Browser;

  before(async () => {
    server = await startServer({
      REQUEST_RATE_LIMIT: '100000/30s',
      STREAM_RATE_LIMIT: '100000/30s',
      FLOOD_LIMIT: '100000',
    });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test('the request view keeps 500 bubbles; "Load earlier messages" pages the rest back', async () => {
    const requestId = newId();
    await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' });
    const token = await userToken('1', { username: 'ana', role: 'TEACHER' });
    const { page, context, problems } = await openPage(
      browser,
      `${server.url}/#view=request&request=${requestId}&token=${token}`,
    );
    await page.locator('#request-view .composer input:enabled').waitFor();
    const lab = await RequestClient.connect(
      server.url,
      await userToken('2', { username: 'lab', role: 'LAB' }),
    );
    try {
      assert.equal((await lab.ask('joinRoom', { requestId })).ok, true);
      const total = KEEP + 120;
      for (let i = 0; i < total; i += 40) {
        const asks = [];
        for (let j = i; j < Math.min(total, i + 40); j++) {
          asks.push(lab.ask('message', { requestId, message: `muestra ${j}` }));
        }
        for (const answer of await Promise.all(asks)) assert.equal(answer.ok, true);
      }
      await page
        .locator('#request-view .messages .text', { hasText: `muestra ${total - 1}` })
        .waitFor();
      // The newest 500 stay; the 120 oldest left the page, and the button to page back shows.
      assert.equal(await bubbles(page).count(), KEEP);
      assert.equal(await bubbles(page).first().locator('.text').textContent(), 'muestra 120');
      // The first bubble left shows its sender's name, as the start of a run does.
      assert.equal(await bubbles(page).first().locator('.name').isVisible(), true);
      const older = page.locator('#request-view .older');
      await older.waitFor();

      // A page of earlier messages (HISTORY_PAGE, 100) comes back before them, whole.
      await older.click();
      await page.locator('#request-view .messages .text', { hasText: 'muestra 119' }).waitFor();
      assert.equal(await bubbles(page).count(), KEEP + 100);
      assert.equal(await bubbles(page).first().locator('.text').textContent(), 'muestra 20');
      assert.equal(await older.isVisible(), true);

      // The next arrival trims back to the bound, oldest first.
      assert.equal((await lab.ask('message', { requestId, message: 'muestra nueva' })).ok, true);
      await page.locator('#request-view .messages .text', { hasText: 'muestra nueva' }).waitFor();
      assert.equal(await bubbles(page).count(), KEEP);
      assert.equal(await bubbles(page).first().locator('.text').textContent(), 'muestra 121');
      assert.deepEqual(problems, []);
    } finally {
      lab.socket.close();
      await context.close();
    }
  });

  test('the stream view draws a burst of chats with one layout per frame, not one per chat', async () => {
    await api(server.url, 'PUT', '/api/streams/burst', { title: 'Burst' });
    const { page, context, problems } = await openPage(
      browser,
      `${server.url}/#view=stream&stream=burst`,
    );
    await page.locator('#stream-view .status[data-state="live"]').waitFor();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Performance.enable');
    const layouts = async () => {
      const { metrics } = await cdp.send('Performance.getMetrics');
      return metrics.find((m) => m.name === 'LayoutCount')?.value ?? 0;
    };
    const sender = await StreamClient.connect(server.wsUrl, 'burst', {
      token: await userToken('7', { username: 'bea' }),
    });
    try {
      await sender.next('history');
      const before = await layouts();
      const burst = 300;
      for (let i = 0; i < burst; i++) sender.chat(`chat ${i}`);
      await rows(page, '#stream-view .messages > li.msg', burst);
      const drawn = (await layouts()) - before;
      // Before, every chat measured the scroll and scrolled: a layout each, 300 and more.
      assert.ok(drawn < burst / 5, `${drawn} layouts for ${burst} chats`);
      // All of them, in order, and the list followed the newest.
      const texts = await page.locator('#stream-view .messages .text').allTextContents();
      assert.deepEqual(
        texts,
        Array.from({ length: burst }, (_, i) => `chat ${i}`),
      );
      const scroller = page.locator('#stream-view .scroller');
      assert.equal(
        await scroller.evaluate((s: any) => s.scrollHeight - s.scrollTop - s.clientHeight < 48),
        true,
      );
      assert.deepEqual(problems, []);
    } finally {
      sender.close();
      await context.close();
    }
  });
});
