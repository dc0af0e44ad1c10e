/**
 * Links that carry a token (`#view=…&token=…`, as the dev banner prints and a
 * platform would send) in a tab that is already signed in: the link's token
 * is the one in use at once, in both views, not only after a reload.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { newId } from '../src/core/ids.js';
import { browserSkip, launch, openPage } from './browser.js';
import { api, registerRequest, startServer, type TestServer, userToken } from './helpers.js';

const skip = browserSkip();

describe('web client: a link with another token in the same tab', { skip }, () => {
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

  test('request view: the link signs in as its token', async () => {
    const id = await registerRequest(server.url);
    const teacher = await userToken('1', { username: 'ana', role: 'TEACHER' });
    const lab = await userToken('2', { username: 'lab', role: 'LAB' });
    const { page, context, problems } = await openPage(
      browser,
      `${server.url}/#view=request&request=${id}&token=${teacher}`,
    );
    const who = page.locator('#request-view .who');
    await who.getByText('ana · TEACHER').waitFor();
    await page.locator('#request-view .status[data-state="live"]').waitFor();

    await page.goto(`${server.url}/#view=request&request=${id}&token=${lab}`);
    await who.getByText('lab · LAB').waitFor();
    await page.locator('#request-view .status[data-state="live"]').waitFor();
    const input = page.locator('#request-view .composer input');
    await input.fill('Soy el laboratorio');
    await input.press('Enter');
    await page
      .locator('#request-view .msg.mine', { hasText: 'Soy el laboratorio' })
      .locator('.tick[data-state="sent"]')
      .waitFor();
    const stored = await api(server.url, 'GET', `/api/requests/${id}/messages`);
    const body = stored.body as { messages: Array<{ sender: { id: string } }> };
    assert.deepEqual(
      body.messages.map((m) => m.sender.id),
      ['2'],
    );
    // Without a token, a link keeps the one the tab signed in with.
    await page.goto(`${server.url}/#view=request&request=${newId()}`);
    await who.getByText('lab · LAB').waitFor();
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('stream view: the link signs in as its token', async () => {
    const key = 'links';
    assert.equal((await api(server.url, 'PUT', `/api/streams/${key}`, {})).status, 201);
    const eva = await userToken('7', { username: 'eva' });
    const leo = await userToken('8', { username: 'leo' });
    const { page, context, problems } = await openPage(
      browser,
      `${server.url}/#view=stream&stream=${key}&token=${eva}`,
    );
    const who = page.locator('#stream-view .who');
    await who.getByText('eva').waitFor();
    await page.goto(`${server.url}/#view=stream&stream=${key}&token=${leo}`);
    await who.getByText('leo').waitFor();
    const input = page.locator('#stream-view .composer input:enabled');
    await input.fill('hola, soy leo');
    await input.press('Enter');
    const mine = page.locator('#stream-view .msg.mine', { hasText: 'hola, soy leo' });
    await mine.getByText('leo', { exact: true }).waitFor();
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('a request opened from the inbox, or a stream picked in the form, is still open after a reload', async () => {
    const [first, second] = [newId(), newId()];
    for (const id of [first, second]) {
      assert.equal(
        (await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId: '1' })).status,
        201,
      );
    }
    const teacher = await userToken('1', { username: 'ana', role: 'TEACHER' });
    const { page, context, problems } = await openPage(
      browser,
      `${server.url}/#view=request&request=${first}&token=${teacher}`,
    );
    await page.locator('#request-view .status[data-state="live"]').waitFor();
    await page.locator(`#request-view .inbox-list li[data-request-id="${second}"] button`).click();
    await page.locator('#request-view .who-value', { hasText: second.slice(0, 6) }).waitFor();
    await page.reload();
    await page.locator('#request-view .status[data-state="live"]').waitFor();
    assert.equal(await page.locator('#request-view .who-value.mono').getAttribute('title'), second);
    // Never the token: it stays out of the address bar.
    assert.doesNotMatch(page.url(), /token/);

    const key = 'reloaded';
    assert.equal((await api(server.url, 'PUT', `/api/streams/${key}`, {})).status, 201);
    await page.locator('.tabs a[data-view="stream"]').click();
    await page.locator('#stream-view input[name="key"]').fill(key);
    await page.locator('#stream-view .connect button[type="submit"]').click();
    await page.locator('#stream-view .status[data-state="live"]').waitFor();
    await page.reload();
    await page.locator('#stream-view .status[data-state="live"]').waitFor();
    assert.equal(await page.locator('#stream-view .who-value').first().textContent(), key);
    assert.doesNotMatch(page.url(), /token/);
    assert.deepEqual(problems, []);
    await context.close();
  });
});
