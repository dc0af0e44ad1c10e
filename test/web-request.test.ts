/**
 * The web client's request-chat view in a real browser: a teacher and a lab
 * user exchange messages, and each side's ticks turn to "read" once the other
 * has the message on screen. Hostile text stays text.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { clientLink } from '../src/dev.js';
import { browserSkip, launch, openPage, PHONE, screenshot } from './browser.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';

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
});
