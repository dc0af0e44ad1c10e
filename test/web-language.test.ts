/**
 * The web client speaks the browser's language: a browser that prefers
 * Spanish (es-MX) gets the header, the request view, its inbox and its
 * receipts in Spanish, with times formatted the Spanish way and
 * `<html lang="es">`; one that prefers English (en-US) gets all of it in
 * English. (The README's pictures of both come from test/readme-screenshots.ts.)
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { newId } from '../src/core/ids.js';
import { browserSkip, DESKTOP, launch, screenshot } from './browser.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';

const skip = browserSkip();

const { catalog } = await import(new URL('../../web/i18n.js', import.meta.url).href);

/**
 * Words that only the English catalog has (a Spanish page must show none of
 * them): every English string, or plural form, without placeholders that
 * differs from its Spanish twin.
 */
function englishOnly(): Set<string> {
  const out = new Set<string>();
  const forms = (v: unknown) => (typeof v === 'string' ? [v] : Object.values(v as object));
  for (const [key, en] of Object.entries(catalog.en as Record<string, unknown>)) {
    const es = new Set(forms(catalog.es[key]));
    for (const form of forms(en)) if (!form.includes('{') && !es.has(form)) out.add(form);
  }
  return out;
}

/** Every text node and text attribute of the header and the request view, hidden ones too. */
async function pageWords(page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const doc = (globalThis as any).document;
    const words: string[] = [];
    for (const root of [doc.querySelector('header'), doc.querySelector('#request-view')]) {
      const walker = doc.createTreeWalker(root, 4);
      for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const text = String(n.textContent).trim();
        if (text) words.push(text);
      }
      for (const el of root.querySelectorAll('[placeholder], [title], [aria-label]')) {
        for (const a of ['placeholder', 'title', 'aria-label']) {
          if (el.hasAttribute(a)) words.push(el.getAttribute(a));
        }
      }
    }
    return words;
  });
}

interface Case {
  locale: string;
  /** The teacher's user id: one per case, so each inbox holds only its own request. */
  teacher: string;
  lang: string;
  /** What the page must say, in that language. */
  says: {
    tabs: [string, string];
    formTitle: string;
    join: string;
    tokenPlaceholder: string;
    live: string;
    inbox: string;
    read: string;
    forbidden: string;
    composer: string;
  };
  /** Hours and minutes as `Intl` writes them in that language. */
  time: RegExp;
  conversation: { teacher: string[]; lab: string };
}

const CASES: Case[] = [
  {
    locale: 'en-US',
    teacher: '1',
    lang: 'en',
    says: {
      tabs: ['Live stream', 'Request chat'],
      formTitle: 'Open a request',
      join: 'Join',
      tokenPlaceholder: 'Paste a JWT',
      live: 'Live',
      inbox: 'Requests',
      read: 'Read',
      forbidden: 'You cannot join this request: only its teacher and lab staff can.',
      composer: 'Message as ana',
    },
    time: /^\d{2}:\d{2}\s?[AP]M$/,
    conversation: {
      teacher: [
        'Are the results for sample 12 in yet?',
        'Thanks! I will look at them as soon as they are up.',
      ],
      lab: 'Yes, we upload them this afternoon. The pH came out at 7.2',
    },
  },
  {
    locale: 'es-MX',
    teacher: '3',
    lang: 'es',
    says: {
      tabs: ['Transmisión en vivo', 'Chat de solicitud'],
      formTitle: 'Abrir una solicitud',
      join: 'Entrar',
      tokenPlaceholder: 'Pega un JWT',
      live: 'En vivo',
      inbox: 'Solicitudes',
      read: 'Leído',
      forbidden:
        'No puedes entrar a esta solicitud: solo su docente y el personal del laboratorio pueden.',
      composer: 'Mensaje como ana',
    },
    time: /^\d{2}:\d{2}$/,
    conversation: {
      teacher: [
        '¿Tienen ya los resultados de la muestra 12?',
        '¡Gracias! Los reviso en cuanto estén.',
      ],
      lab: 'Sí, los subimos esta tarde. El pH salió en 7.2',
    },
  },
];

/** A page in a browser context whose preferred language is `locale`; fails the test on page errors. */
async function openIn(
  browser: Browser,
  locale: string,
  url: string,
): Promise<{ page: Page; context: BrowserContext; problems: string[] }> {
  const context = await browser.newContext({ locale, viewport: DESKTOP });
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  await page.goto(url);
  return { page, context, problems };
}

const view = (page: Page) => page.locator('#request-view');

describe('web client: the browser language', { skip }, () => {
  let server: TestServer;
  let browser: Browser;
  const clients: RequestClient[] = [];

  before(async () => {
    server = await startServer({ REQUEST_RATE_LIMIT: '1000/1s' });
    browser = await launch();
  });
  after(async () => {
    for (const c of clients) c.close();
    await browser?.close();
    await server?.close();
  });

  for (const c of CASES) {
    test(`${c.locale}: header, request view, inbox and receipts in ${c.lang}`, async () => {
      const requestId = newId();
      assert.equal(
        (await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: c.teacher })).status,
        201,
      );
      const teacherToken = await userToken(c.teacher, { username: 'ana', role: 'TEACHER' });
      const { page, context, problems } = await openIn(
        browser,
        c.locale,
        `${server.url}/#view=request&request=${requestId}&token=${teacherToken}`,
      );
      await view(page).locator('.status[data-state="live"]').waitFor();

      assert.equal(await page.locator('html').getAttribute('lang'), c.lang);
      assert.deepEqual(await page.locator('header .tabs a').allTextContents(), c.says.tabs);
      assert.equal(await view(page).locator('.connect h2').textContent(), c.says.formTitle);
      assert.equal(await view(page).locator('.connect button').textContent(), c.says.join);
      assert.equal(
        await view(page).locator('.connect input[name="token"]').getAttribute('placeholder'),
        c.says.tokenPlaceholder,
      );
      assert.equal(await view(page).locator('.status').textContent(), c.says.live);
      assert.equal(
        await view(page).locator('.composer input').getAttribute('placeholder'),
        c.says.composer,
      );

      // The teacher writes; the lab reads it and answers; the tick says "read" in words.
      const composer = view(page).locator('.composer input');
      await composer.fill(c.conversation.teacher[0] as string);
      await composer.press('Enter');
      // Stored (acknowledged) before the lab joins, so its history holds it.
      await view(page).locator('.msg:not(.pending) .tick').first().waitFor();
      const lab = await RequestClient.connect(
        server.url,
        await userToken('2', { username: 'lab', role: 'LAB' }),
      );
      clients.push(lab);
      const joined = await lab.ask('joinRoom', { requestId });
      assert.equal(joined.ok, true, JSON.stringify(joined));
      const first = await lab.next(
        'roomHistory',
        (h) => h.requestId === requestId && h.messages.length === 1,
      );
      const firstId = first.messages[0]._id;
      assert.equal((await lab.ask('readMessages', { requestId, messages: [firstId] })).ok, true);
      const firstTick = view(page).locator(`.msg[data-id="${firstId}"] .tick`);
      await firstTick.and(page.locator('[data-state="read"]')).waitFor();
      assert.equal(await firstTick.getAttribute('title'), c.says.read);
      assert.equal(await firstTick.getAttribute('aria-label'), c.says.read);

      const reply = await lab.ask('message', { requestId, message: c.conversation.lab });
      assert.equal(reply.ok, true, JSON.stringify(reply));
      await view(page).locator('.messages').getByText(c.conversation.lab).waitFor();
      await composer.fill(c.conversation.teacher[1] as string);
      await composer.press('Enter');
      const last = await lab.next('message', (m) => m.message === c.conversation.teacher[1]);
      assert.equal((await lab.ask('readMessages', { requestId, messages: [last._id] })).ok, true);
      await view(page).locator(`.msg[data-id="${last._id}"] .tick[data-state="read"]`).waitFor();

      // The inbox, in the same language, previews the last message.
      await view(page).locator('.inbox:not([hidden])').waitFor();
      assert.equal(await view(page).locator('.inbox h2').textContent(), c.says.inbox);
      await view(page)
        .locator(`.inbox-list li[data-request-id="${requestId}"]`)
        .getByText(`ana: ${c.conversation.teacher[1]}`)
        .waitFor();

      // Times as Intl writes them in the page's language.
      const times = await view(page).locator('.messages time').allTextContents();
      assert.equal(times.length, 3);
      for (const time of times) assert.match(time, c.time);

      if (c.lang === 'es') {
        // Hidden parts too (the editing bar, the "more" button): nothing left in English.
        const english = englishOnly();
        const words = await pageWords(page);
        assert.ok(words.length > 30, `${words.length} words`);
        assert.deepEqual(
          words.filter((w) => english.has(w)),
          [],
        );
      }
      await screenshot(page, `web-request-${c.lang}`);

      // A refusal, in words of the same language.
      const stranger = await context.newPage();
      const strangerToken = await userToken('9', { username: 'eve', role: 'TEACHER' });
      await stranger.goto(
        `${server.url}/#view=request&request=${requestId}&token=${strangerToken}`,
      );
      await stranger.locator('#request-view .notice', { hasText: c.says.forbidden }).waitFor();

      assert.deepEqual(problems, []);
      await context.close();
    });
  }
});
