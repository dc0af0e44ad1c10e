// The live stream's classroom parts (protocol section 7): the viewer count,
// the slow-mode, members-only and paused indicators, the pinned chat, and for
// moderators the menu on each chat and the stream's settings. Moderator actions
// go out through `act`, which stream.js sends with StreamChat.moderate().
import { h, isolate } from './dom.js';
import { t } from './i18n.js';

const SLOW_MODE_CHOICES = [0, 5, 30, 60, 300];

/** "45 s", "1 min 30 s", "2 h 5 min": a wait, rounded up to the second (to the minute past an hour). */
export function duration(ms) {
  const s = Math.max(1, Math.ceil(ms / 1000));
  if (s < 60) return t('stream.seconds', { n: s });
  if (s < 3600) {
    const [m, r] = [Math.floor(s / 60), s % 60];
    return r === 0 ? t('stream.minutes', { n: m }) : t('stream.minutesSeconds', { m, s: r });
  }
  const [hours, m] = [Math.floor(s / 3600), Math.ceil((s % 3600) / 60)];
  if (m === 60) return t('stream.hours', { n: hours + 1 });
  return m === 0 ? t('stream.hours', { n: hours }) : t('stream.hoursMinutes', { h: hours, m });
}

/** The slow-mode choices, in seconds: the standard ones, and `current` in its place among them. */
const slowValues = (current) =>
  SLOW_MODE_CHOICES.includes(current)
    ? SLOW_MODE_CHOICES
    : [...SLOW_MODE_CHOICES, current].sort((a, b) => a - b);

const slowOptions = (current) =>
  slowValues(current).map((s) =>
    h('option', { value: String(s) }, s === 0 ? t('stream.off') : duration(s * 1000)),
  );

/**
 * The moderator's menu on one chat: a native <details>, so it needs no script
 * to open. `myId` is the viewer's user id: nobody times out or bans
 * themselves, and nobody may ban the stream's owner.
 */
export function modMenu(data, { myId, scroller, act }) {
  const id = String(data.id);
  const userId = String(data.userId);
  const own = userId === myId;
  const owner = Array.isArray(data.badges) && data.badges.includes('owner');
  const item = (label, action, danger = false) =>
    h(
      'button',
      {
        type: 'button',
        role: 'menuitem',
        class: danger ? 'danger' : undefined,
        onclick: (e) => {
          e.currentTarget.closest('details').open = false;
          act(action);
        },
      },
      label,
    );
  return h(
    'details',
    {
      class: 'mod-menu',
      // Near the bottom of the list the menu opens upwards when it fits there: the
      // list scrolls to what hangs below its end, never to what sticks out above.
      ontoggle: (e) => {
        const d = e.currentTarget;
        if (!d.open) return;
        d.classList.remove('up');
        const box = scroller.getBoundingClientRect();
        const at = d.getBoundingClientRect();
        const need = d.querySelector('.menu').offsetHeight;
        d.classList.toggle('up', box.bottom - at.bottom < need && at.top - box.top >= need);
      },
    },
    h('summary', { 'aria-label': t('stream.moderate'), title: t('stream.moderate') }, '⋯'),
    h(
      'div',
      { class: 'menu', role: 'menu' },
      item(t('stream.pin'), { type: 'pin', id }),
      item(t('stream.delete'), { type: 'delete', id }, true),
      !own &&
        !owner && [
          item(t('stream.timeout1'), { type: 'timeout', userId, seconds: 60 }),
          item(t('stream.timeout10'), { type: 'timeout', userId, seconds: 600 }),
          item(t('stream.ban'), { type: 'ban', userId }, true),
        ],
    ),
  );
}

/**
 * The stream's state as the `stream` frame tells it: `show(state, moderator)`
 * redraws the title, viewers, indicators, pin and the settings controls
 * (`state` null: nothing to show yet). The controls send their changes
 * through `act` and show what the server last said, not what was clicked.
 * `untitled()` is the head's text for a stream without a title.
 */
export function mountStreamState(root, { act, untitled }) {
  const title = root.querySelector('.title');
  const viewers = root.querySelector('.viewers');
  const bar = root.querySelector('.stream-bar');
  const modes = root.querySelector('.modes');
  const tools = root.querySelector('.mod-tools');
  const pinnedBox = root.querySelector('.pinned');
  const slowSelect = tools.querySelector('select[name="slowModeSeconds"]');
  slowSelect.replaceChildren(...slowOptions(0));

  tools.addEventListener('change', (e) => {
    const el = e.target;
    if (el.name === 'slowModeSeconds') act({ type: 'settings', slowModeSeconds: Number(el.value) });
    else if (el.name === 'membersOnly') act({ type: 'settings', membersOnly: el.checked });
    else if (el.name === 'paused') act({ type: 'settings', paused: el.checked });
  });
  // An open menu closes when a click lands anywhere else, or on Escape, as menus do.
  document.addEventListener('click', (e) => {
    for (const d of root.querySelectorAll('details[open]')) {
      if (!d.contains(e.target)) d.open = false;
    }
  });
  root.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    for (const d of root.querySelectorAll('details[open]')) d.open = false;
  });

  function showPin(pin, moderator) {
    if (!pin || typeof pin !== 'object') {
      pinnedBox.hidden = true;
      pinnedBox.replaceChildren();
      return;
    }
    pinnedBox.hidden = false;
    pinnedBox.replaceChildren(
      h('span', { class: 'pinned-label' }, t('stream.pinned')),
      isolate(pin.user, { class: 'name' }),
      h('span', { class: 'pinned-text' }, String(pin.message)),
    );
    if (moderator) {
      pinnedBox.append(
        h(
          'button',
          { type: 'button', class: 'unpin', onclick: () => act({ type: 'pin', id: null }) },
          t('stream.unpin'),
        ),
      );
    }
  }

  return {
    show(state, moderator) {
      tools.hidden = !moderator;
      if (!state) {
        bar.hidden = true;
        viewers.hidden = true;
        showPin(null, false);
        return;
      }
      // A title cleared through the API (null or "") gives the head back its default.
      const named = typeof state.title === 'string' && state.title !== '';
      title.textContent = named ? state.title : untitled();
      // The head shows at most three lines of a long title; the whole of it is on hover.
      if (named) title.title = state.title;
      else title.removeAttribute('title');
      viewers.hidden = false;
      viewers.textContent = t('stream.viewers', { count: Number(state.viewers) || 0 });

      const slow = Number(state.slowModeSeconds) || 0;
      const on = [
        slow > 0 && ['slow', t('stream.slowModeOn', { wait: duration(slow * 1000) })],
        state.membersOnly === true && ['members', t('stream.membersOnlyOn')],
        state.paused === true && ['paused', t('stream.pausedOn')],
      ].filter(Boolean);
      modes.replaceChildren(
        ...on.map(([kind, text]) => h('li', { class: `mode mode-${kind}` }, text)),
      );
      bar.hidden = on.length === 0 && !moderator;

      // A value set elsewhere (the server API) gets a choice of its own while it is
      // the stream's: the standard choices and the current value, never more.
      // Redrawn only when that changes: a frame comes with every viewer who joins,
      // and must not close the list under a moderator's pointer.
      const shown = [...slowSelect.options].map((o) => o.value).join();
      if (shown !== slowValues(slow).join()) slowSelect.replaceChildren(...slowOptions(slow));
      slowSelect.value = String(slow);
      tools.querySelector('[name="membersOnly"]').checked = state.membersOnly === true;
      tools.querySelector('[name="paused"]').checked = state.paused === true;
      showPin(state.pinned, moderator);
    },
  };
}
