// Attachments as the request view shows them: links that open in a new tab,
// images as thumbnails, and only for URLs under the prefixes the server
// accepts (the Content-Security-Policy lets exactly those images in);
// anything else shows as its name only. The prefixes come from
// `/client-config.json` (client-config.js): a message drawn before they are
// known would show its attachments as names only, for good, so the request
// view connects only once that file has arrived (or has not, after 5 s).
import { clientConfig } from './client-config.js';
import { h, isolate } from './dom.js';
import { lang, t } from './i18n.js';

/** An http(s) URL under an allowed prefix, compared after parsing; otherwise undefined. */
function safeUrl(raw) {
  let url;
  try {
    url = new URL(String(raw));
  } catch {
    return undefined;
  }
  if (!/^https?:$/.test(url.protocol) || url.username || url.password) return undefined;
  // As the server: an encoded slash could climb out of the prefix on the file server.
  if (/%2f|%5c/i.test(url.pathname)) return undefined;
  const ok = clientConfig.attachmentUrlPrefixes.some((p) => {
    try {
      return (
        url.origin === new URL(p).origin && url.href.startsWith(p) && String(raw).startsWith(p)
      );
    } catch {
      return false;
    }
  });
  return ok ? url.href : undefined;
}

/** Units by powers of 1024; Intl writes each in the page's language and plural. */
const SIZE_UNITS = ['byte', 'kilobyte', 'megabyte', 'gigabyte', 'terabyte'];
const sizeFormats = SIZE_UNITS.map(
  (unit, i) =>
    new Intl.NumberFormat(lang, {
      style: 'unit',
      unit,
      // "long" for bytes: "10 bytes", "1 byte" ("10 byte" is the short form's).
      unitDisplay: i === 0 ? 'long' : 'short',
      maximumFractionDigits: i < 2 ? 0 : 1,
    }),
);

/** A file size in the page's language ("10 bytes", "52 kB", "1,2 MB", "3.5 TB"). */
export function sizeText(bytes) {
  let n = Math.max(0, Number(bytes) || 0);
  let i = 0;
  while (n >= 1024 && i < SIZE_UNITS.length - 1) {
    n /= 1024;
    i++;
  }
  return sizeFormats[i].format(n);
}

/** Links to the files; images under an allowed prefix as thumbnails, anything else as text. */
export function attachmentList(attachments) {
  if (!Array.isArray(attachments) || attachments.length === 0) return null;
  return h(
    'ul',
    { class: 'attachments' },
    attachments.map((a) => {
      const name = String(a?.name ?? t('message.file'));
      const href = safeUrl(a?.url);
      // The file name is the sender's: isolated, its direction marks cannot turn the size after it.
      if (!href) return h('li', { class: 'file blocked' }, isolate(name));
      const image = /^image\/(png|jpe?g|gif|webp|avif)$/i.test(String(a.contentType));
      const link = { href, target: '_blank', rel: 'noopener noreferrer' };
      return image
        ? h(
            'li',
            { class: 'file image' },
            h('a', link, h('img', { class: 'thumb', src: href, alt: name, loading: 'lazy' })),
          )
        : h(
            'li',
            { class: 'file' },
            h('a', link, isolate(name)),
            h('span', { class: 'size' }, ` ${sizeText(a.size)}`),
          );
    }),
  );
}
