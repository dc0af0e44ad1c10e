import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { exportJWK, SignJWT } from 'jose';
import { pino } from 'pino';
import type { JwtConfig } from '../src/config.js';
import {
  cachedUntil,
  createVerifier,
  identityFromClaims,
  VERIFIED_TOKEN_TTL_MS,
} from '../src/core/identity.js';
import { SECRET, sign } from './helpers.js';

const names = { userIdClaim: 'user_id', usernameClaim: 'username', roleClaim: 'role' };
const hsConfig: JwtConfig = {
  secret: SECRET,
  publicKey: undefined,
  jwksUrl: undefined,
  issuer: undefined,
  audience: undefined,
  ...names,
  requireExp: false,
  jwksTimeoutMs: 5_000,
};

describe('identityFromClaims', () => {
  it('takes user_id, else sub, and turns numbers into strings', () => {
    assert.equal(identityFromClaims({ user_id: 1 }, names).userId, '1');
    assert.equal(identityFromClaims({ user_id: 'u7', sub: 'x' }, names).userId, 'u7');
    assert.equal(identityFromClaims({ sub: '42' }, names).userId, '42');
    assert.throws(() => identityFromClaims({ username: 'ana' }, names), { code: 'invalid_token' });
    assert.throws(() => identityFromClaims({ user_id: {} }, names), { code: 'invalid_token' });
  });
  it('takes username, else name, else the user id', () => {
    assert.equal(
      identityFromClaims({ user_id: 1, username: 'ana', name: 'A' }, names).username,
      'ana',
    );
    assert.equal(identityFromClaims({ user_id: 1, name: 'Ana M' }, names).username, 'Ana M');
    assert.equal(identityFromClaims({ user_id: 1 }, names).username, '1');
  });
  it('reads role or roles, upper-cased', () => {
    assert.deepEqual(identityFromClaims({ user_id: 1, role: 'teacher' }, names).roles, ['TEACHER']);
    assert.deepEqual(identityFromClaims({ user_id: 1, roles: ['lab', 7, 'Admin'] }, names).roles, [
      'LAB',
      'ADMIN',
    ]);
    assert.deepEqual(identityFromClaims({ user_id: 1 }, names).roles, []);
  });
  it('follows renamed claims', () => {
    const custom = { userIdClaim: 'uid', usernameClaim: 'nick', roleClaim: 'perms' };
    const id = identityFromClaims({ uid: 9, nick: 'zoe', perms: ['lab'] }, custom);
    assert.deepEqual(
      { userId: id.userId, username: id.username, roles: id.roles },
      { userId: '9', username: 'zoe', roles: ['LAB'] },
    );
  });
  it('refuses a user id over 256 characters, which no store index could take', () => {
    assert.equal(identityFromClaims({ user_id: 'u'.repeat(256) }, names).userId.length, 256);
    // 900 CJK characters: 2.7 KB of UTF-8, past PostgreSQL's largest index entry.
    assert.throws(() => identityFromClaims({ user_id: '漢'.repeat(900) }, names), {
      code: 'invalid_token',
    });
    assert.throws(() => identityFromClaims({ sub: 'x'.repeat(257) }, names), {
      code: 'invalid_token',
    });
  });
  it('cuts a username to 256 code points, never inside a surrogate pair', () => {
    const id = identityFromClaims({ user_id: 1, username: `a${'😀'.repeat(400)}` }, names);
    assert.equal([...id.username].length, 256);
    assert.equal(id.username, `a${'😀'.repeat(255)}`);
  });
  it('keeps exp in milliseconds', () => {
    assert.equal(identityFromClaims({ user_id: 1, exp: 100 }, names).expiresAt, 100_000);
  });
});

describe('createVerifier (HS256)', () => {
  const verifier = createVerifier(hsConfig);

  it('accepts a token signed with the secret', async () => {
    const id = await verifier.verify(await sign({ user_id: 5, username: 'eva', role: 'lab' }));
    assert.equal(id.userId, '5');
    assert.deepEqual(id.roles, ['LAB']);
  });
  it('refuses a token signed with another key', async () => {
    const token = await sign({ user_id: 5 }, { secret: 'another-secret-another-secret-123' });
    await assert.rejects(verifier.verify(token), { code: 'invalid_token' });
  });
  it('refuses alg none', async () => {
    const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const token = `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ user_id: 1, exp: 9e9 })}.`;
    await assert.rejects(verifier.verify(token), { code: 'invalid_token' });
  });
  it('refuses an RS256 token', async () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const token = await new SignJWT({ user_id: 1 })
      .setProtectedHeader({ alg: 'RS256' })
      .setExpirationTime('1h')
      .sign(privateKey);
    await assert.rejects(verifier.verify(token), { code: 'invalid_token' });
  });
  it('tells an expired token from a bad one, and refuses one not yet valid', async () => {
    const expired = await sign({ user_id: 1 }, { expiresIn: Math.floor(Date.now() / 1000) - 60 });
    await assert.rejects(verifier.verify(expired), { code: 'token_expired' });
    const early = await sign({ user_id: 1 }, { notBefore: '1h', expiresIn: '2h' });
    await assert.rejects(verifier.verify(early), { code: 'invalid_token' });
    await assert.rejects(verifier.verify('not.a.jwt'), { code: 'invalid_token' });
    await assert.rejects(verifier.verify(''), { code: 'invalid_token' });
  });
  it('checks issuer and audience when configured', async () => {
    const strict = createVerifier({ ...hsConfig, issuer: 'platform', audience: 'charla' });
    const good = await new SignJWT({ user_id: 1 })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('platform')
      .setAudience('charla')
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode(SECRET));
    assert.equal((await strict.verify(good)).userId, '1');
    await assert.rejects(strict.verify(await sign({ user_id: 1 })), { code: 'invalid_token' });
  });
  it('a token verified before is still refused once it expires', async () => {
    let clock = Date.now();
    const timed = createVerifier(hsConfig, { now: () => clock });
    const token = await sign({ user_id: 1 }, { expiresIn: '1h' });
    assert.equal((await timed.verify(token)).userId, '1');
    assert.equal((await timed.verify(token)).userId, '1', 'again, from the cache');
    clock += 3_600_000;
    await assert.rejects(timed.verify(token), { code: 'token_expired' });
    // A tampered copy of a cached token is a different string, verified afresh.
    await assert.rejects(timed.verify(`${token}x`), { code: 'invalid_token' });
  });
});

/** An HS256 token with no `exp` at all. */
const forever = (claims: Record<string, unknown>) =>
  new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(SECRET));

describe('verified-token cache', () => {
  it('keeps ordinary tokens, and verifies long ones every time (its bytes stay bounded)', async () => {
    const verifier = createVerifier(hsConfig);
    const small = await sign({ user_id: 1 }, { expiresIn: '1h' });
    // A cached answer is the very identity first made for the token.
    assert.equal(await verifier.verify(small), await verifier.verify(small));
    const long = await sign({ user_id: 2, extra: 'x'.repeat(4_000) }, { expiresIn: '1h' });
    const first = await verifier.verify(long);
    const again = await verifier.verify(long);
    assert.equal(again.userId, '2');
    assert.notEqual(again, first, 'a 4 KB token is not kept');
  });

  it('keeps an entry at most VERIFIED_TOKEN_TTL_MS, and never past exp', () => {
    const id = identityFromClaims({ user_id: 1 }, names);
    assert.equal(VERIFIED_TOKEN_TTL_MS, 300_000);
    assert.equal(cachedUntil(id, 1_000), 1_000 + VERIFIED_TOKEN_TTL_MS, 'no exp: bounded');
    const soon = { ...id, expiresAt: 61_000 };
    assert.equal(cachedUntil(soon, 1_000), 61_000, 'exp first');
    const late = { ...id, expiresAt: 10 * VERIFIED_TOKEN_TTL_MS };
    assert.equal(cachedUntil(late, 1_000), 1_000 + VERIFIED_TOKEN_TTL_MS, 'the lifetime first');
  });

  it('a token without exp is verified again once its entry is stale', async () => {
    let clock = Date.now();
    const timed = createVerifier(hsConfig, { now: () => clock });
    const token = await forever({ user_id: 4 });
    assert.equal((await timed.verify(token)).userId, '4');
    clock += VERIFIED_TOKEN_TTL_MS + 1;
    assert.equal((await timed.verify(token)).userId, '4', 'verified afresh, still good');
  });
});

describe('createVerifier in production (requireExp)', () => {
  it('refuses a token without exp as invalid_token, and accepts one with it', async () => {
    const strict = createVerifier({ ...hsConfig, requireExp: true });
    await assert.rejects(strict.verify(await forever({ user_id: 1 })), { code: 'invalid_token' });
    assert.equal((await strict.verify(await sign({ user_id: 1 }))).userId, '1');
    // Outside production the same token is accepted.
    assert.equal(
      (await createVerifier(hsConfig).verify(await forever({ user_id: 1 }))).userId,
      '1',
    );
  });
});

/** A real pino logger whose lines a test can read. */
function recordingLogger() {
  const lines: Array<{ level: number; msg: string; jwksUrl?: string }> = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink), lines };
}

describe('createVerifier (JWKS_URL)', () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  type Mode = 'serve' | 'fail' | 'close' | 'hang';
  let mode: Mode = 'fail';
  let jwks: Server;
  let url: string;
  before(async () => {
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    jwks = createServer((req, res) => {
      if (mode === 'serve') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ keys: [jwk] }));
      } else if (mode === 'fail') {
        res.writeHead(500);
        res.end();
      } else if (mode === 'close') {
        req.socket.destroy();
      }
      // 'hang': never answer.
    });
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`;
  });
  after(() => {
    jwks.closeAllConnections();
    jwks.close();
  });

  const token = () =>
    new SignJWT({ user_id: 9 })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setExpirationTime('1h')
      .sign(privateKey);
  const jwksConfig = (jwksTimeoutMs = 5_000): JwtConfig => ({
    ...hsConfig,
    secret: undefined,
    jwksUrl: url,
    jwksTimeoutMs,
  });

  it('logs a failing JWKS once per outage, refuses tokens meanwhile, and logs the recovery', async () => {
    const { log, lines } = recordingLogger();
    const verifier = createVerifier(jwksConfig(), { log });
    mode = 'fail';
    await assert.rejects(verifier.verify(await token()), { code: 'invalid_token' });
    mode = 'close';
    await assert.rejects(verifier.verify(await token()), { code: 'invalid_token' });
    const warnings = lines.filter((l) => l.level === 40);
    assert.equal(warnings.length, 1, JSON.stringify(lines));
    assert.match(warnings[0]?.msg ?? '', /JWKS fetch failed/);
    assert.equal(warnings[0]?.jwksUrl, url);

    mode = 'serve';
    assert.equal((await verifier.verify(await token())).userId, '9');
    assert.ok(lines.some((l) => l.level === 30 && /JWKS fetched again/.test(l.msg)));
    assert.equal(lines.filter((l) => l.level === 40).length, 1, 'no warning while it works');
  });

  it('an unanswered JWKS fetch refuses the token within jwksTimeoutMs, not later', async () => {
    mode = 'hang';
    const verifier = createVerifier(jwksConfig(300), { log: recordingLogger().log });
    const started = Date.now();
    await assert.rejects(verifier.verify(await token()), { code: 'invalid_token' });
    const took = Date.now() - started;
    assert.ok(took < 2_000, `took ${took} ms`);
  });
});

describe('createVerifier (public keys)', () => {
  for (const kind of ['rsa', 'ec'] as const) {
    it(`verifies ${kind} tokens and refuses HS256 ones signed with the PEM as secret`, async () => {
      const { privateKey, publicKey } =
        kind === 'rsa'
          ? generateKeyPairSync('rsa', { modulusLength: 2048 })
          : generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
      const verifier = createVerifier({ ...hsConfig, secret: undefined, publicKey: pem });
      const alg = kind === 'rsa' ? 'RS256' : 'ES256';
      const token = await new SignJWT({ user_id: 3 })
        .setProtectedHeader({ alg })
        .setExpirationTime('1h')
        .sign(privateKey);
      assert.equal((await verifier.verify(token)).userId, '3');
      // The classic key-confusion attack: HMAC with the public key as secret.
      const confused = await sign({ user_id: 3 }, { secret: pem });
      await assert.rejects(verifier.verify(confused), { code: 'invalid_token' });
    });
  }
});
