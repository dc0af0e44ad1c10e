/**
 * The live-stream view's moderation in a real browser: a teacher owns the
 * stream and a student watches it, each in a page of their own, against a
 * real charla. What one moderates, both see.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, Locator, Page } from 'playwright-core';
import { browserSkip, launch, openPage, screenshot } from './browser.js';
import { api, StreamClient, startServer, type TestServer, userToken } from './helpers.js';

const skip = browserSkip();

function streamUrl(base: string, key: string, token: string): string {
  return `${base}/#view=stream&stream=${key}&token=${token}`;
}

async function post(page: Page, text: string): Promise<void> {
  const input = page.locator('#stream-view .composer input');
  await input.fill(text);
  await input.press('Enter');
}

const chatItem = (page: Page, text: string): Locator =>
  page.locator('#stream-view .messages li.msg', { hasText: text });

/** Opens the moderator's menu on the chat that says `text` and picks `action`. */
async function moderate(page: Page, text: string, action: string): Promise<void> {
  const item = chatItem(page, text);
  await item.locator('.mod-menu summary').click();
  await item.locator('.mod-menu .menu button', { hasText: action }).click();
}

describe('web client: moderating a live stream', { skip }, () => {
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

  test('the teacher deletes, times out, pins and slows; the student sees it all', async () => {
    const key = 'biology';
    await api(server.url, 'PUT', `/api/streams/${key}`, { title: 'Biology 101', ownerId: '10' });
    // A chat from before anyone opened the page: it comes with the history on join.
    const early = await StreamClient.connect(server.wsUrl, key, {
      token: await userToken('30', { username: 'early' }),
    });
    await early.next('auth');
    early.chat('Is the class starting soon?');
    await early.next('chat');
    early.close();
    await early.closed;

    const teacher = await openPage(
      browser,
      streamUrl(server.url, key, await userToken('10', { username: 'profe', role: 'TEACHER' })),
    );
    const student = await openPage(
      browser,
      streamUrl(server.url, key, await userToken('20', { username: 'sam' })),
    );
    const [tp, sp] = [teacher.page, student.page];
    for (const p of [tp, sp]) {
      await p.locator('#stream-view .composer input:enabled').waitFor();
      await chatItem(p, 'Is the class starting soon?').waitFor();
      assert.equal(await p.locator('#stream-view .title').textContent(), 'Biology 101');
      // Both pages count, and nobody else is watching.
      await p.locator('#stream-view .viewers', { hasText: '2 viewers' }).waitFor();
    }

    // The owner moderates; the student does not, and sees no menu.
    await tp.locator('#stream-view.moderating').waitFor();
    await tp.locator('#stream-view .mod-tools').waitFor();
    await post(sp, 'the mitochondria is the brain of the cell');
    await chatItem(tp, 'the mitochondria is the brain').waitFor();
    await chatItem(sp, 'the mitochondria is the brain').waitFor();
    assert.equal(await sp.locator('#stream-view.moderating').count(), 0);
    assert.equal(await chatItem(sp, 'the mitochondria').locator('summary').isVisible(), false);
    assert.equal(await sp.locator('#stream-view .mod-tools').isVisible(), false);

    // Deleting a chat takes it off both screens, live.
    await moderate(tp, 'the mitochondria is the brain', 'Delete');
    for (const p of [tp, sp]) {
      await chatItem(p, 'the mitochondria is the brain').waitFor({ state: 'detached' });
    }
    const stored = await api(server.url, 'GET', `/api/streams/${key}/messages`);
    const deleted = (stored.body as { messages: { message: string; deletedBy: string }[] })
      .messages;
    assert.equal(deleted.find((m) => m.message.startsWith('the mitochondria'))?.deletedBy, '10');

    // A teacher's chat carries the host badge, and a pinned chat shows on top for everyone.
    await post(tp, 'Read chapter 3 before Friday');
    await chatItem(sp, 'Read chapter 3').locator('.badge-owner', { hasText: 'Host' }).waitFor();
    await moderate(tp, 'Read chapter 3', 'Pin');
    for (const p of [tp, sp]) {
      await p
        .locator('#stream-view .pinned', { hasText: 'Read chapter 3 before Friday' })
        .waitFor();
    }
    assert.equal(await sp.locator('#stream-view .pinned .unpin').count(), 0);
    assert.equal(
      await sp.locator('#stream-view .pinned').textContent(),
      'Pinnedprofe' + 'Read chapter 3 before Friday',
    );
    assert.deepEqual(await sp.locator('#stream-view .who .who-value').allTextContents(), [
      key,
      'sam',
    ]);
    assert.match(
      (await tp.locator('#stream-view .who').textContent()) ?? '',
      /You moderate this chat/,
    );

    // A timeout: both see it, and the student's next chat is refused with the wait.
    await post(sp, 'ok ok');
    await chatItem(tp, 'ok ok').waitFor();
    await chatItem(tp, 'ok ok').locator('.mod-menu summary').click();
    await screenshot(tp, 'stream-moderator-menu');
    await chatItem(tp, 'ok ok').locator('.mod-menu summary').click();
    await moderate(tp, 'ok ok', 'Time out 1 min');
    for (const p of [tp, sp]) {
      await p.getByText('sam was timed out for 1 min.').waitFor();
      await chatItem(p, 'ok ok').waitFor({ state: 'detached' });
    }
    await sp.getByText('A moderator timed you out for 1 min.').waitFor();
    await post(sp, 'can I still talk?');
    await sp.getByText(/You are timed out\. You can post again in (1 min|\d+ s)\./).waitFor();
    assert.equal(await sp.locator('#stream-view .composer button').isDisabled(), true);
    // The refused text is back in the box, and nobody else saw it.
    assert.equal(
      await sp.locator('#stream-view .composer input').inputValue(),
      'can I still talk?',
    );
    await post(tp, 'barrier after the refused chat');
    await chatItem(tp, 'barrier after the refused chat').waitFor();
    assert.equal(await chatItem(tp, 'can I still talk?').count(), 0);
    await screenshot(sp, 'stream-timed-out');

    // Slow mode and pause, set from the teacher's tools, show on the student's page.
    await tp.locator('#stream-view .mod-tools summary').click();
    await tp.locator('#stream-view .mod-tools select').selectOption('30');
    await sp.locator('#stream-view .mode-slow', { hasText: 'one message every 30 s' }).waitFor();
    await tp.locator('#stream-view .mod-tools input[name="paused"]').check();
    await sp.locator('#stream-view .mode-paused', { hasText: 'Chat paused' }).waitFor();
    await tp.locator('#stream-view .mod-tools input[name="membersOnly"]').check();
    await sp.locator('#stream-view .mode-members', { hasText: 'Members only' }).waitFor();
    assert.equal(await tp.locator('#stream-view .mod-tools select').inputValue(), '30');
    // A value set through the server API, which the tools do not offer, shows as it is.
    const patched = await api(server.url, 'PATCH', `/api/streams/${key}`, { slowModeSeconds: 90 });
    assert.equal(patched.status, 200);
    await sp
      .locator('#stream-view .mode-slow', { hasText: 'one message every 1 min 30 s' })
      .waitFor();
    await tp
      .locator('#stream-view .mode-slow', { hasText: 'one message every 1 min 30 s' })
      .waitFor();
    assert.equal(await tp.locator('#stream-view .mod-tools select').inputValue(), '90');
    assert.equal(await tp.locator('#stream-view .mod-tools option[value="90"]').count(), 1);
    await screenshot(tp, 'stream-moderator');
    await screenshot(sp, 'stream-moderated');

    // The student does not see the teacher's button that ends the timeout.
    const timedOut = (p: Page) =>
      p.locator('#stream-view .divider', { hasText: 'sam was timed out for 1 min.' });
    assert.equal(await timedOut(sp).locator('.line-action').isVisible(), false);
    // Ending it: the paused chat now refuses the student instead.
    await timedOut(tp).locator('.line-action', { hasText: 'End timeout' }).click();
    await sp.getByText('sam can post again.').waitFor();
    const bans = await api(server.url, 'GET', `/api/streams/${key}/bans`);
    assert.deepEqual((bans.body as { bans: unknown[] }).bans, []);
    // That click closed the tools; they open again.
    await tp.locator('#stream-view .mod-tools summary').click();
    await tp.locator('#stream-view .mod-tools input[name="membersOnly"]').uncheck();
    await sp.locator('#stream-view .mode-members').waitFor({ state: 'detached' });
    await post(sp, 'hello?');
    await sp.getByText('The chat is paused. You can post once it opens again.').waitFor();

    // Unpausing and unpinning reach the student too.
    await tp.locator('#stream-view .mod-tools input[name="paused"]').uncheck();
    await sp.locator('#stream-view .mode-paused').waitFor({ state: 'detached' });
    // A click elsewhere closes the tools, which cover the pinned chat.
    await tp.locator('#stream-view .title').click();
    await tp.locator('#stream-view .mod-tools[open]').waitFor({ state: 'detached' });
    await tp.locator('#stream-view .pinned .unpin').click();
    await sp.locator('#stream-view .pinned').waitFor({ state: 'hidden' });
    // Those `stream` frames left the tools' choices as they were.
    assert.equal(await tp.locator('#stream-view .mod-tools option[value="90"]').count(), 1);

    for (const p of [teacher, student]) {
      assert.deepEqual(p.problems, []);
      await p.context.close();
    }
  });
  test('platform staff moderate by role; slow mode, members-only and a ban refuse the student', async () => {
    const key = 'chemistry';
    await api(server.url, 'PUT', `/api/streams/${key}`, { title: 'Chemistry', ownerId: '10' });
    const staff = await openPage(
      browser,
      streamUrl(server.url, key, await userToken('50', { username: 'staff', role: 'MODERATOR' })),
    );
    const student = await openPage(
      browser,
      streamUrl(server.url, key, await userToken('21', { username: 'rita' })),
    );
    const [mp, sp] = [staff.page, student.page];
    await sp.locator('#stream-view .composer input:enabled').waitFor();
    await mp.locator('#stream-view.moderating').waitFor();

    // Staff chats carry the moderator badge.
    await post(mp, 'Welcome, I moderate this chat');
    await chatItem(sp, 'Welcome').locator('.badge-moderator', { hasText: 'Mod' }).waitFor();

    // Slow mode: a second chat within 30 s is refused with its wait.
    await post(sp, 'first');
    await chatItem(mp, 'first').waitFor();
    await mp.locator('#stream-view .mod-tools summary').click();
    await mp.locator('#stream-view .mod-tools select').selectOption('30');
    await sp.locator('#stream-view .mode-slow').waitFor();
    const slow = sp.getByText(/Slow mode is on\. You can post again in \d+ s\./);
    for (let i = 0; i < 2 && !(await slow.isVisible()); i++) {
      await post(sp, `again ${i}`);
      await chatItem(sp, `again ${i}`).or(slow).first().waitFor();
    }
    await slow.waitFor();
    assert.equal(await sp.locator('#stream-view .composer button').isDisabled(), true);
    await mp.locator('#stream-view .mod-tools select').selectOption('0');
    await sp.locator('#stream-view .mode-slow').waitFor({ state: 'detached' });
    // Slow mode off ends the wait at once.
    await sp.getByText('You can post again.').waitFor();
    assert.equal(await sp.locator('#stream-view .composer button').isDisabled(), false);

    // Members-only, with rita not on the list.
    const members = await api(server.url, 'PUT', `/api/streams/${key}/members`, {
      userIds: ['99'],
    });
    assert.equal(members.status, 200);
    await mp.locator('#stream-view .mod-tools input[name="membersOnly"]').check();
    await sp.locator('#stream-view .mode-members').waitFor();
    await sp.locator('#stream-view .composer input').fill('may I?');
    await sp.locator('#stream-view .composer input').press('Enter');
    await sp.getByText('Only members can post in this chat right now.').waitFor();
    await mp.locator('#stream-view .mod-tools input[name="membersOnly"]').uncheck();
    await sp.locator('#stream-view .mode-members').waitFor({ state: 'detached' });
    await mp.locator('#stream-view .title').click();

    // A ban from the menu: rita's chats go, her next one is refused, and she still reads.
    await moderate(mp, 'first', 'Ban');
    for (const p of [mp, sp]) {
      await p.getByText('rita was banned.').waitFor();
      await chatItem(p, 'first').waitFor({ state: 'detached' });
    }
    await sp.getByText('A moderator banned you from this chat. You can still watch.').waitFor();
    await sp.locator('#stream-view .composer input').fill('am I banned?');
    await sp.locator('#stream-view .composer input').press('Enter');
    await sp.getByText('You are banned from this chat. You can still watch.').waitFor();
    await post(mp, 'still watching?');
    await chatItem(sp, 'still watching?').waitFor();
    assert.equal(await chatItem(mp, 'am I banned?').count(), 0);
    const bans = await api(server.url, 'GET', `/api/streams/${key}/bans`);
    assert.deepEqual(
      (bans.body as { bans: { userId: string; until: string | null; by: string }[] }).bans.map(
        (b) => [b.userId, b.until, b.by],
      ),
      [['21', null, '50']],
    );

    for (const p of [staff, student]) {
      assert.deepEqual(p.problems, []);
      await p.context.close();
    }
  });
  test('a moderator from the stream list gets the tools, and loses them once taken off it', async () => {
    const key = 'physics';
    await api(server.url, 'PUT', `/api/streams/${key}`, { ownerId: '10' });
    const listed = await api(server.url, 'PATCH', `/api/streams/${key}`, { moderators: ['40'] });
    assert.equal(listed.status, 200);
    const helper = await openPage(
      browser,
      streamUrl(server.url, key, await userToken('40', { username: 'ta' })),
    );
    const hp = helper.page;
    await hp.locator('#stream-view.moderating').waitFor();
    await post(hp, 'Questions go here');
    await chatItem(hp, 'Questions go here').locator('.badge-moderator').waitFor();

    const unlisted = await api(server.url, 'PATCH', `/api/streams/${key}`, { moderators: [] });
    assert.equal(unlisted.status, 200);
    await moderate(hp, 'Questions go here', 'Pin');
    await hp.getByText('Only moderators can do that.').waitFor();
    await hp.locator('#stream-view.moderating').waitFor({ state: 'detached' });
    assert.equal(await hp.locator('#stream-view .mod-tools').isVisible(), false);
    assert.equal(await hp.locator('#stream-view .pinned').isVisible(), false);
    assert.deepEqual(helper.problems, []);
    await helper.context.close();
  });
});
