// The conversation of the request view: one bubble per message, in time
// order, with the ticks of my messages and their Edit and Delete. A message is
// drawn once, keyed by its id (by its clientMessageId while mine is being
// sent); a change to it is redrawn in place. Edit and Delete are offered only
// while charla still takes them: within the edit window (`editWindowSeconds`
// of `/client-config.json`) of the message's `createdAt`.
//
// As the stream view, it keeps a bounded number of bubbles: past
// KEEP_MESSAGES the oldest leave the page (with their entry and their
// read-receipt watch), and the "older" button pages them back.
import { attachmentList } from './attachments.js';
import { clientConfig, serverNow } from './client-config.js';
import { h, isolate, timeEl } from './dom.js';
import { t } from './i18n.js';
import { tickState } from './receipts.js';

const TICK = { pending: '◷', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };
/** A stored message's id; mine carries its clientMessageId until the server has it. */
const STORED_ID = /^[0-9a-f]{24}$/;
/** How often the bubbles whose edit window has passed lose their Edit and Delete. */
const SWEEP_MS = 1000;
/** Bubbles a tab keeps as messages arrive; the oldest past it go (the stream view keeps as many). */
const KEEP_MESSAGES = 500;

/**
 * True while charla still takes an edit or a deletion of `msg`: within the
 * edit window of its `createdAt` (always, while the window is not known).
 */
function withinEditWindow(msg) {
  const seconds = clientConfig.editWindowSeconds;
  if (seconds === undefined) return true;
  const at = Date.parse(msg.createdAt);
  return !Number.isFinite(at) || serverNow() - at < seconds * 1000;
}

/**
 * `list` is the `<ol>` to draw in; `me()` the signed-in user; `receipts` the
 * batcher that acks and reads the messages of others; `onEdit(msg)` and
 * `onDelete(msg)` act on one of mine; `onShown()` runs when a message appears;
 * `older` is the button that loads earlier messages (by default the one
 * beside `list`), shown once some have been dropped.
 */
export function mountConversation(
  list,
  { me, receipts, onEdit, onDelete, onShown, older = list.parentElement?.querySelector('.older') },
) {
  /** Message id (or clientMessageId while pending) → {msg, li, state}. */
  const shown = new Map();
  const isMine = (msg) => me().id !== undefined && msg.sender?.id === me().id;
  const edit = (entry) => onEdit(entry.msg);
  const del = (entry) => onDelete(entry.msg);
  /** One timer for the whole view, running only while some bubble shows Edit and Delete. */
  let sweep;

  /** Takes Edit and Delete off the bubbles whose edit window has passed. */
  function sweepActions() {
    const left = [...list.querySelectorAll('.msg .actions')].filter((actions) => {
      const entry = shown.get(actions.closest('.msg')?.dataset.id);
      if (entry && withinEditWindow(entry.msg)) return true;
      actions.remove();
      return false;
    });
    if (left.length === 0) stopSweep();
  }

  function startSweep() {
    if (sweep === undefined && clientConfig.editWindowSeconds !== undefined) {
      sweep = setInterval(sweepActions, SWEEP_MS);
    }
  }

  function stopSweep() {
    clearInterval(sweep);
    sweep = undefined;
  }

  function paintTick(entry) {
    const tick = entry.li.querySelector('.tick');
    if (!tick) return;
    tick.dataset.state = entry.state;
    tick.textContent = TICK[entry.state];
    tick.title = t(`tick.${entry.state}`);
    tick.setAttribute('aria-label', tick.title);
    entry.li.classList.toggle('pending', entry.state === 'pending');
  }

  /** The inside of a bubble: text, attachments, time, edited mark, tick and my actions. */
  function bubble(msg, mine) {
    const deleted = Boolean(msg.deletedAt);
    const foot = h('div', { class: 'bubble-foot' }, timeEl(msg.createdAt));
    if (msg.editedAt && !deleted) foot.append(h('span', { class: 'edited' }, t('message.edited')));
    // Edit and Delete need the server's id: a message still being sent (or failed) has none.
    // Past the edit window charla refuses both, so they are not offered.
    if (mine && !deleted && STORED_ID.test(String(msg._id)) && withinEditWindow(msg)) {
      startSweep();
      foot.append(
        h(
          'span',
          { class: 'actions' },
          h(
            'button',
            {
              type: 'button',
              class: 'act edit',
              title: t('message.edit'),
              onclick: (e) => act(e, edit),
            },
            t('message.edit'),
          ),
          h(
            'button',
            {
              type: 'button',
              class: 'act delete',
              title: t('message.delete'),
              onclick: (e) => act(e, del),
            },
            t('message.delete'),
          ),
        ),
      );
    }
    if (mine) foot.append(h('span', { class: 'tick' }));
    const text = String(msg.message ?? '');
    return h(
      'div',
      { class: 'bubble' },
      deleted
        ? h('p', { class: 'text deleted' }, t('message.deleted'))
        : text !== '' || !msg.attachments?.length
          ? h('p', { class: 'text' }, text)
          : null,
      deleted ? null : attachmentList(msg.attachments),
      foot,
    );
  }

  function act(event, fn) {
    const id = event.currentTarget.closest('.msg')?.dataset.id;
    const entry = id && shown.get(id);
    if (entry) fn(entry);
  }

  /** A message edited or deleted (here or elsewhere): its bubble is redrawn in place. */
  function changed(msg) {
    const entry = shown.get(msg?._id);
    if (!entry) return;
    entry.msg = { ...entry.msg, ...msg };
    entry.li.querySelector('.bubble')?.replaceWith(bubble(entry.msg, isMine(entry.msg)));
    paintTick(entry);
  }

  function build(msg, mine) {
    const head = mine
      ? null
      : h(
          'div',
          { class: 'msg-meta' },
          isolate(msg.sender?.username ?? '', { class: 'name' }),
          msg.sender?.role ? h('span', { class: 'role' }, String(msg.sender.role)) : null,
        );
    return h(
      'li',
      {
        class: mine ? 'msg mine' : 'msg',
        dataset: {
          id: String(msg._id ?? ''),
          sender: String(msg.sender?.id),
          at: String(msg.createdAt ?? ''),
        },
      },
      head,
      bubble(msg, mine),
    );
  }

  /** A run of messages from one sender shows the name once. */
  function markRun(li) {
    if (!li) return;
    const prev = li.previousElementSibling;
    li.classList.toggle('cont', prev?.dataset.sender === li.dataset.sender);
  }

  /**
   * Puts `li` in time order, before my messages still being sent (they will
   * be stored after it). A message found after a reconnect may be older than
   * the newest one shown: it goes in its place.
   */
  function place(li) {
    let after = list.lastElementChild;
    while (
      after &&
      (after === li || after.classList.contains('pending') || after.dataset.at > li.dataset.at)
    ) {
      after = after.previousElementSibling;
    }
    if (after) after.after(li);
    else list.prepend(li);
    markRun(li);
    markRun(li.nextElementSibling);
  }

  /**
   * Shows `msg` (once) and returns its entry: at the start (older history), at
   * the end (`pending`: my message being sent) or in time order.
   */
  function show(msg, where = 'ordered') {
    const existing = shown.get(msg._id);
    if (existing) {
      if (msg.editedAt !== existing.msg.editedAt || msg.deletedAt !== existing.msg.deletedAt) {
        changed(msg);
      }
      existing.msg = msg;
      if (existing.state === 'other') receipts.arrived(msg, existing.li, me().id);
      else if (existing.state !== 'pending') existing.state = tickState(msg, me().id);
      paintTick(existing);
      return existing;
    }
    const mine = isMine(msg);
    const entry = { msg, li: build(msg, mine), state: mine ? tickState(msg, me().id) : 'other' };
    shown.set(msg._id, entry);
    if (where === 'ordered') place(entry.li);
    else {
      if (where === 'start') list.prepend(entry.li);
      else list.append(entry.li);
      markRun(entry.li);
      markRun(entry.li.nextElementSibling);
    }
    paintTick(entry);
    onShown();
    if (!mine) receipts.arrived(msg, entry.li, me().id);
    // A page of older messages was asked for: it stays whole until the next arrival.
    if (where !== 'start') dropOldest();
    return entry;
  }

  /**
   * Keeps KEEP_MESSAGES bubbles: the oldest go, with their entry and their
   * read-receipt watch, and "older" can bring them back. My messages still
   * being sent are the newest, so they never go.
   */
  function dropOldest() {
    let dropped = false;
    while (list.children.length > KEEP_MESSAGES) {
      const li = list.firstElementChild;
      const entry = shown.get(li.dataset.id);
      if (entry?.li === li) shown.delete(li.dataset.id);
      receipts.forget(li);
      li.remove();
      dropped = true;
    }
    if (!dropped) return;
    markRun(list.firstElementChild);
    if (older) older.hidden = false;
  }

  function receipt(kind, payload) {
    if (payload?.userId === me().id) return;
    for (const id of payload.messages ?? []) {
      const entry = shown.get(id);
      if (!entry || entry.state === 'other' || entry.state === 'pending') continue;
      const mark = { userId: payload.userId, at: payload.at };
      const m = entry.msg;
      m.deliveredTo = [...(m.deliveredTo ?? []), mark];
      if (kind === 'read') m.readBy = [...(m.readBy ?? []), mark];
      entry.state = tickState(m, me().id);
      paintTick(entry);
    }
  }

  return {
    show,
    changed,
    /** A `messagesDelivered` (`kind` delivered) or `messageReads` (read) of the open request. */
    receipt,
    /** My message, at the end while it is being sent. */
    pending(msg) {
      const entry = show(msg, 'pending');
      entry.li.classList.add('mine');
      entry.state = 'pending';
      paintTick(entry);
      entry.li.scrollIntoView({ block: 'end' });
      return entry;
    },
    /** The server stored my pending message: the stored copy takes its id and its place. */
    stored(entry, message) {
      shown.delete(entry.msg._id);
      if (shown.has(message._id)) {
        // It came back first (say, in a re-join's history): one bubble is enough.
        entry.li.remove();
        return;
      }
      entry.msg = message;
      entry.li.dataset.id = message._id;
      entry.li.dataset.at = message.createdAt;
      entry.state = tickState(message, me().id);
      shown.set(message._id, entry);
      // Now that it has its id, it gets its Edit and Delete.
      entry.li.querySelector('.bubble')?.replaceWith(bubble(message, true));
      paintTick(entry);
      // Stored after whatever reached the server first (say, while it waited offline).
      place(entry.li);
    },
    failed(entry) {
      entry.state = 'failed';
      paintTick(entry);
    },
    /**
     * Keeps only the messages whose ids are in `ids`, and mine still being
     * sent or failed: after a gap, what is shown has no hole either.
     */
    keepOnly(ids) {
      for (const [id, entry] of shown) {
        if (ids.has(id) || entry.state === 'pending' || entry.state === 'failed') continue;
        shown.delete(id);
        const next = entry.li.nextElementSibling;
        entry.li.remove();
        markRun(next);
      }
    },
    reset() {
      stopSweep();
      shown.clear();
      list.replaceChildren();
    },
  };
}
