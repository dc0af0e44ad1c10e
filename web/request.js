// The request-chat view over Socket.IO (CONTRACT section 3): history, sending
// with an acknowledgement, and receipts both ways. Messages that arrive are
// acked at once (`ackMessages`); they count as read (`readMessages`) only once
// they are on screen in a visible tab.
import { io } from '/vendor/socket.io.esm.min.js';
import { atBottom, h, notice, setStatus, timeEl, whoIs } from './dom.js';
import { receiptBatcher, tickState } from './receipts.js';

const TICK = { pending: '◷', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };
const TICK_LABEL = {
  pending: 'Sending',
  sent: 'Sent',
  delivered: 'Delivered',
  read: 'Read',
  failed: 'Not sent',
};

const FRIENDLY = {
  unauthorized: 'That token was not accepted. Paste a valid one to join.',
  token_expired: 'Your token expired. Paste a new one to join again.',
  forbidden: 'You cannot join this request: only its teacher and lab staff can.',
  not_found: 'There is no request with this id.',
  not_in_room: 'You are not in this request any more. Join it again.',
  empty_message: 'Write something first.',
};

const shortId = (id) => `${id.slice(0, 6)}…${id.slice(-4)}`;

function friendly(e) {
  if (e.error_code === 'rate_limited') {
    const s = Math.ceil((Number(e.retry_after_ms) || 1000) / 1000);
    return `You're sending too fast. You can send again in ${s} s.`;
  }
  return FRIENDLY[e.error_code] ?? String(e.message ?? e.error_code);
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

  let socket = null;
  let requestId = '';
  let me = whoIs('');
  let joined = false;
  /** Message id (or clientMessageId while pending) → {msg, li, state}. */
  const shown = new Map();

  const receipts = receiptBatcher({
    root: scroller,
    emit: (event, ids) => socket?.emit(event, { requestId, messages: ids }),
  });

  function updateComposer() {
    input.disabled = !joined;
    sendButton.disabled = !joined;
    input.placeholder = joined ? `Message as ${me.name}` : 'Join a request to write';
  }

  function showWho() {
    who.replaceChildren(
      h('p', { class: 'who-label' }, 'Request'),
      h('p', { class: 'who-value mono', title: requestId }, shortId(requestId)),
      h('p', { class: 'who-label' }, 'You are'),
      h('p', { class: 'who-value' }, me.role ? `${me.name} · ${me.role}` : me.name),
      h(
        'button',
        { type: 'button', class: 'change', onclick: () => root.classList.remove('joined') },
        'Change',
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
    tick.title = TICK_LABEL[entry.state];
    tick.setAttribute('aria-label', TICK_LABEL[entry.state]);
    entry.li.classList.toggle('pending', entry.state === 'pending');
  }

  function build(msg, mine) {
    const foot = h('div', { class: 'bubble-foot' }, timeEl(msg.createdAt));
    if (mine) foot.append(h('span', { class: 'tick' }));
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
      h('div', { class: 'bubble' }, h('p', { class: 'text' }, String(msg.message)), foot),
    );
  }

  /** Shows `msg` (once), oldest first; returns its entry. */
  function show(msg, where = 'end') {
    const existing = shown.get(msg._id);
    if (existing) {
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
    socket.emit('joinRoom', { requestId }, (res) => {
      if (res && res.ok === false) say.show(friendly(res), 'error');
    });
  }

  function onHistory(payload) {
    if (payload?.requestId !== requestId) return;
    const follow = joined ? atBottom(scroller) : true;
    for (const msg of payload.messages ?? []) show(msg);
    older.hidden = !payload.hasMore;
    joined = true;
    setStatus(status, 'live', 'Live');
    updateComposer();
    if (follow) scroller.scrollTop = scroller.scrollHeight;
    empty.querySelector('.empty-title').textContent = 'No messages yet';
    empty.querySelector('.empty-text').textContent =
      'Say hello: the other side sees your message at once, and the ticks tell you when it was read.';
  }

  function connect(token) {
    socket = io({ auth: { token } });
    setStatus(status, 'connecting', 'Connecting…');
    socket.on('connect', () => {
      say.clear();
      join();
    });
    socket.on('roomHistory', onHistory);
    socket.on('message', (msg) => {
      if (msg?.requestId !== requestId) return;
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
        setStatus(status, 'offline', 'Not connected');
        say.show(friendly({ error_code: err.message, message: err.message }), 'error');
      } else {
        setStatus(status, 'offline', 'Reconnecting…');
        say.show('Cannot reach charla. Retrying…', 'warn');
      }
    });
    socket.on('disconnect', (reason) => {
      joined = false;
      updateComposer();
      if (reason === 'io client disconnect') return;
      if (socket.active) {
        setStatus(status, 'offline', 'Reconnecting…');
        say.show('Connection lost. Reconnecting…', 'warn');
      } else {
        setStatus(status, 'offline', 'Disconnected');
        say.show('The server ended this session; your token may have expired.', 'error');
      }
    });
    socket.io.on('reconnect_attempt', (n) => {
      say.show(`Connection lost. Reconnecting (attempt ${n})…`, 'warn');
    });
    socket.io.on('reconnect', () => say.show('Reconnected.', 'ok', 2500));
  }

  function start(newRequest, token) {
    socket?.disconnect();
    receipts.reset();
    shown.clear();
    list.replaceChildren();
    empty.hidden = false;
    older.hidden = true;
    requestId = newRequest.toLowerCase();
    me = whoIs(token);
    joined = false;
    root.classList.add('joined');
    title.textContent = `Request ${shortId(requestId)}`;
    subtitle.textContent = 'Teacher and lab conversation';
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
    if (!joined || text.trim() === '') return;
    input.value = '';
    input.focus();
    send(text, crypto.randomUUID());
  });

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
      const t = form.elements.token.value.trim();
      if (request && t && request.toLowerCase() !== requestId) start(request, t);
    },
  };
}
