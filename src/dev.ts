/**
 * Dev mode (no JWT key configured, not production): a demo stream, a demo
 * request and ready-to-paste tokens, so charla can be tried by hand at once.
 */
import { SignJWT } from 'jose';
import type { App } from './app.js';

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

/** Registers the demo stream and request; returns a token per demo user. */
export async function prepareDevMode(app: App): Promise<Record<DemoUser, string>> {
  const secret = app.config.jwt.secret;
  if (secret === undefined) throw new Error('dev mode needs the generated JWT secret');
  await app.streams.put(DEMO_STREAM, { title: 'Demo stream' });
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
    `  web client       ${url}/`,
    `    stream, as viewer   ${clientLink(url, 'stream', tokens.viewer)}`,
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
