// The web client's language: Spanish when the browser prefers Spanish (`es`,
// `es-*`), English otherwise. Every visible string comes from one catalog,
// kept in three files so that each view owns its own strings:
// strings-common.js (the page frame and helpers both views use),
// strings-stream.js and strings-request.js. Each holds `en` and `es` with the
// same keys (test/web-i18n.test.ts checks it).
//
// In HTML, `data-i18n="key"` sets an element's text and
// `data-i18n-placeholder`, `data-i18n-title`, `data-i18n-aria-label` set those
// attributes. In code, `t('key', { name: 'Ana' })` fills `{name}`; a value of
// the form `{ one: '…', other: '…' }` is chosen by `count` with the language's
// plural rules. `tNodes` is the same sentence as a list of parts, so that a
// value may be a node: a name isolated from the words around it (dom.js
// `isolate`).
import common from './strings-common.js';
import request from './strings-request.js';
import stream from './strings-stream.js';

export const LANGUAGES = ['en', 'es'];

/** The first of the browser's preferred languages that the catalog has; English if none. */
export function pickLanguage(preferred) {
  for (const tag of preferred) {
    const base = String(tag).toLowerCase().split('-')[0];
    if (LANGUAGES.includes(base)) return base;
  }
  return 'en';
}

export const catalog = Object.fromEntries(
  LANGUAGES.map((l) => [l, { ...common[l], ...stream[l], ...request[l] }]),
);

export const lang = pickLanguage(
  globalThis.navigator?.languages?.length
    ? navigator.languages
    : [globalThis.navigator?.language ?? 'en'],
);

const plural = new Intl.PluralRules(lang);

/** The catalog's text for `key` in the page's language, its plural chosen by `count`. */
function template(key, count) {
  const value = catalog[lang][key] ?? catalog.en[key];
  if (value === undefined) return key;
  if (typeof value === 'object') return value[plural.select(count ?? 0)] ?? value.other;
  return value;
}

/** The string for `key` in the page's language, with `{name}` placeholders filled from `vars`. */
export function t(key, vars = {}) {
  return template(key, vars.count).replace(/\{(\w+)\}/g, (m, name) =>
    name in vars ? String(vars[name]) : m,
  );
}

/**
 * As `t`, but the sentence comes as parts to append: strings, and each value
 * that is a node kept as that node (a name in its own `<bdi>`, so that its
 * direction marks cannot turn the words around it).
 */
export function tNodes(key, vars = {}) {
  return template(key, vars.count)
    .split(/(\{\w+\})/)
    .map((part) => {
      const name = /^\{(\w+)\}$/.exec(part)?.[1];
      if (name === undefined || !(name in vars)) return part;
      return typeof vars[name] === 'object' && vars[name] !== null
        ? vars[name]
        : String(vars[name]);
    })
    .filter((part) => part !== '');
}

const ATTRIBUTES = ['placeholder', 'title', 'aria-label'];

/** Fills every `data-i18n*` element under `root` and sets the document's language. */
export function translate(root = document) {
  document.documentElement.lang = lang;
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const attr of ATTRIBUTES) {
    for (const el of root.querySelectorAll(`[data-i18n-${attr}]`)) {
      el.setAttribute(attr, t(el.getAttribute(`data-i18n-${attr}`)));
    }
  }
}
