/**
 * The messages `RequestChat` holds for one room, and how what the server
 * sends is merged into them: pages of history (on join, after a re-join,
 * older pages), live messages, edits, deletions and receipts. De-duplicated by
 * `_id`, in the server's order, at most `limit` of them (the newest).
 */
import type { BoundedSet } from './bounded.js';
import type { Answer, Ask } from './request-answer.js';
import type { MessageDeletedEvent, ReceiptEvent, RequestMessage } from './types.js';

/** Server order: by `createdAt`, ties by `_id` (ObjectIds start with their creation second). */
export function byTime(a: RequestMessage, b: RequestMessage): number {
  if (a.createdAt !== b.createdAt) return a.createdAt < b.createdAt ? -1 : 1;
  return a._id < b._id ? -1 : a._id > b._id ? 1 : 0;
}

/** Held messages a history page showed edited or deleted since this client got them. */
export interface HistoryChanges {
  edited: RequestMessage[];
  deleted: RequestMessage[];
}

export class RoomMessages {
  private readonly byId = new Map<string, RequestMessage>();
  /** Older messages exist on the server before the oldest held. */
  hasMore = false;

  /** `seen` is the client's de-duplication memory: every id merged here is in it. */
  constructor(
    private readonly limit: number,
    private readonly seen: BoundedSet<string>,
  ) {}

  /** Everything held, oldest first. */
  all(): RequestMessage[] {
    return [...this.byId.values()].sort(byTime);
  }

  oldest(): RequestMessage | undefined {
    return this.all()[0];
  }

  /** The ids held right now (a copy). */
  ids(): Set<string> {
    return new Set(this.byId.keys());
  }

  /**
   * Merges `messages`; returns those not held before, oldest first. Held ones
   * that come back edited or deleted are recorded in `changes`.
   */
  merge(messages: RequestMessage[], changes?: HistoryChanges): RequestMessage[] {
    const added: RequestMessage[] = [];
    for (const m of messages) {
      if (typeof m?._id !== 'string') continue;
      const held = this.byId.get(m._id);
      if (!held) added.push(m);
      else if (m.deletedAt && !held.deletedAt) changes?.deleted.push(m);
      else if (!m.deletedAt && m.editedAt && m.editedAt !== held.editedAt) changes?.edited.push(m);
      this.byId.set(m._id, m);
      this.seen.add(m._id);
    }
    if (this.byId.size > this.limit) {
      const keep = this.all().slice(-this.limit);
      this.byId.clear();
      for (const m of keep) this.byId.set(m._id, m);
      this.hasMore = true;
    }
    return added.sort(byTime);
  }

  /** Forgets the messages with these ids; older ones exist from now on. */
  drop(ids: Set<string>): void {
    for (const id of ids) this.byId.delete(id);
    this.hasMore = true;
  }

  /** An edited message replaces the copy held (a message not held stays out). */
  update(m: RequestMessage): void {
    if (this.byId.has(m._id)) this.byId.set(m._id, m);
  }

  removed(e: MessageDeletedEvent): void {
    const m = this.byId.get(e.messageId);
    if (m) this.byId.set(m._id, { ...m, message: '', attachments: [], deletedAt: e.deletedAt });
  }

  /** Records a receipt by `e.userId` on the messages it names, once per user. */
  applyReceipts(e: ReceiptEvent, field: 'deliveredTo' | 'readBy'): void {
    if (!Array.isArray(e.messages)) return;
    for (const id of e.messages) {
      const m = this.byId.get(id);
      const receipts = Array.isArray(m?.[field]) ? m[field] : [];
      if (!m || receipts.some((r) => r.userId === e.userId)) continue;
      this.byId.set(id, { ...m, [field]: [...receipts, { userId: e.userId, at: e.at }] });
    }
  }
}

/**
 * After a re-join whose newest `page` does not reach what the client `held`
 * before, pages back until it does (at most `maxPages` pages), so what was
 * missed in between can be merged too. Returns the older pages' messages
 * (nothing is merged here: a catch-up cut short by a drop leaves what is held
 * as it was), and `gap` when it stopped before meeting what was held (more
 * were missed than `maxPages` pages, or the server refused or did not answer
 * a page; the caller tells a dropped connection apart).
 */
export async function catchUp(
  ask: Ask,
  requestId: string,
  page: { messages: RequestMessage[]; hasMore: boolean },
  held: Set<string>,
  maxPages: number,
): Promise<{ older: RequestMessage[]; gap: boolean }> {
  const pages: RequestMessage[][] = [];
  let older = page.messages;
  let hasMore = page.hasMore;
  for (let i = 0; ; i++) {
    const oldest = older[0];
    if (!oldest || !hasMore || older.some((m) => held.has(m._id))) {
      return { older: pages.reverse().flat(), gap: false };
    }
    if (i === maxPages) break;
    let a: Answer;
    try {
      a = await ask('loadHistory', { requestId, before: oldest._id });
    } catch {
      break;
    }
    if (a.ok !== true || !Array.isArray(a.messages)) break;
    older = a.messages as RequestMessage[];
    hasMore = a.hasMore === true;
    pages.push(older);
  }
  return { older: pages.reverse().flat(), gap: true };
}
