// The request-chat view over Socket.IO (protocol sections 3 and 8): history,
// sending with an acknowledgement, and receipts both ways. Messages that arrive
// are acked at once (`ackMessages`); they count as read (`readMessages`) only
// once they are on screen in a visible tab. Beside it, the inbox with live
// unread counts; in it, typing, edits and deletions of one's own messages,
// and attachments as links (images as thumbnails).
import { io } from '/vendor/socket.io.esm.min.js';
import { atBottom, h, notice, setStatus, timeEl, whoIs } from './dom.js';
import { lang, t } from './i18n.js';
import { mountInbox } from './inbox.js';
import { receiptBatcher, tickState } from './receipts.js';

/** How often this client says it is typing; the server forwards at most every 2 s anyway. */
const TYPING_EVERY_MS = 2000;
/** How long "… is typing" stays without a new `userTyping`. */
const TYPING_SHOWN_MS = 3500;
const OBJECT_ID = /^[0-9a-f]{24}$/;

/** Attachment URL prefixes the server accepts, from `/client-config.json`. */
let allowedPrefixes = [];
fetch('/client-config.json')
  .then((r) => (r.ok ? r.json() : {}))
  .then((c) => {
    if (Array.isArray(c.attachmentUrlPrefixes)) allowedPrefixes = c.attachmentUrlPrefixes;
  })
  .catch(() => {});

/** An http(s) URL under an allowed prefix, compared after parsing; otherwise undefined. */
function safeUrl(raw) {
  let url;
  try {
    url = new URL(String(raw));
  } catch {
    return undefined;
  }
  if (!/^https?:$/.test(url.protocol) || url.username || url.password) return undefined;
  const ok = allowedPrefixes.some((p) => {
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

const sizeFormats = Object.fromEntries(
  ['byte', 'kilobyte', 'megabyte'].map((unit) => [
    unit,
    new Intl.NumberFormat(lang, { style: 'unit', unit, maximumFractionDigits: 1 }),
  ]),
);

/** A file size in the page's language ("52 kB", "1,2 MB"). */
function sizeText(bytes) {
  const n = Number(bytes) || 0;
  if (n >= 1024 * 1024) return sizeFormats.megabyte.format(n / 1024 / 1024);
  if (n >= 1024) return sizeFormats.kilobyte.format(Math.round(n / 1024));
  return sizeFormats.byte.format(n);
}

/** Links to the files; images under an allowed prefix as thumbnails, anything else as text. */
function attachmentList(attachments) {
  if (!Array.isArray(attachments) || attachments.length === 0) return null;
  return h(
    'ul',
    { class: 'attachments' },
    attachments.map((a) => {
      const name = String(a?.name ?? t('message.file'));
      const href = safeUrl(a?.url);
      if (!href) return h('li', { class: 'file blocked' }, name);
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
            h('a', link, name),
            h('span', { class: 'size' }, ` ${sizeText(a.size)}`),
          );
    }),
  );
}

const TICK = { pending: '◷', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };
/** Codes with words of their own in the catalog (`request.error.<code>`). */
const WORDED = new Set([
  'unauthorized',
  'invalid_token',
  'token_expired',
  'forbidden',
  'not_found',
  'not_in_room',
  'empty_message',
  'message_too_long',
  'edit_window_passed',
  'invalid_payload',
  'timeout',
  'queue_full',
  'internal_error',
]);

const shortId = (id) => `${id.slice(0, 6)}…${id.slice(-4)}`;

/** A refusal in the reader's words; the server's own text is English, so it is never shown. */
function friendly(e) {
  const code = String(e?.error_code ?? 'internal_error');
  if (code === 'rate_limited') {
    const seconds = Math.ceil((Number(e.retry_after_ms) || 1000) / 1000);
    return t('notice.rateLimited', { seconds });
  }
  return WORDED.has(code) ? t(`request.error.${code}`) : t('request.error.other', { code });
}

export function mountRequestView(root) {
  const form = root.querySelector('.connect');
  const who = root.querySelector('.who');
  const list = root.querySelector('.messages');
  const scroller = root.querySelector('.scroller');
  const empty = root.querySelector('.empty');
  const older = root.querySelector('.older');
  const status = root.querySelector('.status');
  const title = root.querySelector('.title');
  const subtitle = root.querySelector('.subtitle');
  const composer = root.querySelector('.composer');
  const input = composer.elements.message;
  const sendButton = composer.querySelector('button');
  const say = notice(root.querySelector('.notice'));
  const typingLine = root.querySelector('.typing');
  const editingBar = root.querySelector('.editing');
  const inbox = mountInbox(root.querySelector('.inbox'), { onOpen: (id) => switchTo(id) });

  let socket = null;
  let requestId = '';
  let me = whoIs('');
  let joined = false;
  /** The id of my message being edited in the composer, if any. */
  let editing = null;
  let lastTypingSent = 0;
  let typingTimer;
  /** Message id (or clientMessageId while pending) → {msg, li, state}. */
  const shown = new Map();

  const receipts = receiptBatcher({
    root: scroller,
    emit: (event, ids) => socket?.emit(event, { requestId, messages: ids }),
  });

  function updateComposer() {
    input.disabled = !joined;
    sendButton.disabled = !joined;
    input.placeholder = joined
      ? t('request.composer.open', { name: me.name })
      : requestId
        ? t('request.composer.closed')
        : t('request.composer.pick');
    sendButton.textContent = editing ? t('action.save') : t('action.send');
    editingBar.hidden = !editing;
  }

  function stopEditing() {
    if (!editing) return;
    editing = null;
    input.value = '';
    updateComposer();
  }

  function showWho() {
    who.replaceChildren(
      h('p', { class: 'who-label' }, t('request.who.request')),
      h(
        'p',
        { class: 'who-value mono', title: requestId },
        requestId ? shortId(requestId) : t('request.who.none'),
      ),
      h('p', { class: 'who-label' }, t('who.you')),
      h('p', { class: 'who-value' }, me.role ? `${me.name} · ${me.role}` : me.name),
      h(
        'button',
        { type: 'button', class: 'change', onclick: () => root.classList.remove('joined') },
        t('action.change'),
      ),
    );
    who.hidden = false;
  }

  const isMine = (msg) => me.id !== undefined && msg.sender?.id === me.id;

  function paintTick(entry) {
    const tick = entry.li.querySelector('.tick');
    if (!tick) return;
    tick.dataset.state = entry.state;
    tick.textContent = TICK[entry.state];
    tick.title = t(`tick.${entry.state}`);
    tick.setAttribute('aria-label', tick.title);
    entry.li.classList.toggle('pending', entry.state === 'pending');
  }

  function startEditing(entry) {
    if (!OBJECT_ID.test(entry.msg._id) || entry.msg.deletedAt) return;
    editing = entry.msg._id;
    input.value = String(entry.msg.message ?? '');
    updateComposer();
    input.focus();
  }

  function remove(entry) {
    const messageId = entry.msg._id;
    if (!OBJECT_ID.test(messageId)) return;
    socket?.emit('deleteMessage', { requestId, messageId }, (res) => {
      if (!res?.ok) return say.show(friendly(res ?? {}), 'error');
      if (editing === messageId) stopEditing();
      changed(res.message);
    });
  }

  /** The inside of a bubble: text, attachments, time, edited mark, tick and my actions. */
  function bubble(msg, mine) {
    const deleted = Boolean(msg.deletedAt);
    const foot = h('div', { class: 'bubble-foot' }, timeEl(msg.createdAt));
    if (msg.editedAt && !deleted) foot.append(h('span', { class: 'edited' }, t('message.edited')));
    if (mine && !deleted) {
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
              onclick: (e) => act(e, startEditing),
            },
            t('message.edit'),
          ),
          h(
            'button',
            {
              type: 'button',
              class: 'act delete',
              title: t('message.delete'),
              onclick: (e) => act(e, remove),
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
          h('span', { class: 'name' }, String(msg.sender?.username ?? '')),
          msg.sender?.role ? h('span', { class: 'role' }, String(msg.sender.role)) : null,
        );
    return h(
      'li',
      {
        class: mine ? 'msg mine' : 'msg',
        dataset: { id: String(msg._id ?? ''), sender: String(msg.sender?.id) },
      },
      head,
      bubble(msg, mine),
    );
  }

  /** Shows `msg` (once), oldest first; returns its entry. */
  function show(msg, where = 'end') {
    const existing = shown.get(msg._id);
    if (existing) {
      if (msg.editedAt !== existing.msg.editedAt || msg.deletedAt !== existing.msg.deletedAt) {
        changed(msg);
      }
      existing.msg = msg;
      if (existing.state !== 'pending') existing.state = tickState(msg, me.id);
      paintTick(existing);
      return existing;
    }
    const mine = isMine(msg);
    const entry = { msg, li: build(msg, mine), state: mine ? tickState(msg, me.id) : 'other' };
    shown.set(msg._id, entry);
    if (where === 'start') list.prepend(entry.li);
    else {
      // A run of messages from one sender shows the name once.
      const prev = list.lastElementChild;
      if (prev?.dataset.sender === String(msg.sender?.id)) entry.li.classList.add('cont');
      list.append(entry.li);
    }
    paintTick(entry);
    empty.hidden = true;
    if (!mine) receipts.arrived(msg, entry.li, me.id);
    return entry;
  }

  function receipt(kind, payload) {
    if (payload?.requestId !== requestId || payload.userId === me.id) return;
    for (const id of payload.messages ?? []) {
      const entry = shown.get(id);
      if (!entry || entry.state === 'other') continue;
      const mark = { userId: payload.userId, at: payload.at };
      const m = entry.msg;
      m.deliveredTo = [...(m.deliveredTo ?? []), mark];
      if (kind === 'read') m.readBy = [...(m.readBy ?? []), mark];
      entry.state = tickState(m, me.id);
      paintTick(entry);
    }
  }

  function join() {
    if (!requestId) return;
    socket.emit('joinRoom', { requestId }, (res) => {
      if (res && res.ok === false) say.show(friendly(res), 'error');
    });
  }

  function showTyping(p) {
    if (p?.requestId !== requestId || p.userId === me.id) return;
    typingLine.textContent = t('request.typing', {
      name: String(p.username ?? t('request.someone')),
    });
    typingLine.hidden = false;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => {
      typingLine.hidden = true;
    }, TYPING_SHOWN_MS);
  }

  function resetConversation() {
    receipts.reset();
    shown.clear();
    list.replaceChildren();
    empty.hidden = false;
    older.hidden = true;
    typingLine.hidden = true;
    editing = null;
    joined = false;
  }

  /** Opens another request on the same connection. */
  function switchTo(id) {
    if (!socket || id === requestId) return;
    if (requestId && joined) socket.emit('leaveRoom', { requestId });
    resetConversation();
    requestId = id.toLowerCase();
    form.elements.request.value = requestId;
    title.textContent = t('request.titleOf', { id: shortId(requestId) });
    subtitle.textContent = t('request.subtitleOpen');
    inbox.select(requestId);
    updateComposer();
    showWho();
    join();
  }

  function onHistory(payload) {
    if (payload?.requestId !== requestId) return;
    const follow = joined ? atBottom(scroller) : true;
    for (const msg of payload.messages ?? []) show(msg);
    older.hidden = !payload.hasMore;
    joined = true;
    setStatus(status, 'live');
    updateComposer();
    if (follow) scroller.scrollTop = scroller.scrollHeight;
    empty.querySelector('.empty-title').textContent = t('request.emptyJoined.title');
    empty.querySelector('.empty-text').textContent = t('request.emptyJoined.text');
  }

  function connect(token) {
    socket = io({ auth: { token } });
    setStatus(status, 'connecting');
    socket.on('connect', () => {
      say.clear();
      if (!requestId) setStatus(status, 'live', t('status.connected'));
      join();
      inbox.reload((event, payload, ack) => socket.emit(event, payload, ack));
      inbox.select(requestId);
    });
    socket.on('requestUpdated', (u) => inbox.updated(u));
    socket.on('userTyping', showTyping);
    socket.on('messageUpdated', (msg) => {
      if (msg?.requestId === requestId) changed(msg);
    });
    socket.on('messageDeleted', (d) => {
      if (d?.requestId !== requestId) return;
      changed({ _id: d.messageId, message: '', attachments: [], deletedAt: d.deletedAt });
    });
    socket.on('roomHistory', onHistory);
    socket.on('message', (msg) => {
      if (msg?.requestId !== requestId) return;
      if (msg.sender?.id !== me.id) typingLine.hidden = true;
      const follow = atBottom(scroller);
      const entry = show(msg);
      if (follow || isMine(msg)) entry.li.scrollIntoView({ block: 'end' });
    });
    socket.on('messagesDelivered', (p) => receipt('delivered', p));
    socket.on('messageReads', (p) => receipt('read', p));
    socket.on('exception', (e) => say.show(friendly(e), 'error'));
    socket.on('connect_error', (err) => {
      joined = false;
      updateComposer();
      if (!socket.active) {
        // Refused by the server (bad or expired token): retrying cannot help.
        setStatus(status, 'offline', t('status.idle'));
        say.show(friendly({ error_code: err.message }), 'error');
      } else {
        setStatus(status, 'offline', t('status.reconnecting'));
        say.show(t('notice.unreachable'), 'warn');
      }
    });
    socket.on('disconnect', (reason) => {
      joined = false;
      updateComposer();
      if (reason === 'io client disconnect') return;
      if (socket.active) {
        setStatus(status, 'offline', t('status.reconnecting'));
        say.show(t('notice.lost'), 'warn');
      } else {
        setStatus(status, 'offline', t('status.disconnected'));
        say.show(t('notice.sessionEnded'), 'error');
      }
    });
    socket.io.on('reconnect_attempt', (n) => {
      say.show(t('notice.lostAttempt', { attempt: n }), 'warn');
    });
    socket.io.on('reconnect', () => say.show(t('notice.reconnected'), 'ok', 2500));
  }

  function start(newRequest, token) {
    socket?.disconnect();
    resetConversation();
    inbox.clear();
    requestId = newRequest.toLowerCase();
    me = whoIs(token);
    root.classList.add('joined');
    title.textContent = requestId
      ? t('request.titleOf', { id: shortId(requestId) })
      : t('request.titleInbox');
    subtitle.textContent = requestId ? t('request.subtitleOpen') : t('request.subtitleInbox');
    updateComposer();
    showWho();
    connect(token);
  }

  function send(text, clientMessageId) {
    const pendingMsg = {
      _id: clientMessageId,
      requestId,
      sender: { id: me.id, username: me.name, role: me.role },
      message: text,
      createdAt: new Date().toISOString(),
    };
    const entry = show({ ...pendingMsg }, 'end');
    entry.li.classList.add('mine');
    entry.state = 'pending';
    paintTick(entry);
    entry.li.scrollIntoView({ block: 'end' });
    socket.emit('message', { requestId, message: text, clientMessageId }, (res) => {
      if (!res?.ok) {
        entry.state = 'failed';
        paintTick(entry);
        say.show(friendly(res ?? {}), 'error');
        return;
      }
      // The server's copy replaces the pending one, under its real id.
      shown.delete(clientMessageId);
      if (me.id === undefined) me.id = res.message.sender?.id;
      const already = shown.get(res.message._id);
      if (already) {
        entry.li.remove();
        return;
      }
      entry.msg = res.message;
      entry.li.dataset.id = res.message._id;
      entry.state = tickState(res.message, me.id);
      shown.set(res.message._id, entry);
      paintTick(entry);
    });
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = form.elements.token.value.trim();
    sessionStorage.setItem('charla.request.token', token);
    start(form.elements.request.value.trim(), token);
  });

  composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value;
    if (!joined) return;
    if (editing) {
      const messageId = editing;
      socket.emit('editMessage', { requestId, messageId, message: text }, (res) => {
        if (!res?.ok) return say.show(friendly(res ?? {}), 'error');
        changed(res.message);
      });
      stopEditing();
      return;
    }
    if (text.trim() === '') return;
    input.value = '';
    input.focus();
    send(text, crypto.randomUUID());
  });

  input.addEventListener('input', () => {
    if (!joined || editing || input.value === '') return;
    const now = Date.now();
    if (now - lastTypingSent < TYPING_EVERY_MS) return;
    lastTypingSent = now;
    socket.emit('typing', { requestId });
  });

  input.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') stopEditing();
  });
  editingBar.querySelector('.cancel-edit').addEventListener('click', stopEditing);

  older.addEventListener('click', () => {
    const first = list.querySelector('.msg[data-id]')?.dataset.id;
    if (!first) return;
    socket.emit('loadHistory', { requestId, before: first }, (res) => {
      if (!res?.ok) return say.show(friendly(res ?? {}), 'error');
      const height = scroller.scrollHeight;
      for (const msg of [...res.messages].reverse()) show(msg, 'start');
      older.hidden = !res.hasMore;
      scroller.scrollTop += scroller.scrollHeight - height;
    });
  });

  return {
    root,
    open({ request, token }) {
      if (token && !form.elements.token.value) form.elements.token.value = token;
      if (request) form.elements.request.value = request;
      const saved = form.elements.token.value.trim();
      if (saved && !socket) start(request ?? '', saved);
      else if (request && saved && request.toLowerCase() !== requestId) switchTo(request);
    },
  };
}
