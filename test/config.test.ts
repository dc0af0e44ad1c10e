import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.js';

const LONG = 'a-jwt-secret-of-at-least-32-bytes!';

describe('loadConfig', () => {
  it('has the contract defaults', () => {
    const c = loadConfig({});
    assert.equal(c.port, 3000);
    assert.equal(c.host, '127.0.0.1');
    assert.equal(c.databaseUrl, 'sqlite:./data/charla.db');
    assert.equal(c.redisUrl, undefined);
    assert.deepEqual(c.limits, {
      streamMessageMaxChars: 500,
      requestMessageMaxChars: 5000,
      maxFrameBytes: 65536,
      streamRate: { count: 20, windowMs: 30_000 },
      requestRate: { count: 60, windowMs: 30_000 },
      floodLimit: 200,
      sendBufferMaxBytes: 1048576,
      historyPage: 100,
      historyMaxPage: 500,
      maxFragments: 128,
      pingIntervalMs: 25_000,
      handshakeTimeoutMs: 10_000,
      handshakesPendingMax: 10_000,
      httpResponseTimeoutMs: 30_000,
      historyReadsRunning: 2,
      historyReadsWaiting: 16,
      streamHistoryOnJoin: 50,
      streamViewersIntervalMs: 5000,
      streamFlushMs: 25,
      streamFlushBusyShare: 0.25,
      requestBatchMax: 256,
      requestUpdateFlushMs: 250,
      requestUpdateTrackedMax: 10_000,
      streamHistoryCacheStreams: 1000,
      streamHistorySettleMs: 2000,
      streamStoreQueueMax: 20_000,
    });
  });
  it('runs in dev mode with its own secret and API key when no JWT key is set', () => {
    const a = loadConfig({});
    const b = loadConfig({});
    assert.equal(a.devMode, true);
    assert.ok(a.jwt.secret && a.jwt.secret.length >= 32);
    assert.notEqual(a.jwt.secret, b.jwt.secret);
    assert.ok(a.apiKey.length >= 16);
    const set = loadConfig({ JWT_SECRET: 's3cret', API_KEY: 'k' });
    assert.equal(set.devMode, false);
    assert.equal(set.jwt.secret, 's3cret');
    assert.equal(set.apiKey, 'k');
  });
  it('stops on a bad value with one line naming the variable', () => {
    const cases: Array<[Record<string, string>, string]> = [
      [{ PORT: 'eighty' }, 'PORT'],
      [{ PORT: '70000' }, 'PORT'],
      [{ FLOOD_LIMIT: '0' }, 'FLOOD_LIMIT'],
      [{ STREAM_HISTORY_SETTLE_MS: '0' }, 'STREAM_HISTORY_SETTLE_MS'],
      [{ STREAM_RATE_LIMIT: '20 per 30s' }, 'STREAM_RATE_LIMIT'],
      [{ REQUEST_RATE_LIMIT: '5/0s' }, 'REQUEST_RATE_LIMIT'],
      [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
      [{ REDIS_URL: 'http://x' }, 'REDIS_URL'],
      [{ REDIS_URL: 'redis://127.0.0.1:notaport' }, 'REDIS_URL'],
      [{ REDIS_URL: 'redis:// ' }, 'REDIS_URL'],
      [{ API_KEY: ' k2 ' }, 'API_KEY'],
      [{ API_KEY: 'key\n' }, 'API_KEY'],
      [{ API_KEY: 'clé' }, 'API_KEY'],
      [{ METRICS_TOKEN: ' mt' }, 'METRICS_TOKEN'],
      [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
      [{ SEND_BUFFER_MAX_BYTES: '1.5' }, 'SEND_BUFFER_MAX_BYTES'],
      [{ JWKS_URL: 'not a url' }, 'JWKS_URL'],
      [{ JWKS_URL: 'ftp://keys.example/jwks' }, 'JWKS_URL'],
      [{ JWKS_URL: 'file:///etc/jwks.json' }, 'JWKS_URL'],
      [{ STREAM_HISTORY_ON_JOIN: '-1' }, 'STREAM_HISTORY_ON_JOIN'],
      [{ STREAM_HISTORY_ON_JOIN: '501' }, 'STREAM_HISTORY_ON_JOIN'],
      [{ STREAM_VIEWERS_INTERVAL_MS: '10' }, 'STREAM_VIEWERS_INTERVAL_MS'],
      [{ STREAM_VIEWERS_INTERVAL_MS: 'soon' }, 'STREAM_VIEWERS_INTERVAL_MS'],
      [{ STREAM_FLUSH_MS: '-1' }, 'STREAM_FLUSH_MS'],
      [{ STREAM_FLUSH_MS: '1001' }, 'STREAM_FLUSH_MS'],
      [{ STREAM_FLUSH_BUSY_PERCENT: '101' }, 'STREAM_FLUSH_BUSY_PERCENT'],
      [{ REQUEST_UPDATE_FLUSH_MS: '-1' }, 'REQUEST_UPDATE_FLUSH_MS'],
      [{ REQUEST_UPDATE_FLUSH_MS: '10001' }, 'REQUEST_UPDATE_FLUSH_MS'],
      [{ REQUEST_UPDATE_FLUSH_MS: 'soon' }, 'REQUEST_UPDATE_FLUSH_MS'],
      [{ REQUEST_UPDATE_TRACKED_MAX: '0' }, 'REQUEST_UPDATE_TRACKED_MAX'],
    ];
    for (const [env, name] of cases) {
      assert.throws(
        () => loadConfig(env),
        (e: unknown) =>
          e instanceof ConfigError && e.message.includes(name) && !e.message.includes('\n'),
        name,
      );
    }
  });
  it('warns when the longest message may not fit in MAX_FRAME_BYTES', () => {
    assert.deepEqual(loadConfig({}).warnings, []);
    const warnings = loadConfig({ REQUEST_MESSAGE_MAX_CHARS: '20000' }).warnings;
    assert.equal(warnings.length, 1);
    assert.match(warnings[0] ?? '', /REQUEST_MESSAGE_MAX_CHARS.*MAX_FRAME_BYTES/);
  });
  it('takes an http(s) JWKS_URL', () => {
    for (const url of [
      'https://keys.example/.well-known/jwks.json',
      'http://127.0.0.1:8080/jwks',
    ]) {
      assert.equal(loadConfig({ JWKS_URL: url, API_KEY: 'k' }).jwt.jwksUrl, url);
    }
  });
  it('stops on a JWT_PUBLIC_KEY that cannot verify tokens, in one line naming it', () => {
    const pem = (type: 'ed25519' | 'rsa' | 'ec', curve?: string) =>
      (type === 'rsa'
        ? generateKeyPairSync('rsa', { modulusLength: 2048 })
        : type === 'ec'
          ? generateKeyPairSync('ec', { namedCurve: curve as string })
          : generateKeyPairSync('ed25519')
      ).publicKey.export({ type: 'spki', format: 'pem' }) as string;
    for (const bad of ['garbage', pem('ed25519'), pem('ec', 'secp256k1')]) {
      assert.throws(
        () => loadConfig({ JWT_PUBLIC_KEY: bad, API_KEY: 'k' }),
        (e: unknown) =>
          e instanceof ConfigError &&
          e.message.startsWith('invalid JWT_PUBLIC_KEY: ') &&
          !e.message.includes('\n'),
        bad.slice(0, 40),
      );
    }
    const rsa = pem('rsa');
    assert.equal(loadConfig({ JWT_PUBLIC_KEY: rsa, API_KEY: 'k' }).jwt.publicKey, rsa);
    // As environment files often carry it: one line with literal "\n".
    const oneLine = pem('ec', 'prime256v1').replace(/\n/g, '\\n');
    assert.equal(loadConfig({ JWT_PUBLIC_KEY: oneLine, API_KEY: 'k' }).devMode, false);
  });
  it('refuses production without a JWT key or an API key', () => {
    assert.throws(() => loadConfig({ NODE_ENV: 'production', API_KEY: 'k' }), /JWT_SECRET/);
    assert.throws(() => loadConfig({ NODE_ENV: 'production', JWT_SECRET: LONG }), /API_KEY/);
    const c = loadConfig({ NODE_ENV: 'production', JWT_SECRET: LONG, API_KEY: 'k' });
    assert.equal(c.production, true);
    assert.equal(c.devMode, false);
    // Spelled another way, still production: never dev mode's demo tokens.
    assert.throws(() => loadConfig({ NODE_ENV: 'Production', API_KEY: 'k' }), /JWT_SECRET/);
    assert.equal(
      loadConfig({ NODE_ENV: 'PRODUCTION ', JWT_SECRET: LONG, API_KEY: 'a key' }).production,
      true,
    );
  });
  it('refuses a JWT_SECRET under 32 bytes in production, in one line naming it', () => {
    for (const secret of ['s', 'x'.repeat(31), 'ñ'.repeat(15)]) {
      assert.throws(
        () => loadConfig({ NODE_ENV: 'production', JWT_SECRET: secret, API_KEY: 'k' }),
        (e: unknown) =>
          e instanceof ConfigError &&
          e.message.startsWith('invalid JWT_SECRET') &&
          !e.message.includes('\n'),
        secret,
      );
    }
    // Bytes, not characters: 16 two-byte characters are enough.
    assert.equal(
      loadConfig({ NODE_ENV: 'production', JWT_SECRET: 'ñ'.repeat(16), API_KEY: 'k' }).production,
      true,
    );
  });
  it('accepts a short JWT_SECRET outside production, with a warning naming it', () => {
    const c = loadConfig({ JWT_SECRET: 's', API_KEY: 'k' });
    assert.equal(c.jwt.secret, 's');
    assert.equal(c.warnings.length, 1);
    assert.match(c.warnings[0] as string, /JWT_SECRET/);
    assert.deepEqual(loadConfig({ JWT_SECRET: LONG, API_KEY: 'k' }).warnings, []);
    assert.deepEqual(loadConfig({}).warnings, [], 'dev mode makes its own long secret');
  });
  it('requires exp on tokens in production only', () => {
    assert.equal(
      loadConfig({ NODE_ENV: 'production', JWT_SECRET: LONG, API_KEY: 'k' }).jwt.requireExp,
      true,
    );
    assert.equal(loadConfig({ JWT_SECRET: LONG }).jwt.requireExp, false);
  });
  it('keeps a JWKS fetch inside the handshake time', () => {
    assert.equal(loadConfig({}).jwt.jwksTimeoutMs, 5_000);
    assert.equal(loadConfig({ HANDSHAKE_TIMEOUT_SECONDS: '2' }).jwt.jwksTimeoutMs, 1_000);
  });
  it('says whether the API key was generated', () => {
    assert.equal(loadConfig({ JWT_SECRET: LONG }).apiKeyGenerated, true);
    assert.equal(loadConfig({ JWT_SECRET: LONG, API_KEY: 'k' }).apiKeyGenerated, false);
  });
  it('takes only one kind of JWT key', () => {
    assert.throws(() => loadConfig({ JWT_SECRET: 's', JWKS_URL: 'https://x/jwks' }), ConfigError);
  });
});

describe('webhook configuration', () => {
  const secret = `whsec_${Buffer.alloc(24, 7).toString('base64')}`;
  it('is off without WEBHOOK_URL, with the contract defaults when set', () => {
    assert.equal(loadConfig({}).webhooks, undefined);
    assert.deepEqual(
      loadConfig({ WEBHOOK_URL: 'https://platform.example/hooks', WEBHOOK_SECRET: secret })
        .webhooks,
      {
        url: 'https://platform.example/hooks',
        secret,
        maxAttempts: 12,
        retryBaseMs: 10_000,
        retryMaxMs: 3_600_000,
        unreadAfterMs: 600_000,
        timeoutMs: 10_000,
        pollMs: 1000,
        concurrency: 32,
      },
    );
  });
  it('needs a secret of whsec_ and at least 24 bytes of base64 with the URL', () => {
    const url = 'http://127.0.0.1:9/hooks';
    assert.throws(() => loadConfig({ WEBHOOK_URL: url }), /WEBHOOK_SECRET/);
    for (const bad of [
      Buffer.alloc(24, 7).toString('base64'),
      `whsec_${Buffer.alloc(23, 7).toString('base64')}`,
      'whsec_not base64!',
      'whsec_',
    ]) {
      assert.throws(
        () => loadConfig({ WEBHOOK_URL: url, WEBHOOK_SECRET: bad }),
        /invalid WEBHOOK_SECRET/,
      );
    }
    assert.throws(
      () => loadConfig({ WEBHOOK_URL: 'ftp://x/hooks', WEBHOOK_SECRET: secret }),
      /invalid WEBHOOK_URL/,
    );
    for (const [name, value] of [
      ['WEBHOOK_MAX_ATTEMPTS', '0'],
      ['WEBHOOK_RETRY_BASE_SECONDS', '-1'],
      ['WEBHOOK_UNREAD_AFTER_SECONDS', 'soon'],
      ['WEBHOOK_TIMEOUT_MS', '10'],
      ['WEBHOOK_CONCURRENCY', '0'],
    ] as const) {
      assert.throws(
        () => loadConfig({ WEBHOOK_URL: url, WEBHOOK_SECRET: secret, [name]: value }),
        new RegExp(`invalid ${name}`),
      );
    }
  });
});
