/**
 * The `charla` command (package.json `bin`): mint a token, apply migrations,
 * check the configuration. Reads the same environment as the server.
 */
import { parseArgs } from 'node:util';
import { SignJWT } from 'jose';
import { pino } from 'pino';
import { type Config, ConfigError, loadConfig } from './config.js';
import { DEV_STATE_FILE, loadDevState, withDevState } from './dev.js';

const USAGE = `usage: charla <command> [options]

commands:
  token --user <id> [--role <ROLE>] [--name <username>] [--ttl <12h>]
                 print a token signed with JWT_SECRET (or dev mode's secret in ${DEV_STATE_FILE})
  migrate        apply the store's migrations to DATABASE_URL and exit
  check-config   validate the environment and print the effective configuration, secrets masked
`;

/** A refusal the user can act on: printed as one line, exit code 1. */
class UsageError extends Error {}

/** `90s`, `30m`, `12h`, `7d`: what jose's setExpirationTime accepts, kept to the plain forms. */
const TTL = /^[1-9][0-9]{0,6}[smhd]$/;

function config(env: NodeJS.ProcessEnv): Config {
  try {
    return loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
}

async function token(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const { values } = parseArgs({
    args,
    options: {
      user: { type: 'string' },
      role: { type: 'string' },
      name: { type: 'string' },
      ttl: { type: 'string', default: '12h' },
    },
    strict: true,
  });
  if (values.user === undefined || values.user.trim() === '') {
    throw new UsageError('token needs --user <id>');
  }
  if (!TTL.test(values.ttl)) {
    throw new UsageError(
      `--ttl must be a number and a unit (s, m, h, d) such as 12h, got "${values.ttl}"`,
    );
  }
  let cfg = config(env);
  if (cfg.jwt.publicKey !== undefined || cfg.jwt.jwksUrl !== undefined) {
    throw new UsageError(
      'token signs with JWT_SECRET; this configuration verifies with JWT_PUBLIC_KEY or JWKS_URL, whose private key charla does not hold',
    );
  }
  // Dev mode: the secret the server signs its demo tokens with (created here if it never ran).
  if (cfg.devMode) cfg = withDevState(cfg, loadDevState(DEV_STATE_FILE));
  const secret = cfg.jwt.secret as string;
  const claims: Record<string, unknown> = { [cfg.jwt.userIdClaim]: values.user };
  if (values.name !== undefined) claims[cfg.jwt.usernameClaim] = values.name;
  if (values.role !== undefined) claims[cfg.jwt.roleClaim] = values.role.toUpperCase();
  let jwt = new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime(values.ttl);
  if (cfg.jwt.issuer !== undefined) jwt = jwt.setIssuer(cfg.jwt.issuer);
  if (cfg.jwt.audience !== undefined) jwt = jwt.setAudience(cfg.jwt.audience);
  return jwt.sign(new TextEncoder().encode(secret));
}

async function migrate(env: NodeJS.ProcessEnv): Promise<string> {
  const cfg = config(env);
  const log = pino({ level: cfg.logLevel });
  // Loaded here only: the other commands need none of the server.
  const { createStore } = await import('./app.js');
  const store = await createStore(cfg, log);
  try {
    // SQLite migrates as it opens; PostgreSQL before its first query answers.
    await store.ping();
  } finally {
    await store.close();
  }
  return `charla: migrations applied to ${maskUrl(cfg.databaseUrl)}`;
}

const MASK = '********';

/** A URL with its password, if any, masked. */
function maskUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*:)[^@/]*@/i, `$1${MASK}@`);
}

const mask = (value: string | undefined) => (value === undefined ? undefined : MASK);

function checkConfig(env: NodeJS.ProcessEnv): string {
  const cfg = config(env);
  const effective = {
    ...cfg,
    databaseUrl: maskUrl(cfg.databaseUrl),
    redisUrl: cfg.redisUrl === undefined ? undefined : maskUrl(cfg.redisUrl),
    jwt: {
      ...cfg.jwt,
      // Dev mode's secret is made at start (or read from its file): there is none to show.
      secret: cfg.devMode ? `(dev mode: ${DEV_STATE_FILE})` : mask(cfg.jwt.secret),
    },
    apiKey: !cfg.apiKeyGenerated
      ? MASK
      : cfg.devMode
        ? `(dev mode: ${DEV_STATE_FILE})`
        : '(not set: generated at every start)',
    metricsToken: mask(cfg.metricsToken),
  };
  return JSON.stringify(effective, null, 2);
}

async function run(argv: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'token':
      return token(rest, env);
    case 'migrate':
      return migrate(env);
    case 'check-config':
      return checkConfig(env);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      return USAGE.trimEnd();
    default:
      throw new UsageError(`unknown command "${command}"; try: charla help`);
  }
}

run(process.argv.slice(2), process.env).then(
  (out) => {
    process.stdout.write(`${out}\n`);
  },
  (err: unknown) => {
    const message =
      err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')
        ? (err as Error).message
        : `failed: ${err instanceof Error ? err.message : String(err)}`;
    process.stderr.write(`charla: ${message}\n`);
    process.exitCode = 1;
  },
);
