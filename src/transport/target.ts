/**
 * The request target of an HTTP request (RFC 9112 section 3.2), read by hand.
 * `new URL(target, base)` throws on `//`, reads `///x` as the host `x` and
 * `/\` as `//`, so it neither guards nor routes a hostile target; this parser
 * takes the path as sent and refuses what no client of charla sends.
 */
import { ChatError } from '../core/errors.js';

export type Target =
  | { form: 'path'; path: string; query: URLSearchParams }
  /** `OPTIONS * HTTP/1.1`: the server as a whole, no path. */
  | { form: 'asterisk' };

const ABSOLUTE = /^https?:\/\/[^/?#]*/i;
/** A `%` must start an escape: `%zz` or a lone `%` would decode to nothing sane. */
const BAD_ESCAPE = /%(?![0-9A-Fa-f]{2})/;

function malformed(why: string): ChatError {
  return new ChatError('invalid_payload', `Malformed request target: ${why}.`, { httpStatus: 400 });
}

/** Parses `raw` (`req.url`); throws `invalid_payload` (400) when it is malformed. */
export function parseTarget(raw: string | undefined): Target {
  if (raw === '*') return { form: 'asterisk' };
  if (!raw) throw malformed('it is empty');
  // Absolute form is what proxies send; servers must accept it (RFC 9112 section 3.2.2).
  let rest = raw;
  const authority = ABSOLUTE.exec(raw);
  if (authority) {
    rest = raw.slice(authority[0].length);
    if (rest === '' || rest.startsWith('?')) rest = `/${rest}`;
  }
  if (!rest.startsWith('/')) throw malformed('it must start with "/"');
  if (rest.includes('#')) throw malformed('a fragment is never sent');
  if (rest.includes('\\')) throw malformed('"\\" is not a path separator');
  if (BAD_ESCAPE.test(rest)) throw malformed('"%" must start a two-digit hex escape');
  const q = rest.indexOf('?');
  const path = q === -1 ? rest : rest.slice(0, q);
  // No route has an empty segment, and a leading `//` reads as a host to many parsers.
  if (path.startsWith('//')) throw malformed('the path starts with "//"');
  return { form: 'path', path, query: new URLSearchParams(q === -1 ? '' : rest.slice(q + 1)) };
}
