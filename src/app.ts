/**
 * The one composition root: picks the Store and Broker from configuration,
 * builds the core and wires the transports onto one HTTP server.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Redis } from 'ioredis';
import type { Broker } from './broker/broker.js';
import { MemoryBroker } from './broker/memory.js';
import { endConnection } from './broker/redis-connection.js';
import type { Config } from './config.js';
import { ChatError } from './core/errors.js';
import { createVerifier, type TokenVerifier } from './core/identity.js';
import { startEarly } from './core/limits.js';
import { Requests } from './core/requests.js';
import { Streams } from './core/streams.js';
import { Webhooks } from './core/webhooks.js';
import { createLogger, type Logger, safePath } from './observability/log.js';
import { Metrics } from './observability/metrics.js';
import { SqliteStore, sqlitePath } from './store/sqlite.js';
import type { Store } from './store/store.js';
import { createHttpHandler } from './transport/http.js';
import { inTurn } from './transport/http-turns.js';
import { RequestChat, SOCKET_IO_PATH } from './transport/request-io.js';
import {
  encodeStreamBroadcast,
  encodeStreamFrame,
  type StreamFrame,
  StreamGateway,
} from './transport/stream-ws.js';
import { createWebHandler } from './transport/web.js';
import { HttpWebhookSender } from './transport/webhook-sender.js';
import { abortHandshake, guard, httpResponse } from './transport/websocket-handshake.js';

export interface App {
  readonly config: Config;
  readonly server: Server;
  readonly store: Store;
  readonly broker: Broker;
  readonly streams: Streams<StreamFrame>;
  readonly requests: Requests;
  /** Webhook delivery; undefined without WEBHOOK_URL. */
  readonly webhooks: Webhooks | undefined;
  readonly verifier: TokenVerifier;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Starts listening; resolves with the base URL (`http://host:port`). */
  listen(): Promise<string>;
  /** Graceful stop: refuse new work, close clients with 1001, flush storage. */
  close(): Promise<void>;
}

/** Time given to clients to finish their close handshake on shutdown. */
const CLIENT_CLOSE_MS = 3_000;

/** How often Node looks for requests past their header or request timeout, at most. */
const CONNECTIONS_CHECK_MS = 1_000;

/** The answer to a request Node's parser refused, before any handler saw it. */
function clientErrorResponse(code: string | undefined): string {
  const status =
    code === 'HPE_HEADER_OVERFLOW'
      ? '431 Request Header Fields Too Large'
      : code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? '408 Request Timeout'
        : '400 Bad Request';
  return `HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`;
}

// PostgreSQL's and Redis's clients are loaded only when configured: on SQLite
// alone they would be a quarter of the start-up time, for nothing.

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export async function createStore(config: Config, log: Logger): Promise<Store> {
  if (config.databaseUrl.startsWith('sqlite:'))
    return new SqliteStore(sqlitePath(config.databaseUrl));
  const { PostgresStore } = await import('./store/postgres.js');
  return new PostgresStore({ url: config.databaseUrl, log });
}

/**
 * The Redis connection that counts stream rate limits, slow mode and the
 * typing throttle for every node. Commands never queue: while Redis is away
 * each node counts alone.
 */
/**
 * How long a chat waits for Redis to count it. A Redis that holds the
 * connection but stops answering would otherwise hold every chat (and the
 * store's backlog bound with them) until the connection breaks; past this
 * the chat is counted on this node, as while Redis is unreachable.
 */
const COUNTER_TIMEOUT_MS = 500;

async function createCounterClient(config: Config, log: Logger): Promise<Redis | undefined> {
  if (config.redisUrl === undefined) return undefined;
  const { Redis } = await import('ioredis');
  const client = new Redis(config.redisUrl, {
    protocol: 2,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: COUNTER_TIMEOUT_MS,
    retryStrategy: (times) => Math.min(times * 100, 2_000),
    connectionName: `${config.redisPrefix.replace(/[^A-Za-z0-9_:.-]/g, '_')}${process.pid}:limits`,
  });
  let down = false;
  client.on('error', (err: Error) => {
    if (!down)
      log.warn({ err: err.message }, 'redis for stream limits unreachable; counting per node');
    down = true;
  });
  client.on('ready', () => {
    down = false;
  });
  return client;
}

async function createBroker(config: Config, log: Logger): Promise<Broker> {
  if (config.redisUrl === undefined) return new MemoryBroker();
  const { RedisBroker } = await import('./broker/redis.js');
  return new RedisBroker({ url: config.redisUrl, prefix: config.redisPrefix, log });
}

export async function createApp(config: Config, options: { log?: Logger } = {}): Promise<App> {
  const log = options.log ?? createLogger(config.logLevel);
  const metrics = new Metrics();
  const store = await createStore(config, log);
  const broker = await createBroker(config, log);
  const counterClient = await createCounterClient(config, log);
  const verifier = createVerifier(config.jwt, { log });
  const webhooks =
    config.webhooks &&
    new Webhooks({
      store,
      sender: new HttpWebhookSender({
        url: config.webhooks.url,
        secret: config.webhooks.secret,
        timeoutMs: config.webhooks.timeoutMs,
        maxSockets: config.webhooks.concurrency,
      }),
      config: config.webhooks,
      metrics,
      log,
    });
  const streams = new Streams<StreamFrame>({
    store,
    broker,
    limits: config.limits,
    metrics,
    log,
    encode: encodeStreamFrame,
    webhooks,
    encodeBroadcast: encodeStreamBroadcast,
    counters: { redis: counterClient && { client: counterClient, prefix: config.redisPrefix } },
  });
  const streamGateway = new StreamGateway({
    streams,
    verifier,
    limits: config.limits,
    metrics,
    log,
  });
  const requests = new Requests({
    store,
    limits: config.limits,
    desk: config.desk,
    metrics,
    log,
    webhooks,
    redis: counterClient && { client: counterClient, prefix: config.redisPrefix },
  });
  const handler = createHttpHandler({
    apiKey: config.apiKey,
    metricsToken: config.metricsToken,
    limits: config.limits,
    streams,
    requests,
    webhooks,
    metrics,
    log,
    readiness: { checks: { storage: () => store.ping(), broker: () => broker.ping() } },
  });

  const serveWeb = createWebHandler(undefined, {
    attachmentUrlPrefixes: config.desk.attachmentUrlPrefixes.map((u) => u.href),
    editWindowSeconds: config.desk.editWindowMs / 1000,
  });
  const onRequest = async (req: IncomingMessage, res: ServerResponse) => {
    if (!serveWeb(req, res)) await handler(req, res);
  };
  // A peer that trickles its headers (an upgrade's too) or its body is cut
  // once the handshake time is up. Node looks for such peers every check
  // interval (here at most 1 s, not every 30 s), so the time it is given is
  // one interval shorter: the cut comes within HANDSHAKE_TIMEOUT_SECONDS.
  const handshakeMs = config.limits.handshakeTimeoutMs;
  const checkMs = handshakeMs - startEarly(handshakeMs, CONNECTIONS_CHECK_MS);
  const server = createServer(
    {
      headersTimeout: handshakeMs - checkMs,
      requestTimeout: handshakeMs - checkMs,
      connectionsCheckingInterval: checkMs,
    },
    (req, res) =>
      inTurn(
        req,
        res,
        // Whatever a request does, it must not become an unhandled rejection,
        // which would end the process for everyone.
        () =>
          onRequest(req, res).catch((err: unknown) => {
            log.error({ err, method: req.method, path: safePath(req.url) }, 'http request failed');
            if (res.headersSent) {
              res.destroy();
              return;
            }
            res.writeHead(500, { 'content-type': 'application/json; charset=utf-8' });
            res.end(JSON.stringify(new ChatError('internal_error').toPayload()));
          }),
        config.limits.httpResponseTimeoutMs,
      ),
  );
  // Socket.IO answers its own requests and upgrades, ahead of these listeners.
  const requestChat = new RequestChat(server, {
    requests,
    verifier,
    limits: config.limits,
    metrics,
    log,
    adapter: broker.roomAdapter(),
    broker,
  });
  server.on('upgrade', (req, socket, head) => {
    // Before anything else: a reset from here on must not be an unhandled 'error'.
    guard(socket);
    const key = streamGateway.match(req.url);
    if (key !== undefined) {
      streamGateway.handleUpgrade(req, socket, head, key).catch((err: unknown) => {
        log.error({ err }, 'stream upgrade failed');
        socket.destroy();
      });
    } else if (req.url?.startsWith(`${SOCKET_IO_PATH}/`)) {
      // Socket.IO's own upgrade listener has it.
    } else {
      abortHandshake(socket, httpResponse('404 Not Found'));
    }
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    // As Node's own default: answer only if no response has started on this
    // socket (a second status line would corrupt it), then drop the connection.
    const inFlight = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (socket.writable && !inFlight?.headersSent) socket.write(clientErrorResponse(err.code));
    socket.destroy();
  });

  let closing: Promise<void> | undefined;

  return {
    config,
    server,
    store,
    broker,
    streams,
    requests,
    webhooks,
    verifier,
    metrics,
    log,
    async listen() {
      // Storage must answer (and PostgreSQL be migrated) before the first client:
      // a node that cannot store fails its start instead of refusing every write.
      // Failures name the variable to fix, as a bad configuration value does.
      await store.ping().catch((err: unknown) => {
        throw new Error(`the storage at DATABASE_URL does not answer: ${errorText(err)}`);
      });
      webhooks?.start();
      return new Promise((resolve, reject) => {
        const failed = (err: Error) =>
          reject(
            new Error(
              `cannot listen on HOST=${config.host} PORT=${config.port}: ${errorText(err)}`,
            ),
          );
        server.once('error', failed);
        server.listen(config.port, config.host, () => {
          server.off('error', failed);
          const { address, port } = server.address() as AddressInfo;
          const host = address.includes(':') ? `[${address}]` : address;
          resolve(`http://${host}:${port}`);
        });
      });
    },
    close() {
      closing ??= (async () => {
        server.close();
        server.closeIdleConnections();
        // Socket.IO's close waits for the HTTP server's, which waits for every
        // connection to end: one that never finished its request (a
        // preconnect, a slowloris) would hold the exit to the deadline.
        const cut = setTimeout(() => server.closeAllConnections(), CLIENT_CLOSE_MS);
        await Promise.all([streamGateway.closeAll(CLIENT_CLOSE_MS), requestChat.close()]);
        clearTimeout(cut);
        server.closeAllConnections();
        streams.close();
        await Promise.all([streams.flush(), requests.flush()]);
        await webhooks?.stop();
        // Together: each may wait its bound for a Redis that stopped answering.
        await Promise.all([broker.close(), counterClient && endConnection(counterClient)]);
        await store.close();
      })();
      return closing;
    },
  };
}
