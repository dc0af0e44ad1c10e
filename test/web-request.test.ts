/**
 * The web client's request-chat view in a real browser: a teacher and a lab
 * user exchange messages, and each side's ticks turn to "read" once the other
 * has the message on screen. Hostile text stays text. When the connection
 * drops, the view (on charla/client) comes back by itself: what was missed
 * shows up in its place and what was written offline is sent, once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { newId } from '../src/core/ids.js';
import { clientLink } from '../src/dev.js';
import { browserSkip, launch, openPage, PHONE, screenshot, unlessRefused } from './browser.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';
import { TcpProxy } from './tcp-proxy.js';

const REQUEST = '6751b6df1ad14eaa13a03313';
const XSS = '<img src=x onerror=alert(1)>';

const skip = browserSkip();

async function joined(page: Page): Promise<void> {
  await page.locator('#request-view .status[data-state="live"]').waitFor();
  await page.locator('#request-view .composer input:enabled').waitFor();
}

async function send(page: Page, text: string): Promise<void> {
  const input = page.locator('#request-view .composer input');
  await input.fill(text);
  await input.press('Enter');
}

/** The conversation only: the inbox beside it previews the same texts. */
const messagesOf = (page: Page) => page.locator('#request-view .messages');

const tick = (page: Page, text: string) =>
  page.locator('#request-view .msg.mine', { hasText: text }).locator('.tick');

describe('web client: request chat', { skip }, () => {
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

  test('teacher and lab chat; ticks turn to read; text stays text', async () => {
    assert.equal(
      (await api(server.url, 'PUT', `/api/requests/${REQUEST}`, { ownerId: '1' })).status,
      201,
    );
    const teacherToken = await userToken('1', { username: 'ana', role: 'TEACHER' });
    const labToken = await userToken('2', { username: 'lab', role: 'LAB' });
    const teacher = await openPage(browser, clientLink(server.url, 'request', teacherToken));
    await joined(teacher.page);

    // Sent before the lab is there: the tick waits at "sent".
    await send(teacher.page, '¿Tienen ya los resultados de la muestra 12?');
    await tick(teacher.page, 'muestra 12')
      .and(teacher.page.locator('[data-state="sent"]'))
      .waitFor();

    // The lab opens the request: history arrives, is acked and, being on screen, read.
    const lab = await openPage(browser, clientLink(server.url, 'request', labToken), PHONE);
    await joined(lab.page);
    await messagesOf(lab.page).getByText('¿Tienen ya los resultados de la muestra 12?').waitFor();
    await tick(teacher.page, 'muestra 12')
      .and(teacher.page.locator('[data-state="read"]'))
      .waitFor();

    await send(lab.page, 'Sí, los subimos esta tarde. El pH salió en 7.2');
    await messagesOf(teacher.page).getByText('El pH salió en 7.2').waitFor();
    await tick(lab.page, 'pH salió').and(lab.page.locator('[data-state="read"]')).waitFor();

    await send(teacher.page, XSS);
    await messagesOf(lab.page).getByText(XSS, { exact: true }).waitFor();
    await send(teacher.page, '¡Gracias! Los reviso en cuanto estén.');
    await tick(teacher.page, 'Gracias').and(teacher.page.locator('[data-state="read"]')).waitFor();
    for (const p of [teacher.page, lab.page]) {
      assert.equal(await p.locator('#request-view .messages img').count(), 0);
    }
    assert.deepEqual(await lab.page.locator('#request-view .messages .text').allTextContents(), [
      '¿Tienen ya los resultados de la muestra 12?',
      'Sí, los subimos esta tarde. El pH salió en 7.2',
      XSS,
      '¡Gracias! Los reviso en cuanto estén.',
    ]);
    await screenshot(teacher.page, 'request-desktop');
    await screenshot(lab.page, 'request-phone');

    // Someone who may not be here is told so, in words.
    const stranger = await openPage(
      browser,
      clientLink(server.url, 'request', await userToken('9', { role: 'TEACHER' })),
    );
    await stranger.page.getByText('You cannot join this request').waitFor();

    for (const p of [teacher, lab, stranger]) {
      assert.deepEqual(p.problems, []);
      await p.context.close();
    }
  });

  test('a dropped connection comes back: missed messages show up, offline ones are sent once', async () => {
    const requestId = newId();
    await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' });
    const proxy = new TcpProxy('127.0.0.1', Number(new URL(server.url).port));
    await proxy.start();
    const lab = await RequestClient.connect(
      server.url,
      await userToken('2', { username: 'lab', role: 'LAB' }),
    );
    try {
      assert.equal((await lab.ask('joinRoom', { requestId })).ok, true);
      // The page talks to charla through the proxy, so the proxy can take charla away.
      const token = await userToken('1', { username: 'ana', role: 'TEACHER' });
      const teacher = await openPage(
        browser,
        `http://127.0.0.1:${proxy.port}/#view=request&request=${requestId}&token=${token}`,
      );
      const page = teacher.page;
      await joined(page);
      await send(page, 'Antes del corte');
      await lab.next('message', (m) => m.message === 'Antes del corte');

      await proxy.cut();
      await page.locator('#request-view .status[data-state="offline"]').waitFor();
      // Written while offline: it waits, pending, and the composer stays open.
      await send(page, 'Escrito sin conexión');
      await page
        .locator('#request-view .msg.mine.pending', { hasText: 'Escrito sin conexión' })
        .waitFor();
      const missed = await lab.ask('message', { requestId, message: 'Mientras no estabas' });
      assert.equal(missed.ok, true);

      await proxy.start();
      await page.locator('#request-view .status[data-state="live"]').waitFor({ timeout: 20_000 });
      await messagesOf(page).getByText('Mientras no estabas').waitFor();
      await tick(page, 'Escrito sin conexión')
        .and(page.locator(':not([data-state="pending"])'))
        .waitFor();
      await lab.next('message', (m) => m.message === 'Escrito sin conexión');
      assert.deepEqual(await messagesOf(page).locator('.text').allTextContents(), [
        'Antes del corte',
        'Mientras no estabas',
        'Escrito sin conexión',
      ]);
      assert.equal(lab.of('message').filter((m) => m.message === 'Escrito sin conexión').length, 1);
      assert.deepEqual(unlessRefused(teacher.problems), []);
      await teacher.context.close();
    } finally {
      lab.close();
      await proxy.stop();
    }
  });
});
