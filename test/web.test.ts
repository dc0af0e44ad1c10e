/** The web client's static route: types, caching, security headers, no traversal. */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, test } from 'node:test';
import { startServer, type TestServer } from './helpers.js';

let server: TestServer;
before(async () => {
  server = await startServer();
});
after(() => server.close());

/** A raw GET, so the path reaches the server exactly as written (fetch would normalize it). */
function rawGet(path: string): Promise<{ status: number; body: string }> {
  const { hostname, port } = new URL(server.url);
  return new Promise((resolve, reject) => {
    request({ hostname, port, path, method: 'GET' }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        body += c.toString();
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    })
      .on('error', reject)
      .end();
  });
}

test('/ is the client, with a strict CSP and revalidation', async () => {
  const res = await fetch(`${server.url}/`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
  const csp = res.headers.get('content-security-policy') ?? '';
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe/);
  assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(res.headers.get('cache-control'), 'no-cache');
  assert.match(await res.text(), /<script type="module" src="\/app.js">/);

  const etag = res.headers.get('etag') ?? '';
  const again = await fetch(`${server.url}/`, { headers: { 'if-none-match': etag } });
  assert.equal(again.status, 304);
  assert.equal(await again.text(), '');
});

test('modules, styles, icon and the Socket.IO client have their types', async () => {
  for (const [path, type] of [
    ['/app.js', 'text/javascript; charset=utf-8'],
    ['/style.css', 'text/css; charset=utf-8'],
    ['/icon.svg', 'image/svg+xml'],
    ['/vendor/socket.io.esm.min.js', 'text/javascript; charset=utf-8'],
  ]) {
    const res = await fetch(server.url + path);
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get('content-type'), type, path);
  }
  const head = await fetch(`${server.url}/app.js`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.ok(Number(head.headers.get('content-length')) > 0);
});

test('nothing outside web/ is reachable', async () => {
  for (const [path, status] of [
    ['/../package.json', 404],
    ['/%2e%2e/package.json', 404],
    ['/..%2fpackage.json', 404],
    ['/vendor/../../package.json', 404],
    ['//etc/passwd', 400], // a malformed target: a leading "//" reads as a host
    ['/app.js/', 404],
    ['/web/app.js', 404],
    ['/README.md', 404],
  ] as const) {
    const res = await rawGet(path);
    assert.equal(res.status, status, path);
    assert.doesNotMatch(res.body, /"name": "charla"|root:/, path);
  }
});

test('the API is untouched: its paths still answer JSON', async () => {
  const res = await fetch(`${server.url}/healthz`);
  assert.deepEqual(await res.json(), { status: 'ok' });
  const post = await fetch(`${server.url}/`, { method: 'POST' });
  assert.equal(post.status, 404);
});

test('charla/client is served as the browser loads it: /client/index.js and its modules', async () => {
  const res = await fetch(`${server.url}/client/index.js`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/javascript; charset=utf-8');
  const body = await res.text();
  assert.match(body, /export \{[^}]*StreamChat/);
  for (const m of body.matchAll(/from '\.\/([a-z-]+\.js)'/g)) {
    assert.equal((await fetch(`${server.url}/client/${m[1]}`)).status, 200, m[1]);
  }
  assert.equal((await fetch(`${server.url}/client/index.d.ts`)).status, 404);
});

test('/client-config.json carries the attachment prefixes and the edit window', async () => {
  const res = await fetch(`${server.url}/client-config.json`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'application/json; charset=utf-8');
  assert.equal(res.headers.get('cache-control'), 'no-cache');
  assert.deepEqual(await res.json(), { attachmentUrlPrefixes: [], editWindowSeconds: 900 });

  const other = await startServer({
    REQUEST_EDIT_WINDOW_SECONDS: '42',
    ATTACHMENT_URL_PREFIXES: 'https://files.example/',
  });
  try {
    const config = await (await fetch(`${other.url}/client-config.json`)).json();
    assert.deepEqual(config, {
      attachmentUrlPrefixes: ['https://files.example/'],
      editWindowSeconds: 42,
    });
  } finally {
    await other.close();
  }
});

test("img-src holds each attachment prefix up to its last '/', and no data: images", async () => {
  const other = await startServer({
    ATTACHMENT_URL_PREFIXES: [
      'http://files.example/att',
      'https://q.example/signed/?sig=abc#top',
      'https://ok.example/thumbs/',
      'https://ok.example/thumbs/small/',
    ].join(','),
  });
  try {
    const csp = (await fetch(`${other.url}/`)).headers.get('content-security-policy') ?? '';
    const imgSrc = /(?:^|; )img-src ([^;]*)/.exec(csp)?.[1]?.split(' ');
    // CSP reads a path without a final '/' as one file, and a source has no query:
    // "http://files.example/att" as a source would let no thumbnail under it through.
    assert.deepEqual(imgSrc, [
      "'self'",
      'http://files.example/',
      'https://q.example/signed/',
      'https://ok.example/thumbs/',
      'https://ok.example/thumbs/small/',
    ]);
    // The client still holds URLs to the whole prefixes, as the server does.
    const config = (await (await fetch(`${other.url}/client-config.json`)).json()) as {
      attachmentUrlPrefixes: string[];
    };
    assert.deepEqual(config.attachmentUrlPrefixes, [
      'http://files.example/att',
      'https://q.example/signed/?sig=abc#top',
      'https://ok.example/thumbs/',
      'https://ok.example/thumbs/small/',
    ]);
  } finally {
    await other.close();
  }
});
