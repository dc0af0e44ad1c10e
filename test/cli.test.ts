/**
 * The `charla` command as a user runs it (a process, through bin/charla.js),
 * against a real charla process: minted tokens are accepted, dev mode's
 * credentials survive a restart, migrations apply, the configuration prints
 * with its secrets masked.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import pg from 'pg';
import { API_KEY, api, SECRET, StreamClient, spawnServer, tempDir } from './helpers.js';
import { RequestClient } from './request-client.js';
import { requireServices, tempSchema } from './services.js';

const BIN = fileURLToPath(new URL('../../bin/charla.js', import.meta.url));
const PACKAGE = fileURLToPath(new URL('../../package.json', import.meta.url));

const dir = tempDir();
after(() => rmSync(dir, { recursive: true, force: true }));

/** Runs `charla ...args` with only `env` (and PATH) set, in `cwd`. */
function charla(args: string[], env: Record<string, string> = {}, cwd = dir) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    env: { PATH: process.env.PATH, ...env },
    cwd,
    encoding: 'utf8',
    // Generous: a loaded CI machine may take seconds to start node.
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout.trim(), stderr: r.stderr.trim() };
}

/** The stream chat's view of a token: authenticated, and under which name it posts. */
async function streamIdentity(url: string, key: string, token: string): Promise<string> {
  const c = await StreamClient.connect(url.replace(/^http/, 'ws'), key, { token });
  try {
    assert.deepEqual(await c.next(), { type: 'auth', data: { authenticated: true } });
    c.chat('hola');
    return (await c.next('chat')).data.user;
  } finally {
    c.close();
  }
}

describe('npm scripts', () => {
  it('build on install (prepare) and start without compiling', () => {
    const { scripts, bin } = JSON.parse(readFileSync(PACKAGE, 'utf8'));
    assert.match(scripts.prepare, /npm run build/);
    assert.equal(scripts.prestart, undefined, 'npm start must not compile');
    assert.match(scripts.start, /^node /);
    assert.equal(bin.charla, 'bin/charla.js');
    assert.ok(statSync(BIN).mode & 0o100, 'bin/charla.js is executable');
  });
});

describe('charla token', () => {
  it('mints a token with JWT_SECRET that a running server accepts, with its name and role', async () => {
    const env = { DATABASE_URL: `sqlite:${join(dir, 'token.db')}`, JWT_SECRET: SECRET, API_KEY };
    const server = await spawnServer(env);
    try {
      await api(server.url, 'PUT', '/api/streams/cli', {});
      const requestId = '6751b6df1ad14eaa13a0c11a';
      await api(server.url, 'PUT', `/api/requests/${requestId}`, { ownerId: 1 });

      const minted = charla(['token', '--user', '9', '--role', 'lab', '--name', 'eva'], env);
      assert.equal(minted.status, 0, minted.stderr);
      assert.match(minted.stdout, /^[\w-]+\.[\w-]+\.[\w-]+$/);
      assert.equal(await streamIdentity(server.url, 'cli', minted.stdout), 'eva');
      // LAB may join any request: the role claim is there, upper-cased.
      const lab = await RequestClient.connect(server.url, minted.stdout);
      assert.equal((await lab.ask('joinRoom', { requestId })).ok, true);
      lab.close();

      // Without a role, user 9 is neither the owner nor LAB: refused.
      const plain = charla(['token', '--user', '9'], env);
      assert.equal(await streamIdentity(server.url, 'cli', plain.stdout), '9');
      const viewer = await RequestClient.connect(server.url, plain.stdout);
      assert.equal((await viewer.ask('joinRoom', { requestId })).ok, false);
      viewer.close();

      // Another secret's token is refused: the server really checks what was minted.
      const other = charla(['token', '--user', '9'], { ...env, JWT_SECRET: `${SECRET}-other` });
      const c = await StreamClient.connect(server.url.replace(/^http/, 'ws'), 'cli', {
        token: other.stdout,
      });
      assert.equal((await c.next()).data.error_code, 'invalid_token');
      c.close();
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  it('honours --ttl, JWT_ISSUER and JWT_AUDIENCE', () => {
    const env = { JWT_SECRET: SECRET, JWT_ISSUER: 'platform', JWT_AUDIENCE: 'charla' };
    const r = charla(['token', '--user', '1', '--ttl', '90s'], env);
    assert.equal(r.status, 0, r.stderr);
    const claims = JSON.parse(
      Buffer.from(r.stdout.split('.')[1] as string, 'base64url').toString(),
    );
    assert.equal(claims.exp - claims.iat, 90);
    assert.equal(claims.iss, 'platform');
    assert.equal(claims.aud, 'charla');
    assert.equal(claims.user_id, '1');
  });

  it('refuses bad use in one line, exit code 1, printing no token', () => {
    const cases: Array<[string[], Record<string, string>, RegExp]> = [
      [['token'], { JWT_SECRET: SECRET }, /--user/],
      [['token', '--user', '1', '--ttl', 'forever'], { JWT_SECRET: SECRET }, /--ttl/],
      [['token', '--user', '1', '--colour', 'red'], { JWT_SECRET: SECRET }, /colour/],
      [['token', '--user', '1'], { JWKS_URL: 'https://idp.example/jwks' }, /JWKS_URL/],
      [['token', '--user', '1'], { JWT_SECRET: SECRET, STREAM_RATE_LIMIT: 'x' }, /STREAM_RATE/],
      [['frobnicate'], {}, /unknown command/],
    ];
    for (const [args, env, pattern] of cases) {
      const r = charla(args, env);
      assert.equal(r.status, 1, args.join(' '));
      assert.equal(r.stdout, '');
      assert.equal(r.stderr.split('\n').length, 1, r.stderr);
      assert.match(r.stderr, pattern);
    }
  });
});

describe('dev mode credentials', () => {
  it('are kept in ./data/dev.json (0600): tokens and the API key survive a restart', async () => {
    const cwd = tempDir();
    try {
      const first = await spawnServer({}, { cwd });
      let viewerToken: string;
      let apiKey: string;
      try {
        await waitFor(first.output, /viewer token\s+(\S+)/);
        viewerToken = /viewer token\s+(\S+)/.exec(first.output())?.[1] as string;
        apiKey = /^\s+API key\s+(\S+)/m.exec(first.output())?.[1] as string;
      } finally {
        assert.equal(await first.stop(), 0);
      }
      const file = join(cwd, 'data', 'dev.json');
      assert.equal(statSync(file).mode & 0o777, 0o600);
      const state = JSON.parse(readFileSync(file, 'utf8'));
      assert.equal(state.apiKey, apiKey);

      // A token minted by the CLI before the restart, with dev mode's secret.
      const minted = charla(['token', '--user', '4', '--name', 'luz'], {}, cwd);
      assert.equal(minted.status, 0, minted.stderr);

      const second = await spawnServer({}, { cwd });
      try {
        await waitFor(second.output, /viewer token/);
        assert.equal(/^\s+API key\s+(\S+)/m.exec(second.output())?.[1], apiKey);
        assert.equal((await api(second.url, 'PUT', '/api/streams/again', {}, apiKey)).status, 201);
        assert.equal(await streamIdentity(second.url, 'demo', viewerToken), 'viewer');
        assert.equal(await streamIdentity(second.url, 'demo', minted.stdout), 'luz');
      } finally {
        assert.equal(await second.stop(), 0);
      }
      assert.ok(!second.output().includes(state.jwtSecret), 'the secret is never printed');
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });

  it('a damaged dev.json stops start-up with one line naming it', () => {
    const cwd = tempDir();
    try {
      charla(['token', '--user', '1'], {}, cwd);
      const file = join(cwd, 'data', 'dev.json');
      assert.equal(statSync(file).mode & 0o777, 0o600, 'the CLI creates it as the server would');
      rmSync(file);
      spawnSync('sh', ['-c', `printf '{"jwtSecret":1' > ${file}`]);
      const r = charla(['token', '--user', '1'], {}, cwd);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /dev\.json/);
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });
});

describe('charla migrate', () => {
  it('creates and migrates a SQLite database, then exits', () => {
    const file = join(dir, 'migrate', 'charla.db');
    const r = charla(['migrate'], { DATABASE_URL: `sqlite:${file}` });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /migrations applied/);
    const db = new Database(file, { readonly: true });
    try {
      assert.ok((db.pragma('user_version', { simple: true }) as number) > 0);
      const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all();
      assert.ok(tables.length > 0);
    } finally {
      db.close();
    }
    // Again: nothing to do, still exit 0.
    assert.equal(charla(['migrate'], { DATABASE_URL: `sqlite:${file}` }).status, 0);
  });

  it('fails at once, saying why, when the SQLite file cannot be made', () => {
    for (const file of ['/proc/charla-none/charla.db', '/dev/null/charla.db']) {
      const started = Date.now();
      const r = charla(['migrate'], { DATABASE_URL: `sqlite:${file}`, LOG_LEVEL: 'silent' });
      assert.equal(r.status, 1, `${file}: ${r.stderr}`);
      assert.match(r.stderr, /^charla: failed.*(ENOENT|not a directory)/, file);
      assert.ok(Date.now() - started < 20_000, `${file}: took ${Date.now() - started} ms`);
    }
  });

  it('fails with exit code 1 when the database cannot be reached', () => {
    const r = charla(['migrate'], {
      DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none',
      LOG_LEVEL: 'silent',
    });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^charla: failed/);
  });
});

if (await requireServices('postgres')) {
  describe('charla migrate on PostgreSQL', () => {
    it('applies every migration, masks the password it prints, and exits', async () => {
      const schema = await tempSchema();
      try {
        const url = new URL(schema.url);
        url.password = 'pw-not-needed';
        const r = charla(['migrate'], { DATABASE_URL: url.toString() });
        assert.equal(r.status, 0, r.stderr);
        assert.ok(!r.stdout.includes('pw-not-needed'));
        const client = new pg.Client({ connectionString: schema.url.split('?')[0] });
        await client.connect();
        try {
          const schemaName = new URL(schema.url).searchParams.get('schema');
          const { rows } = await client.query(
            `SELECT max(version) AS v FROM "${schemaName}".schema_migrations`,
          );
          assert.ok(Number(rows[0].v) > 0);
        } finally {
          await client.end();
        }
      } finally {
        await schema.drop();
      }
    });
  });
}

describe('charla check-config', () => {
  it('prints the effective configuration with every secret masked', () => {
    const env = {
      JWT_SECRET: SECRET,
      API_KEY,
      METRICS_TOKEN: 'metrics-token-value',
      DATABASE_URL: 'postgres://charla:db-password@db:5432/charla',
      REDIS_URL: 'redis://:redis-password@redis:6379',
      STREAM_RATE_LIMIT: '5/10s',
    };
    const r = charla(['check-config'], env);
    assert.equal(r.status, 0, r.stderr);
    const cfg = JSON.parse(r.stdout);
    assert.equal(cfg.limits.streamRate.count, 5);
    assert.equal(cfg.databaseUrl, 'postgres://charla:********@db:5432/charla');
    assert.equal(cfg.redisUrl, 'redis://:********@redis:6379');
    assert.equal(cfg.jwt.secret, '********');
    assert.equal(cfg.apiKey, '********');
    assert.equal(cfg.metricsToken, '********');
    for (const secret of [
      SECRET,
      API_KEY,
      'metrics-token-value',
      'db-password',
      'redis-password',
    ]) {
      assert.ok(!r.stdout.includes(secret), `prints ${secret}`);
    }
  });

  it('in dev mode, says the secret and API key come from ./data/dev.json', () => {
    const r = charla(['check-config'], {});
    assert.equal(r.status, 0, r.stderr);
    const cfg = JSON.parse(r.stdout);
    assert.equal(cfg.devMode, true);
    assert.match(cfg.jwt.secret, /dev\.json/);
    assert.match(cfg.apiKey, /dev\.json/);
  });

  it('refuses an invalid environment in one line naming the variable', () => {
    const r = charla(['check-config'], { HISTORY_PAGE: 'many' });
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^charla: invalid HISTORY_PAGE/);
  });
});

async function waitFor(output: () => string, pattern: RegExp, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pattern.test(output())) {
    if (Date.now() > deadline) throw new Error(`no ${pattern} in output:\n${output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
