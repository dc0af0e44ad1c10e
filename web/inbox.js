// The inbox beside the request chat (protocol section 8): the user's requests,
// most recent activity first, each with its unread count. `listRequests` fills
// it; `requestUpdated` keeps it live, whether or not that request is open.
import { h, isolate, timeEl } from './dom.js';
import { t, tNodes } from './i18n.js';

const shortId = (id) => `${id.slice(0, 6)}…${id.slice(-4)}`;

/**
 * The last message in a line, as parts to append: the sender's name and text
 * are theirs, each isolated so that a direction mark in one turns nothing else.
 */
function preview(msg) {
  if (!msg) return [t('inbox.noMessages')];
  if (msg.deletedAt) return [t('message.deleted')];
  const files = msg.attachments?.length ?? 0;
  const name = isolate(msg.sender?.username ?? '');
  const text = String(msg.message ?? '').trim();
  if (text) return [name, ': ', isolate(text)];
  return files > 0 ? tNodes('inbox.attachments', { name, count: files }) : [];
}

/**
 * `section` holds an `<ol class="inbox-list">` and a "more" button; `onOpen`
 * is called with a request id when the user picks one.
 */
export function mountInbox(section, { onOpen }) {
  const list = section.querySelector('.inbox-list');
  const more = section.querySelector('.inbox-more');
  /** requestId → {summary, li}. */
  const rows = new Map();
  let current = '';
  /** `RequestChat.listRequests` of the current connection, or null. */
  let listPage = null;

  function paint(row) {
    const { summary } = row;
    const unread = Number(summary.unread) || 0;
    const badge = h(
      'span',
      { class: 'badge', hidden: unread === 0, 'aria-label': t('inbox.unread', { count: unread }) },
      unread > 99 ? '99+' : String(unread),
    );
    const last = summary.lastMessage;
    row.li.replaceChildren(
      h(
        'button',
        { type: 'button', class: 'inbox-item', onclick: () => onOpen(summary.requestId) },
        h(
          'span',
          { class: 'inbox-top' },
          h('span', { class: 'inbox-id mono' }, shortId(summary.requestId)),
          last ? timeEl(last.createdAt) : null,
        ),
        h(
          'span',
          { class: 'inbox-bottom' },
          h('span', { class: 'inbox-preview' }, preview(last)),
          badge,
        ),
      ),
    );
    row.li.dataset.unread = String(unread);
    row.li.classList.toggle('current', summary.requestId === current);
    row.li.classList.toggle('unread', unread > 0);
  }

  function put(summary, where) {
    let row = rows.get(summary.requestId);
    if (row) row.summary = { ...row.summary, ...summary };
    else {
      row = { summary, li: h('li', { dataset: { requestId: summary.requestId } }) };
      rows.set(summary.requestId, row);
    }
    paint(row);
    if (where === 'top') list.prepend(row.li);
    else if (!row.li.isConnected) list.append(row.li);
  }

  function load(before) {
    const from = listPage;
    from?.(before ? { before, limit: 30 } : { limit: 30 }).then(
      (page) => {
        if (from !== listPage) return;
        for (const s of page.requests) put(s, 'end');
        more.hidden = !page.hasMore;
        section.hidden = false;
      },
      // Not connected or refused: the next reconnect loads the inbox again.
      () => {},
    );
  }

  more.addEventListener('click', () => {
    const last = list.lastElementChild?.dataset.requestId;
    if (last) load(last);
  });

  return {
    /** Starts over on a (re)connected client: `listRequests(opts)` resolves with a page. */
    reload(listRequests) {
      listPage = listRequests;
      rows.clear();
      list.replaceChildren();
      load();
    },
    /** A `requestUpdated`: the request moves to the top with its new count. */
    updated(update) {
      if (typeof update?.requestId !== 'string') return;
      const known = rows.get(update.requestId)?.summary;
      const moved = update.lastMessage?._id !== known?.lastMessage?._id;
      put({ ownerId: known?.ownerId, ...update }, moved || !known ? 'top' : 'stay');
      section.hidden = false;
    },
    select(requestId) {
      current = requestId;
      for (const row of rows.values()) paint(row);
    },
    clear() {
      listPage = null;
      rows.clear();
      list.replaceChildren();
      section.hidden = true;
    },
  };
}
