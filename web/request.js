// The request-chat view (protocol sections 3 and 8) on charla/client's
// `RequestChat`, which owns the connection: sends carry a `clientMessageId`
// and are retried until acknowledged (and wait while offline), rooms are
// joined again after a reconnect and their history merged, so this file only
// draws. Messages that arrive are acked at once (`ackMessages`); they count as
// read (`readMessages`) only once they are on screen in a visible tab. Beside
// it, the inbox with live unread counts (inbox.js); in it, typing, edits and
// deletions of one's own messages while the edit window lasts, and
// attachments as links (attachments.js).
// The bubbles and their ticks are drawn by conversation.js.
import { RequestChat } from '/client/index.js';
import { io } from '/vendor/socket.io.esm.min.js';
import { clientConfigReady } from './client-config.js';
import { mountConversation } from './conversation.js';
import { atBottom, h, isolate, notice, setStatus, whoIs } from './dom.js';
import { t, tNodes } from './i18n.js';
import { mountInbox } from './inbox.js';
import { receiptBatcher } from './receipts.js';

/** How long "… is typing" stays without a new `userTyping`. */
const TYPING_SHOWN_MS = 3500;
const OBJECT_ID = /^[0-9a-f]{24}$/;
/** Ids per receipt event, as charla/client batches its own. */
const RECEIPT_BATCH = 100;

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

/**
 * A refusal in the reader's words, from a `ChatClientError` or an `exception`
 * payload; the server's own text is English, so it is never shown.
 */
function friendly(e) {
  const code = String(e?.code ?? e?.error_code ?? 'internal_error');
  if (code === 'rate_limited') {
    const ms = Number(e.retryAfterMs ?? e.retry_after_ms) || 1000;
    return t('notice.rateLimited', { seconds: Math.ceil(ms / 1000) });
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
  const noticeLine = root.querySelector('.notice');
  const say = notice(noticeLine);
  const typingLine = root.querySelector('.typing');
  const editingBar = root.querySelector('.editing');
  const inbox = mountInbox(root.querySelector('.inbox'), { onOpen: (id) => switchTo(id) });

  /** The connection; null before the first one and while one is being made. */
  let chat = null;
  /** Bumped on every new connection, so a late answer for an old one is dropped. */
  let generation = 0;
  let requestId = '';
  /** The token of the current connection. */
  let token = '';
  let me = whoIs('');
  /** The open request's history has arrived: the composer may write (sends wait while offline). */
  let ready = false;
  /** The id of my message being edited in the composer, if any. */
  let editing = null;
  let typingTimer;
  /** Counts down the wait of a `rate_limited` refusal. */
  let rateTimer;

  /** Sends not yet settled, per request: a request is left only once its own are. */
  const unsettled = new Map();

  /** True while the answer to a call made on `c` for `room` still concerns what is on screen. */
  const stillOn = (c, room) => c === chat && room === requestId;

  const receipts = receiptBatcher({
    root: scroller,
    emit: (event, ids) => {
      if (!chat || !requestId) return;
      const record = event === 'readMessages' ? chat.markRead : chat.markDelivered;
      // A receipt lost with the connection goes again when the re-join's history shows it missing.
      for (let i = 0; i < ids.length; i += RECEIPT_BATCH) {
        record.call(chat, requestId, ids.slice(i, i + RECEIPT_BATCH)).catch(() => {});
      }
    },
  });

  const conversation = mountConversation(list, {
    me: () => me,
    receipts,
    onEdit: (msg) => startEditing(msg),
    onDelete: (msg) => remove(msg),
    onShown: () => {
      empty.hidden = true;
    },
  });

  function onReceipt(kind, payload) {
    if (payload?.requestId === requestId) conversation.receipt(kind, payload);
  }

  function updateComposer() {
    input.disabled = !ready;
    sendButton.disabled = !ready;
    input.placeholder = ready
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

  function startEditing(msg) {
    if (!OBJECT_ID.test(msg._id) || msg.deletedAt) return;
    editing = msg._id;
    input.value = String(msg.message ?? '');
    updateComposer();
    input.focus();
  }

  function remove(msg) {
    const messageId = msg._id;
    if (!OBJECT_ID.test(messageId) || !chat) return;
    const [c, room] = [chat, requestId];
    c.deleteMessage(room, messageId).then(
      () => {
        if (!stillOn(c, room)) return;
        if (editing === messageId) stopEditing();
        // The library marked its copy deleted; the server tells only the others.
        const held = c.messages(room).find((m) => m._id === messageId);
        conversation.changed(
          held ?? { _id: messageId, message: '', deletedAt: new Date().toISOString() },
        );
      },
      (err) => {
        if (stillOn(c, room)) say.show(friendly(err), 'error');
      },
    );
  }

  /**
   * Joins the open request; the `history` event draws it. A request still
   * joined (left while its messages were being sent) has no new `history`:
   * what the join resolves with draws it.
   */
  function join() {
    if (!requestId || !chat) return;
    const [c, room] = [chat, requestId];
    c.join(room).then(
      (history) => {
        if (stillOn(c, room) && !ready) onHistory(history);
      },
      (err) => {
        if (!stillOn(c, room)) return;
        setStatus(status, 'live', t('status.connected'));
        say.show(friendly(err), 'error');
      },
    );
  }

  /**
   * Leaves `room` once the messages sent in it have settled: leaving rejects
   * what still waits, and a message written offline must still go out.
   */
  function leaveWhenSent(c, room) {
    Promise.allSettled([...(unsettled.get(room) ?? [])]).then(() => {
      // Opened again meanwhile: it stays joined.
      if (c !== chat || room === requestId) return;
      c.leave(room).catch(() => {});
    });
  }

  function showTyping(p) {
    if (p?.requestId !== requestId || p.userId === me.id) return;
    // The name isolated: a right-to-left override in it must not turn the sentence.
    typingLine.replaceChildren(
      ...tNodes('request.typing', { name: isolate(String(p.username ?? t('request.someone'))) }),
    );
    typingLine.hidden = false;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => {
      typingLine.hidden = true;
    }, TYPING_SHOWN_MS);
  }

  /**
   * A message refused for going too fast waits in the library, which sends it
   * again once the server's wait is over: the notice counts that wait down
   * and goes with it, unless another notice has taken its place meanwhile.
   */
  function rateLimited(e) {
    const until = Date.now() + (Number(e.retry_after_ms) || 1000);
    clearInterval(rateTimer);
    let shown = '';
    const tick = () => {
      if (shown !== '' && noticeLine.textContent !== shown) return clearInterval(rateTimer);
      const left = until - Date.now();
      if (left <= 0) {
        clearInterval(rateTimer);
        say.clear();
        return;
      }
      shown = friendly({ code: 'rate_limited', retryAfterMs: left });
      say.show(shown, 'warn');
    };
    tick();
    rateTimer = setInterval(tick, 250);
  }

  function resetConversation() {
    clearInterval(rateTimer);
    receipts.reset();
    conversation.reset();
    empty.hidden = false;
    older.hidden = true;
    typingLine.hidden = true;
    editing = null;
    ready = false;
  }

  function showTitle() {
    title.textContent = requestId
      ? t('request.titleOf', { id: shortId(requestId) })
      : t('request.titleInbox');
    subtitle.textContent = requestId ? t('request.subtitleOpen') : t('request.subtitleInbox');
  }

  /** The open request in the address bar (never the token), so that a reload comes back to it. */
  function showInUrl() {
    const params = new URLSearchParams({ view: 'request' });
    if (requestId) params.set('request', requestId);
    history.replaceState(null, '', `#${params}`);
  }

  /** Opens another request on the same connection. */
  function switchTo(id) {
    if (id.toLowerCase() === requestId) return;
    // While the connection is being made, `connect` joins whatever is open by then.
    if (chat && requestId) leaveWhenSent(chat, requestId);
    resetConversation();
    say.clear();
    requestId = id.toLowerCase();
    form.elements.request.value = requestId;
    showInUrl();
    showTitle();
    inbox.select(requestId);
    updateComposer();
    showWho();
    join();
  }

  function onHistory(history) {
    if (history?.requestId !== requestId) return;
    const follow = ready ? atBottom(scroller) : true;
    // More were missed than the re-join fetched: the library dropped what it held from
    // before, and so does the view, so "Load earlier messages" goes back from here.
    if (history.gap) conversation.keepOnly(new Set(history.messages.map((m) => m._id)));
    for (const msg of history.messages) conversation.show(msg);
    if (!history.rejoined || history.gap) older.hidden = !history.hasMore;
    ready = true;
    // "Reconnected." stays its while; a warning or a refusal from before is over.
    if (history.gap) say.show(t('request.gap'), 'warn');
    else if (say.kind !== 'ok') say.clear();
    setStatus(status, 'live');
    updateComposer();
    if (follow) scroller.scrollTop = scroller.scrollHeight;
    empty.querySelector('.empty-title').textContent = t('request.emptyJoined.title');
    empty.querySelector('.empty-text').textContent = t('request.emptyJoined.text');
  }

  function onMessage(msg) {
    if (msg?.requestId !== requestId) return;
    if (msg.sender?.id !== me.id) typingLine.hidden = true;
    const follow = atBottom(scroller);
    const entry = conversation.show(msg);
    if (follow || (me.id !== undefined && msg.sender?.id === me.id)) {
      entry.li.scrollIntoView({ block: 'end' });
    }
  }

  function listen(c) {
    c.on('history', onHistory);
    c.on('message', onMessage);
    c.on('messagesDelivered', (p) => onReceipt('delivered', p));
    c.on('messageReads', (p) => onReceipt('read', p));
    c.on('messageUpdated', (msg) => {
      if (msg?.requestId === requestId) conversation.changed(msg);
    });
    c.on('messageDeleted', (d) => {
      if (d?.requestId !== requestId) return;
      conversation.changed({
        _id: d.messageId,
        message: '',
        attachments: [],
        deletedAt: d.deletedAt,
      });
    });
    c.on('userTyping', showTyping);
    c.on('requestUpdated', (u) => inbox.updated(u));
    // A send refused for going too fast is retried by the library; say why it waits.
    c.on('exception', (e) => {
      if (e?.error_code === 'rate_limited' && e.event === 'message') rateLimited(e);
    });
    // The first `connect` happened before these listeners: this one is a reconnect.
    c.on('connect', () => {
      say.show(t('notice.reconnected'), 'ok', 2500);
      setStatus(status, 'connecting');
      if (!requestId) setStatus(status, 'live', t('status.connected'));
      // The library joins its rooms again by itself; this also joins one whose last join failed.
      join();
      inbox.reload((opts) => c.listRequests(opts));
      inbox.select(requestId);
    });
    c.on('disconnect', (reason) => {
      if (reason === 'io client disconnect') return;
      setStatus(status, 'offline', t('status.reconnecting'));
      say.show(t('notice.lost'), 'warn');
    });
    c.on('reconnecting', ({ attempt }) => {
      say.show(t('notice.lostAttempt', { attempt }), 'warn');
    });
    // The server refused the connection (bad or expired token) or a re-join: retrying cannot help.
    c.on('error', (err) => {
      ready = false;
      updateComposer();
      if (c.socket.active) setStatus(status, 'live', t('status.connected'));
      else setStatus(status, 'offline', t('status.disconnected'));
      say.show(friendly(err), 'error');
    });
  }

  async function connect(token) {
    const mine = ++generation;
    setStatus(status, 'connecting');
    let c;
    try {
      // Attachment prefixes and the edit window must be known before a message is drawn.
      await clientConfigReady;
      if (mine !== generation) return;
      c = await RequestChat.connect(location.origin, { token, io, autoDeliver: false });
    } catch (err) {
      if (mine !== generation) return;
      setStatus(status, 'offline', t('status.idle'));
      say.show(friendly(err), 'error');
      return;
    }
    if (mine !== generation) {
      c.close();
      return;
    }
    chat = c;
    listen(c);
    say.clear();
    if (!requestId) setStatus(status, 'live', t('status.connected'));
    join();
    inbox.reload((opts) => c.listRequests(opts));
    inbox.select(requestId);
  }

  function start(newRequest, newToken) {
    token = newToken;
    generation++;
    unsettled.clear();
    chat?.close();
    chat = null;
    resetConversation();
    inbox.clear();
    say.clear();
    requestId = newRequest.toLowerCase();
    me = whoIs(newToken);
    showInUrl();
    root.classList.add('joined');
    showTitle();
    updateComposer();
    showWho();
    void connect(newToken);
  }

  function send(text, clientMessageId) {
    const [c, room] = [chat, requestId];
    const entry = conversation.pending({
      _id: clientMessageId,
      requestId,
      sender: { id: me.id, username: me.name, role: me.role },
      message: text,
      createdAt: new Date().toISOString(),
    });
    const sent = c.send(room, text, { clientMessageId });
    const waiting = unsettled.get(room) ?? new Set();
    unsettled.set(room, waiting.add(sent));
    const settled = () => {
      waiting.delete(sent);
      if (waiting.size === 0 && unsettled.get(room) === waiting) unsettled.delete(room);
    };
    sent.then(settled, settled);
    sent.then(
      (stored) => {
        if (!stillOn(c, room)) return;
        if (me.id === undefined) me.id = stored.sender?.id;
        conversation.stored(entry, stored);
      },
      (err) => {
        if (!stillOn(c, room)) return;
        conversation.failed(entry);
        say.show(friendly(err), 'error');
      },
    );
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
    if (!ready || !chat) return;
    if (editing) {
      const messageId = editing;
      const [c, room] = [chat, requestId];
      c.editMessage(room, messageId, text).then(
        (msg) => {
          if (stillOn(c, room)) conversation.changed(msg);
        },
        (err) => {
          if (!stillOn(c, room)) return;
          say.show(friendly(err), 'error');
          // What was written is not lost: it comes back to the box, as a new message to send.
          if (input.value === '' && !editing) input.value = text;
        },
      );
      stopEditing();
      return;
    }
    if (text.trim() === '') return;
    input.value = '';
    input.focus();
    send(text, crypto.randomUUID());
  });

  input.addEventListener('input', () => {
    // The library says so at most once per 2 s per room, as the server forwards it.
    if (ready && !editing && input.value !== '') chat?.typing(requestId);
  });

  input.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') stopEditing();
  });
  editingBar.querySelector('.cancel-edit').addEventListener('click', stopEditing);

  older.addEventListener('click', () => {
    const first = list.querySelector('.msg[data-id]')?.dataset.id;
    if (!first || !chat) return;
    const [c, room] = [chat, requestId];
    c.loadHistory(room, { before: first }).then(
      (page) => {
        if (!stillOn(c, room)) return;
        const height = scroller.scrollHeight;
        for (const msg of [...page.messages].reverse()) conversation.show(msg, 'start');
        older.hidden = !page.hasMore;
        scroller.scrollTop += scroller.scrollHeight - height;
      },
      (err) => {
        if (stillOn(c, room)) say.show(friendly(err), 'error');
      },
    );
  });

  return {
    root,
    open({ request, token: linked, fromLink }) {
      if (linked && (fromLink || !form.elements.token.value)) form.elements.token.value = linked;
      if (request) form.elements.request.value = request;
      const saved = form.elements.token.value.trim();
      if (saved && (generation === 0 || (fromLink && saved !== token))) start(request ?? '', saved);
      else if (request && saved && request.toLowerCase() !== requestId) switchTo(request);
      // Back from the other view (its tab links to `#view=request`): the address names what is open.
      if (requestId) showInUrl();
    },
  };
}
