/**
 * The web client's live-stream view in a real browser: two people chat on one
 * stream, hostile text stays text, errors reach the person, and a dropped
 * connection comes back by itself.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { browserSkip, DESKTOP, launch, openPage, PHONE, screenshot } from './browser.js';
import { api, StreamClient, startServer, type TestServer, userToken } from './helpers.js';

const skip = browserSkip();
const XSS = '<img src=x onerror=alert(1)>';

function streamUrl(base: string, key: string, token?: string): string {
  return `${base}/#view=stream&stream=${key}${token ? `&token=${token}` : ''}`;
}

async function post(page: Page, text: string): Promise<void> {
  const input = page.locator('#stream-view .composer input');
  await input.fill(text);
  await input.press('Enter');
}

const texts = (page: Page) => page.locator('#stream-view .messages .text').allTextContents();

async function live(page: Page, signedIn: boolean): Promise<void> {
  await page.locator('#stream-view .status[data-state="live"]').waitFor();
  if (signedIn) await page.locator('#stream-view .composer input:enabled').waitFor();
}

describe('web client: live stream', { skip }, () => {
  let server: TestServer;
  let browser: Browser;

  before(async () => {
    server = await startServer({ STREAM_RATE_LIMIT: '5/30s' });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
    // A server restarted on the same storage keeps its directory: it goes here.
    if (server) rmSync(server.dir, { recursive: true, force: true });
  });

  test('two people see each other, hostile text stays text, errors are shown', async () => {
    await api(server.url, 'PUT', '/api/streams/algebra', { title: 'Algebra' });
    const ana = await openPage(
      browser,
      streamUrl(server.url, 'algebra', await userToken('1', { username: 'ana' })),
    );
    const bea = await openPage(
      browser,
      streamUrl(server.url, 'algebra', await userToken('2', { username: 'bea' })),
    );
    const watcher = await openPage(browser, streamUrl(server.url, 'algebra'), PHONE);
    await Promise.all([live(ana.page, true), live(bea.page, true), live(watcher.page, false)]);
    assert.equal(await watcher.page.locator('#stream-view .composer input').isDisabled(), true);
    // The token left the address bar as soon as it was read.
    assert.doesNotMatch(ana.page.url(), /token=/);

    await post(ana.page, 'Hola! Does everyone see the board?');
    await bea.page.getByText('Hola! Does everyone see the board?').waitFor();
    await post(bea.page, 'Sí, perfecto: loud and clear');
    await ana.page.getByText('Sí, perfecto: loud and clear').waitFor();
    await post(ana.page, 'Great, starting with exercise 3.');
    await post(bea.page, XSS);
    for (const p of [ana.page, bea.page, watcher.page]) {
      await p.getByText(XSS, { exact: true }).waitFor();
      assert.equal(await p.locator('#stream-view .messages img').count(), 0);
    }
    assert.deepEqual(await texts(watcher.page), [
      'Hola! Does everyone see the board?',
      'Sí, perfecto: loud and clear',
      'Great, starting with exercise 3.',
      XSS,
    ]);
    assert.deepEqual(await watcher.page.locator('.messages .name').allTextContents(), [
      'ana',
      'bea',
      'ana',
      'bea',
    ]);
    await screenshot(ana.page, 'stream-desktop');
    await screenshot(watcher.page, 'stream-phone');

    // Errors reach the person: too long, then too fast with its wait.
    await post(ana.page, 'x'.repeat(501));
    await ana.page.getByText('The message is longer than 500 characters.').waitFor();
    const tooFast = ana.page.getByText(/posting too fast\. You can post again in \d+ s/);
    for (let i = 0; i < 6 && !(await tooFast.isVisible()); i++) {
      await post(ana.page, `quick ${i}`);
      await ana.page.getByText(`quick ${i}`).or(tooFast).first().waitFor();
    }
    await tooFast.waitFor();
    assert.equal(await ana.page.locator('#stream-view .composer button').isDisabled(), true);
    await screenshot(ana.page, 'stream-rate-limited');

    // Ending the stream tells everyone, and nobody reconnects to it.
    assert.equal((await api(server.url, 'DELETE', '/api/streams/algebra')).status, 200);
    for (const p of [ana.page, bea.page, watcher.page]) {
      await p.getByText('This stream has ended.').waitFor();
      assert.equal(await p.locator('#stream-view .status').textContent(), 'Ended');
    }
    // It stays said: ana's rate-limit wait, still counting down, does not cover it.
    await ana.page.waitForTimeout(800);
    assert.equal(await ana.page.getByText('This stream has ended.').isVisible(), true);
    for (const p of [ana, bea, watcher]) {
      assert.deepEqual(
        p.problems.filter((x) => !x.includes('WebSocket')),
        [],
      );
      await p.context.close();
    }
  });

  test('an expiring token is explained, and a new one restores posting', async () => {
    await api(server.url, 'PUT', '/api/streams/chemistry', {});
    const short = await userToken('1', { username: 'ana' }, { expiresIn: '3s' });
    const ana = await openPage(browser, streamUrl(server.url, 'chemistry', short));
    // A slow page load may outlive the token: the connect is then refused with
    // the same explanation, which is what this test is about.
    await live(ana.page, false);
    await ana.page.getByText('Your token expired. Paste a new one to keep posting.').waitFor();
    await ana.page.locator('#stream-view .composer input:disabled').waitFor();

    await ana.page.locator('#stream-connect input[name="token"]').fill(await userToken('1'));
    await ana.page.locator('#stream-connect button').click();
    await ana.page.locator('#stream-view .composer input:enabled').waitFor();
    await post(ana.page, 'still here');
    await ana.page.getByText('still here').waitFor();
    assert.deepEqual(ana.problems, []);
    await ana.context.close();
  });

  test('a dropped connection comes back by itself and says so', async () => {
    const dir = server.dir;
    const port = new URL(server.url).port;
    await api(server.url, 'PUT', '/api/streams/physics', {});
    const ana = await openPage(
      browser,
      streamUrl(server.url, 'physics', await userToken('1', { username: 'ana' })),
    );
    await live(ana.page, true);
    await post(ana.page, 'before the drop');
    await ana.page.getByText('before the drop').waitFor();

    // Restart the server on the same port and storage.
    await server.app.close();
    await ana.page.getByText(/Connection lost\. Reconnecting in \d+ s/).waitFor();
    server = await startServer({ DATA_DIR: dir, PORT: port });
    // A chat from someone else, most likely while the page still waits to reconnect:
    // the resume (`?since=`) brings it, or it arrives live; either way once.
    const bea = await StreamClient.connect(server.wsUrl, 'physics', {
      token: await userToken('2', { username: 'bea' }),
    });
    await bea.next('auth');
    bea.chat('while you were away');
    await bea.next('chat');
    bea.close();
    await ana.page.getByText('Reconnected.', { exact: true }).waitFor({ timeout: 10_000 });
    await live(ana.page, true);
    await post(ana.page, 'back again');
    await ana.page.getByText('back again').waitFor();
    // The join history repeats nothing already on screen.
    assert.deepEqual(await texts(ana.page), [
      'before the drop',
      'while you were away',
      'back again',
    ]);
    await ana.context.close();
  });
});

describe('web client: the live stream in the browser language', { skip }, () => {
  let server: TestServer;
  let browser: Browser;

  before(async () => {
    server = await startServer({ STREAM_VIEWERS_INTERVAL_MS: '100' });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  /** A page whose browser prefers `locale`, failing the test on any page error. */
  async function localized(locale: string, url: string) {
    const context = await browser.newContext({ locale, viewport: DESKTOP });
    const page = await context.newPage();
    page.setDefaultTimeout(10_000);
    const problems: string[] = [];
    page.on('pageerror', (e) => problems.push(e.message));
    await page.goto(url);
    return { page, context, problems };
  }

  test('Spanish for es-MX, English for en-US, moderation included', async () => {
    await api(server.url, 'PUT', '/api/streams/quimica', { title: 'Química', ownerId: '10' });
    const teacher = await localized(
      'es-MX',
      streamUrl(server.url, 'quimica', await userToken('10', { username: 'profe' })),
    );
    const student = await localized(
      'es-MX',
      streamUrl(server.url, 'quimica', await userToken('20', { username: 'lu' })),
    );
    const viewer = await localized('en-US', streamUrl(server.url, 'quimica'));
    const [tp, sp, vp] = [teacher.page, student.page, viewer.page];
    await Promise.all([live(tp, true), live(sp, true), live(vp, false)]);

    assert.equal(await tp.locator('html').getAttribute('lang'), 'es');
    assert.equal(await vp.locator('html').getAttribute('lang'), 'en');
    assert.equal(await sp.locator('#stream-view .composer button').textContent(), 'Enviar');
    assert.equal(await vp.locator('#stream-view .composer button').textContent(), 'Send');
    assert.equal(await sp.locator('#stream-view .status').textContent(), 'En vivo');
    assert.equal(await vp.locator('#stream-view .status').textContent(), 'Live');
    assert.equal(
      await sp.locator('#stream-view .composer input').getAttribute('placeholder'),
      'Escribe en #quimica como lu',
    );
    assert.equal(
      await vp.locator('#stream-view .composer input').getAttribute('placeholder'),
      'Add a token to chat',
    );
    await sp.locator('#stream-view .viewers', { hasText: '3 espectadores' }).waitFor();
    await vp.locator('#stream-view .viewers', { hasText: '3 viewers' }).waitFor();

    // The teacher's moderation, in Spanish.
    await post(sp, '¿Cuál es la fórmula del agua?');
    const chat = tp.locator('#stream-view .messages li.msg', { hasText: 'fórmula del agua' });
    await chat.locator('.mod-menu summary').click();
    for (const label of ['Fijar', 'Eliminar', 'Silenciar 1 min', 'Silenciar 10 min', 'Bloquear']) {
      await chat.locator('.mod-menu .menu button', { hasText: label }).waitFor();
    }
    assert.equal(await tp.locator('#stream-view .mod-tools summary').textContent(), 'Moderación');
    await tp.locator('#stream-view .mod-tools summary').click();
    await tp.locator('#stream-view .mod-tools input[name="paused"]').check();
    await sp.locator('#stream-view .mode-paused', { hasText: 'Chat en pausa' }).waitFor();
    await vp.locator('#stream-view .mode-paused', { hasText: 'Chat paused' }).waitFor();
    await post(sp, '¿Hola?');
    await sp.getByText('El chat está en pausa. Podrás escribir cuando se reanude.').waitFor();
    await screenshot(tp, 'stream-es-moderator');

    // Nothing of the Spanish view is left in English.
    for (const p of [tp, sp]) {
      const text = (await p.locator('#stream-view').textContent()) ?? '';
      assert.doesNotMatch(
        text,
        /\b(Watch|Send|Live|viewers?|Moderation|Pinned|Delete|Slow mode|Posting as|Not connected|Pause the chat)\b/,
      );
    }
    for (const p of [teacher, student, viewer]) {
      assert.deepEqual(p.problems, []);
      await p.context.close();
    }
  });
});
