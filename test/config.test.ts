import assert from 'node:assert/strict';
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
      historyReadsRunning: 2,
      historyReadsWaiting: 16,
      streamFlushMs: 25,
      streamFlushBusyShare: 0.25,
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
      [{ STREAM_RATE_LIMIT: '20 per 30s' }, 'STREAM_RATE_LIMIT'],
      [{ REQUEST_RATE_LIMIT: '5/0s' }, 'REQUEST_RATE_LIMIT'],
      [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
      [{ REDIS_URL: 'http://x' }, 'REDIS_URL'],
      [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
      [{ SEND_BUFFER_MAX_BYTES: '1.5' }, 'SEND_BUFFER_MAX_BYTES'],
      [{ JWKS_URL: 'not a url' }, 'JWKS_URL'],
      [{ STREAM_FLUSH_MS: '-1' }, 'STREAM_FLUSH_MS'],
      [{ STREAM_FLUSH_MS: '1001' }, 'STREAM_FLUSH_MS'],
      [{ STREAM_FLUSH_BUSY_PERCENT: '101' }, 'STREAM_FLUSH_BUSY_PERCENT'],
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
  it('refuses production without a JWT key or an API key', () => {
    assert.throws(() => loadConfig({ NODE_ENV: 'production', API_KEY: 'k' }), /JWT_SECRET/);
    assert.throws(() => loadConfig({ NODE_ENV: 'production', JWT_SECRET: LONG }), /API_KEY/);
    const c = loadConfig({ NODE_ENV: 'production', JWT_SECRET: LONG, API_KEY: 'k' });
    assert.equal(c.production, true);
    assert.equal(c.devMode, false);
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
