/**
 * README's client library section names every error code the client raises
 * by itself (`ClientErrorCode` in src/client/errors.ts), so an application
 * can handle each one it may meet.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

const root = new URL('../../', import.meta.url);

describe('README: client library', () => {
  it('lists every client error code next to the server codes', () => {
    const source = readFileSync(new URL('src/client/errors.ts', root), 'utf8');
    const union = /export type ClientErrorCode =([^;]*);/.exec(source)?.[1] ?? '';
    const codes = [...union.matchAll(/'([a-z_]+)'/g)].map((m) => m[1]);
    assert.ok(codes.length >= 5, `ClientErrorCode read from errors.ts: ${codes.join(', ')}`);
    const readme = readFileSync(new URL('README.md', root), 'utf8');
    const paragraph = /Client codes besides the server's:[\s\S]*?\n\n/.exec(readme)?.[0] ?? '';
    for (const code of codes) assert.match(paragraph, new RegExp(`\`${code}\``), code);
  });
});
