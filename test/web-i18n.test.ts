/**
 * The web client's catalog: both languages hold the same keys, no string is
 * empty, placeholders match, and the language follows the browser's
 * preference (Spanish for `es` and `es-*`).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

const web = new URL('../../web/', import.meta.url);
const { catalog, pickLanguage, LANGUAGES } = await import(new URL('i18n.js', web).href);

const placeholders = (v: unknown) =>
  [...JSON.stringify(v).matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();

test('English and Spanish hold the same keys, none empty, with the same placeholders', () => {
  assert.deepEqual(LANGUAGES, ['en', 'es']);
  const en = catalog.en as Record<string, unknown>;
  const es = catalog.es as Record<string, unknown>;
  assert.deepEqual(Object.keys(es).sort(), Object.keys(en).sort());
  for (const [key, value] of Object.entries(en)) {
    for (const v of [value, es[key]]) {
      if (typeof v === 'string') assert.ok(v.trim().length > 0, key);
      else assert.ok(v && typeof v === 'object' && 'other' in v, key);
    }
    assert.deepEqual(placeholders(es[key]), placeholders(value), key);
  }
});

test('Spanish for es and es-*, English for everything else', () => {
  assert.equal(pickLanguage(['es']), 'es');
  assert.equal(pickLanguage(['es-MX', 'en']), 'es');
  assert.equal(pickLanguage(['ES-es']), 'es');
  assert.equal(pickLanguage(['en-US', 'es']), 'en');
  assert.equal(pickLanguage(['fr-FR', 'es-AR']), 'es');
  assert.equal(pickLanguage(['fr-FR', 'de']), 'en');
  assert.equal(pickLanguage([]), 'en');
});

test('every string of the catalog is used by the client', async () => {
  const { readdir, readFile } = await import('node:fs/promises');
  const files = (await readdir(web)).filter(
    (f) => /\.(js|html)$/.test(f) && !f.startsWith('strings-'),
  );
  const source = (await Promise.all(files.map((f) => readFile(new URL(f, web), 'utf8')))).join();
  // Keys the client builds from a state or a code: `tick.${state}`, `status.${state}`, ….
  const built = [...source.matchAll(/t\(`([\w.]+\.)\$\{/g)].map((m) => m[1] as string);
  const unused = Object.keys(catalog.en as object).filter(
    (key) =>
      !source.includes(`'${key}'`) &&
      !source.includes(`"${key}"`) &&
      !built.some((prefix) => key.startsWith(prefix)),
  );
  assert.deepEqual(unused, []);
});
