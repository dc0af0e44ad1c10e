/**
 * Who a connection is, from the platform's JWT (protocol section 1, "Identity
 * from the JWT"). Algorithms are pinned by the kind of key configured, so an
 * HS secret never verifies an RS/ES token and `none` is never accepted.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { createRemoteJWKSet, errors, type JWTPayload, type JWTVerifyGetKey, jwtVerify } from 'jose';
import type { JwtConfig } from '../config.js';
import type { Logger } from '../observability/log.js';
import { ChatError } from './errors.js';
import {
  isStorableText,
  UNSTORABLE_TEXT,
  USER_ID_MAX_CHARS,
  USERNAME_MAX_CHARS,
} from './limits.js';

export type Role = 'TEACHER' | 'LAB' | (string & {});

export interface Identity {
  readonly userId: string;
  readonly username: string;
  /** Upper-cased role names. */
  readonly roles: readonly Role[];
  /** Epoch milliseconds of `exp`, when the token has one. */
  readonly expiresAt: number | undefined;
}

export interface TokenVerifier {
  /** Resolves to the identity, or rejects with `invalid_token` / `token_expired`. */
  verify(token: string): Promise<Identity>;
}

/** The token of an `Authorization: Bearer <token>` header, if it is one. */
export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  return /^Bearer\s+(\S+)\s*$/i.exec(header)?.[1];
}

export function hasRole(identity: Identity, role: Role): boolean {
  return identity.roles.includes(role);
}

type ClaimNames = Pick<JwtConfig, 'userIdClaim' | 'usernameClaim' | 'roleClaim'>;

function claimAsId(value: unknown): string | undefined {
  if (typeof value === 'string' && value.length > 0) return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  return undefined;
}

function rolesOf(value: unknown): string[] {
  if (typeof value === 'string') return [value.toUpperCase()];
  if (Array.isArray(value)) {
    return value.filter((r): r is string => typeof r === 'string').map((r) => r.toUpperCase());
  }
  return [];
}

/** A name for display, cut to USERNAME_MAX_CHARS code points (never inside a surrogate pair). */
function displayName(name: string): string {
  return name.length > USERNAME_MAX_CHARS ? [...name].slice(0, USERNAME_MAX_CHARS).join('') : name;
}

/** Maps verified claims to an identity; throws `invalid_token` when there is no user id. */
export function identityFromClaims(claims: JWTPayload, names: ClaimNames): Identity {
  const userId = claimAsId(claims[names.userIdClaim]) ?? claimAsId(claims.sub);
  if (userId === undefined) throw new ChatError('invalid_token', 'The token names no user.');
  if (userId.length > USER_ID_MAX_CHARS) {
    throw new ChatError(
      'invalid_token',
      `The user id is longer than ${USER_ID_MAX_CHARS} characters.`,
    );
  }
  const username = displayName(
    [claims[names.usernameClaim], claims.name].find(
      (v): v is string => typeof v === 'string' && v.length > 0,
    ) ?? userId,
  );
  // Both are stored with every message: a value no store can keep would fail
  // the batch it is written with, other users' messages included.
  if (!isStorableText(userId) || !isStorableText(username)) {
    throw new ChatError('invalid_token', `The user id and name ${UNSTORABLE_TEXT}.`);
  }
  const roles = [...new Set([...rolesOf(claims[names.roleClaim]), ...rolesOf(claims.roles)])];
  const expiresAt = typeof claims.exp === 'number' ? claims.exp * 1000 : undefined;
  return { userId, username, roles, expiresAt };
}

type Key = Uint8Array | KeyObject | JWTVerifyGetKey;

/**
 * Errors of the key lookup that say nothing about the JWKS endpoint: the token
 * names a key the set does not have, or an algorithm the set cannot serve.
 */
function isKeyChoiceError(err: unknown): boolean {
  return (
    err instanceof errors.JWKSNoMatchingKey ||
    err instanceof errors.JWKSMultipleMatchingKeys ||
    err instanceof errors.JOSENotSupported
  );
}

/**
 * jose's remote key set, reporting its fetch failures: a JWKS endpoint that is
 * down refuses every token, and without a log line that looks like bad tokens.
 * One warning per outage; the first success after it is logged too.
 */
function loggedRemoteKeySet(
  cfg: JwtConfig & { jwksUrl: string },
  log: Logger | undefined,
): JWTVerifyGetKey {
  const remote = createRemoteJWKSet(new URL(cfg.jwksUrl), { timeoutDuration: cfg.jwksTimeoutMs });
  let failing = false;
  return async (header, token) => {
    try {
      const key = await remote(header, token);
      if (failing) log?.info({ jwksUrl: cfg.jwksUrl }, 'JWKS fetched again');
      failing = false;
      return key;
    } catch (err) {
      if (!isKeyChoiceError(err) && !failing) {
        failing = true;
        log?.warn(
          { err, jwksUrl: cfg.jwksUrl },
          'JWKS fetch failed; tokens are refused until it works',
        );
      }
      throw err;
    }
  };
}

function keyAndAlgorithms(
  cfg: JwtConfig,
  log: Logger | undefined,
): { key: Key; algorithms: string[] } {
  if (cfg.secret !== undefined) {
    return { key: new TextEncoder().encode(cfg.secret), algorithms: ['HS256'] };
  }
  if (cfg.publicKey !== undefined) {
    // Environment variables often carry PEM newlines as a literal "\n".
    const key = createPublicKey(cfg.publicKey.replace(/\\n/g, '\n'));
    if (key.asymmetricKeyType === 'rsa') return { key, algorithms: ['RS256'] };
    if (key.asymmetricKeyType === 'ec') {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      const alg = curve === 'secp384r1' ? 'ES384' : curve === 'secp521r1' ? 'ES512' : 'ES256';
      return { key, algorithms: [alg] };
    }
    throw new Error(`JWT_PUBLIC_KEY: unsupported key type ${key.asymmetricKeyType}`);
  }
  if (cfg.jwksUrl !== undefined) {
    return {
      key: loggedRemoteKeySet({ ...cfg, jwksUrl: cfg.jwksUrl }, log),
      algorithms: ['RS256', 'ES256'],
    };
  }
  throw new Error('no JWT key configured');
}

/**
 * Tokens verified recently, so a client that reconnects with the same token
 * (a reload, a reconnect storm after a node is lost) skips the signature
 * check. Only successes are kept, `exp` is checked again on every hit, and
 * the oldest entry goes first once the cache is full. An entry lives at most
 * VERIFIED_TOKEN_TTL_MS, so a token without `exp` is checked again now and
 * then (against a rotated key, say) rather than trusted for the process's life.
 */
const VERIFIED_TOKENS = 10_000;
/**
 * Longer tokens are verified every time, not kept: the cache's bytes stay
 * bounded (about VERIFIED_TOKENS × this) whatever claims tokens carry.
 */
const CACHED_TOKEN_MAX_CHARS = 2_048;
export const VERIFIED_TOKEN_TTL_MS = 5 * 60_000;

/** When a cache entry made at `now` must be verified again: never past `exp`. */
export function cachedUntil(identity: Identity, now: number): number {
  return Math.min(now + VERIFIED_TOKEN_TTL_MS, identity.expiresAt ?? Number.POSITIVE_INFINITY);
}

export interface VerifierOptions {
  /** Where JWKS fetch failures are reported. */
  log?: Logger;
  now?: () => number;
}

export function createVerifier(cfg: JwtConfig, opts: VerifierOptions = {}): TokenVerifier {
  const now = opts.now ?? Date.now;
  const { key, algorithms } = keyAndAlgorithms(cfg, opts.log);
  // jose imports a raw HMAC secret on every call; import it once.
  const verifyKey =
    key instanceof Uint8Array
      ? crypto.subtle.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['verify'])
      : Promise.resolve(key);
  const options = {
    algorithms,
    ...(cfg.issuer === undefined ? {} : { issuer: cfg.issuer }),
    ...(cfg.audience === undefined ? {} : { audience: cfg.audience }),
    ...(cfg.requireExp ? { requiredClaims: ['exp'] } : {}),
  };
  const verified = new Map<string, { identity: Identity; until: number }>();
  return {
    async verify(token: string): Promise<Identity> {
      const cached = verified.get(token);
      if (cached !== undefined) {
        const { identity, until } = cached;
        if (identity.expiresAt !== undefined && identity.expiresAt <= now()) {
          verified.delete(token);
          throw new ChatError('token_expired');
        }
        if (until > now()) return identity;
        verified.delete(token);
      }
      let payload: JWTPayload;
      try {
        // jose overloads differ per key kind; the union is handled at run time.
        payload = (
          await jwtVerify(token, (await verifyKey) as unknown as Uint8Array, {
            ...options,
            currentDate: new Date(now()),
          })
        ).payload;
      } catch (err) {
        if (err instanceof errors.JWTExpired) throw new ChatError('token_expired');
        throw new ChatError('invalid_token');
      }
      const identity = identityFromClaims(payload, cfg);
      if (token.length > CACHED_TOKEN_MAX_CHARS) return identity;
      if (verified.size >= VERIFIED_TOKENS) verified.delete(verified.keys().next().value as string);
      verified.set(token, { identity, until: cachedUntil(identity, now()) });
      return identity;
    },
  };
}
