/**
 * The request view in a real browser, where timing matters: a "sending too
 * fast" notice counts down and goes once the wait is over, attachments in a
 * history that arrives before `/client-config.json` still become links, and
 * Edit and Delete are offered only within the edit window.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { browserSkip, launch, openPage } from './browser.js';
import { registerRequest, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';

const skip = browserSkip();
const ANA = { username: 'ana', role: 'TEACHER' };

/** Request `id`'s view, opened by its owner (user 1, "ana") and live, with its composer. */
async function openOwnRequest(browser: Browser, url: string, id: string) {
  const token = await userToken('1', ANA);
  const opened = await openPage(browser, `${url}/#view=request&request=${id}&token=${token}`);
  await opened.page.locator('#request-view .status[data-state="live"]').waitFor();
  return { ...opened, input: opened.page.locator('#request-view .composer input') };
}
const PREFIX = 'https://files.example.com/';

describe('web client: request view notices and attachments', { skip }, () => {
  let server: TestServer;
  let browser: Browser;
  const clients: RequestClient[] = [];

  before(async () => {
    server = await startServer({ ATTACHMENT_URL_PREFIXES: PREFIX, REQUEST_RATE_LIMIT: '3/4s' });
    browser = await launch();
  });
  after(async () => {
    for (const c of clients) c.close();
    await browser?.close();
    await server?.close();
  });

  test('the "sending too fast" notice counts down and goes once the messages leave', async () => {
    const id = await registerRequest(server.url);
    const { page, context, problems, input } = await openOwnRequest(browser, server.url, id);
    for (let i = 1; i <= 5; i++) {
      await input.fill(`mensaje ${i}`);
      await input.press('Enter');
    }
    const notice = page.locator('#request-view .notice');
    await notice.getByText(/sending too fast/).waitFor();
    const first = await notice.textContent();
    // All five are stored once the library has retried them after the wait.
    await page.locator('#request-view .msg.mine .tick[data-state="sent"]').nth(4).waitFor();
    // The wait is over: the notice does not go on saying how long to wait.
    await notice.waitFor({ state: 'hidden', timeout: 3_000 });
    assert.match(String(first), /\d+ s/);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('a message still being sent has no Edit or Delete; once stored it has both', async () => {
    const id = await registerRequest(server.url);
    const { page, context, problems, input } = await openOwnRequest(browser, server.url, id);
    for (let i = 1; i <= 5; i++) {
      await input.fill(`espera ${i}`);
      await input.press('Enter');
    }
    // The fifth waits out the rate limit: it has no id the server knows yet.
    const waiting = page.locator('#request-view .msg.mine', { hasText: 'espera 5' });
    await waiting.locator('.tick[data-state="pending"]').waitFor();
    assert.equal(await waiting.locator('button').count(), 0);
    await waiting.locator('.tick[data-state="sent"]').waitFor();
    await waiting.getByRole('button', { name: 'Delete' }).waitFor();
    await waiting.getByRole('button', { name: 'Edit' }).click();
    assert.equal(await input.inputValue(), 'espera 5');
    await page.locator('#request-view .editing').waitFor();
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('attachments in a history that arrives before the client configuration are links', async () => {
    const id = await registerRequest(server.url);
    const lab = await RequestClient.connect(
      server.url,
      await userToken('2', { username: 'lab', role: 'LAB' }),
    );
    clients.push(lab);
    await lab.ask('joinRoom', { requestId: id });
    const sent = await lab.ask('message', {
      requestId: id,
      message: 'Informe',
      attachments: [
        { url: `${PREFIX}report.pdf`, name: 'report.pdf', contentType: 'application/pdf', size: 9 },
      ],
    });
    assert.equal(sent.ok, true, JSON.stringify(sent));

    const token = await userToken('1', ANA);
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(10_000);
    // A slow network: the configuration arrives well after the history could.
    let answered = false;
    await page.route('**/client-config.json', async (route) => {
      await new Promise((r) => setTimeout(r, 1_500));
      answered = true;
      await route.continue();
    });
    await page.goto(`${server.url}/#view=request&request=${id}&token=${token}`);
    const link = page.locator('#request-view .attachments a', { hasText: 'report.pdf' });
    await link.waitFor();
    assert.equal(answered, true);
    assert.equal(await link.getAttribute('href'), `${PREFIX}report.pdf`);
    assert.equal(await page.locator('#request-view .attachments .blocked').count(), 0);
    await context.close();
  });
  test('a configuration that never comes does not keep the view from connecting', async () => {
    const id = await registerRequest(server.url);
    const token = await userToken('1', ANA);
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.route('**/client-config.json', () => {});
    await page.goto(`${server.url}/#view=request&request=${id}&token=${token}`);
    await page.locator('#request-view .status[data-state="live"]').waitFor({ timeout: 9_000 });
    await context.close();
  });
});

describe('web client: an edit the server refuses', { skip }, () => {
  let server: TestServer;
  let browser: Browser;

  before(async () => {
    server = await startServer({ REQUEST_EDIT_WINDOW_SECONDS: '2' });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test('keeps the new text in the box, to send as a new message', async () => {
    const id = await registerRequest(server.url);
    const { page, context, problems, input } = await openOwnRequest(browser, server.url, id);
    await input.fill('El pH es 7');
    await input.press('Enter');
    const mine = page.locator('#request-view .msg.mine', { hasText: 'El pH es 7' });
    await mine.locator('.tick[data-state="sent"]').waitFor();
    await mine.getByRole('button', { name: 'Edit' }).click();
    // The edit window (2 s) passes while the correction is being written.
    await new Promise((r) => setTimeout(r, 2_500));
    await input.fill('El pH es 7.2, medido dos veces');
    await input.press('Enter');
    await page.locator('#request-view .notice', { hasText: 'can no longer be changed' }).waitFor();
    assert.equal(await input.inputValue(), 'El pH es 7.2, medido dos veces');
    // Not an edit any more: Enter sends it as a message of its own.
    assert.equal(await page.locator('#request-view .editing').isHidden(), true);
    await input.press('Enter');
    await page
      .locator('#request-view .msg.mine', { hasText: 'medido dos veces' })
      .locator('.tick[data-state="sent"]')
      .waitFor();
    assert.equal(await mine.first().locator('.text').textContent(), 'El pH es 7');
    assert.deepEqual(problems, []);
    await context.close();
  });
});

describe('web client: Edit and Delete only within the edit window', { skip }, () => {
  const WINDOW_MS = 3_000;
  let server: TestServer;
  let browser: Browser;
  const clients: RequestClient[] = [];

  before(async () => {
    server = await startServer({ REQUEST_EDIT_WINDOW_SECONDS: String(WINDOW_MS / 1000) });
    browser = await launch();
  });
  after(async () => {
    for (const c of clients) c.close();
    await browser?.close();
    await server?.close();
  });

  test('a message just sent has Edit and Delete, and loses them once the window passes', async () => {
    const id = await registerRequest(server.url);
    const { page, context, problems, input } = await openOwnRequest(browser, server.url, id);
    await input.fill('Muestra 12 lista');
    const sentAt = Date.now();
    await input.press('Enter');
    const mine = page.locator('#request-view .msg.mine', { hasText: 'Muestra 12 lista' });
    await mine.locator('.tick[data-state="sent"]').waitFor();
    await mine.getByRole('button', { name: 'Edit' }).waitFor();
    await mine.getByRole('button', { name: 'Delete' }).waitFor();
    // Within a second of the window's end, both are gone.
    await mine.locator('.actions').waitFor({ state: 'detached', timeout: WINDOW_MS + 2_000 });
    assert.ok(Date.now() - sentAt >= WINDOW_MS - 500, 'not before the window has passed');
    assert.equal(await mine.locator('button').count(), 0);
    assert.equal(await mine.locator('.text').textContent(), 'Muestra 12 lista');
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("a browser whose clock is 20 minutes ahead still offers them, by the server's clock", async () => {
    const id = await registerRequest(server.url);
    const token = await userToken('1', ANA);
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(10_000);
    const problems: string[] = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    await page.clock.install({ time: Date.now() + 20 * 60_000 });
    await page.goto(`${server.url}/#view=request&request=${id}&token=${token}`);
    await page.locator('#request-view .status[data-state="live"]').waitFor();
    const input = page.locator('#request-view .composer input');
    await input.fill('Con el reloj adelantado');
    await input.press('Enter');
    const mine = page.locator('#request-view .msg.mine', { hasText: 'Con el reloj adelantado' });
    await mine.locator('.tick[data-state="sent"]').waitFor();
    assert.equal(await mine.getByRole('button', { name: 'Edit' }).count(), 1);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('a message from the history older than the window has neither', async () => {
    const id = await registerRequest(server.url);
    const token = await userToken('1', ANA);
    const ana = await RequestClient.connect(server.url, token);
    clients.push(ana);
    await ana.ask('joinRoom', { requestId: id });
    const sent = await ana.ask('message', { requestId: id, message: 'Resultado de ayer' });
    assert.equal(sent.ok, true, JSON.stringify(sent));
    await new Promise((r) => setTimeout(r, WINDOW_MS + 500));

    const { page, context, problems } = await openPage(
      browser,
      `${server.url}/#view=request&request=${id}&token=${token}`,
    );
    await page.locator('#request-view .status[data-state="live"]').waitFor();
    const old = page.locator('#request-view .msg.mine', { hasText: 'Resultado de ayer' });
    await old.locator('.tick').waitFor();
    assert.equal(await old.locator('.actions').count(), 0);
    assert.equal(await old.locator('button').count(), 0);
    // A message sent now, in the same view, still has both.
    const input = page.locator('#request-view .composer input');
    await input.fill('Resultado de hoy');
    await input.press('Enter');
    const fresh = page.locator('#request-view .msg.mine', { hasText: 'Resultado de hoy' });
    await fresh.getByRole('button', { name: 'Delete' }).waitFor();
    assert.equal(await old.locator('button').count(), 0);
    assert.deepEqual(problems, []);
    await context.close();
  });
});
