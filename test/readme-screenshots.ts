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
  stream: { title: string; chats: Array<['page' | 'bea', string]> };
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
      title: 'Algebra',
      chats: [
        ['page', 'Hi! Does everyone see the board?'],
        ['bea', 'Yes, loud and clear'],
        ['page', 'Great, starting with exercise 3.'],
        ['bea', 'Could you go over the second step again?'],
      ],
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
      title: 'Álgebra',
      chats: [
        ['page', '¡Hola! ¿Todos ven el pizarrón?'],
        ['bea', 'Sí, perfecto'],
        ['page', 'Genial, empezamos con el ejercicio 3.'],
        ['bea', '¿Puedes repetir el segundo paso?'],
      ],
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

async function streamPicture(server: TestServer, browser: Browser, l: Language) {
  const key = 'algebra';
  await api(server.url, 'PUT', `/api/streams/${key}`, { title: l.stream.title });
  const token = await userToken('1', { username: 'ana' });
  const page = await pageIn(
    browser,
    l.locale,
    `${server.url}/#view=stream&stream=${key}&token=${token}`,
  );
  const bea = await StreamClient.connect(server.wsUrl, key, {
    token: await userToken('2', { username: 'bea' }),
  });
  try {
    await page.locator('#stream-view .composer input:enabled').waitFor();
    for (const [i, [who, text]] of l.stream.chats.entries()) {
      if (who === 'page') await write(page, 'stream', text);
      else bea.chat(text);
      await until(
        async () => (await page.locator('#stream-view .messages .text').count()) === i + 1,
        `chat ${i + 1} on screen`,
      );
    }
    await page.locator('#stream-view .composer input').blur();
    await page.screenshot({ path: `${DOCS}web-stream${l.suffix}.png` });
  } finally {
    bea.ws.close();
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
