/**
 * The HTTP surface: the platform's server API (protocol section 4, `X-API-Key`),
 * health, readiness and metrics. Every refusal is a ChatError rendered as
 * `{error_code, message}` with its status.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import type { Limits } from '../config.js';
import { asChatError, ChatError } from '../core/errors.js';
import { bearerToken } from '../core/identity.js';
import { isObjectId, normalizeId } from '../core/ids.js';
import { isStorableText, UNSTORABLE_TEXT, USER_ID_MAX_CHARS } from '../core/limits.js';
import type { PageQuery, StreamMessage } from '../core/messages.js';
import type { Requests } from '../core/requests.js';
import type { ModerationAction } from '../core/stream-rules.js';
import {
  MAX_SLOW_MODE_SECONDS,
  MAX_TIMEOUT_SECONDS,
  STREAM_KEY,
  type Streams,
} from '../core/streams.js';
import { FAILED_PAGE_MAX, type Webhooks } from '../core/webhooks.js';
import type { Logger } from '../observability/log.js';
import { safePath } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import { storable } from './fields.js';
import { parseTarget } from './target.js';

export interface Readiness {
  /** Each check resolves when its dependency answers. */
  checks: Record<string, () => Promise<void>>;
}

export interface HttpDeps {
  apiKey: string;
  /** When set, `GET /metrics` needs `Authorization: Bearer <metricsToken>`. */
  metricsToken?: string | undefined;
  limits: Limits;
  streams: Streams<unknown>;
  requests: Requests;
  /** Undefined without WEBHOOK_URL: the webhook routes answer 404. */
  webhooks?: Webhooks | undefined;
  readiness: Readiness;
  metrics: Metrics;
  log: Logger;
}

interface RouteContext {
  req: IncomingMessage;
  params: string[];
  query: URLSearchParams;
  body: () => Promise<unknown>;
}

interface Route {
  method: string;
  path: RegExp;
  /** True for the platform API: requires `X-API-Key`. */
  apiKey: boolean;
  handle(ctx: RouteContext): Promise<{ status: number; body: unknown }>;
}

const idLike = z.union([storable(1, USER_ID_MAX_CHARS), z.number().finite()]).transform(String);

const requestBody = z.object({ ownerId: idLike });

const streamBody = z.object({
  title: storable(0, 500).nullable().optional(),
  ownerId: idLike.nullable().optional(),
});

const streamPatchBody = z.object({
  title: storable(0, 500).nullable().optional(),
  moderators: z.array(idLike).max(1000).optional(),
  slowModeSeconds: z.number().int().min(0).max(MAX_SLOW_MODE_SECONDS).optional(),
  membersOnly: z.boolean().optional(),
  paused: z.boolean().optional(),
});

const membersBody = z.object({ userIds: z.array(idLike) });

const banBody = z.object({
  seconds: z.number().int().min(1).max(MAX_TIMEOUT_SECONDS).optional(),
  reason: storable(0, 500).optional(),
});

/** A stored chat for the server API: a chat's data (`user` as in frames), and deleted ones say so. */
const apiChat = (m: StreamMessage) => ({
  user: m.username,
  ...m,
  deletedAt: m.deletedAt ?? null,
  deletedBy: m.deletedBy ?? null,
});

/** A moderation log entry for the server API: `userId`, `messageId` and `reason` only where they apply. */
const apiAction = (a: ModerationAction) =>
  Object.fromEntries(Object.entries(a).filter(([, v]) => v !== null));

const READY_TIMEOUT_MS = 2_000;

function withTimeout(p: Promise<void>, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
    p.then(
      () => {
        clearTimeout(t);
        resolve();
      },
      (err) => {
        clearTimeout(t);
        reject(err);
      },
    );
  });
}

/** Parses `?before=&limit=` of the history endpoints. */
export function pageQuery(query: URLSearchParams, limits: Limits): PageQuery {
  const before = query.get('before') ?? undefined;
  if (before !== undefined && !isObjectId(before)) {
    throw new ChatError('invalid_payload', '"before" must be a message id.', { httpStatus: 400 });
  }
  const rawLimit = query.get('limit');
  const limit = rawLimit === null ? limits.historyPage : Number(rawLimit);
  if (!Number.isInteger(limit) || limit < 1 || limit > limits.historyMaxPage) {
    throw new ChatError(
      'invalid_payload',
      `"limit" must be an integer from 1 to ${limits.historyMaxPage}.`,
      { httpStatus: 400 },
    );
  }
  return { before: before && normalizeId(before), limit };
}

/** Validates a JSON body against `schema`, as one `invalid_payload` naming the field. */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  const parsed = schema.safeParse(body);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const field = issue?.path.join('.') || 'body';
  throw new ChatError('invalid_payload', `${field}: ${issue?.message ?? 'invalid'}`);
}

/**
 * The stream key of a path, or `invalid_payload` (400): a key outside the
 * contract's alphabet is bad input, not an unknown stream or route.
 */
function streamKey(params: readonly string[]): string {
  const k = params[0] ?? '';
  if (!STREAM_KEY.test(k)) {
    throw new ChatError(
      'invalid_payload',
      'The stream key must be 1 to 64 characters of A-Z, a-z, 0-9, "_" and "-".',
      { httpStatus: 400 },
    );
  }
  return k;
}

/** A 24-hex id of a path (`what`: whose), lower-cased, or `invalid_payload` (400). */
function idParam(raw: string, what: string): string {
  if (!isObjectId(raw)) {
    throw new ChatError('invalid_payload', `The ${what} id must be a 24-hex id.`, {
      httpStatus: 400,
    });
  }
  return normalizeId(raw);
}

function streamRoutes(deps: HttpDeps): Route[] {
  const key = /^\/api\/streams\/([^/]+)$/;
  return [
    {
      method: 'PUT',
      path: key,
      apiKey: true,
      async handle({ params, body }) {
        const k = streamKey(params);
        const fields = parseBody(streamBody, await body());
        const { created } = await deps.streams.put(k, fields);
        return { status: created ? 201 : 200, body: { key: k, created } };
      },
    },
    {
      method: 'DELETE',
      path: key,
      apiKey: true,
      async handle({ params }) {
        const k = streamKey(params);
        if (!(await deps.streams.end(k))) throw new ChatError('stream_not_found');
        return { status: 200, body: { key: k, ended: true } };
      },
    },
    {
      method: 'GET',
      path: /^\/api\/streams\/([^/]+)\/messages$/,
      apiKey: true,
      async handle({ params, query }) {
        const k = streamKey(params);
        if ((await deps.streams.status(k)) === 'unknown') throw new ChatError('stream_not_found');
        const page = await deps.streams.history(k, pageQuery(query, deps.limits));
        return { status: 200, body: { ...page, messages: page.messages.map(apiChat) } };
      },
    },
    ...classroomRoutes(deps),
  ];
}

/** A user id from a path segment, as a token or a body may carry it. */
function userIdParam(raw: string): string {
  let id = '';
  try {
    id = decodeURIComponent(raw);
  } catch {}
  if (id.length === 0 || id.length > USER_ID_MAX_CHARS || !isStorableText(id)) {
    throw new ChatError(
      'invalid_payload',
      `The user id must be 1 to ${USER_ID_MAX_CHARS} characters and ${UNSTORABLE_TEXT}.`,
      { httpStatus: 400 },
    );
  }
  return id;
}

/** protocol section 7: the server API of the live classroom. */
function classroomRoutes(deps: HttpDeps): Route[] {
  const base = '^\\/api\\/streams\\/([^/]+)';
  const path = (rest: string) => new RegExp(`${base}${rest}$`);
  return [
    {
      method: 'GET',
      path: path(''),
      apiKey: true,
      async handle({ params }) {
        const info = await deps.streams.describe(streamKey(params));
        if (!info) throw new ChatError('stream_not_found');
        return { status: 200, body: { ...info, pinned: info.pinned && apiChat(info.pinned) } };
      },
    },
    {
      method: 'PATCH',
      path: path(''),
      apiKey: true,
      async handle({ params, body }) {
        const k = streamKey(params);
        const { title, moderators, ...settings } = parseBody(streamPatchBody, await body());
        await deps.streams.update(k, {
          ...settings,
          ...(title === undefined ? {} : { title }),
          ...(moderators === undefined ? {} : { moderators: [...new Set(moderators)] }),
        });
        const info = await deps.streams.describe(k);
        return {
          status: 200,
          body: info && { ...info, pinned: info.pinned && apiChat(info.pinned) },
        };
      },
    },
    {
      method: 'PUT',
      path: path('\\/members'),
      apiKey: true,
      async handle({ params, body }) {
        const { userIds } = parseBody(membersBody, await body());
        await deps.streams.setMembers(streamKey(params), userIds);
        return { status: 200, body: { userIds: [...new Set(userIds)] } };
      },
    },
    {
      method: 'DELETE',
      path: path('\\/messages\\/([^/]+)'),
      apiKey: true,
      async handle({ params }) {
        const k = streamKey(params);
        const id = idParam(params[1] as string, 'message');
        if ((await deps.streams.status(k)) === 'unknown') throw new ChatError('stream_not_found');
        await deps.streams.moderate(k, 'api', { type: 'delete', id });
        return { status: 200, body: { id, deleted: true } };
      },
    },
    {
      method: 'PUT',
      path: path('\\/bans\\/([^/]+)'),
      apiKey: true,
      async handle({ params, body }) {
        const k = streamKey(params);
        const raw = params[1] as string;
        const target = userIdParam(raw);
        const { seconds, reason } = parseBody(banBody, await body());
        const ban = await deps.streams.moderate(
          k,
          'api',
          seconds === undefined
            ? { type: 'ban', userId: target, reason }
            : { type: 'timeout', userId: target, seconds, reason },
        );
        return { status: 200, body: ban ?? { userId: target } };
      },
    },
    {
      method: 'DELETE',
      path: path('\\/bans\\/([^/]+)'),
      apiKey: true,
      async handle({ params }) {
        const k = streamKey(params);
        const raw = params[1] as string;
        const target = userIdParam(raw);
        await deps.streams.moderate(k, 'api', { type: 'unban', userId: target });
        return { status: 200, body: { userId: target, banned: false } };
      },
    },
    {
      method: 'GET',
      path: path('\\/bans'),
      apiKey: true,
      async handle({ params }) {
        return { status: 200, body: { bans: await deps.streams.bans(streamKey(params)) } };
      },
    },
    {
      method: 'GET',
      path: path('\\/moderation-log'),
      apiKey: true,
      async handle({ params, query }) {
        const before = query.get('before') ?? undefined;
        if (before !== undefined && !/^[1-9][0-9]{0,17}$/.test(before)) {
          throw new ChatError('invalid_payload', '"before" must be a moderation action id.', {
            httpStatus: 400,
          });
        }
        const { limit } = pageQuery(
          new URLSearchParams({ limit: query.get('limit') ?? String(deps.limits.historyPage) }),
          deps.limits,
        );
        const page = await deps.streams.moderationLog(streamKey(params), { before, limit });
        return { status: 200, body: { ...page, actions: page.actions.map(apiAction) } };
      },
    },
  ];
}

function requestRoutes(deps: HttpDeps): Route[] {
  const checked = (raw: string) => idParam(raw, 'request');
  return [
    {
      method: 'PUT',
      path: /^\/api\/requests\/([^/]+)$/,
      apiKey: true,
      async handle({ params, body }) {
        const id = checked(params[0] as string);
        const { ownerId } = parseBody(requestBody, await body());
        const { created } = await deps.requests.put(id, ownerId);
        return { status: created ? 201 : 200, body: { requestId: id, ownerId, created } };
      },
    },
    {
      method: 'GET',
      path: /^\/api\/requests\/([^/]+)\/messages$/,
      apiKey: true,
      async handle({ params, query }) {
        const id = checked(params[0] as string);
        const page = pageQuery(query, deps.limits);
        if (!(await deps.requests.exists(id))) {
          throw new ChatError('not_found', 'There is no request with this id.');
        }
        return { status: 200, body: await deps.requests.history(id, page) };
      },
    },
  ];
}

function webhookRoutes(deps: HttpDeps): Route[] {
  const enabled = () => {
    if (!deps.webhooks) throw new ChatError('not_found', 'Webhooks are not configured.');
    return deps.webhooks;
  };
  return [
    {
      method: 'GET',
      path: /^\/api\/webhooks\/failed$/,
      apiKey: true,
      async handle({ query }) {
        const raw = query.get('limit');
        const limit = raw === null ? 100 : Number(raw);
        if (!Number.isInteger(limit) || limit < 1 || limit > FAILED_PAGE_MAX) {
          throw new ChatError(
            'invalid_payload',
            `"limit" must be an integer from 1 to ${FAILED_PAGE_MAX}.`,
            { httpStatus: 400 },
          );
        }
        // Without webhooks configured nothing can have failed: the list is empty, not missing.
        const events = deps.webhooks ? await deps.webhooks.failed(limit) : [];
        return { status: 200, body: { events } };
      },
    },
    {
      method: 'POST',
      path: /^\/api\/webhooks\/failed\/(msg_[A-Za-z0-9_-]{1,64})\/retry$/,
      apiKey: true,
      async handle({ params }) {
        const id = params[0] as string;
        if (!(await enabled().retry(id))) {
          throw new ChatError('not_found', 'There is no failed webhook event with this id.');
        }
        return { status: 202, body: { id, state: 'pending' } };
      },
    },
  ];
}

/** The platform's view of a user's unread request messages (protocol section 8). */
function userRoutes(deps: HttpDeps): Route[] {
  return [
    {
      method: 'GET',
      path: /^\/api\/users\/([^/]+)\/unread$/,
      apiKey: true,
      async handle({ params, query }) {
        const userId = userIdParam(params[0] as string);
        // Compared upper-case, as roles in tokens are.
        const role = query.get('role')?.toUpperCase();
        if (role !== 'LAB' && role !== 'TEACHER') {
          throw new ChatError('invalid_payload', '"role" must be TEACHER or LAB.', {
            httpStatus: 400,
          });
        }
        return { status: 200, body: await deps.requests.unread(userId, role) };
      },
    },
  ];
}

function opsRoutes(deps: HttpDeps): Route[] {
  return [
    {
      method: 'GET',
      path: /^\/healthz$/,
      apiKey: false,
      async handle() {
        return { status: 200, body: { status: 'ok' } };
      },
    },
    {
      method: 'GET',
      path: /^\/api\/openapi\.json$/,
      apiKey: false,
      async handle() {
        return { status: 200, body: await openApiDocument() };
      },
    },
    {
      method: 'GET',
      path: /^\/readyz$/,
      apiKey: false,
      async handle() {
        const entries = Object.entries(deps.readiness.checks);
        const results = await Promise.allSettled(
          entries.map(([, check]) => withTimeout(check(), READY_TIMEOUT_MS)),
        );
        const report: Record<string, string> = {};
        entries.forEach(([name], i) => {
          const r = results[i];
          report[name] = r?.status === 'fulfilled' ? 'ok' : 'unavailable';
        });
        const ready = results.every((r) => r.status === 'fulfilled');
        return {
          status: ready ? 200 : 503,
          body: { status: ready ? 'ready' : 'not_ready', ...report },
        };
      },
    },
  ];
}

/** docs/openapi.yaml at the repository root; this module runs compiled, from `dist/src/transport/`. */
const OPENAPI_FILE = new URL('../../../docs/openapi.yaml', import.meta.url);
let openApi: Promise<unknown> | undefined;

/** The HTTP API's description, read on first request (start-up does not pay for the YAML parser). */
function openApiDocument(): Promise<unknown> {
  openApi ??= (async () => {
    const { parse } = await import('yaml');
    return parse(await readFile(OPENAPI_FILE, 'utf8')) as unknown;
  })();
  // A failed read is retried by the next request rather than remembered.
  openApi.catch(() => {
    openApi = undefined;
  });
  return openApi;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

const digest = (value: string) => createHash('sha256').update(value).digest();

/**
 * Compares a presented secret with the configured one in time that depends on
 * neither: both are hashed first, so even their lengths stay hidden.
 */
export function sameSecret(given: string | string[] | undefined, expectedDigest: Buffer): boolean {
  if (typeof given !== 'string') return false;
  return timingSafeEqual(digest(given), expectedDigest);
}

function readBody(req: IncomingMessage, maxBytes: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        // Answer now and discard the rest; a body past 16 times the limit is cut off.
        reject(new ChatError('invalid_payload', 'The body is too large.', { httpStatus: 413 }));
        chunks.length = 0;
        if (size > 16 * maxBytes) req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (size > maxBytes) return;
      try {
        // Fatal: bytes that are not UTF-8 would otherwise be stored as U+FFFD.
        const text = utf8.decode(Buffer.concat(chunks));
        if (text.trim() === '') return resolve({});
        resolve(JSON.parse(text));
      } catch {
        reject(new ChatError('invalid_json', 'The body is not valid JSON in UTF-8.'));
      }
    });
    // A peer that resets mid-body is gone, not a server fault: no error log.
    req.on('error', () =>
      reject(new ChatError('invalid_payload', 'The body was cut off.', { httpStatus: 400 })),
    );
  });
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

async function serveMetrics(
  deps: HttpDeps,
  tokenDigest: Buffer | undefined,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  if (tokenDigest !== undefined) {
    if (!sameSecret(bearerToken(req.headers.authorization), tokenDigest)) {
      res.setHeader('www-authenticate', 'Bearer');
      throw new ChatError('unauthorized', 'A valid metrics bearer token is required.');
    }
  }
  res.writeHead(200, { 'content-type': deps.metrics.registry.contentType });
  res.end(await deps.metrics.registry.metrics());
}

export function createHttpHandler(deps: HttpDeps) {
  const expectedKey = digest(deps.apiKey);
  const metricsToken = deps.metricsToken === undefined ? undefined : digest(deps.metricsToken);
  const routes = [
    ...opsRoutes(deps),
    ...streamRoutes(deps),
    ...requestRoutes(deps),
    ...webhookRoutes(deps),
    ...userRoutes(deps),
  ];

  const handle = async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const target = parseTarget(req.url);
      if (target.form === 'asterisk') {
        if (req.method !== 'OPTIONS') {
          throw new ChatError('invalid_payload', 'Only OPTIONS may use the "*" target.', {
            httpStatus: 400,
          });
        }
        res.writeHead(204);
        res.end();
        return;
      }
      if (req.method === 'GET' && target.path === '/metrics') {
        return await serveMetrics(deps, metricsToken, req, res);
      }
      let allowed: string[] = [];
      for (const route of routes) {
        const m = route.path.exec(target.path);
        if (!m) continue;
        if (route.method !== req.method) {
          allowed.push(route.method);
          continue;
        }
        allowed = [];
        if (route.apiKey && !sameSecret(req.headers['x-api-key'], expectedKey)) {
          throw new ChatError('unauthorized', 'A valid X-API-Key header is required.');
        }
        const result = await route.handle({
          req,
          params: m.slice(1),
          query: target.query,
          body: () => readBody(req, deps.limits.maxFrameBytes),
        });
        send(res, result.status, result.body);
        return;
      }
      if (allowed.length > 0) {
        res.setHeader('allow', allowed.join(', '));
        throw new ChatError('method_not_allowed');
      }
      throw new ChatError('not_found');
    } catch (err) {
      const e = asChatError(err);
      if (!(err instanceof ChatError)) {
        deps.log.error({ err, method: req.method, path: safePath(req.url) }, 'http request failed');
      }
      if (!res.headersSent) send(res, e.httpStatus, e.toPayload());
      else res.destroy();
    }
  };
  // The routes ride along so that a test can hold docs/openapi.yaml to them.
  return Object.assign(handle, { routes: routes.map(({ method, path }) => ({ method, path })) });
}
