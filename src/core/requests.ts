/**
 * Request chat (CONTRACT section 3), independent of any transport: who may act
 * in a request's room, durable messages, receipts and history. Fan-out to the
 * room is the transport's (Socket.IO rooms, across nodes through its adapter);
 * everything here resolves only once the store has committed.
 */
import type { Limits } from '../config.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import type { Store } from '../store/store.js';
import { ChatError } from './errors.js';
import { hasRole, type Identity } from './identity.js';
import { newId } from './ids.js';
import { checkMessageText, RateLimiter } from './limits.js';
import type { Page, PageQuery, ReceiptKind, RequestMessage } from './messages.js';

export interface RequestsDeps {
  store: Store;
  limits: Limits;
  metrics: Metrics;
  log: Logger;
}

export interface Sent {
  message: RequestMessage;
  /** A retry of a `clientMessageId` already stored: not to be delivered again. */
  duplicate: boolean;
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
  private readonly rate: RateLimiter;
  /** Writes under way, so that shutdown waits for them before closing the store. */
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly ownerListeners = new Set<(change: OwnerChange) => void>();

  constructor(private readonly deps: RequestsDeps) {
    this.rate = new RateLimiter(deps.limits.requestRate);
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
  ): Promise<Sent> {
    return this.track(async () => {
      checkMessageText(text, this.deps.limits.requestMessageMaxChars);
      const role = await this.authorize(identity, requestId);
      this.rate.take(`${identity.userId}\u0000${requestId}`);
      const message = {
        _id: newId(),
        requestId,
        sender: { id: identity.userId, username: identity.username, role },
        message: text,
        createdAt: new Date().toISOString(),
        clientMessageId: clientMessageId ?? null,
      };
      const sent = await this.deps.metrics.timeCommit('request_message', () =>
        this.deps.store.addRequestMessage(message),
      );
      if (!sent.duplicate) this.deps.metrics.messagesIn.inc({ chat: 'request' });
      return sent;
    });
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
      const messages = await this.deps.metrics.timeCommit('receipts', () =>
        this.deps.store.addReceipts(requestId, kind, identity.userId, [...new Set(ids)], at),
      );
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
    const page = await this.deps.store.requestHistory(requestId, query);
    return maxBytes === undefined ? page : fitPage(page, maxBytes);
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
