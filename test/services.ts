/**
 * The real PostgreSQL and Redis that integration tests run against, and the
 * isolation each test takes in them (its own schema, its own key prefix).
 *
 * A missing service fails the run when `CI` is set; locally the tests that
 * need it are reported as skipped, with the reason, never silently dropped.
 */
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import pg from 'pg';

export const PG_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

const unique = (prefix: string) => `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;

async function postgresProblem(): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 2_000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return undefined;
  } catch (err) {
    return `PostgreSQL not reachable at ${PG_URL}: ${(err as Error).message}`;
  } finally {
    await client.end().catch(() => {});
  }
}

async function redisProblem(): Promise<string | undefined> {
  const redis = new Redis(REDIS_URL, {
    lazyConnect: true,
    connectTimeout: 2_000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  redis.on('error', () => {});
  try {
    await redis.connect();
    await redis.ping();
    return undefined;
  } catch (err) {
    return `Redis not reachable at ${REDIS_URL}: ${(err as Error).message}`;
  } finally {
    redis.disconnect();
  }
}

/**
 * Resolves when every named service answers. Otherwise: under CI, throws
 * (the file fails); locally, registers one skipped test saying why and
 * resolves false so the caller registers nothing else.
 */
export async function requireServices(...services: Array<'postgres' | 'redis'>): Promise<boolean> {
  const problems = (
    await Promise.all(services.map((s) => (s === 'postgres' ? postgresProblem() : redisProblem())))
  ).filter((p): p is string => p !== undefined);
  if (problems.length === 0) return true;
  const reason = problems.join('; ');
  if (process.env.CI) throw new Error(`CI needs these services: ${reason}`);
  test(`needs ${services.join(' and ')}`, (t) => t.skip(reason));
  return false;
}

/** A fresh, empty schema: the URL that selects it and a function that drops it. */
export async function tempSchema(): Promise<{ url: string; drop(): Promise<void> }> {
  const schema = unique('charla_test');
  const url = new URL(PG_URL);
  url.searchParams.set('schema', schema);
  return {
    url: url.toString(),
    async drop() {
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      try {
        await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      } finally {
        await client.end();
      }
    },
  };
}

/** A Redis prefix no other test or deployment uses. */
export const tempRedisPrefix = () => `${unique('charla-test')}:`;
