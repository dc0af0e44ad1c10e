// Small helpers shared by both views. Every piece of text from the network goes
// through `h` as a text node: nothing here ever parses a string as HTML.
import { lang, t } from './i18n.js';

/**
 * Builds an element. `props` keys starting with `on` become listeners,
 * `dataset`/`hidden`/`disabled` are set as properties, the rest as attributes.
 * Children are elements or strings (strings become text nodes).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'hidden' || k === 'disabled') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return el;
}

/**
 * A string a peer chose (a name, a file name) as its own `<bdi>`: a U+202E
 * (right-to-left override) or a right-to-left name inside it turns only
 * itself, never the sentence or the row it is put in. For a sentence from the
 * catalog: `tNodes('stream.bannedLine', { name: isolate(name) })` (i18n.js).
 */
export function isolate(text, props = {}) {
  return h('bdi', props, String(text ?? ''));
}

const timeFormat = new Intl.DateTimeFormat(lang, { hour: '2-digit', minute: '2-digit' });
const dayFormat = new Intl.DateTimeFormat(lang, { day: 'numeric', month: 'short' });
const fullFormat = new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'medium' });

const dayOf = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();

/**
 * When `d` was, as short as the reader needs: the time today, "yesterday"
 * and the time, or the day and the time before that; in the page's language.
 */
export function whenText(d, now = new Date()) {
  const time = timeFormat.format(d);
  const days = Math.round((dayOf(now) - dayOf(d)) / 86_400_000);
  if (days === 0) return time;
  const day = days === 1 ? t('time.yesterday') : dayFormat.format(d);
  return t('time.dayAndTime', { day, time });
}

/** A `<time>` showing when (see `whenText`), with the full date on hover. */
export function timeEl(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('time', {}, '');
  return h('time', { datetime: d.toISOString(), title: fullFormat.format(d) }, whenText(d));
}

/** A stable hue per user, so a name keeps its colour across messages and reloads. */
export function hueOf(id) {
  let x = 2166136261;
  for (const ch of String(id)) x = Math.imul(x ^ ch.codePointAt(0), 16777619) >>> 0;
  // The golden angle spreads neighbouring ids ("1", "2") far apart on the wheel.
  return Math.round((x * 137.508) % 360);
}

export function avatar(name, id) {
  const initial = [...String(name || '?').trim()][0]?.toUpperCase() ?? '?';
  const el = h('span', { class: 'avatar', 'aria-hidden': 'true' }, initial);
  el.style.setProperty('--hue', String(hueOf(id)));
  return el;
}

/**
 * The claims of a JWT, read without verifying it: only to know who "I" am for
 * display. The server verifies every token it is given.
 */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1] ?? '';
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const bytes = Uint8Array.from(json, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims === 'object' && claims !== null ? claims : {};
  } catch {
    return {};
  }
}

/** The user a token names, by the contract's default claims. */
export function whoIs(token) {
  const c = claimsOf(token);
  const id = c.user_id ?? c.sub;
  const roles = [c.role, ...(Array.isArray(c.roles) ? c.roles : [])].filter(
    (r) => typeof r === 'string',
  );
  return {
    id: id === undefined ? undefined : String(id),
    name: String(c.username ?? c.name ?? id ?? ''),
    role: roles[0]?.toUpperCase(),
    exp: typeof c.exp === 'number' ? c.exp : undefined,
  };
}

/** True when the list is scrolled (nearly) to its end, so new messages may follow it. */
export function atBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 48;
}

/**
 * A notice line above the composer: `show(text, kind)` replaces it, `clear()`
 * hides it. `kind` is one of info, warn, error, ok.
 */
export function notice(el) {
  let timer;
  return {
    get kind() {
      return el.hidden ? undefined : el.dataset.kind;
    },
    show(text, kind = 'info', ms = 0) {
      clearTimeout(timer);
      el.textContent = text;
      el.dataset.kind = kind;
      el.hidden = false;
      if (ms > 0) timer = setTimeout(() => this.clear(), ms);
    },
    clear() {
      clearTimeout(timer);
      el.hidden = true;
      el.textContent = '';
    },
  };
}

/**
 * Sets the connection pill: state is one of idle, connecting, live, offline.
 * Without `text` it says the state's own words (`status.<state>` in the catalog).
 */
export function setStatus(el, state, text = t(`status.${state}`)) {
  el.dataset.state = state;
  el.textContent = text;
}
