import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.js';

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
    assert.throws(() => loadConfig({ NODE_ENV: 'production', JWT_SECRET: 's' }), /API_KEY/);
    const c = loadConfig({ NODE_ENV: 'production', JWT_SECRET: 's', API_KEY: 'k' });
    assert.equal(c.production, true);
    assert.equal(c.devMode, false);
  });
  it('takes only one kind of JWT key', () => {
    assert.throws(() => loadConfig({ JWT_SECRET: 's', JWKS_URL: 'https://x/jwks' }), ConfigError);
  });
});
