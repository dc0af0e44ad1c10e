/**
 * The web client against what people choose to be called and to write: a
 * right-to-left override in a name or a file name turns only itself, long
 * names and titles with no space stay inside the page, a letter with hundreds
 * of combining marks stays inside its message; and what the server changes
 * through its API (a cleared title, a slow mode of its own) shows as it is.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { Browser, Locator, Page } from 'playwright-core';
import { newId } from '../src/core/ids.js';
import { browserSkip, imageLoaded, launch, openPage, PHONE } from './browser.js';
import { api, StreamClient, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';

const skip = browserSkip();
/** U+202E RIGHT-TO-LEFT OVERRIDE: what follows it, to the end of its paragraph, runs backwards. */
const RLO = '\u202e';
/** A 1×1 PNG. */
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==',
  'base64',
);

/**
 * True when `words`, inside `el`, are drawn left to right: its first letter
 * left of its last. An override leaking from a name before them reverses them.
 */
function readsLeftToRight(el: Locator, words: string): Promise<boolean> {
  return el.evaluate((root: any, w: string) => {
    const doc = root.ownerDocument;
    const walker = doc.createTreeWalker(root, 4 /* text */);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const i = node.data.indexOf(w);
      if (i < 0) continue;
      const x = (k: number) => {
        const range = doc.createRange();
        range.setStart(node, k);
        range.setEnd(node, k + 1);
        return range.getBoundingClientRect().left;
      };
      return x(i) < x(i + w.length - 1);
    }
    throw new Error(`"${w}" is not in ${root.textContent}`);
  }, words);
}

/**
 * How many pixels of two same-sized screenshots differ by more than a little
 * (antialiasing moves a channel by one or two when a row lands on another
 * fraction of a pixel), compared in a blank page's canvas.
 */
async function pixelsApart(browser: Browser, a: Buffer, b: Buffer): Promise<number> {
  const page = await browser.newPage();
  try {
    return await page.evaluate(
      async ([x, y]) => {
        const doc = (globalThis as any).document;
        const load = async (png: string) => {
          const img = new (globalThis as any).Image();
          img.src = `data:image/png;base64,${png}`;
          await img.decode();
          const canvas = doc.createElement('canvas');
          canvas.width = img.width;
          canvas.height = img.height;
          const ctx = canvas.getContext('2d');
          ctx.drawImage(img, 0, 0);
          return ctx.getImageData(0, 0, img.width, img.height).data as number[];
        };
        const [p, q] = [await load(x as string), await load(y as string)];
        if (p.length !== q.length) return p.length;
        let apart = 0;
        for (let i = 0; i < p.length; i += 4) {
          const d = [0, 1, 2].map((c) => Math.abs((p[i + c] as number) - (q[i + c] as number)));
          if (Math.max(...d) > 32) apart++;
        }
        return apart;
      },
      [a.toString('base64'), b.toString('base64')],
    );
  } finally {
    await page.close();
  }
}

/** Nothing inside `el` is wider than it: no row pushes the page sideways. */
const fitsWidth = (el: Locator) => el.evaluate((e: any) => e.scrollWidth <= e.clientWidth);

async function live(page: Page): Promise<void> {
  await page.locator('#stream-view .status[data-state="live"]').waitFor();
}

async function poster(server: TestServer, key: string, id: string, username: string) {
  const c = await StreamClient.connect(server.wsUrl, key, {
    token: await userToken(id, { username }),
  });
  await c.next('history');
  return c;
}

describe('web client: hostile names and text', { skip }, () => {
  let server: TestServer;
  let files: Server;
  let filesUrl: string;
  let browser: Browser;

  before(async () => {
    files = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': PNG.length });
      res.end(PNG);
    });
    await new Promise<void>((resolve) => files.listen(0, '127.0.0.1', resolve));
    filesUrl = `http://127.0.0.1:${(files.address() as AddressInfo).port}`;
    server = await startServer({
      // Without a final '/': the server takes it, and the CSP must still let its images in.
      ATTACHMENT_URL_PREFIXES: `${filesUrl}/files`,
      STREAM_RATE_LIMIT: '1000/30s',
    });
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await server?.close();
    files?.close();
  });

  test('stream: a name with an override turns only itself; long names break; zalgo stays in its message', async () => {
    await api(server.url, 'PUT', '/api/streams/bidi', { title: 'Bidi', ownerId: '1' });
    const host = await openPage(
      browser,
      `${server.url}/#view=stream&stream=bidi&token=${await userToken('1', { username: 'ana' })}`,
      PHONE,
    );
    const viewer = await openPage(browser, `${server.url}/#view=stream&stream=bidi`, PHONE);
    await Promise.all([live(host.page), live(viewer.page)]);
    const list = viewer.page.locator('#stream-view .messages');
    const row = (text: string) => list.locator('li.msg', { hasText: text });

    const eve = await poster(server, 'bidi', '3', `eve${RLO}`);
    const long = await poster(server, 'bidi', '4', 'N'.repeat(200));
    eve.chat('hola');
    long.chat('a long name');
    await row('a long name').waitFor();

    // The line saying what happened to eve reads as a sentence, whatever her name holds.
    assert.equal((await api(server.url, 'PUT', '/api/streams/bidi/bans/3', {})).status, 200);
    assert.equal((await api(server.url, 'PUT', '/api/streams/bidi/bans/4', {})).status, 200);
    const banned = list.locator('.divider', { hasText: 'was banned' });
    await banned.nth(1).waitFor();
    for (const page of [viewer.page, host.page]) {
      const line = page.locator('#stream-view .divider', { hasText: `eve${RLO}` });
      assert.equal(await readsLeftToRight(line, 'was banned'), true);
    }
    // A 200-letter name with no space breaks: neither its line nor the list is wider than the phone.
    assert.equal(await fitsWidth(banned.nth(1)), true);
    assert.equal(await fitsWidth(viewer.page.locator('#stream-view .scroller')), true);
    // Nor a notice with a long word in it.
    const notice = viewer.page.locator('#stream-view .notice');
    await notice.evaluate((el: any) => {
      el.hidden = false;
      el.textContent = 'x'.repeat(400);
    });
    assert.equal(await fitsWidth(notice), true);

    // A chat of one letter and 480 combining marks stays inside its own row: the
    // rows around it look the same with it as without it.
    const bea = await poster(server, 'bidi', '5', 'bea');
    const marks = (from: number) =>
      Array.from({ length: 480 }, (_, i) => String.fromCodePoint(from + (i % 16))).join('');
    bea.chat('antes');
    await row('antes').waitFor();
    bea.chat(`a${marks(0x300)}`); // marks above the letter
    bea.chat(`b${marks(0x316)}`); // marks below it
    bea.chat('después');
    await row('después').waitFor();
    const withZalgo = [await row('antes').screenshot(), await row('después').screenshot()];
    for (const f of bea.all.filter(
      (f) => f.type === 'chat' && /^[ab]\p{M}/u.test(f.data.message),
    )) {
      const res = await api(server.url, 'DELETE', `/api/streams/bidi/messages/${f.data.id}`);
      assert.equal(res.status, 200);
    }
    await viewer.page.waitForFunction(
      () =>
        !/\p{M}{10}/u.test(
          (globalThis as any).document.querySelector('#stream-view .messages').textContent,
        ),
    );
    const without = [await row('antes').screenshot(), await row('después').screenshot()];
    const apart = [
      await pixelsApart(browser, withZalgo[0] as Buffer, without[0] as Buffer),
      await pixelsApart(browser, withZalgo[1] as Buffer, without[1] as Buffer),
    ];
    assert.deepEqual(apart, [0, 0], 'pixels the marks put on the rows before and after');

    for (const c of [eve, long, bea]) c.close();
    for (const p of [host, viewer]) {
      assert.deepEqual(p.problems, []);
      await p.context.close();
    }
  });

  test('stream: a long title shows three lines; a cleared one gives back #key; slow mode keeps its choices', async () => {
    const title =
      `Repaso para el examen final ${'de álgebra lineal y geometría '.repeat(16)}`.slice(0, 500);
    await api(server.url, 'PUT', '/api/streams/repaso', { title, ownerId: '1' });
    const host = await openPage(
      browser,
      `${server.url}/#view=stream&stream=repaso&token=${await userToken('1', { username: 'ana' })}`,
      PHONE,
    );
    await live(host.page);
    const head = host.page.locator('#stream-view .title');
    await head.filter({ hasText: 'Repaso para el examen' }).waitFor();
    const [height, lineHeight] = await head.evaluate((el: any) => [
      el.getBoundingClientRect().height,
      Number.parseFloat(el.ownerDocument.defaultView.getComputedStyle(el).lineHeight),
    ]);
    assert.ok(height <= 3 * lineHeight + 1, `the title is ${height}px high`);
    assert.equal(await head.getAttribute('title'), title);

    // Cleared through the API, as null or as "": the head says which stream this is again.
    for (const cleared of ['', null, 'Otra vez', null]) {
      assert.equal(
        (await api(server.url, 'PATCH', '/api/streams/repaso', { title: cleared })).status,
        200,
      );
      await head.filter({ hasText: cleared || '#repaso' }).waitFor();
    }
    assert.equal(await head.textContent(), '#repaso');
    assert.equal(await head.getAttribute('title'), null);

    // Slow mode set through the API: its value is a choice while it is the stream's, not after.
    const select = host.page.locator('#stream-view select[name="slowModeSeconds"]');
    await host.page.locator('#stream-view .mod-tools').waitFor();
    for (const seconds of [7, 11, 13]) {
      await api(server.url, 'PATCH', '/api/streams/repaso', { slowModeSeconds: seconds });
      await host.page.waitForFunction(
        (s) =>
          (globalThis as any).document.querySelector('#stream-view select[name="slowModeSeconds"]')
            .value === String(s),
        seconds,
      );
    }
    const values = () =>
      select.locator('option').evaluateAll((os: any[]) => os.map((o) => o.value));
    assert.deepEqual(await values(), ['0', '5', '13', '30', '60', '300']);
    await api(server.url, 'PATCH', '/api/streams/repaso', { slowModeSeconds: 30 });
    await host.page.locator('#stream-view .mode-slow', { hasText: '30' }).waitFor();
    assert.deepEqual(await values(), ['0', '5', '30', '60', '300']);
    assert.deepEqual(host.problems, []);
    await host.context.close();
  });

  test('request: names and file names are isolated; sizes read well; thumbnails load from a prefix without a final /', async () => {
    const requestId = newId();
    await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: '1' });
    const lab = await RequestClient.connect(
      server.url,
      await userToken('2', { username: `lab${RLO}`, role: 'LAB' }),
    );
    try {
      assert.equal((await lab.ask('joinRoom', { requestId })).ok, true);
      const file = (name: string, size: number, contentType = 'application/pdf') => ({
        url: `${filesUrl}/files/${encodeURIComponent(name)}`,
        name,
        contentType,
        size,
      });
      const sent = await lab.ask('message', {
        requestId,
        message: 'hola mundo',
        attachments: [
          file(`${RLO}informe.pdf`, 10),
          file('uno.txt', 1),
          file('datos.csv', 52 * 1024),
          file('imagen.iso', 5 * 1024 ** 3),
          file('respaldo.tar', 3.5 * 1024 ** 4),
          file('muestra.png', PNG.length, 'image/png'),
        ],
      });
      assert.equal(sent.ok, true, JSON.stringify(sent));

      const teacher = await openPage(
        browser,
        `${server.url}/#view=request&request=${requestId}&token=${await userToken('1', {
          username: 'ana',
          role: 'TEACHER',
        })}`,
      );
      const page = teacher.page;
      const files = page.locator('#request-view .messages .attachments');
      await files.waitFor();
      // The size after a file name with an override still reads left to right.
      const first = files.locator('li.file').first();
      assert.equal(await readsLeftToRight(first, 'bytes'), true);
      // In the page's language, with the plural it takes, up to terabytes.
      assert.deepEqual(await files.locator('.size').allTextContents(), [
        ' 10 bytes',
        ' 1 byte',
        ' 52 kB',
        ' 5 GB',
        ' 3.5 TB',
      ]);
      // The CSP lets the thumbnail in, though its prefix has no final '/'.
      const thumb = files.locator('img.thumb');
      // Loaded lazily: only once it is in view.
      await thumb.scrollIntoViewIfNeeded();
      await imageLoaded(thumb);
      assert.equal(await thumb.evaluate((img: any) => img.naturalWidth), 1);

      // The inbox's preview: the sender's override stays in the sender's name.
      const preview = page.locator(
        `#request-view .inbox-list li[data-request-id="${requestId}"] .inbox-preview`,
      );
      await preview.waitFor();
      assert.equal(await readsLeftToRight(preview, 'hola mundo'), true);

      // The typing line: the override stays in the name, the sentence reads on.
      lab.socket.emit('typing', { requestId });
      const typing = page.locator('#request-view .typing');
      await typing.waitFor();
      assert.equal(await readsLeftToRight(typing, 'is typing'), true);
      assert.deepEqual(teacher.problems, []);
      await teacher.context.close();
    } finally {
      lab.socket.close();
    }
  });
});
