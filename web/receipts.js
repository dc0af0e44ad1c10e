// Receipts as a person sees them. `ackMessages` goes out as soon as a message
// arrives; `readMessages` only once the message has been on screen, in a tab
// that is visible. Both are batched: a burst of messages is one event.

const FLUSH_MS = 150;
/** Share of a message that must be in view for it to count as seen. */
const SEEN_RATIO = 0.6;

/** sent / delivered / read for one of my messages, from its receipts by others. */
export function tickState(msg, myId) {
  const others = (list) => (list ?? []).some((r) => r.userId !== myId);
  if (others(msg.readBy)) return 'read';
  if (others(msg.deliveredTo)) return 'delivered';
  return 'sent';
}

const has = (list, userId) => (list ?? []).some((r) => r.userId === userId);

export function receiptBatcher({ root, emit }) {
  const queues = { ackMessages: new Set(), readMessages: new Set() };
  let timer;
  /** Messages on screen right now, waiting for the tab to be visible. */
  const inView = new Map();

  function flush() {
    timer = undefined;
    for (const [event, ids] of Object.entries(queues)) {
      if (ids.size === 0) continue;
      emit(event, [...ids]);
      ids.clear();
    }
  }

  function queue(event, id) {
    queues[event].add(id);
    if (timer === undefined) timer = setTimeout(flush, FLUSH_MS);
  }

  function markRead(id, el) {
    inView.delete(id);
    observer.unobserve(el);
    queue('readMessages', id);
  }

  const observer = new IntersectionObserver(
    (entries) => {
      for (const e of entries) {
        const id = e.target.dataset.id;
        if (!e.isIntersecting) inView.delete(id);
        else if (document.visibilityState === 'visible') markRead(id, e.target);
        else inView.set(id, e.target);
      }
    },
    { root, threshold: SEEN_RATIO },
  );

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible') return;
    for (const [id, el] of inView) markRead(id, el);
  });

  return {
    /** A message from someone else is on the page: ack it, and watch for it to be seen. */
    arrived(msg, el, myId) {
      if (myId === undefined || !has(msg.deliveredTo, myId)) queue('ackMessages', msg._id);
      if (myId === undefined || !has(msg.readBy, myId)) observer.observe(el);
    },
    /** A message's bubble left the page: it is no longer watched (nor kept alive by the watch). */
    forget(el) {
      observer.unobserve(el);
      if (inView.get(el.dataset.id) === el) inView.delete(el.dataset.id);
    },
    reset() {
      observer.disconnect();
      inView.clear();
      for (const ids of Object.values(queues)) ids.clear();
    },
  };
}
