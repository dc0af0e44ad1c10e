/**
 * The webhook sender against real HTTP servers on port 0 that answer badly:
 * what counts as success, the deadline, a body that never ends, a stop.
 */
import assert from 'node:assert/strict';
import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { after, describe, it } from 'node:test';
import { Webhook } from 'standardwebhooks';
import { HttpWebhookSender } from '../src/transport/webhook-sender.js';
import { newWebhookSecret } from './webhook-receiver.js';

const secret = newWebhookSecret();
const servers: Array<{ server: Server; sockets: Set<Socket> }> = [];
after(async () => {
  for (const { server, sockets } of servers) {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  }
});

async function serve(listener: RequestListener): Promise<string> {
  const server = createServer(listener);
  const sockets = new Set<Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  servers.push({ server, sockets });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
}

const sender = (url: string, timeoutMs = 500) =>
  new HttpWebhookSender({ url, secret, timeoutMs, maxSockets: 4 });
const never = new AbortController().signal;

describe('HttpWebhookSender', () => {
  it('POSTs the body with headers that standardwebhooks verifies; 2xx is success', async () => {
    let seen: { headers: Record<string, string>; body: string } | undefined;
    const url = await serve((req, res) => {
      let body = '';
      req.on('data', (c) => {
        body += c;
      });
      req.on('end', () => {
        seen = { headers: req.headers as Record<string, string>, body };
        res.writeHead(202).end();
      });
    });
    const s = sender(url);
    await s.send('msg_0123', '{"type":"stream.ended","timestamp":"t","data":{"key":"k"}}', never);
    s.close();
    assert.equal(seen?.headers['webhook-id'], 'msg_0123');
    assert.equal(seen?.headers['content-type'], 'application/json');
    assert.match(seen?.headers['webhook-signature'] ?? '', /^v1,/);
    assert.deepEqual(new Webhook(secret).verify(seen?.body ?? '', seen?.headers ?? {}), {
      type: 'stream.ended',
      timestamp: 't',
      data: { key: 'k' },
    });
  });

  it('signs non-ASCII bodies as their UTF-8 bytes, reusing one kept-alive connection', async () => {
    const seen: Array<{ headers: Record<string, string>; body: string }> = [];
    let connections = 0;
    const url = await serve((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        seen.push({
          headers: req.headers as Record<string, string>,
          body: Buffer.concat(chunks).toString('utf8'),
        });
        res.writeHead(204).end();
      });
    });
    servers.at(-1)?.server.on('connection', () => connections++);
    const s = sender(url);
    const bodies = Array.from(
      { length: 20 },
      (_, i) => `{"type":"stream.ended","timestamp":"t","data":{"key":"Señor ${i} — 日本語 😀"}}`,
    );
    for (const [i, body] of bodies.entries()) await s.send(`msg_${i}`, body, never);
    s.close();
    assert.equal(seen.length, 20);
    for (const [i, { headers, body }] of seen.entries()) {
      assert.equal(body, bodies[i]);
      assert.equal(headers['content-length'], String(Buffer.byteLength(body)));
      assert.deepEqual(new Webhook(secret).verify(body, headers), JSON.parse(body));
    }
    assert.equal(connections, 1, 'one connection for sends one after another');
  });

  it('sends at once no more than maxSockets, over as many kept-alive connections', async () => {
    let connections = 0;
    let open = 0;
    let most = 0;
    const url = await serve((req, res) => {
      open++;
      most = Math.max(most, open);
      req.resume();
      req.on('end', () =>
        setTimeout(() => {
          open--;
          res.writeHead(204).end();
        }, 5),
      );
    });
    servers.at(-1)?.server.on('connection', () => connections++);
    // Queued sends count their wait toward the deadline: a generous one here.
    const s = sender(url, 10_000);
    await Promise.all(Array.from({ length: 40 }, (_, i) => s.send(`msg_${i}`, '{}', never)));
    s.close();
    assert.equal(most, 4, 'four requests at once at most, and four reached');
    assert.equal(connections, 4);
  });

  it('waits through an interim 1xx answer for the final status', async () => {
    for (const [status, ok] of [
      [204, true],
      [500, false],
    ] as const) {
      const url = await serve((req, res) => {
        req.resume();
        req.on('end', () => {
          res.writeEarlyHints({ link: '</x>; rel=preload' });
          setTimeout(() => res.writeHead(status).end(), 20);
        });
      });
      const s = sender(url);
      const sending = s.send('msg_6', '{}', never);
      if (ok) await sending;
      else await assert.rejects(sending, /HTTP 500/);
      s.close();
    }
  });

  it('fails on any other status, a redirect included', async () => {
    for (const status of [301, 400, 500, 503]) {
      const url = await serve((_req, res) => res.writeHead(status, { location: '/x' }).end());
      const s = sender(url);
      await assert.rejects(s.send('msg_1', '{}', never), new RegExp(`HTTP ${status}`));
      s.close();
    }
  });

  it('fails at the deadline when no answer comes', async () => {
    const url = await serve(() => {});
    const s = sender(url, 200);
    const started = Date.now();
    await assert.rejects(s.send('msg_2', '{}', never), /no answer within 200 ms/);
    assert.ok(Date.now() - started < 1_000);
    s.close();
  });

  it('takes a 2xx with a body that never ends, reading at most a bounded part of it', async () => {
    let written = 0;
    const url = await serve((_req, res) => {
      res.writeHead(200);
      const chunk = Buffer.alloc(16 * 1024, 120);
      const pump = () => {
        while (res.writable && written < 64 * 1024 * 1024 && res.write(chunk))
          written += chunk.length;
        if (res.writable && written < 64 * 1024 * 1024) res.once('drain', pump);
      };
      pump();
    });
    const s = sender(url, 2_000);
    await s.send('msg_3', '{}', never);
    await new Promise((r) => setTimeout(r, 300));
    s.close();
    assert.ok(written < 8 * 1024 * 1024, `the sender stopped reading (${written} bytes written)`);
  });

  it('fails at once when stopped', async () => {
    const url = await serve(() => {});
    const s = sender(url, 5_000);
    const stop = new AbortController();
    const sending = s.send('msg_4', '{}', stop.signal);
    setTimeout(() => stop.abort(), 50);
    const started = Date.now();
    await assert.rejects(sending, /stopped/);
    assert.ok(Date.now() - started < 1_000);
    s.close();
  });

  it('fails when the connection is refused', async () => {
    const url = await serve(() => {});
    const { server } = servers.pop() as { server: Server };
    await new Promise((r) => server.close(r));
    const s = sender(url);
    await assert.rejects(s.send('msg_5', '{}', never), /ECONNREFUSED/);
    s.close();
  });
});
