/**
 * The web client's lab desk in a real browser: the inbox with unread badges
 * kept live, the typing indicator, editing and deleting one's own messages,
 * and attachments as links with images as thumbnails, served from an allowed
 * prefix (the CSP lets exactly those through).
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { deflateSync } from 'node:zlib';
import type { Browser, Page } from 'playwright-core';
import { newId } from '../src/core/ids.js';
import { browserSkip, imageLoaded, launch, openPage, screenshot } from './browser.js';
import { api, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';

const skip = browserSkip();

/** A valid 8×8 PNG, so the browser really decodes a thumbnail. */
function png(): Buffer {
  const crc = (buf: Buffer) => {
    let c = ~0;
    for (const b of buf) {
      c ^= b;
      for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
    }
    return ~c >>> 0;
  };
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type), data]);
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(8, 0);
  header.writeUInt32BE(8, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const rows = Buffer.alloc(8 * (1 + 8 * 3), 0x80);
  for (let y = 0; y < 8; y++) rows[y * 25] = 0;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(rows)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

const inboxRow = (page: Page, requestId: string) =>
  page.locator(`#request-view .inbox-list li[data-request-id="${requestId}"]`);
const messages = (page: Page) => page.locator('#request-view .messages');

describe('web client: lab desk', { skip }, () => {
  let server: TestServer;
  let files: Server;
  let prefix: string;
  let browser: Browser;
  const clients: RequestClient[] = [];

  before(async () => {
    const image = png();
    files = createServer((req, res) => {
      if (req.url === '/files/sample.png') {
        res.writeHead(200, { 'content-type': 'image/png', 'content-length': image.length });
        res.end(image);
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve) => files.listen(0, '127.0.0.1', resolve));
    prefix = `http://127.0.0.1:${(files.address() as AddressInfo).port}/files/`;
    server = await startServer({ ATTACHMENT_URL_PREFIXES: prefix, REQUEST_RATE_LIMIT: '1000/1s' });
    browser = await launch();
  });
  after(async () => {
    for (const c of clients) c.close();
    await browser?.close();
    await server?.close();
    await new Promise((r) => files?.close(r));
  });

  test('inbox badges live, typing, edit and delete, attachments as links and thumbnails', async () => {
    const [open, other] = [newId(), newId()];
    for (const id of [open, other]) {
      assert.equal(
        (await api(server.url, 'PUT', `/api/requests/${id}`, { ownerId: '1' })).status,
        201,
      );
    }
    const lab = await RequestClient.connect(
      server.url,
      await userToken('2', { username: 'lab', role: 'LAB' }),
    );
    clients.push(lab);
    await lab.ask('joinRoom', { requestId: other });
    await lab.ask('message', { requestId: other, message: 'Antes' });

    const token = await userToken('1', { username: 'ana', role: 'TEACHER' });
    const teacher = await openPage(
      browser,
      `${server.url}/#view=request&request=${open}&token=${token}`,
    );
    const page = teacher.page;
    await page.locator('#request-view .status[data-state="live"]').waitFor();
    // The inbox lists both requests; the one with a message has a badge.
    await inboxRow(page, other).locator('.badge', { hasText: '1' }).waitFor();
    assert.equal(await inboxRow(page, open).locator('.badge').isHidden(), true);

    // New messages elsewhere raise the badge live, with attachments in the preview.
    const sent = await lab.ask('message', {
      requestId: other,
      message: 'Resultados',
      attachments: [
        { url: `${prefix}sample.png`, name: 'sample.png', contentType: 'image/png', size: 120 },
        {
          url: `${prefix}report.pdf`,
          name: 'report.pdf',
          contentType: 'application/pdf',
          size: 52_000,
        },
      ],
    });
    assert.equal(sent.ok, true, JSON.stringify(sent));
    await inboxRow(page, other).locator('.badge', { hasText: '2' }).waitFor();
    await inboxRow(page, other).getByText('lab: Resultados').waitFor();

    // Typing in the open request shows who is typing.
    await lab.ask('joinRoom', { requestId: open });
    await lab.ask('typing', { requestId: open });
    await page.locator('#request-view .typing', { hasText: 'lab is typing…' }).waitFor();

    // Opening the other request from the inbox: the messages are read, the badge goes.
    await inboxRow(page, other).locator('button').click();
    await messages(page).getByText('Resultados').waitFor();
    const thumb = messages(page).locator('img.thumb');
    await thumb.waitFor();
    assert.equal(await thumb.getAttribute('src'), `${prefix}sample.png`);
    // Decoded, so the CSP let it through from the allowed prefix.
    await imageLoaded(thumb);
    assert.equal(await thumb.evaluate((img: any) => img.naturalWidth), 8);
    const pdf = messages(page).getByRole('link', { name: 'report.pdf' });
    assert.equal(await pdf.getAttribute('href'), `${prefix}report.pdf`);
    assert.equal(await pdf.getAttribute('rel'), 'noopener noreferrer');
    await inboxRow(page, other).locator('.badge').waitFor({ state: 'hidden' });

    // My own message: edit it, then delete it; the lab sees both.
    await lab.ask('joinRoom', { requestId: other });
    const input = page.locator('#request-view .composer input');
    await input.fill('Gracias, lo reviso mañna');
    await input.press('Enter');
    const mine = messages(page).locator('.msg.mine', { hasText: 'mañna' });
    await mine
      .locator('.tick[data-state="sent"], .tick[data-state="delivered"], .tick[data-state="read"]')
      .waitFor();
    await mine.locator('button.edit').click();
    assert.equal(await input.inputValue(), 'Gracias, lo reviso mañna');
    await page.locator('#request-view .editing').waitFor();
    await input.fill('Gracias, lo reviso mañana');
    await input.press('Enter');
    const edited = messages(page).locator('.msg.mine', { hasText: 'mañana' });
    await edited.locator('.edited').waitFor();
    const update = await lab.next(
      'messageUpdated',
      (m) => m.message === 'Gracias, lo reviso mañana',
    );
    assert.ok(update.editedAt);
    await edited.locator('button.delete').click();
    await messages(page)
      .locator('.msg.mine .text.deleted', { hasText: 'Message deleted' })
      .waitFor();
    await lab.next('messageDeleted', (d) => d.messageId === update._id);

    // The lab edits its message: the change shows up in place.
    await lab.ask('editMessage', {
      requestId: other,
      messageId: sent.message._id,
      message: 'Resultados finales',
    });
    await messages(page).getByText('Resultados finales').waitFor();
    assert.equal(await messages(page).locator('.msg:not(.mine) .edited').count(), 1);
    await screenshot(page, 'request-desk');
    assert.deepEqual(teacher.problems, []);
    await teacher.context.close();
  });
});
