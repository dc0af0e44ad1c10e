// The live-stream view (protocol sections 2 and 7), built on charla/client's
// StreamChat: reconnecting with backoff, resuming with `?since=` and
// de-duplicating chats come from the library. The token goes in an `auth`
// frame, never in the URL, so it stays out of logs.
//
// Beside the chat (stream-moderation.js): the viewer count, the pinned chat,
// the slow-mode, members-only and paused indicators, and for the stream's
// moderators a menu on each chat (pin, delete, time out, ban) and the
// stream's settings.
import { StreamChat } from '/client/index.js';
import { atBottom, avatar, h, isolate, notice, setStatus, timeEl, whoIs } from './dom.js';
import { t, tNodes, translate } from './i18n.js';
import { duration, modMenu, mountStreamState } from './stream-moderation.js';

/** A browser tab keeps this many messages; older ones scroll away for good. */
const KEEP_MESSAGES = 500;
/** Names remembered per user id, for "… was timed out" lines about chats already gone. */
const KEEP_NAMES = 1000;
const RECONNECT = { initialDelayMs: 1_000, maxDelayMs: 15_000 };

/** Errors that refuse the last chat sent: its text comes back to the box. */
const REFUSED = new Set([
  'rate_limited',
  'message_too_long',
  'not_authenticated',
  'token_expired',
  'slow_mode',
  'timed_out',
  'banned',
  'members_only',
  'chat_paused',
]);
/** Refusals that say how long to wait: the send button stays off until then. */
const WAIT = {
  rate_limited: 'stream.rateLimited',
  slow_mode: 'stream.slowModeWait',
  timed_out: 'stream.timedOutWait',
};
const FRIENDLY = {
  not_authenticated: 'stream.notAuthenticated',
  invalid_token: 'stream.invalidToken',
  token_expired: 'stream.tokenExpired',
  empty_message: 'stream.emptyMessage',
  stream_not_found: 'stream.streamNotFound',
  stream_ended: 'stream.streamEnded',
  banned: 'stream.banned',
  members_only: 'stream.membersOnlyRefused',
  chat_paused: 'stream.pausedRefused',
  forbidden: 'stream.forbidden',
  not_found: 'stream.notFound',
  not_connected: 'stream.notConnected',
  queue_full: 'stream.queueFull',
};
/**
 * An id no chat has. Deleting it asks the server, without changing anything,
 * whether this connection may moderate: a moderator hears `not_found`, anyone
 * else `forbidden`. The stream frame is the same for every viewer, so it
 * cannot say.
 */
const PROBE_ID = '000000000000000000000000';

export function mountStreamView(root) {
  translate(root);
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

  /** @type {StreamChat | null} */
  let chat = null;
  let key = '';
  let token = '';
  let me = whoIs('');
  let authenticated = false;
  let moderator = false;
  let probing = false;
  let wasConnected = false;
  let lastSent = '';
  let waitUntil = 0;
  /** The refusal whose wait holds the send button. */
  let waitCode = '';
  let waitTimer;
  let countdown;
  /** The latest `stream` frame. */
  let state = null;
  /** userId → the name they last posted under. */
  const names = new Map();
  /**
   * Rows waiting for the next frame. A burst of chats (a busy stream sends
   * over a hundred a second) is drawn as one append and one scroll, so one
   * layout per frame, not one per chat.
   */
  let queued = [];
  let queuedForce = false;
  let frame = 0;

  const isOpen = () => chat?.connected === true;

  function updateComposer() {
    input.disabled = !isOpen() || !authenticated;
    sendButton.disabled = input.disabled || Date.now() < waitUntil;
    input.placeholder = !isOpen()
      ? t('stream.placeholderOffline')
      : authenticated
        ? t('stream.placeholderAs', { key, name: me.name })
        : t('stream.placeholderAnonymous');
  }

  function showWho() {
    who.replaceChildren();
    if (!key) {
      who.hidden = true;
      return;
    }
    who.hidden = false;
    who.append(
      h('p', { class: 'who-label' }, t('stream.watching')),
      h('p', { class: 'who-value' }, key),
      h('p', { class: 'who-label' }, t('stream.postingAs')),
      h('p', { class: 'who-value' }, authenticated ? me.name : t('stream.anonymous')),
      ...(moderator
        ? [
            h('p', { class: 'who-label' }, t('stream.role')),
            h('p', { class: 'who-value' }, t('stream.roleModerator')),
          ]
        : []),
      h(
        'button',
        { type: 'button', class: 'change', onclick: () => root.classList.remove('joined') },
        t('stream.change'),
      ),
    );
  }

  function setModerator(value) {
    if (moderator === value) return;
    moderator = value;
    root.classList.toggle('moderating', moderator);
    showWho();
    showState();
  }

  function remember(userId, name) {
    names.delete(userId);
    names.set(userId, name);
    if (names.size > KEEP_NAMES) names.delete(names.keys().next().value);
  }

  function badgesOf(data) {
    const badges = Array.isArray(data.badges) ? data.badges : [];
    return badges
      .filter((b) => b === 'owner' || b === 'moderator')
      .map((b) =>
        h(
          'span',
          { class: `chip badge-${b}` },
          t(b === 'owner' ? 'stream.badgeOwner' : 'stream.badgeModerator'),
        ),
      );
  }

  function act(action) {
    try {
      chat?.moderate(action);
    } catch (err) {
      say.show(t(FRIENDLY[err.code] ?? 'stream.notConnected'), 'error');
      showState();
    }
  }

  function messageEl(data) {
    const mine = me.id !== undefined && String(data.userId) === me.id;
    return h(
      'li',
      {
        class: mine ? 'msg mine' : 'msg',
        dataset: { id: String(data.id ?? ''), userId: String(data.userId ?? '') },
      },
      avatar(data.user, data.userId),
      h(
        'div',
        { class: 'msg-body' },
        h(
          'div',
          { class: 'msg-meta' },
          isolate(data.user, { class: 'name' }),
          mine && h('span', { class: 'chip you' }, t('stream.you')),
          badgesOf(data),
          timeEl(data.sentAt),
        ),
        h('p', { class: 'text' }, String(data.message)),
      ),
      typeof data.id === 'string' && modMenu(data, { myId: me.id, scroller, act }),
    );
  }

  /** Queues rows for the next frame; `force` scrolls to them even if the reader scrolled up. */
  function append(nodes, force = false) {
    if (nodes.length === 0) return;
    queued.push(...nodes);
    // A tab in the background gets no frames: what waits is bounded as the list is.
    if (queued.length > KEEP_MESSAGES) queued = queued.slice(-KEEP_MESSAGES);
    queuedForce ||= force;
    if (frame === 0) frame = requestAnimationFrame(flush);
  }

  /** Draws the queued rows: one measurement of the scroll, one append, one scroll. */
  function flush() {
    frame = 0;
    const nodes = queued;
    const force = queuedForce;
    queued = [];
    queuedForce = false;
    if (nodes.length === 0) return;
    const follow = force || atBottom(scroller);
    const fragment = document.createDocumentFragment();
    fragment.append(...nodes);
    list.append(fragment);
    while (list.children.length > KEEP_MESSAGES) list.firstElementChild.remove();
    empty.hidden = true;
    if (follow) scroller.scrollTop = scroller.scrollHeight;
  }

  function render(messages) {
    const nodes = [];
    let mine = false;
    for (const data of messages) {
      if (typeof data?.userId !== 'string') continue;
      remember(data.userId, String(data.user));
      if (data.userId === me.id) {
        mine = true;
        // The server stamps each chat with its sender's badges: ours say whether we moderate.
        const badges = Array.isArray(data.badges) ? data.badges : [];
        if (badges.includes('owner') || badges.includes('moderator')) setModerator(true);
      }
      nodes.push(messageEl(data));
    }
    append(nodes, mine);
  }

  /**
   * A line between chats: `text` a string or the parts `tNodes` gives; `undo`,
   * when given, is a button only moderators see.
   */
  function line(text, kind = 'info', undo = undefined) {
    append([
      h(
        'li',
        { class: `divider ${kind}` },
        h(
          'span',
          {},
          text,
          undo &&
            h(
              'button',
              { type: 'button', class: 'line-action', onclick: () => act(undo.action) },
              undo.label,
            ),
        ),
      ),
    ]);
  }

  function removeWhere(test) {
    const gone = (li) => li.classList.contains('msg') && test(li);
    queued = queued.filter((li) => !gone(li));
    for (const li of [...list.children]) if (gone(li)) li.remove();
  }

  const streamState = mountStreamState(root, { act, untitled: () => `#${key}` });
  /** Redraws the latest `stream` frame (and the moderator's controls on it). */
  const showState = () => streamState.show(state, moderator);

  function endWait() {
    clearInterval(waitTimer);
    waitUntil = 0;
    waitCode = '';
    updateComposer();
    say.show(t('stream.canPostAgain'), 'ok', 4000);
  }

  /** Counts down a refusal that says how long to wait, with the send button off meanwhile. */
  function wait(code, ms) {
    waitCode = code;
    waitUntil = Date.now() + ms;
    clearInterval(waitTimer);
    const tick = () => {
      const left = waitUntil - Date.now();
      if (left <= 0) {
        clearInterval(waitTimer);
        say.show(t('stream.canPostAgain'), 'ok', 2500);
        updateComposer();
        return;
      }
      say.show(t(WAIT[code], { wait: duration(left) }), 'warn');
    };
    tick();
    waitTimer = setInterval(tick, 250);
    updateComposer();
  }

  function onError(err) {
    const code = err.code;
    if (probing && (code === 'not_found' || code === 'forbidden')) {
      probing = false;
      setModerator(code === 'not_found');
      return;
    }
    // Only moderator frames are forbidden: this viewer no longer moderates (the
    // stream's moderator list changed), and the tools go.
    if (code === 'forbidden') setModerator(false);
    // A refused setting: the controls go back to what the server last said.
    if (code === 'forbidden' || code === 'invalid_payload') showState();
    if (REFUSED.has(code) && input.value === '') input.value = lastSent;
    if (code in WAIT) return wait(code, Number(err.retryAfterMs) || 1000);
    if (code === 'message_too_long') {
      // The limit is the server's; its message is the one place that names it.
      const max = /\d+/.exec(String(err.message))?.[0];
      return say.show(max ? t('stream.tooLong', { max }) : t('stream.tooLongPlain'), 'error');
    }
    say.show(
      FRIENDLY[code] ? t(FRIENDLY[code]) : t('stream.otherError', { code }),
      code === 'token_expired' ? 'warn' : 'error',
    );
  }

  function onAuth(value) {
    authenticated = value;
    if (authenticated && say.kind !== 'ok') say.clear();
    if (!authenticated) setModerator(false);
    else if (me.role === 'MODERATOR') setModerator(true);
    else {
      probing = true;
      try {
        chat?.moderate({ type: 'delete', id: PROBE_ID });
      } catch {
        probing = false;
      }
    }
    showWho();
    updateComposer();
  }

  function onModeration(event) {
    const userId = String(event.userId);
    // The name is the sender's own choice: isolated, its direction marks stay inside it.
    const name = isolate(names.get(userId) ?? userId);
    const mine = userId === me.id;
    if (event.action === 'unban') {
      line(tNodes('stream.unbannedLine', { name }));
      // The wait a timeout's refusal started is over too.
      if (mine) endWait();
      return;
    }
    // As on most live chats, a timed-out or banned user's chats leave the screen.
    removeWhere((li) => li.dataset.userId === userId);
    if (event.action === 'timeout') {
      const wait = duration((Number(event.seconds) || 0) * 1000);
      line(tNodes('stream.timedOutLine', { name, wait }), 'warn', {
        label: t('stream.endTimeout'),
        action: { type: 'unban', userId },
      });
      if (mine) say.show(t('stream.youTimedOut', { wait }), 'warn');
    } else if (event.action === 'ban') {
      line(tNodes('stream.bannedLine', { name }), 'warn', {
        label: t('stream.unban'),
        action: { type: 'unban', userId },
      });
      if (mine) say.show(t('stream.youBanned'), 'error');
    }
  }

  function stopCountdown() {
    clearInterval(countdown);
    countdown = undefined;
  }

  function connect() {
    const c = StreamChat.connect(location.origin, key, {
      token: token || undefined,
      reconnect: RECONNECT,
    });
    chat = c;
    // Events of a client that was replaced by another stream are ignored.
    const on = (event, fn) => c.on(event, (...args) => chat === c && fn(...args));
    setStatus(status, 'connecting', t('stream.statusConnecting'));
    on('open', () => {
      stopCountdown();
      if (wasConnected) say.show(t('stream.reconnected'), 'ok', 2500);
      wasConnected = true;
      setStatus(status, 'live', t('stream.statusLive'));
      updateComposer();
    });
    on('auth', onAuth);
    on('chat', (m) => render([m]));
    on('history', ({ messages, gap, resumed }) => {
      if (resumed && gap) line(t('stream.gap'));
      render(messages);
    });
    on('stream', (s) => {
      state = s;
      // Slow mode turned off ends a slow-mode wait at once.
      const waiting = waitCode === 'slow_mode' && Date.now() < waitUntil;
      if (waiting && !(Number(s.slowModeSeconds) > 0)) endWait();
      showState();
    });
    on('delete', ({ id }) => removeWhere((li) => li.dataset.id === String(id)));
    on('moderation', onModeration);
    on('error', onError);
    on('reconnecting', ({ delayMs }) => {
      setStatus(status, 'offline', t('stream.statusReconnecting'));
      const until = Date.now() + delayMs;
      const tick = () => {
        const seconds = Math.max(1, Math.ceil((until - Date.now()) / 1000));
        say.show(t('stream.reconnectIn', { seconds }), 'warn');
      };
      stopCountdown();
      tick();
      countdown = setInterval(tick, 500);
    });
    on('close', ({ code, willReconnect }) => {
      authenticated = false;
      probing = false;
      setModerator(false);
      updateComposer();
      if (willReconnect) return;
      stopCountdown();
      // A wait still counting down would cover why the chat is over.
      clearInterval(waitTimer);
      if (code === 4410 || code === 4404) {
        const ended = code === 4410;
        setStatus(status, 'offline', t(ended ? 'stream.statusEnded' : 'stream.statusNotFound'));
        say.show(t(ended ? 'stream.streamEnded' : 'stream.streamNotFound'), 'error');
      } else {
        setStatus(status, 'offline', t('stream.statusIdle'));
      }
    });
  }

  /** The stream in the address bar (never the token), so that a reload comes back to it. */
  function showInUrl() {
    history.replaceState(null, '', `#${new URLSearchParams({ view: 'stream', stream: key })}`);
  }

  function start(newKey, newToken) {
    const old = chat;
    chat = null;
    old?.close();
    stopCountdown();
    clearInterval(waitTimer);
    waitUntil = 0;
    key = newKey;
    token = newToken;
    me = whoIs(token);
    showInUrl();
    authenticated = false;
    probing = false;
    setModerator(false);
    wasConnected = false;
    state = null;
    names.clear();
    queued = [];
    list.replaceChildren();
    showState();
    empty.hidden = false;
    empty.querySelector('.empty-title').textContent = t('stream.waitingTitle');
    empty.querySelector('.empty-text').textContent = t('stream.waitingText');
    root.classList.add('joined');
    title.textContent = `#${key}`;
    subtitle.textContent = t('stream.liveSubtitle');
    say.clear();
    showWho();
    connect();
    updateComposer();
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const newToken = form.elements.token.value.trim();
    sessionStorage.setItem('charla.stream.token', newToken);
    // A new token on the same stream is an `auth` frame, not a reconnect.
    if (form.elements.key.value === key && chat && isOpen()) {
      token = newToken;
      me = whoIs(token);
      chat.auth(token);
      return;
    }
    start(form.elements.key.value, newToken);
  });

  composer.addEventListener('submit', (e) => {
    e.preventDefault();
    const message = input.value;
    if (!chat || !isOpen() || message.trim() === '') return;
    try {
      chat.send(message);
    } catch (err) {
      say.show(t(FRIENDLY[err.code] ?? 'stream.notConnected'), 'error');
      return;
    }
    lastSent = message;
    input.value = '';
    input.focus();
  });

  return {
    root,
    open({ stream, token: tk, fromLink }) {
      if (tk && (fromLink || !form.elements.token.value)) form.elements.token.value = tk;
      if (stream) form.elements.key.value = stream;
      const newToken = form.elements.token.value.trim();
      if (stream && (stream !== key || (fromLink && newToken !== token))) start(stream, newToken);
      // Back from the other view (its tab links to `#view=stream`): the address names what is open.
      if (key) showInUrl();
    },
  };
}
