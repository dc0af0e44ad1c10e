/**
 * The environment schema: README "Configuration", and the limits of protocol section 6.
 * A bad value stops start-up with one line naming the variable.
 */
import { createPublicKey, randomBytes } from 'node:crypto';
import { z } from 'zod';
import { parseRate, type Rate } from './core/limits.js';

export interface Limits {
  streamMessageMaxChars: number;
  requestMessageMaxChars: number;
  maxFrameBytes: number;
  streamRate: Rate;
  requestRate: Rate;
  floodLimit: number;
  sendBufferMaxBytes: number;
  historyPage: number;
  historyMaxPage: number;
  /** Fragments of one WebSocket message before it is refused (1009). */
  maxFragments: number;
  /** Heartbeat period; a connection silent for two periods is dropped. */
  pingIntervalMs: number;
  /** An upgrade or Socket.IO handshake not completed in this time is cut. */
  handshakeTimeoutMs: number;
  /** Socket.IO handshakes open but not yet joined to the namespace, at most, per node. */
  handshakesPendingMax: number;
  /** An HTTP response (server API, web client) not taken by the peer in this time is cut. */
  httpResponseTimeoutMs: number;
  /** History reads one Socket.IO connection may have running, and queued behind those. */
  historyReadsRunning: number;
  historyReadsWaiting: number;
  /** Live classroom: chats in the `history` frame on join (0 = off). */
  streamHistoryOnJoin: number;
  /** Live classroom: how often each node shares its viewer counts. */
  streamViewersIntervalMs: number;
  /** Longest wait of a busy stream's chats before they are written together; 0: off. */
  streamFlushMs: number;
  /** Share of time (0–1) a stream's writes take from which it is busy. */
  streamFlushBusyShare: number;
  /** Most request messages committed in one transaction; 1: one transaction per message. */
  requestBatchMax: number;
  /** Interval at which a busy request's held `requestUpdated` go out; 0: each at once. */
  requestUpdateFlushMs: number;
  /** Requests a node tracks plus updates it holds for that coalescing, at most. */
  requestUpdateTrackedMax: number;
  /** Streams whose newest chats a node keeps for `history` frames; 0: off. */
  streamHistoryCacheStreams: number;
  /** Longest wait, before a history is read from the store, for every node to store what it accepted. */
  streamHistorySettleMs: number;
  /** Stream chats accepted and not yet stored, beyond which new ones are refused with `rate_limited`. */
  streamStoreQueueMax: number;
}

export interface JwtConfig {
  secret: string | undefined;
  publicKey: string | undefined;
  jwksUrl: string | undefined;
  issuer: string | undefined;
  audience: string | undefined;
  userIdClaim: string;
  usernameClaim: string;
  roleClaim: string;
  /** Refuse tokens without `exp` (production: a leaked one would never die). */
  requireExp: boolean;
  /** How long a JWKS fetch may take before the token is refused. */
  jwksTimeoutMs: number;
}

/** The request chat's inbox, typing, edits and attachments (protocol section 8). */
export interface DeskConfig {
  /** How long after `createdAt` a sender may edit or delete a message. */
  editWindowMs: number;
  /** `typing` is forwarded at most once per this interval per user and request. */
  typingIntervalMs: number;
  /** (user, request) pairs whose last `typing` a node remembers; the oldest is forgotten first. */
  typingTrackedMax: number;
  /** Attachment URLs must start with one of these; empty refuses every attachment. */
  attachmentUrlPrefixes: URL[];
  attachmentsMax: number;
  /** Requests listed by `GET /api/users/{id}/unread`. */
  unreadListMax: number;
}

export interface Config {
  port: number;
  host: string;
  databaseUrl: string;
  redisUrl: string | undefined;
  redisPrefix: string;
  jwt: JwtConfig;
  apiKey: string;
  /** API_KEY was not set: `apiKey` is random and changes at every start. */
  apiKeyGenerated: boolean;
  production: boolean;
  /** No JWT key was configured: charla made its own and prints demo tokens. */
  devMode: boolean;
  logLevel: string;
  /** Bearer token that `GET /metrics` requires when set. */
  metricsToken: string | undefined;
  limits: Limits;
  /** Webhooks to the platform (protocol section 9); undefined without WEBHOOK_URL. */
  webhooks: WebhookConfig | undefined;
  desk: DeskConfig;
  /** Accepted but unwise settings, for start-up to log. */
  warnings: string[];
}

export interface WebhookConfig {
  url: string;
  /** `whsec_` + base64, as Standard Webhooks prints it. */
  secret: string;
  maxAttempts: number;
  retryBaseMs: number;
  retryMaxMs: number;
  /** 0: no `request.message.unread` events. */
  unreadAfterMs: number;
  timeoutMs: number;
  pollMs: number;
  concurrency: number;
}

export class ConfigError extends Error {}

/** RFC 7518 section 3.2: an HS256 key is at least as long as the hash, 256 bits. */
const MIN_SECRET_BYTES = 32;
/** jose's own default; shorter when the handshake timeout is shorter. */
const JWKS_TIMEOUT_MS = 5_000;

/** Standard Webhooks: a secret of 24 to 64 random bytes. */
const MIN_WEBHOOK_SECRET_BYTES = 24;

function isWebhookSecret(v: string): boolean {
  const m = /^whsec_([A-Za-z0-9+/]+={0,2})$/.exec(v);
  return m !== null && Buffer.from(m[1] as string, 'base64').length >= MIN_WEBHOOK_SECRET_BYTES;
}

/** The EC curves of ES256, ES384 and ES512, as `createPublicKey` names them. */
const JWT_EC_CURVES = new Set(['prime256v1', 'secp384r1', 'secp521r1']);

/**
 * Why JWT_PUBLIC_KEY cannot verify tokens, or undefined when it can: a PEM
 * public key (literal "\n" allowed for newlines, as identity.ts reads it) of
 * RSA, or EC on one of the JOSE curves.
 */
function publicKeyProblem(pem: string): string | undefined {
  let key: ReturnType<typeof createPublicKey>;
  try {
    key = createPublicKey(pem.replace(/\\n/g, '\n'));
  } catch {
    return 'expected a PEM public key (-----BEGIN PUBLIC KEY-----)';
  }
  if (key.asymmetricKeyType === 'rsa') return undefined;
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    return curve !== undefined && JWT_EC_CURVES.has(curve)
      ? undefined
      : `an EC key on ${curve ?? 'an unknown curve'}; expected P-256, P-384 or P-521`;
  }
  return `a ${key.asymmetricKeyType ?? 'unknown'} key; expected an RSA or EC key`;
}

const blankAsUnset = (v: unknown) => (typeof v === 'string' && v.trim() === '' ? undefined : v);
const optionalString = z.preprocess(blankAsUnset, z.string().optional());
/**
 * A secret clients send in an HTTP header: printable ASCII, with no space at
 * either end, which HTTP trims from header values (a key read from a file
 * with its newline would never match).
 */
const headerSecret = z.preprocess(
  blankAsUnset,
  z
    .string()
    .refine((v) => /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(v), {
      message:
        'expected printable ASCII with no space or line break at either end (it is sent in an HTTP header, which is trimmed)',
    })
    .optional(),
);
const int = (def: number, min = 1, max = Number.MAX_SAFE_INTEGER) =>
  z.preprocess(blankAsUnset, z.coerce.number().int().min(min).max(max).default(def));
/** A duration in seconds; fractions allowed, so tests can run a schedule in milliseconds. */
const seconds = (def: number, min: number, max: number) =>
  z.preprocess(blankAsUnset, z.coerce.number().finite().min(min).max(max).default(def));
const rate = (def: string) =>
  z.preprocess(
    blankAsUnset,
    z
      .string()
      .default(def)
      .transform((v, ctx) => {
        const parsed = parseRate(v);
        if (!parsed) {
          ctx.addIssue({
            code: 'custom',
            message: `expected N/<seconds>s such as ${def}, with at most 86400 s, got "${v}"`,
          });
          return z.NEVER;
        }
        return parsed;
      }),
  );

const schema = z.object({
  PORT: int(3000, 0, 65535),
  HOST: z.preprocess(blankAsUnset, z.string().default('127.0.0.1')),
  DATABASE_URL: z.preprocess(
    blankAsUnset,
    z
      .string()
      .default('sqlite:./data/charla.db')
      .refine((v) => /^sqlite:.+/.test(v) || /^postgres(ql)?:\/\/.+/.test(v), {
        message: 'expected sqlite:<path> or postgres://…',
      }),
  ),
  REDIS_URL: z.preprocess(
    blankAsUnset,
    z
      .string()
      .refine((v) => /^rediss?:\/\/.+/.test(v) && URL.canParse(v) && new URL(v).hostname !== '', {
        message: 'expected redis://host[:port]… or rediss://…',
      })
      .optional(),
  ),
  REDIS_PREFIX: z.preprocess(blankAsUnset, z.string().default('charla:')),
  JWT_SECRET: optionalString,
  JWT_PUBLIC_KEY: optionalString,
  // jose fetches the key set over HTTP only: any other scheme would refuse every token.
  JWKS_URL: z.preprocess(
    blankAsUnset,
    z
      .string()
      .refine((v) => /^https?:\/\/.+/i.test(v) && URL.canParse(v), {
        message: 'expected an http:// or https:// URL',
      })
      .optional(),
  ),
  JWT_ISSUER: optionalString,
  JWT_AUDIENCE: optionalString,
  JWT_USER_ID_CLAIM: z.preprocess(blankAsUnset, z.string().default('user_id')),
  JWT_USERNAME_CLAIM: z.preprocess(blankAsUnset, z.string().default('username')),
  JWT_ROLE_CLAIM: z.preprocess(blankAsUnset, z.string().default('role')),
  API_KEY: headerSecret,
  NODE_ENV: optionalString,
  LOG_LEVEL: z.preprocess(
    blankAsUnset,
    z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  ),
  STREAM_MESSAGE_MAX_CHARS: int(500),
  REQUEST_MESSAGE_MAX_CHARS: int(5000),
  MAX_FRAME_BYTES: int(65536, 64),
  STREAM_RATE_LIMIT: rate('20/30s'),
  REQUEST_RATE_LIMIT: rate('60/30s'),
  FLOOD_LIMIT: int(200),
  SEND_BUFFER_MAX_BYTES: int(1048576, 1024),
  HISTORY_PAGE: int(100),
  HISTORY_MAX_PAGE: int(500),
  MAX_FRAGMENTS: int(128),
  PING_INTERVAL_SECONDS: int(25, 1, 3600),
  HANDSHAKE_TIMEOUT_SECONDS: int(10, 1, 300),
  HANDSHAKES_PENDING_MAX: int(10_000, 1, 10_000_000),
  HTTP_RESPONSE_TIMEOUT_SECONDS: int(30, 1, 3600),
  METRICS_TOKEN: headerSecret,
  HISTORY_READS_RUNNING: int(2, 1, 100),
  HISTORY_READS_WAITING: int(16, 0, 10_000),
  // Webhooks to the platform (protocol section 9).
  WEBHOOK_URL: z.preprocess(
    blankAsUnset,
    z
      .string()
      .refine((v) => /^https?:\/\/.+/.test(v) && URL.canParse(v), {
        message: 'expected an http:// or https:// URL',
      })
      .optional(),
  ),
  WEBHOOK_SECRET: z.preprocess(
    blankAsUnset,
    z
      .string()
      .refine(isWebhookSecret, {
        message: `expected whsec_ followed by the base64 of at least ${MIN_WEBHOOK_SECRET_BYTES} bytes`,
      })
      .optional(),
  ),
  WEBHOOK_MAX_ATTEMPTS: int(12, 1, 100),
  WEBHOOK_RETRY_BASE_SECONDS: seconds(10, 0.01, 3600),
  WEBHOOK_RETRY_MAX_SECONDS: seconds(3600, 0.01, 86_400),
  // 0 turns request.message.unread off.
  WEBHOOK_UNREAD_AFTER_SECONDS: seconds(600, 0, 30 * 86_400),
  WEBHOOK_TIMEOUT_MS: int(10_000, 100, 60_000),
  WEBHOOK_POLL_MS: int(1000, 10, 60_000),
  WEBHOOK_CONCURRENCY: int(32, 1, 256),
  // Request chat desk: edits, typing, attachments, unread (protocol section 8)
  REQUEST_EDIT_WINDOW_SECONDS: int(900, 1, 31_536_000),
  TYPING_INTERVAL_MS: int(2000, 1, 3_600_000),
  TYPING_TRACKED_MAX: int(100_000, 1, 10_000_000),
  ATTACHMENT_URL_PREFIXES: z.preprocess(
    blankAsUnset,
    z
      .string()
      .optional()
      .transform((v, ctx) => {
        const prefixes: URL[] = [];
        for (const raw of (v ?? '').split(',').map((p) => p.trim())) {
          if (raw === '') continue;
          const url = URL.canParse(raw) ? new URL(raw) : undefined;
          if (!url || !/^https?:$/.test(url.protocol) || url.username || url.password) {
            ctx.addIssue({
              code: 'custom',
              message: `expected http(s) URL prefixes, got "${raw}"`,
            });
            return z.NEVER;
          }
          prefixes.push(url);
        }
        return prefixes;
      }),
  ),
  ATTACHMENTS_MAX: int(10, 1, 100),
  UNREAD_LIST_MAX: int(100, 1, 10_000),
  // Live classroom (stream moderation, history on join, viewer counts)
  STREAM_HISTORY_ON_JOIN: int(50, 0, 10_000),
  STREAM_VIEWERS_INTERVAL_MS: int(5000, 50, 600_000),
  // Big rooms: write coalescing of busy streams.
  STREAM_FLUSH_MS: int(25, 0, 1000),
  STREAM_FLUSH_BUSY_PERCENT: int(25, 0, 100),
  // Request chat: group commit of the messages accepted in one event-loop turn.
  REQUEST_BATCH_MAX: int(256, 1, 10_000),
  // Request chat: coalescing of busy requests' inbox updates (requestUpdated).
  REQUEST_UPDATE_FLUSH_MS: int(250, 0, 10_000),
  REQUEST_UPDATE_TRACKED_MAX: int(10_000, 1, 10_000_000),
  // History on join served from memory: how many streams a node caches.
  STREAM_HISTORY_CACHE_STREAMS: int(1000, 0, 1_000_000),
  // Before a history is read from the store: every node stores what it accepted, within this wait.
  STREAM_HISTORY_SETTLE_MS: int(2000, 1, 60_000),
  // Stream chats waiting for the store (stalled or slower than the chat): past this, posts are refused.
  STREAM_STORE_QUEUE_MAX: int(20_000, 1, 10_000_000),
});

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const name = String(issue?.path[0] ?? 'environment');
    throw new ConfigError(`invalid ${name}: ${issue?.message ?? 'bad value'}`);
  }
  const e = parsed.data;
  // `Production` is meant as production: never dev mode's demo tokens by a capital letter.
  const production = e.NODE_ENV?.trim().toLowerCase() === 'production';
  const keys = [e.JWT_SECRET, e.JWT_PUBLIC_KEY, e.JWKS_URL].filter(Boolean).length;
  if (keys > 1) {
    throw new ConfigError(
      'invalid JWT_SECRET: set only one of JWT_SECRET, JWT_PUBLIC_KEY and JWKS_URL',
    );
  }
  const keyProblem =
    e.JWT_PUBLIC_KEY === undefined ? undefined : publicKeyProblem(e.JWT_PUBLIC_KEY);
  if (keyProblem !== undefined) throw new ConfigError(`invalid JWT_PUBLIC_KEY: ${keyProblem}`);
  if (production && keys === 0) {
    throw new ConfigError(
      'missing JWT_SECRET: NODE_ENV=production needs JWT_SECRET, JWT_PUBLIC_KEY or JWKS_URL',
    );
  }
  if (production && !e.API_KEY) {
    throw new ConfigError('missing API_KEY: NODE_ENV=production needs an API key');
  }
  const warnings: string[] = [];
  if (e.JWT_SECRET !== undefined && Buffer.byteLength(e.JWT_SECRET) < MIN_SECRET_BYTES) {
    const why = `JWT_SECRET is shorter than ${MIN_SECRET_BYTES} bytes, so it can be guessed offline from one token`;
    if (production) throw new ConfigError(`invalid JWT_SECRET: ${why}`);
    warnings.push(`${why}; production refuses it`);
  }
  // A message of the longest text can be refused as a frame over the limit
  // (closing the connection) before its length is checked: 4 bytes a
  // character at most in UTF-8, and room for the rest of the frame.
  for (const name of ['STREAM_MESSAGE_MAX_CHARS', 'REQUEST_MESSAGE_MAX_CHARS'] as const) {
    if (e[name] * 4 + 1024 > e.MAX_FRAME_BYTES) {
      warnings.push(
        `${name} (${e[name]}) at 4 bytes a character may not fit in MAX_FRAME_BYTES (${e.MAX_FRAME_BYTES}): a long message would close the connection instead of getting message_too_long`,
      );
    }
  }
  if (e.STREAM_HISTORY_ON_JOIN > e.HISTORY_MAX_PAGE) {
    throw new ConfigError('invalid STREAM_HISTORY_ON_JOIN: must not exceed HISTORY_MAX_PAGE');
  }
  if (e.HISTORY_PAGE > e.HISTORY_MAX_PAGE) {
    throw new ConfigError('invalid HISTORY_PAGE: must not exceed HISTORY_MAX_PAGE');
  }
  if (e.WEBHOOK_URL !== undefined && e.WEBHOOK_SECRET === undefined) {
    throw new ConfigError('missing WEBHOOK_SECRET: WEBHOOK_URL needs a signing secret');
  }
  const devMode = keys === 0;
  return {
    port: e.PORT,
    host: e.HOST,
    databaseUrl: e.DATABASE_URL,
    redisUrl: e.REDIS_URL,
    redisPrefix: e.REDIS_PREFIX,
    jwt: {
      secret: devMode ? randomBytes(32).toString('base64url') : e.JWT_SECRET,
      publicKey: e.JWT_PUBLIC_KEY,
      jwksUrl: e.JWKS_URL,
      issuer: e.JWT_ISSUER,
      audience: e.JWT_AUDIENCE,
      userIdClaim: e.JWT_USER_ID_CLAIM,
      usernameClaim: e.JWT_USERNAME_CLAIM,
      roleClaim: e.JWT_ROLE_CLAIM,
      requireExp: production,
      // A token check has to fit in the handshake it is part of.
      jwksTimeoutMs: Math.min(JWKS_TIMEOUT_MS, (e.HANDSHAKE_TIMEOUT_SECONDS * 1000) / 2),
    },
    apiKey: e.API_KEY ?? randomBytes(18).toString('base64url'),
    apiKeyGenerated: e.API_KEY === undefined,
    production,
    devMode,
    logLevel: e.LOG_LEVEL,
    metricsToken: e.METRICS_TOKEN,
    limits: {
      streamMessageMaxChars: e.STREAM_MESSAGE_MAX_CHARS,
      requestMessageMaxChars: e.REQUEST_MESSAGE_MAX_CHARS,
      maxFrameBytes: e.MAX_FRAME_BYTES,
      streamRate: e.STREAM_RATE_LIMIT,
      requestRate: e.REQUEST_RATE_LIMIT,
      floodLimit: e.FLOOD_LIMIT,
      sendBufferMaxBytes: e.SEND_BUFFER_MAX_BYTES,
      historyPage: e.HISTORY_PAGE,
      historyMaxPage: e.HISTORY_MAX_PAGE,
      maxFragments: e.MAX_FRAGMENTS,
      pingIntervalMs: e.PING_INTERVAL_SECONDS * 1000,
      handshakeTimeoutMs: e.HANDSHAKE_TIMEOUT_SECONDS * 1000,
      handshakesPendingMax: e.HANDSHAKES_PENDING_MAX,
      httpResponseTimeoutMs: e.HTTP_RESPONSE_TIMEOUT_SECONDS * 1000,
      historyReadsRunning: e.HISTORY_READS_RUNNING,
      historyReadsWaiting: e.HISTORY_READS_WAITING,
      streamHistoryOnJoin: e.STREAM_HISTORY_ON_JOIN,
      streamViewersIntervalMs: e.STREAM_VIEWERS_INTERVAL_MS,
      streamFlushMs: e.STREAM_FLUSH_MS,
      streamFlushBusyShare: e.STREAM_FLUSH_BUSY_PERCENT / 100,
      requestBatchMax: e.REQUEST_BATCH_MAX,
      requestUpdateFlushMs: e.REQUEST_UPDATE_FLUSH_MS,
      requestUpdateTrackedMax: e.REQUEST_UPDATE_TRACKED_MAX,
      streamHistoryCacheStreams: e.STREAM_HISTORY_CACHE_STREAMS,
      streamHistorySettleMs: e.STREAM_HISTORY_SETTLE_MS,
      streamStoreQueueMax: e.STREAM_STORE_QUEUE_MAX,
    },
    webhooks:
      e.WEBHOOK_URL === undefined || e.WEBHOOK_SECRET === undefined
        ? undefined
        : {
            url: e.WEBHOOK_URL,
            secret: e.WEBHOOK_SECRET,
            maxAttempts: e.WEBHOOK_MAX_ATTEMPTS,
            retryBaseMs: e.WEBHOOK_RETRY_BASE_SECONDS * 1000,
            retryMaxMs: e.WEBHOOK_RETRY_MAX_SECONDS * 1000,
            unreadAfterMs: e.WEBHOOK_UNREAD_AFTER_SECONDS * 1000,
            timeoutMs: e.WEBHOOK_TIMEOUT_MS,
            pollMs: e.WEBHOOK_POLL_MS,
            concurrency: e.WEBHOOK_CONCURRENCY,
          },
    desk: {
      editWindowMs: e.REQUEST_EDIT_WINDOW_SECONDS * 1000,
      typingIntervalMs: e.TYPING_INTERVAL_MS,
      typingTrackedMax: e.TYPING_TRACKED_MAX,
      attachmentUrlPrefixes: e.ATTACHMENT_URL_PREFIXES,
      attachmentsMax: e.ATTACHMENTS_MAX,
      unreadListMax: e.UNREAD_LIST_MAX,
    },
    warnings,
  };
}
