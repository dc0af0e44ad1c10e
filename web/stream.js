// The live-stream view: a plain WebSocket to /ws/streams/{key}/ (protocol
// section 2). The token goes in an `auth` frame, never in the URL, so it stays
// out of logs; a dropped connection comes back with capped exponential backoff.
import { atBottom, avatar, h, notice, setStatus, timeEl, whoIs } from './dom.js';

const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 15_000;
/** Close codes after which reconnecting cannot help. */
const FINAL_CLOSE = new Map([
  [4404, 'stream_not_found'],
  [4410, 'stream_ended'],
]);
/** A browser tab keeps this many messages; older ones scroll away for good. */
const KEEP_MESSAGES = 500;

/** Errors that refuse the last chat sent. */
const REFUSED = new Set(['rate_limited', 'message_too_long', 'not_authenticated', 'token_expired']);

const FRIENDLY = {
  not_authenticated: 'You are watching anonymously. Add a token to post.',
  invalid_token: 'That token was not accepted. You are watching anonymously.',
  token_expired: 'Your token expired. Paste a new one to keep posting.',
  empty_message: 'Write something first.',
  stream_not_found: 'There is no stream with this key.',
  stream_ended: 'This stream has ended.',
};

export function mountStreamView(root) {
  const form = root.querySelector('.connect');
  const who = root.querySelector('.who');
  const list = root.querySelector('.messages');
  const scroller = root.querySelector('.scroller');
  const empty = root.querySelector('.empty');
  const status = root.querySelector('.status');
  const title = root.querySelector('.title');
  const subtitle = root.querySelector('.subtitle');
  const composer = root.querySelector('.composer');
  const input = composer.elements.message;
  const sendButton = composer.querySelector('button');
  const say = notice(root.querySelector('.notice'));

  let ws = null;
  let key = '';
  let token = '';
  let me = whoIs('');
  let authenticated = false;
  let attempt = 0;
  let retryTimer;
  let rateTimer;
  let rateUntil = 0;
  let wasConnected = false;
  let lastSent = '';

  function updateComposer() {
    const open = ws?.readyState === WebSocket.OPEN;
    const waiting = Date.now() < rateUntil;
    input.disabled = !open || !authenticated;
    sendButton.disabled = input.disabled || waiting;
    input.placeholder = !open
      ? 'Not connected'
      : authenticated
        ? `Message #${key} as ${me.name}`
        : 'Add a token to chat';
  }

  function showWho() {
    who.replaceChildren();
    if (!key) {
      who.hidden = true;
      return;
    }
    who.hidden = false;
    who.append(
      h('p', { class: 'who-label' }, 'Watching'),
      h('p', { class: 'who-value' }, key),
      h('p', { class: 'who-label' }, 'Posting as'),
      h('p', { class: 'who-value' }, authenticated ? me.name : 'Anonymous viewer'),
      h(
        'button',
        { type: 'button', class: 'change', onclick: () => root.classList.remove('joined') },
        'Change',
      ),
    );
  }

  function render(data) {
    const mine = me.id !== undefined && data.userId === me.id;
    const li = h(
      'li',
      { class: mine ? 'msg mine' : 'msg', dataset: { id: String(data.id ?? '') } },
      avatar(data.user, data.userId),
      h(
        'div',
        { class: 'msg-body' },
        h(
          'div',
          { class: 'msg-meta' },
          h('span', { class: 'name' }, String(data.user)),
          timeEl(data.sentAt),
        ),
        h('p', { class: 'text' }, String(data.message)),
      ),
    );
    const follow = atBottom(scroller);
    list.append(li);
    while (list.children.length > KEEP_MESSAGES) list.firstElementChild.remove();
    empty.hidden = true;
    if (follow || mine) li.scrollIntoView({ block: 'end' });
  }

  function divider(text) {
    list.append(h('li', { class: 'divider' }, h('span', {}, text)));
  }

  function rateLimited(ms) {
    rateUntil = Date.now() + ms;
    clearInterval(rateTimer);
    const tick = () => {
      const left = Math.ceil((rateUntil - Date.now()) / 1000);
      if (left <= 0) {
        clearInterval(rateTimer);
        say.show('You can post again.', 'ok', 2500);
        updateComposer();
        return;
      }
      say.show(`You're posting too fast. You can post again in ${left} s.`, 'warn');
    };
    tick();
    rateTimer = setInterval(tick, 250);
    updateComposer();
  }

  function onError(data) {
    const code = data.error_code;
    // The refused text comes back to the box, so the person can shorten or resend it.
    if (REFUSED.has(code) && input.value === '') input.value = lastSent;
    if (code === 'rate_limited') return rateLimited(Number(data.retry_after_ms) || 1000);
    if (code === 'message_too_long') return say.show(String(data.message), 'error');
    say.show(
      FRIENDLY[code] ?? String(data.message ?? code),
      code === 'token_expired' ? 'warn' : 'error',
    );
  }

  function onFrame(event) {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    const data = frame?.data ?? {};
    if (frame.type === 'chat') render(data);
    else if (frame.type === 'error') onError(data);
    else if (frame.type === 'auth') {
      authenticated = data.authenticated === true;
      if (authenticated && say.kind !== 'ok') say.clear();
      showWho();
      updateComposer();
    }
  }

  function scheduleReconnect() {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    const jittered = Math.round(delay * (0.75 + Math.random() * 0.5));
    attempt += 1;
    setStatus(status, 'offline', 'Reconnecting…');
    const until = Date.now() + jittered;
    const tick = () => {
      const left = Math.ceil((until - Date.now()) / 1000);
      say.show(`Connection lost. Reconnecting in ${Math.max(left, 1)} s…`, 'warn');
    };
    tick();
    const countdown = setInterval(tick, 500);
    retryTimer = setTimeout(() => {
      clearInterval(countdown);
      connect();
    }, jittered);
    retryTimer.countdown = countdown;
  }

  function disconnect() {
    clearTimeout(retryTimer);
    clearInterval(retryTimer?.countdown);
    if (ws) {
      const old = ws;
      ws = null;
      old.onclose = null;
      old.close(1000);
    }
  }

  function connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(
      `${scheme}://${location.host}/ws/streams/${encodeURIComponent(key)}/`,
    );
    ws = socket;
    setStatus(status, 'connecting', wasConnected ? 'Reconnecting…' : 'Connecting…');
    socket.onopen = () => {
      if (wasConnected) {
        divider('Reconnected. Messages sent while you were away are not shown.');
        say.show('Reconnected.', 'ok', 2500);
      }
      wasConnected = true;
      attempt = 0;
      setStatus(status, 'live', 'Live');
      if (token) socket.send(JSON.stringify({ type: 'auth', data: { token } }));
      updateComposer();
    };
    socket.onmessage = onFrame;
    socket.onclose = (event) => {
      if (ws !== socket) return;
      ws = null;
      authenticated = false;
      updateComposer();
      const final = FINAL_CLOSE.get(event.code);
      if (final) {
        setStatus(status, 'offline', final === 'stream_ended' ? 'Ended' : 'Not found');
        say.show(FRIENDLY[final], 'error');
        return;
      }
      scheduleReconnect();
    };
  }

  function start(newKey, newToken) {
    disconnect();
    key = newKey;
    token = newToken;
    me = whoIs(token);
    authenticated = false;
    wasConnected = false;
    attempt = 0;
    list.replaceChildren();
    empty.hidden = false;
    empty.querySelector('.empty-title').textContent = 'Waiting for messages';
    empty.querySelector('.empty-text').textContent =
      'You are connected. New messages in this stream appear here as they are sent.';
    root.classList.add('joined');
    title.textContent = `#${key}`;
    subtitle.textContent = 'Live stream chat';
    say.clear();
    showWho();
    connect();
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const newToken = form.elements.token.value.trim();
    sessionStorage.setItem('charla.stream.token', newToken);
    // A new token on the same stream is an `auth` frame, not a reconnect.
    if (form.elements.key.value === key && ws?.readyState === WebSocket.OPEN) {
      token = newToken;
      me = whoIs(token);
      ws.send(JSON.stringify({ type: 'auth', data: { token } }));
      return;
    }
    start(form.elements.key.value, newToken);
  });

  composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const message = input.value;
    if (!ws || ws.readyState !== WebSocket.OPEN || message.trim() === '') return;
    ws.send(JSON.stringify({ type: 'chat', data: { message } }));
    lastSent = message;
    input.value = '';
    input.focus();
  });

  return {
    root,
    open({ stream, token: t }) {
      if (t && !form.elements.token.value) form.elements.token.value = t;
      if (stream) form.elements.key.value = stream;
      if (stream && stream !== key) start(stream, form.elements.token.value.trim());
    },
  };
}
