/**
 * The README's pictures of the web client, taken against a real charla in
 * Chromium: each view in English (a browser that prefers en-US) and in
 * Spanish (es-MX). Not a test: run it after a change that shows, with
 *
 *   npx tsc -p tsconfig.json && node dist/test/readme-screenshots.js
 *
 * and it writes docs/web-request.png, docs/web-request-es.png,
 * docs/web-stream.png and docs/web-stream-es.png.
 */
import { fileURLToPath } from 'node:url';
import type { Browser, Page } from 'playwright-core';
import { newId } from '../src/core/ids.js';
import { DESKTOP, launch } from './browser.js';
import { api, StreamClient, startServer, type TestServer, until, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';

const DOCS = fileURLToPath(new URL('../../docs/', import.meta.url));

interface Language {
  locale: string;
  suffix: string;
  request: { teacher: [string, string]; lab: string };
  stream: {
    title: string;
    /** Chats in order, by the host (the page) or a student; the host's second one is pinned. */
    chats: Array<['host' | 'student', string]>;
    /** The moderator menu's word for pinning, where the stream view has that menu. */
    pin: string;
  };
}

const LANGUAGES: Language[] = [
  {
    locale: 'en-US',
    suffix: '',
    request: {
      teacher: [
        'Are the results for sample 12 in yet?',
        'Thanks! I will look at them as soon as they are up.',
      ],
      lab: 'Yes, we upload them this afternoon. The pH came out at 7.2',
    },
    stream: {
      title: 'Biology 101',
      chats: [
        ['host', 'Hi! Does everyone see the board?'],
        ['student', 'Yes, loud and clear'],
        ['host', 'Read chapter 3 before Friday'],
        ['student', 'Could you go over the second step again?'],
      ],
      pin: 'Pin',
    },
  },
  {
    locale: 'es-MX',
    suffix: '-es',
    request: {
      teacher: [
        '¿Tienen ya los resultados de la muestra 12?',
        '¡Gracias! Los reviso en cuanto estén.',
      ],
      lab: 'Sí, los subimos esta tarde. El pH salió en 7.2',
    },
    stream: {
      title: 'Biología 101',
      chats: [
        ['host', '¡Hola! ¿Todos ven el pizarrón?'],
        ['student', 'Sí, perfecto'],
        ['host', 'Lean el capítulo 3 antes del viernes'],
        ['student', '¿Puedes repetir el segundo paso?'],
      ],
      pin: 'Fijar',
    },
  },
];

async function pageIn(browser: Browser, locale: string, url: string): Promise<Page> {
  const context = await browser.newContext({ locale, viewport: DESKTOP });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  await page.goto(url);
  return page;
}

async function write(page: Page, view: string, text: string): Promise<void> {
  const input = page.locator(`#${view}-view .composer input`);
  await input.fill(text);
  await input.press('Enter');
}

async function requestPicture(server: TestServer, browser: Browser, l: Language) {
  const owner = '1';
  const requestId = newId();
  await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: owner });
  const token = await userToken(owner, { username: 'ana', role: 'TEACHER' });
  const page = await pageIn(
    browser,
    l.locale,
    `${server.url}/#view=request&request=${requestId}&token=${token}`,
  );
  const lab = await RequestClient.connect(
    server.url,
    await userToken('2', { username: 'lab', role: 'LAB' }),
  );
  try {
    await page.locator('#request-view .composer input:enabled').waitFor();
    await write(page, 'request', l.request.teacher[0]);
    await lab.ask('joinRoom', { requestId });
    const first = await lab.next('roomHistory', (h) => h.messages.length === 1);
    await lab.ask('readMessages', { requestId, messages: [first.messages[0]._id] });
    await lab.ask('message', { requestId, message: l.request.lab });
    await page.locator('#request-view .messages').getByText(l.request.lab).waitFor();
    await write(page, 'request', l.request.teacher[1]);
    const last = await lab.next('message', (m) => m.message === l.request.teacher[1]);
    await lab.ask('readMessages', { requestId, messages: [last._id] });
    await until(
      async () =>
        (await page.locator('#request-view .msg.mine .tick[data-state="read"]').count()) === 2,
      'both ticks read',
    );
    await page.locator('#request-view .inbox-list li').first().waitFor();
    await page.locator('#request-view .composer input').blur();
    await page.screenshot({ path: `${DOCS}web-request${l.suffix}.png` });
  } finally {
    lab.close();
    await page.context().close();
  }
}

/**
 * The live stream as its host sees it: a student's chats, the host's own, one
 * of them pinned, and the moderator's menu open on the student's last chat
 * (pin and menu where the stream view has them).
 */
async function streamPicture(server: TestServer, browser: Browser, l: Language) {
  const key = 'biology';
  await api(server.url, 'PUT', `/api/streams/${key}`, { title: l.stream.title, ownerId: '10' });
  const token = await userToken('10', { username: 'profe', role: 'TEACHER' });
  const page = await pageIn(
    browser,
    l.locale,
    `${server.url}/#view=stream&stream=${key}&token=${token}`,
  );
  const student = await StreamClient.connect(server.wsUrl, key, {
    token: await userToken('20', { username: 'sam' }),
  });
  const chat = (text: string) => page.locator('#stream-view .messages li', { hasText: text });
  try {
    await page.locator('#stream-view .composer input:enabled').waitFor();
    for (const [i, [who, text]] of l.stream.chats.entries()) {
      if (who === 'host') await write(page, 'stream', text);
      else student.chat(text);
      await chat(text).waitFor();
      if (i === 2 && (await chat(text).locator('.mod-menu').count()) > 0) {
        await chat(text).locator('.mod-menu summary').click();
        await chat(text).locator('.mod-menu .menu button', { hasText: l.stream.pin }).click();
        await page.locator('#stream-view .pinned', { hasText: text }).waitFor();
      }
    }
    await page.locator('#stream-view .composer input').blur();
    const last = chat(l.stream.chats.at(-1)?.[1] as string).locator('.mod-menu summary');
    if ((await last.count()) > 0) await last.click();
    await page.screenshot({ path: `${DOCS}web-stream${l.suffix}.png` });
  } finally {
    student.ws.close();
    await page.context().close();
  }
}

const browser = await launch();
try {
  for (const l of LANGUAGES) {
    // A charla of its own per language: each inbox and stream holds only its own conversation.
    const server = await startServer();
    try {
      await requestPicture(server, browser, l);
      await streamPicture(server, browser, l);
    } finally {
      await server.close();
    }
    process.stdout.write(`docs/web-request${l.suffix}.png docs/web-stream${l.suffix}.png\n`);
  }
} finally {
  await browser.close();
}
