/**
 * The web client: the files under `web/` (and Socket.IO's own browser build),
 * read once at start-up and served from memory. Only the names found at
 * start-up exist, so a request path is a key in a map, never a file-system
 * path: there is nothing to traverse.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseTarget, type Target } from './target.js';

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

/**
 * Nothing inline and nothing from elsewhere: the client's own modules and
 * styles, and sockets back to this origin ('self' covers ws: in CSP Level 3).
 */
const csp = (imageSources: readonly string[]) =>
  [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    // Attachment thumbnails: only from the prefixes attachments may use (see imageSource).
    ['img-src', "'self'", ...imageSources].join(' '),
    "connect-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');

const CSP = csp([]);

/**
 * The CSP source that lets in the images under an attachment prefix. CSP
 * matches a source path ending in `/` as a directory and any other path
 * exactly, and a source has no query: so it is the prefix's origin and path up
 * to its last `/` (`http://h/files` gives `http://h/`, `https://h/q/?sig=1`
 * gives `https://h/q/`). The server and the client still hold every URL to the
 * whole prefix; the CSP is the browser's second line behind them.
 */
export function imageSource(prefix: string): string {
  const url = new URL(prefix);
  return url.origin + url.pathname.slice(0, url.pathname.lastIndexOf('/') + 1);
}

const SECURITY_HEADERS = {
  'content-security-policy': CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
};

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

/** `web/` at the repository root; this module runs compiled, from `dist/src/transport/`. */
export function defaultWebDir(): string {
  return fileURLToPath(new URL('../../../web/', import.meta.url));
}

/** charla/client's compiled modules: `dist/src/client/`, beside this module's directory. */
export function defaultClientDir(): string {
  return fileURLToPath(new URL('../client/', import.meta.url));
}

/**
 * The Socket.IO browser client as an ES module. It comes from the `socket.io`
 * package itself (the file it would serve with `serveClient`), so it is a
 * production dependency and always the server's own version.
 */
function socketIoClientPath(): string {
  const require = createRequire(import.meta.url);
  return join(
    dirname(require.resolve('socket.io/package.json')),
    'client-dist',
    'socket.io.esm.min.js',
  );
}

function asset(body: Buffer, file: string): Asset {
  const type = CONTENT_TYPES[extname(file)] ?? 'application/octet-stream';
  const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
  return { body, type, etag };
}

export function loadAssets(webDir = defaultWebDir()): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  for (const entry of readdirSync(webDir, { withFileTypes: true })) {
    if (!entry.isFile() || entry.name.startsWith('.') || !(extname(entry.name) in CONTENT_TYPES)) {
      continue;
    }
    const file = join(webDir, entry.name);
    assets.set(`/${entry.name}`, asset(readFileSync(file), file));
  }
  const index = assets.get('/index.html');
  if (index) assets.set('/', index);
  const io = socketIoClientPath();
  assets.set('/vendor/socket.io.esm.min.js', asset(readFileSync(io), io));
  // The web client is built on charla/client: its ES modules as compiled, under /client/.
  const clientDir = defaultClientDir();
  for (const entry of readdirSync(clientDir, { withFileTypes: true })) {
    if (entry.isFile() && entry.name.endsWith('.js')) {
      const file = join(clientDir, entry.name);
      assets.set(`/client/${entry.name}`, asset(readFileSync(file), file));
    }
  }
  return assets;
}

/**
 * Returns a handler that answers GET/HEAD for the client's files and returns
 * false for anything else, which then goes on to the API.
 */
export interface WebOptions {
  /**
   * Attachment URL prefixes: images under them may be shown as thumbnails
   * (the CSP allows them, and the client reads them from `/client-config.json`).
   */
  attachmentUrlPrefixes?: readonly string[];
  /**
   * How long after `createdAt` the sender may still edit or delete a request
   * chat message: the client offers Edit and Delete only within it.
   */
  editWindowSeconds?: number;
}

export function createWebHandler(assets = loadAssets(), options: WebOptions = {}) {
  // A CSP source list is split on spaces and `;`: a prefix whose source holds either is left out.
  const prefixes = (options.attachmentUrlPrefixes ?? []).filter(
    (p) => URL.canParse(p) && !/[\s;,']/.test(imageSource(p)),
  );
  const sources = [...new Set(prefixes.map(imageSource))];
  const securityHeaders = { ...SECURITY_HEADERS, 'content-security-policy': csp(sources) };
  const config = JSON.stringify({
    attachmentUrlPrefixes: prefixes,
    editWindowSeconds: options.editWindowSeconds,
  });
  assets = new Map(assets);
  assets.set('/client-config.json', {
    body: Buffer.from(config),
    type: 'application/json; charset=utf-8',
    etag: `"${createHash('sha256').update(config).digest('base64url').slice(0, 27)}"`,
  });
  return function serveWeb(req: IncomingMessage, res: ServerResponse): boolean {
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    let target: Target;
    try {
      target = parseTarget(req.url);
    } catch {
      return false; // the API handler answers a malformed target with its 400
    }
    const found = target.form === 'path' ? assets.get(target.path) : undefined;
    if (!found) return false;
    // No fingerprinted names without a bundler, so every file is revalidated:
    // a deploy is seen at once, and an unchanged file costs a 304.
    const headers = {
      ...securityHeaders,
      'content-type': found.type,
      'cache-control': 'no-cache',
      etag: found.etag,
    };
    if (req.headers['if-none-match'] === found.etag) {
      res.writeHead(304, headers);
      res.end();
      return true;
    }
    res.writeHead(200, { ...headers, 'content-length': found.body.length });
    res.end(req.method === 'HEAD' ? undefined : found.body);
    return true;
  };
}
