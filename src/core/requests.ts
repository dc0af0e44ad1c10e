/**
 * Request chat (protocol section 3), independent of any transport: who may act
 * in a request's room, durable messages, receipts and history. Fan-out to the
 * room is the transport's (Socket.IO rooms, across nodes through its adapter);
 * everything here resolves only once the store has committed.
 */
import type { DeskConfig, Limits } from '../config.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import type { Store } from '../store/store.js';
import { ChatError, pageAt } from './errors.js';
import { GroupCommit } from './group-commit.js';
import { hasRole, type Identity } from './identity.js';
import { newId } from './ids.js';
import { checkMessageText } from './limits.js';
import type {
  Attachment,
  Page,
  PageQuery,
  ReceiptKind,
  RequestActivity,
  RequestMessage,
  RequestSummary,
  UnreadTotals,
} from './messages.js';
import { type SharedCounterOptions, StreamLimits } from './stream-limits.js';
import { SharedTypingThrottle, TypingThrottle } from './typing.js';
import type { Webhooks } from './webhooks.js';

export interface RequestsDeps {
  store: Store;
  limits: Limits;
  desk: DeskConfig;
  metrics: Metrics;
  log: Logger;
  /** When set, messages and reads commit their webhook events with them. */
  webhooks?: Webhooks | undefined;
  /** When set, the rate limit and the typing throttle hold across nodes. */
  redis?: SharedCounterOptions['redis'];
}

export interface Sent {
  message: RequestMessage;
  /** A retry of a `clientMessageId` already stored: not to be delivered again. */
  duplicate: boolean;
  /** Who is to hear of the new message in their inbox; absent for a duplicate. */
  updates?: InboxUpdates;
}

/**
 * The `requestUpdated` each user who may act in a request gets after a
 * message was stored or deleted: the named users their own count, every other
 * lab user `labUnread` (they have neither sent nor read anything there).
 */
export interface InboxUpdates {
  requestId: string;
  lastMessage: RequestMessage | null;
  ownerId: string;
  /** The owner's count; the owner may be lab staff too. */
  ownerUnread: number;
  /** Users other than the owner with their own counters; they count only if lab staff. */
  readers: Array<{ userId: string; unread: number }>;
  labUnread: number;
}

/** What an edit or deletion changed, for the room and the inboxes. */
export interface Changed {
  message: RequestMessage;
  updates?: InboxUpdates;
}

/** A request changed hands: the previous owner may no longer act in it. */
export interface OwnerChange {
  requestId: string;
  previousOwnerId: string;
  ownerId: string;
}

export interface Receipts {
  /** The ids whose receipt is new; the rest were ignored or already recorded. */
  messages: string[];
  at: string;
}

export class Requests {
  /** REQUEST_RATE_LIMIT per user and request, counted in Redis when there is one. */
  private readonly rate: StreamLimits;
  private readonly typingThrottle: SharedTypingThrottle;
  /** Writes under way, so that shutdown waits for them before closing the store. */
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly ownerListeners = new Set<(change: OwnerChange) => void>();
  private readonly messages: GroupCommit;

  constructor(private readonly deps: RequestsDeps) {
    this.messages = new GroupCommit({
      store: deps.store,
      metrics: deps.metrics,
      maxBatch: deps.limits.requestBatchMax,
    });
    this.rate = new StreamLimits(deps.limits.requestRate, { redis: deps.redis });
    this.typingThrottle = new SharedTypingThrottle(
      new TypingThrottle(deps.desk.typingIntervalMs, deps.desk.typingTrackedMax),
      deps.desk.typingIntervalMs,
      deps.redis,
    );
  }

  /**
   * Registers a request and its owning teacher; a new owner replaces the old,
   * and `onOwnerChange` listeners hear of it once the change is committed.
   */
  async put(
    requestId: string,
    ownerId: string,
  ): Promise<{ created: boolean; previousOwnerId: string | null }> {
    const result = await this.deps.store.putRequest(requestId, ownerId);
    const previous = result.previousOwnerId;
    if (previous !== null && previous !== ownerId) {
      const change = { requestId, previousOwnerId: previous, ownerId };
      for (const listener of this.ownerListeners) {
        try {
          listener(change);
        } catch (err) {
          // The change is stored; one failing listener must not hide it from the rest.
          this.deps.log.error({ err, requestId }, 'owner change listener failed');
        }
      }
    }
    return result;
  }

  /**
   * Calls `listener` after each committed change of a request's owner made
   * through this node; the transport spreads its effect to the other nodes.
   */
  onOwnerChange(listener: (change: OwnerChange) => void): () => void {
    this.ownerListeners.add(listener);
    return () => this.ownerListeners.delete(listener);
  }

  async exists(requestId: string): Promise<boolean> {
    return (await this.deps.store.getRequest(requestId)) !== undefined;
  }

  /**
   * The role under which `identity` acts in the request: `LAB`, or `TEACHER`
   * when it owns it. Throws `not_found` for an unregistered request and
   * `forbidden` for anyone else. Asked on every event, so a change of owner
   * takes effect at once.
   */
  async authorize(identity: Identity, requestId: string): Promise<'LAB' | 'TEACHER'> {
    const request = await this.deps.store.getRequest(requestId);
    if (!request) throw new ChatError('not_found', 'There is no request with this id.');
    if (hasRole(identity, 'LAB')) return 'LAB';
    if (hasRole(identity, 'TEACHER') && request.ownerId === identity.userId) return 'TEACHER';
    throw new ChatError(
      'forbidden',
      'Only lab staff and the teacher who owns it may use this chat.',
    );
  }

  /**
   * Stores a message and resolves with it once committed. Validation and the
   * rate limit come first, so a refused message leaves nothing behind.
   */
  send(
    identity: Identity,
    requestId: string,
    text: string,
    clientMessageId: string | undefined,
    attachments: readonly Attachment[] = [],
  ): Promise<Sent> {
    return this.track(async () => {
      this.checkAttachments(attachments);
      // With attachments the text may be empty, never too long or malformed.
      checkMessageText(text, this.deps.limits.requestMessageMaxChars, attachments.length > 0);
      const role = await this.authorize(identity, requestId);
      await this.takeRate(identity, requestId);
      const message = {
        _id: newId(),
        requestId,
        sender: { id: identity.userId, username: identity.username, role },
        message: text,
        createdAt: new Date().toISOString(),
        attachments: attachments.map(({ url, name, contentType, size }) => ({
          url,
          name,
          contentType,
          size,
        })),
      };
      const { webhooks } = this.deps;
      // Committed with the other messages of this turn; see group-commit.ts.
      const sent = await this.messages.add({
        message: { ...message, clientMessageId: clientMessageId ?? null },
        outbox: webhooks?.messageCreated({ ...message, deliveredTo: [], readBy: [] }),
      });
      if (!sent.duplicate) {
        this.deps.metrics.messagesIn.inc({ chat: 'request' });
        webhooks?.nudge();
      }
      const { activity, ...rest } = sent;
      return activity ? { ...rest, updates: inboxUpdates(activity) } : rest;
    });
  }

  /**
   * Edits the text of `identity`'s own message within the edit window. With
   * attachments the new text may be empty, as when it was sent.
   */
  edit(identity: Identity, requestId: string, messageId: string, text: string): Promise<Changed> {
    return this.track(async () => {
      const original = await this.ownMessage(identity, requestId, messageId);
      checkMessageText(
        text,
        this.deps.limits.requestMessageMaxChars,
        original.attachments.length > 0,
      );
      // A change is a write delivered to the room, as a message is: same budget.
      await this.takeRate(identity, requestId);
      const editedAt = new Date().toISOString();
      const changed = await this.deps.store.changeRequestMessage(
        requestId,
        messageId,
        identity.userId,
        { message: text, editedAt },
      );
      if (!changed) throw new ChatError('not_found', 'There is no such message.');
      return { message: changed.message };
    });
  }

  /** Deletes `identity`'s own message within the edit window; it leaves every unread count. */
  remove(identity: Identity, requestId: string, messageId: string): Promise<Changed> {
    return this.track(async () => {
      await this.ownMessage(identity, requestId, messageId);
      await this.takeRate(identity, requestId);
      const changed = await this.deps.store.changeRequestMessage(
        requestId,
        messageId,
        identity.userId,
        { deletedAt: new Date().toISOString() },
      );
      if (!changed) throw new ChatError('not_found', 'There is no such message.');
      const { activity, message } = changed;
      return activity ? { message, updates: inboxUpdates(activity) } : { message };
    });
  }

  /**
   * Counts one write of `identity` in the request against REQUEST_RATE_LIMIT,
   * on every node together: the counter's key cannot be a stream key's (no
   * `:` in those), so the two chats never share a budget.
   */
  private takeRate(identity: Identity, requestId: string): Promise<void> {
    return this.rate.take(`request:${requestId}`, identity.userId);
  }

  /** True when `identity`'s typing in the request is to be forwarded now; never stored. */
  typing(identity: Identity, requestId: string): Promise<boolean> {
    return this.typingThrottle.allow(identity.userId, requestId);
  }

  /**
   * `identity`'s inbox (protocol section 8 `listRequests`): lab staff see
   * every request with messages, a teacher their own requests.
   */
  async inbox(
    identity: Identity,
    query: { before?: string | undefined; limit: number },
  ): Promise<{ requests: RequestSummary[]; hasMore: boolean }> {
    const page = await this.deps.store.listRequests({
      userId: identity.userId,
      ownerId: inboxOwner(identity),
      before: query.before,
      limit: query.limit,
    });
    return pageAt(page, 'request of this inbox');
  }

  /** `identity`'s line of one request's inbox, e.g. after their reads changed it. */
  summary(identity: Identity, requestId: string): Promise<RequestSummary | undefined> {
    return this.deps.store.requestSummary(requestId, identity.userId);
  }

  /** A user's unread total and the requests with unread messages, for the platform. */
  unread(userId: string, role: 'LAB' | 'TEACHER'): Promise<UnreadTotals> {
    return this.deps.store.unreadTotals(
      userId,
      role === 'LAB' ? undefined : userId,
      this.deps.desk.unreadListMax,
    );
  }

  /** Records `identity`'s delivered or read receipts; see `Store.addReceipts`. */
  receipts(
    identity: Identity,
    requestId: string,
    kind: ReceiptKind,
    ids: readonly string[],
  ): Promise<Receipts> {
    return this.track(async () => {
      if (ids.length > this.deps.limits.historyMaxPage) {
        throw new ChatError(
          'invalid_payload',
          `At most ${this.deps.limits.historyMaxPage} message ids per receipt.`,
        );
      }
      await this.authorize(identity, requestId);
      const at = new Date().toISOString();
      const { webhooks } = this.deps;
      const messages = await this.deps.metrics.timeCommit('receipts', () =>
        this.deps.store.addReceipts(
          requestId,
          kind,
          identity.userId,
          [...new Set(ids)],
          at,
          kind === 'read' ? webhooks?.messagesRead(requestId, identity.userId, at) : undefined,
        ),
      );
      if (kind === 'read' && messages.length > 0) webhooks?.nudge();
      return { messages, at };
    });
  }

  /**
   * A page of history, oldest first. With `maxBytes`, only the newest messages
   * whose JSON encoding fits in it are kept (always at least one), and
   * `hasMore` turns true when some were left out: the client pages on with
   * `before`, and no answer costs more to send than the caller can afford.
   */
  async history(
    requestId: string,
    query: PageQuery,
    maxBytes?: number,
  ): Promise<Page<RequestMessage>> {
    const page = pageAt(
      await this.deps.store.requestHistory(requestId, query),
      'message of this request',
    );
    return maxBytes === undefined ? page : fitPage(page, maxBytes);
  }

  /**
   * The messages of the request's newest history page (HISTORY_PAGE) edited
   * or deleted at `since` (epoch ms) or later, oldest first: what a room's
   * sockets are sent again when they may have missed those changes.
   */
  async changedSince(requestId: string, since: number): Promise<RequestMessage[]> {
    const page = await this.deps.store.requestHistory(requestId, {
      limit: this.deps.limits.historyPage,
    });
    return page.messages.filter((m) => {
      const changed = m.deletedAt ?? m.editedAt;
      return changed !== undefined && Date.parse(changed) >= since;
    });
  }

  /** A page size from a client: the default page, or `limit` within the maximum. */
  pageLimit(limit: number | undefined): number {
    if (limit === undefined) return this.deps.limits.historyPage;
    if (limit > this.deps.limits.historyMaxPage) {
      throw new ChatError(
        'invalid_payload',
        `"limit" must be at most ${this.deps.limits.historyMaxPage}.`,
      );
    }
    return limit;
  }

  /** A message of `identity`'s that may still be changed, or the reason it may not. */
  private async ownMessage(
    identity: Identity,
    requestId: string,
    messageId: string,
  ): Promise<RequestMessage> {
    await this.authorize(identity, requestId);
    const message = await this.deps.store.getRequestMessage(requestId, messageId);
    if (!message || message.deletedAt !== undefined) {
      throw new ChatError('not_found', 'There is no such message.');
    }
    if (message.sender.id !== identity.userId) {
      throw new ChatError('forbidden', 'Only its sender may change a message.');
    }
    if (Date.now() - Date.parse(message.createdAt) > this.deps.desk.editWindowMs) {
      throw new ChatError('edit_window_passed');
    }
    return message;
  }

  private checkAttachments(attachments: readonly Attachment[]): void {
    const { attachmentsMax, attachmentUrlPrefixes } = this.deps.desk;
    if (attachments.length === 0) return;
    if (attachments.length > attachmentsMax) {
      throw new ChatError('invalid_payload', `At most ${attachmentsMax} attachments per message.`);
    }
    for (const a of attachments) {
      if (!allowedUrl(a.url, attachmentUrlPrefixes)) {
        throw new ChatError(
          'invalid_payload',
          attachmentUrlPrefixes.length === 0
            ? 'Attachments are not accepted here.'
            : '"attachments.url" must start with an allowed prefix.',
        );
      }
    }
  }

  /** Resolves when every write accepted so far has been committed or has failed. */
  async flush(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  private track<T>(work: () => Promise<T>): Promise<T> {
    const p = work();
    this.inFlight.add(p);
    const done = () => this.inFlight.delete(p);
    p.then(done, done);
    return p;
  }
}

/** The newest messages of `page` whose JSON adds up to at most `maxBytes`; at least one. */
export function fitPage<T>(page: Page<T>, maxBytes: number): Page<T> {
  const { messages } = page;
  let bytes = 0;
  let first = messages.length;
  while (first > 0) {
    const size = Buffer.byteLength(JSON.stringify(messages[first - 1]));
    if (bytes + size > maxBytes && first < messages.length) break;
    bytes += size;
    first -= 1;
  }
  return first === 0 ? page : { messages: messages.slice(first), hasMore: true };
}

/** Lab staff read every request; a teacher only their own; anyone else has no inbox. */
export function inboxOwner(identity: Identity): string | undefined {
  if (hasRole(identity, 'LAB')) return undefined;
  if (hasRole(identity, 'TEACHER')) return identity.userId;
  throw new ChatError('forbidden', 'Only lab staff and teachers have an inbox.');
}

/**
 * A URL under one of the prefixes, compared after parsing: `..` segments,
 * credentials (`https://cdn@evil`) and look-alike hosts cannot slip past a
 * plain string comparison. Whitespace and control characters, which the
 * parser strips or tolerates, are refused: the URL is stored as sent. So is
 * an encoded slash or backslash in the path (`%2f`, `%5c`): the parser keeps it,
 * but a file server that decodes it would see a path that climbs out of the prefix.
 */
export function allowedUrl(raw: string, prefixes: readonly URL[]): boolean {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused.
  if (/[\u0000-\u0020\u007f-\u009f]/.test(raw) || !URL.canParse(raw)) return false;
  const url = new URL(raw);
  if (url.username !== '' || url.password !== '' || /%2f|%5c/i.test(url.pathname)) return false;
  return prefixes.some(
    (p) => url.origin === p.origin && raw.startsWith(p.href) && url.href.startsWith(p.href),
  );
}

function inboxUpdates(activity: RequestActivity): InboxUpdates {
  const owner = activity.readers.find((r) => r.userId === activity.ownerId);
  return {
    requestId: activity.requestId,
    lastMessage: activity.lastMessage,
    ownerId: activity.ownerId,
    ownerUnread: owner?.unread ?? activity.messageCount,
    readers: activity.readers.filter((r) => r.userId !== activity.ownerId),
    labUnread: activity.messageCount,
  };
}
