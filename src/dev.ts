/**
 * Dev mode (no JWT key configured, not production): a demo stream, a demo
 * request and ready-to-paste tokens, so charla can be tried by hand at once.
 */
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  linkSync,
  mkdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname } from 'node:path';
import { SignJWT } from 'jose';
import type { App } from './app.js';
import type { Config } from './config.js';

export const DEMO_STREAM = 'demo';
export const DEMO_REQUEST = '6751b6df1ad14eaa13a03313';
const TOKEN_LIFETIME = '12h';

export const DEMO_USERS = {
  teacher: { user_id: '1', username: 'ana', role: 'TEACHER' },
  lab: { user_id: '2', username: 'lab', role: 'LAB' },
  viewer: { user_id: '3', username: 'viewer' },
} as const;

export type DemoUser = keyof typeof DEMO_USERS;

export function signDevToken(secret: string, claims: Record<string, unknown>): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime(TOKEN_LIFETIME)
    .sign(new TextEncoder().encode(secret));
}

/**
 * Registers the demo stream and request, both owned by the demo TEACHER (who
 * so moderates the stream); returns a token per demo user.
 */
export async function prepareDevMode(app: App): Promise<Record<DemoUser, string>> {
  const secret = app.config.jwt.secret;
  if (secret === undefined) throw new Error('dev mode needs the generated JWT secret');
  await app.streams.put(DEMO_STREAM, {
    title: 'Demo stream',
    ownerId: DEMO_USERS.teacher.user_id,
  });
  await app.requests.put(DEMO_REQUEST, DEMO_USERS.teacher.user_id);
  const [teacher, lab, viewer] = await Promise.all([
    signDevToken(secret, { ...DEMO_USERS.teacher }),
    signDevToken(secret, { ...DEMO_USERS.lab }),
    signDevToken(secret, { ...DEMO_USERS.viewer }),
  ]);
  return { teacher, lab, viewer };
}

/**
 * A link that opens the web client signed in as a demo user. Settings ride in
 * the fragment, which the browser never sends: the token stays out of the
 * server's logs, and the client wipes it from the address bar once read.
 */
export function clientLink(url: string, view: 'stream' | 'request', token: string): string {
  const target = view === 'stream' ? `stream=${DEMO_STREAM}` : `request=${DEMO_REQUEST}`;
  return `${url}/#view=${view}&${target}&token=${token}`;
}

export function devBanner(url: string, apiKey: string, tokens: Record<DemoUser, string>): string {
  const ws = url.replace(/^http/, 'ws');
  return [
    '',
    'charla is running in dev mode (no JWT key configured; tokens below expire in 12h)',
    `  kept in ${DEV_STATE_FILE} (JWT secret, API key), so these survive restarts; more: npx charla token --user 4`,
    `  web client       ${url}/`,
    `    stream, as viewer   ${clientLink(url, 'stream', tokens.viewer)}`,
    `    stream, as TEACHER  ${clientLink(url, 'stream', tokens.teacher)}  (its owner: moderates)`,
    `    request, as TEACHER ${clientLink(url, 'request', tokens.teacher)}`,
    `    request, as LAB     ${clientLink(url, 'request', tokens.lab)}`,
    '',
    `  URL              ${url}`,
    `  API key          ${apiKey}`,
    `  stream chat      ${ws}/ws/streams/${DEMO_STREAM}/`,
    `  request chat     ${url}/socket.io/  (request ${DEMO_REQUEST})`,
    '',
    `  TEACHER token    ${tokens.teacher}`,
    `  LAB token        ${tokens.lab}`,
    `  viewer token     ${tokens.viewer}`,
    '',
    `  try: npx wscat -c "${ws}/ws/streams/${DEMO_STREAM}/?token=${tokens.viewer}"`,
    '',
  ].join('\n');
}

/** Where dev mode keeps its secret and API key, relative to the working directory. */
export const DEV_STATE_FILE = './data/dev.json';

export interface DevState {
  jwtSecret: string;
  apiKey: string;
}

function parseDevState(text: string, path: string): DevState {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`${path} is not valid JSON; delete it to start with new dev credentials`);
  }
  const v = value as Partial<DevState> | null;
  if (
    typeof v?.jwtSecret !== 'string' ||
    v.jwtSecret.length < 32 ||
    typeof v.apiKey !== 'string' ||
    v.apiKey.length === 0
  ) {
    throw new Error(
      `${path} lacks jwtSecret or apiKey; delete it to start with new dev credentials`,
    );
  }
  return { jwtSecret: v.jwtSecret, apiKey: v.apiKey };
}

/** The dev credentials in `path`, or undefined when dev mode has never run here. */
export function readDevState(path = DEV_STATE_FILE): DevState | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return parseDevState(text, path);
}

/**
 * The dev credentials of the previous run, or new ones written to `path`, so
 * that printed tokens and links keep working across restarts.
 */
export function loadDevState(path = DEV_STATE_FILE): DevState {
  const existing = readDevState(path);
  if (existing !== undefined) {
    // It holds a signing key: nobody else on the machine may read it.
    if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    return existing;
  }
  const fresh: DevState = {
    jwtSecret: randomBytes(32).toString('base64url'),
    apiKey: randomBytes(18).toString('base64url'),
  };
  mkdirSync(dirname(path), { recursive: true });
  // Written whole under another name, then linked into place: a node starting
  // at the same moment finds either no file or a complete one, never half of it.
  const temp = `${path}.${process.pid}.tmp`;
  writeFileSync(temp, `${JSON.stringify(fresh, null, 2)}\n`, { mode: 0o600 });
  try {
    linkSync(temp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    return loadDevState(path);
  } finally {
    rmSync(temp, { force: true });
  }
  return fresh;
}

/** `config` with dev mode's remembered secret, and its API key unless API_KEY is set. */
export function withDevState(config: Config, state: DevState): Config {
  return {
    ...config,
    jwt: { ...config.jwt, secret: state.jwtSecret },
    apiKey: config.apiKeyGenerated ? state.apiKey : config.apiKey,
  };
}
