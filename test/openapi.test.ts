/**
 * docs/openapi.yaml is a valid OpenAPI 3.1 document and says what the server
 * does: every route of the HTTP handler is documented, every documented
 * operation and answer is produced below by a real request to a real server,
 * and each body validates against the documented schema.
 *
 * Adding a route: document it in docs/openapi.yaml, then add to CASES a
 * request producing each status it documents. The test fails until both are
 * there (a route the handler has but the document lacks, an operation or
 * status without a case, a body that does not match its schema).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { compileErrors, dereference, validate } from '@readme/openapi-parser';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { pino } from 'pino';
import { parse } from 'yaml';
import { createHttpHandler } from '../src/transport/http.js';
import { API_KEY, StreamClient, startServer, type TestServer, userToken } from './helpers.js';
import { RequestClient } from './request-client.js';

const DOC_FILE = new URL('../../docs/openapi.yaml', import.meta.url);
const doc = parse(readFileSync(DOC_FILE, 'utf8'));

const REQUEST = '6751b6df1ad14eaa13a0a001';
const METRICS_TOKEN = 'metrics-token-for-the-openapi-test';
/** The classroom's stream, owned by user 9. */
const CLASS = '/api/streams/oc';
const SOME_ID = '6751b6df1ad14eaa13a0b001';
const BIG = 'x'.repeat(2_000);
/** Set in `before`: a chat of the classroom stream and a failed webhook event. */
let chatId = '';
let failedId = '';

interface Case {
  /** The documented operation: method and path template, as in the document. */
  op: `${'GET' | 'PUT' | 'PATCH' | 'POST' | 'DELETE'} ${string}`;
  /** What is sent; a function for an id known only once the server has run. */
  url: string | (() => string);
  body?: string | object;
  key?: string | null;
  headers?: Record<string, string>;
  status: number;
  /** Which server answers: the main one, or one whose broker is unreachable. */
  server?: 'main' | 'noBroker';
}

/** One request per documented (operation, status). Append here when a route is added. */
const CASES: Case[] = [
  { op: 'PUT /api/streams/{key}', url: '/api/streams/oa-new', body: {}, status: 201 },
  { op: 'PUT /api/streams/{key}', url: '/api/streams/oa', body: { title: 'Álgebra' }, status: 200 },
  { op: 'PUT /api/streams/{key}', url: '/api/streams/oa', body: '{', status: 400 },
  { op: 'PUT /api/streams/{key}', url: '/api/streams/oa', body: {}, key: null, status: 401 },
  {
    op: 'PUT /api/streams/{key}',
    url: '/api/streams/oa',
    body: { title: 'x'.repeat(2_000) },
    status: 413,
  },
  { op: 'PUT /api/streams/{key}', url: '/api/streams/oa', body: { title: 5 }, status: 422 },
  { op: 'GET /api/streams/{key}/messages', url: '/api/streams/oa/messages', status: 200 },
  { op: 'GET /api/streams/{key}/messages', url: '/api/streams/oa/messages?limit=0', status: 400 },
  { op: 'GET /api/streams/{key}/messages', url: '/api/streams/oa/messages', key: 'x', status: 401 },
  { op: 'GET /api/streams/{key}/messages', url: '/api/streams/none/messages', status: 404 },
  {
    op: 'GET /api/streams/{key}/messages',
    url: `/api/streams/oa/messages?before=${SOME_ID}`,
    status: 404,
  },
  { op: 'DELETE /api/streams/{key}', url: '/api/streams/oa', status: 200 },
  { op: 'DELETE /api/streams/{key}', url: '/api/streams/oa', key: null, status: 401 },
  { op: 'DELETE /api/streams/{key}', url: '/api/streams/none', status: 404 },
  { op: 'DELETE /api/streams/{key}', url: '/api/streams/bad!key', status: 400 },
  {
    op: 'PUT /api/requests/{requestId}',
    url: `/api/requests/${REQUEST}`,
    body: { ownerId: 1 },
    status: 200,
  },
  {
    op: 'PUT /api/requests/{requestId}',
    url: '/api/requests/6751b6df1ad14eaa13a0a002',
    body: { ownerId: '7' },
    status: 201,
  },
  {
    op: 'PUT /api/requests/{requestId}',
    url: '/api/requests/nothex',
    body: { ownerId: 1 },
    status: 400,
  },
  {
    op: 'PUT /api/requests/{requestId}',
    url: `/api/requests/${REQUEST}`,
    body: { ownerId: 1 },
    key: null,
    status: 401,
  },
  {
    op: 'PUT /api/requests/{requestId}',
    url: `/api/requests/${REQUEST}`,
    body: { ownerId: 'x'.repeat(2_000) },
    status: 413,
  },
  { op: 'PUT /api/requests/{requestId}', url: `/api/requests/${REQUEST}`, body: {}, status: 422 },
  {
    op: 'GET /api/requests/{requestId}/messages',
    url: `/api/requests/${REQUEST}/messages`,
    status: 200,
  },
  {
    op: 'GET /api/requests/{requestId}/messages',
    url: `/api/requests/${REQUEST}/messages?before=zz`,
    status: 400,
  },
  {
    op: 'GET /api/requests/{requestId}/messages',
    url: `/api/requests/${REQUEST}/messages`,
    key: null,
    status: 401,
  },
  {
    op: 'GET /api/requests/{requestId}/messages',
    url: '/api/requests/6751b6df1ad14eaa13a0ffff/messages',
    status: 404,
  },
  {
    op: 'GET /api/requests/{requestId}/messages',
    url: `/api/requests/${REQUEST}/messages?before=${SOME_ID}`,
    status: 404,
  },
  { op: 'GET /api/openapi.json', url: '/api/openapi.json', key: null, status: 200 },
  { op: 'GET /healthz', url: '/healthz', key: null, status: 200 },
  { op: 'GET /readyz', url: '/readyz', key: null, status: 200 },
  { op: 'GET /readyz', url: '/readyz', key: null, status: 503, server: 'noBroker' },
  {
    op: 'GET /metrics',
    url: '/metrics',
    key: null,
    headers: { authorization: `Bearer ${METRICS_TOKEN}` },
    status: 200,
  },
  { op: 'GET /metrics', url: '/metrics', key: null, status: 401 },
  { op: 'GET /', url: '/', key: null, status: 200 },
  { op: 'GET /{file}', url: '/app.js', key: null, status: 200 },
  { op: 'GET /{file}', url: '/style.css', key: null, status: 200 },
  { op: 'GET /{file}', url: '/no-such-file.js', key: null, status: 404 },
  {
    op: 'GET /vendor/socket.io.esm.min.js',
    url: '/vendor/socket.io.esm.min.js',
    key: null,
    status: 200,
  },
  { op: 'GET /api/streams/{key}', url: CLASS, status: 200 },
  { op: 'GET /api/streams/{key}', url: CLASS, key: null, status: 401 },
  { op: 'GET /api/streams/{key}', url: '/api/streams/none', status: 404 },
  { op: 'GET /api/streams/{key}', url: `/api/streams/${'k'.repeat(65)}`, status: 400 },
  {
    op: 'PATCH /api/streams/{key}',
    url: CLASS,
    body: { slowModeSeconds: 5, moderators: ['4', 4] },
    status: 200,
  },
  { op: 'PATCH /api/streams/{key}', url: CLASS, body: '{', status: 400 },
  { op: 'PATCH /api/streams/{key}', url: CLASS, body: {}, key: null, status: 401 },
  { op: 'PATCH /api/streams/{key}', url: '/api/streams/none', body: {}, status: 404 },
  { op: 'PATCH /api/streams/{key}', url: CLASS, body: { title: BIG }, status: 413 },
  { op: 'PATCH /api/streams/{key}', url: CLASS, body: { slowModeSeconds: -1 }, status: 422 },
  {
    op: 'PUT /api/streams/{key}/members',
    url: `${CLASS}/members`,
    body: { userIds: ['3', 3] },
    status: 200,
  },
  { op: 'PUT /api/streams/{key}/members', url: `${CLASS}/members`, body: '{', status: 400 },
  {
    op: 'PUT /api/streams/{key}/members',
    url: `${CLASS}/members`,
    body: { userIds: [] },
    key: null,
    status: 401,
  },
  {
    op: 'PUT /api/streams/{key}/members',
    url: '/api/streams/none/members',
    body: { userIds: [] },
    status: 404,
  },
  {
    op: 'PUT /api/streams/{key}/members',
    url: `${CLASS}/members`,
    body: { userIds: [BIG] },
    status: 413,
  },
  { op: 'PUT /api/streams/{key}/members', url: `${CLASS}/members`, body: {}, status: 422 },
  {
    op: 'DELETE /api/streams/{key}/messages/{messageId}',
    url: () => `${CLASS}/messages/${chatId}`,
    status: 200,
  },
  {
    op: 'DELETE /api/streams/{key}/messages/{messageId}',
    url: `${CLASS}/messages/zz`,
    status: 400,
  },
  {
    op: 'DELETE /api/streams/{key}/messages/{messageId}',
    url: `${CLASS}/messages/${SOME_ID}`,
    key: null,
    status: 401,
  },
  {
    op: 'DELETE /api/streams/{key}/messages/{messageId}',
    url: `/api/streams/none/messages/${SOME_ID}`,
    status: 404,
  },
  {
    op: 'PUT /api/streams/{key}/bans/{userId}',
    url: `${CLASS}/bans/6`,
    body: { seconds: 60, reason: 'spam' },
    status: 200,
  },
  { op: 'PUT /api/streams/{key}/bans/{userId}', url: `${CLASS}/bans/6`, body: '{', status: 400 },
  {
    op: 'PUT /api/streams/{key}/bans/{userId}',
    url: `${CLASS}/bans/6`,
    body: {},
    key: null,
    status: 401,
  },
  { op: 'PUT /api/streams/{key}/bans/{userId}', url: `${CLASS}/bans/9`, body: {}, status: 403 },
  {
    op: 'PUT /api/streams/{key}/bans/{userId}',
    url: '/api/streams/none/bans/6',
    body: {},
    status: 404,
  },
  {
    op: 'PUT /api/streams/{key}/bans/{userId}',
    url: `${CLASS}/bans/6`,
    body: { reason: BIG },
    status: 413,
  },
  {
    op: 'PUT /api/streams/{key}/bans/{userId}',
    url: `${CLASS}/bans/6`,
    body: { seconds: 0 },
    status: 422,
  },
  { op: 'GET /api/streams/{key}/bans', url: `${CLASS}/bans`, status: 200 },
  { op: 'GET /api/streams/{key}/bans', url: `${CLASS}/bans`, key: null, status: 401 },
  { op: 'GET /api/streams/{key}/bans', url: '/api/streams/none/bans', status: 404 },
  { op: 'GET /api/streams/{key}/bans', url: '/api/streams/b%20d/bans', status: 400 },
  { op: 'DELETE /api/streams/{key}/bans/{userId}', url: `${CLASS}/bans/6`, status: 200 },
  {
    op: 'DELETE /api/streams/{key}/bans/{userId}',
    url: `${CLASS}/bans/${'u'.repeat(300)}`,
    status: 400,
  },
  {
    op: 'DELETE /api/streams/{key}/bans/{userId}',
    url: `${CLASS}/bans/6`,
    key: null,
    status: 401,
  },
  { op: 'DELETE /api/streams/{key}/bans/{userId}', url: '/api/streams/none/bans/6', status: 404 },
  { op: 'GET /api/streams/{key}/moderation-log', url: `${CLASS}/moderation-log`, status: 200 },
  {
    op: 'GET /api/streams/{key}/moderation-log',
    url: `${CLASS}/moderation-log?before=0`,
    status: 400,
  },
  {
    op: 'GET /api/streams/{key}/moderation-log',
    url: `${CLASS}/moderation-log`,
    key: null,
    status: 401,
  },
  {
    op: 'GET /api/streams/{key}/moderation-log',
    url: '/api/streams/none/moderation-log',
    status: 404,
  },
  {
    op: 'GET /api/streams/{key}/moderation-log',
    url: `${CLASS}/moderation-log?before=999999999`,
    status: 404,
  },
  { op: 'GET /api/users/{userId}/unread', url: '/api/users/2/unread?role=LAB', status: 200 },
  { op: 'GET /api/users/{userId}/unread', url: '/api/users/2/unread', status: 400 },
  {
    op: 'GET /api/users/{userId}/unread',
    url: '/api/users/2/unread?role=LAB',
    key: null,
    status: 401,
  },
  { op: 'GET /api/webhooks/failed', url: '/api/webhooks/failed', status: 200 },
  { op: 'GET /api/webhooks/failed', url: '/api/webhooks/failed?limit=0', status: 400 },
  { op: 'GET /api/webhooks/failed', url: '/api/webhooks/failed', key: null, status: 401 },
  {
    op: 'GET /api/webhooks/failed',
    url: '/api/webhooks/failed',
    status: 200,
    server: 'noBroker',
  },
  {
    op: 'POST /api/webhooks/failed/{eventId}/retry',
    url: () => `/api/webhooks/failed/${failedId}/retry`,
    status: 202,
  },
  {
    op: 'POST /api/webhooks/failed/{eventId}/retry',
    url: '/api/webhooks/failed/msg_none/retry',
    key: null,
    status: 401,
  },
  {
    op: 'POST /api/webhooks/failed/{eventId}/retry',
    url: '/api/webhooks/failed/msg_none/retry',
    status: 404,
  },
];

type Json = Record<string, any>;
const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'];

/** Every documented operation as `METHOD /path`. */
function documentedOperations(): string[] {
  const ops: string[] = [];
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    for (const method of Object.keys(item)) {
      if (METHODS.includes(method)) ops.push(`${method.toUpperCase()} ${path}`);
    }
  }
  return ops.sort();
}

/** A concrete path for a template, its parameters filled with their documented examples. */
function samplePath(template: string, operation: Json, pathItem: Json): string {
  const params = [...(pathItem.parameters ?? []), ...(operation.parameters ?? [])].map((p: Json) =>
    p.$ref ? doc.components.parameters[p.$ref.split('/').pop()] : p,
  );
  return template.replace(/\{(\w+)\}/g, (_, name: string) => {
    const p = params.find((q: Json) => q.name === name && q.in === 'path');
    assert.ok(p?.example !== undefined, `${template}: parameter ${name} needs an example`);
    return String(p.example);
  });
}

let deref: Json;
let main: TestServer;
let noBroker: TestServer;
const ajv = new Ajv2020({ strict: true, allowUnionTypes: true, allErrors: true });
addFormats.default(ajv);

before(async () => {
  // The parser validates against the OpenAPI 3.1 schema (and more: unique
  // operationIds, parameters, component names), then resolves every $ref.
  const result = await validate(structuredClone(doc));
  assert.ok(result.valid, compileErrors(result));
  assert.deepEqual(result.warnings, []);
  deref = (await dereference(structuredClone(doc))) as unknown as Json;
  // Webhooks to a port where nobody listens, given up after one attempt: the failed-event API has content.
  main = await startServer({
    METRICS_TOKEN,
    MAX_FRAME_BYTES: '1024',
    WEBHOOK_URL: 'http://127.0.0.1:1/hooks',
    WEBHOOK_SECRET: `whsec_${Buffer.alloc(24, 7).toString('base64')}`,
    WEBHOOK_MAX_ATTEMPTS: '1',
    WEBHOOK_POLL_MS: '50',
    WEBHOOK_TIMEOUT_MS: '500',
  });
  // A broker that never answers: readiness must say so.
  noBroker = await startServer({ REDIS_URL: 'redis://127.0.0.1:1' });

  // Content for the history pages, so their item schemas are exercised too.
  const { url, wsUrl } = main;
  await send('PUT', '/api/streams/oa', {}, API_KEY);
  const viewer = await StreamClient.connect(wsUrl, 'oa', { token: await userToken('3') });
  await viewer.next('auth');
  viewer.chat('hola');
  await viewer.next('chat');
  viewer.close();
  await send('PUT', `/api/requests/${REQUEST}`, { ownerId: 1 }, API_KEY);
  const teacher = await RequestClient.connect(url, await userToken('1', { role: 'TEACHER' }));
  const lab = await RequestClient.connect(url, await userToken('2', { role: 'LAB' }));
  assert.equal((await teacher.ask('joinRoom', { requestId: REQUEST })).ok, true);
  assert.equal((await lab.ask('joinRoom', { requestId: REQUEST })).ok, true);
  const sent = await teacher.ask('message', { requestId: REQUEST, message: 'muestra lista' });
  assert.equal(sent.ok, true);
  await lab.ask('readMessages', { requestId: REQUEST, messages: [sent.message._id] });
  teacher.close();
  lab.close();

  // The classroom: a stream with an owner, a chat to delete and a ban whose webhook fails.
  await send('PUT', CLASS, { ownerId: '9' }, API_KEY);
  const student = await StreamClient.connect(wsUrl, 'oc', { token: await userToken('3') });
  await student.next('auth');
  student.chat('¿y la tarea?');
  chatId = (await student.next('chat')).data.id;
  student.close();
  assert.equal((await send('PUT', `${CLASS}/bans/7`, {}, API_KEY)).status, 200);
  for (let i = 0; i < 100 && failedId === ''; i++) {
    const { text } = await send('GET', '/api/webhooks/failed', undefined, API_KEY);
    failedId = JSON.parse(text).events[0]?.id ?? '';
    if (failedId === '') await new Promise((r) => setTimeout(r, 50));
  }
  assert.notEqual(failedId, '', 'the ban webhook failed');
});

after(async () => {
  await main?.close();
  await noBroker?.close();
});

async function send(
  method: string,
  path: string,
  body: unknown,
  key: string | null,
  headers: Record<string, string> = {},
  base = main.url,
): Promise<{ status: number; type: string; text: string }> {
  const h: Record<string, string> = { ...headers };
  if (key !== null) h['x-api-key'] = key;
  if (body !== undefined) h['content-type'] = 'application/json';
  const res = await fetch(base + path, {
    method,
    headers: h,
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  return {
    status: res.status,
    type: res.headers.get('content-type') ?? '',
    text: await res.text(),
  };
}

describe('docs/openapi.yaml', () => {
  it('is a valid OpenAPI 3.1 document', () => {
    assert.match(doc.openapi, /^3\.1\./);
    assert.ok(deref.paths, 'the parser returned the document');
  });

  it('documents every route of the HTTP handler', () => {
    const handler = createHttpHandler({
      apiKey: API_KEY,
      limits: main.app.config.limits,
      streams: main.app.streams,
      requests: main.app.requests,
      readiness: { checks: {} },
      metrics: main.app.metrics,
      log: pino({ level: 'silent' }),
    });
    const samples = Object.entries(doc.paths as Json).flatMap(([template, item]) =>
      Object.keys(item)
        .filter((m) => METHODS.includes(m))
        .map((m) => ({ method: m.toUpperCase(), url: samplePath(template, item[m], item) })),
    );
    assert.ok(handler.routes.length > 0);
    for (const route of handler.routes) {
      assert.ok(
        samples.some((s) => s.method === route.method && route.path.test(s.url)),
        `${route.method} ${route.path} is not in docs/openapi.yaml`,
      );
    }
  });

  it('has a case in this test for every operation and every status it documents', () => {
    assert.deepEqual([...new Set(CASES.map((c) => c.op))].sort(), documentedOperations());
    for (const op of documentedOperations()) {
      const [method, path] = op.split(' ') as [string, string];
      const documented = Object.keys(deref.paths[path][method.toLowerCase()].responses).sort();
      const tested = [
        ...new Set(CASES.filter((c) => c.op === op).map((c) => String(c.status))),
      ].sort();
      assert.deepEqual(tested, documented, `${op}: statuses with a case`);
    }
  });

  for (const c of CASES) {
    it(`${c.op} answers ${c.status} as documented (${typeof c.url === 'function' ? c.url.toString() : c.url})`, async () => {
      const [method, path] = c.op.split(' ') as [string, string];
      const base = c.server === 'noBroker' ? noBroker.url : main.url;
      const res = await send(
        method,
        typeof c.url === 'function' ? c.url() : c.url,
        c.body,
        c.key === undefined ? API_KEY : c.key,
        c.headers,
        base,
      );
      assert.equal(res.status, c.status, res.text);
      const answer = deref.paths[path][method.toLowerCase()].responses[String(c.status)];
      const mediaType = res.type.split(';')[0] as string;
      const content = answer.content?.[mediaType];
      assert.ok(content, `${c.op} ${c.status}: ${mediaType} is not documented`);
      const value: any = mediaType === 'application/json' ? JSON.parse(res.text) : res.text;
      const check = ajv.compile<any>(content.schema);
      const valid = check(value);
      assert.ok(
        valid,
        `${c.op} ${c.status}: ${ajv.errorsText(check.errors)}\n${res.text.slice(0, 500)}`,
      );
      if (c.status === 200 && path.endsWith('/messages')) {
        assert.ok(value.messages.length > 0, 'a page with messages, so their schema is checked');
      }
      if (path === '/api/requests/{requestId}/messages' && c.status === 200) {
        assert.ok(value.messages[0].readBy.length > 0, 'receipts are checked too');
      }
    });
  }

  it('is served as JSON at GET /api/openapi.json, the same document', async () => {
    const res = await send('GET', '/api/openapi.json', undefined, null);
    assert.deepEqual(JSON.parse(res.text), doc);
  });
});
