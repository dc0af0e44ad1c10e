/**
 * `RequestChat`: the request chat (protocol sections 3 and 8) over
 * `socket.io-client` v4.
 *
 * What it adds to a bare socket: every `send` carries a `clientMessageId` and
 * is retried, with the same id, until the server acknowledges it (the server
 * stores a repeat once and returns the original), in order per room; sends
 * made while disconnected wait in a bounded queue (request-outbox.ts). After a
 * reconnect (with backoff, here: see `reconnect()`) every joined room is
 * joined again, the history is merged into what the client holds
 * (request-history.ts: de-duplicated by `_id`, ordered by `createdAt`), and
 * messages the client had missed are emitted as `message`, before the live
 * ones that came meanwhile. Live messages are de-duplicated by `_id` and
 * acknowledged as delivered. This file holds the rooms, their joins and the
 * events; the socket is opened in request-socket.ts, and the options and
 * events are in request-types.ts.
 */
import type { Socket } from 'socket.io-client';
import { type BackoffOptions, BoundedSet, backoffDelay, randomId } from './bounded.js';
import { Emitter } from './emitter.js';
import { ChatClientError } from './errors.js';
import { type Answer, type Ask, answerError } from './request-answer.js';
import { byTime, catchUp, type HistoryChanges, RoomMessages } from './request-history.js';
import { type MessagePayload, Outbox, OutboxBudget } from './request-outbox.js';
import { firstConnect, openSocket } from './request-socket.js';
import type {
  ReceiptResult,
  RequestChatEvents,
  RequestChatOptions,
  SendOptions,
} from './request-types.js';
import type { TokenSource } from './stream.js';
import type {
  Inbox,
  MessageDeletedEvent,
  ReceiptEvent,
  RequestException,
  RequestMessage,
  RequestUpdatedEvent,
  RoomHistory,
  TypingEvent,
} from './types.js';

export type {
  ReceiptResult,
  RequestChatEvents,
  RequestChatOptions,
  SendOptions,
} from './request-types.js';

interface Room {
  requestId: string;
  /** Joined on the current connection. */
  joined: boolean;
  /** A join is under way on the current connection. */
  joining: boolean;
  /** Joined at least once: a later join is a re-join. */
  everJoined: boolean;
  messages: RoomMessages;
  outbox: Outbox;
  /** `join()` callers waiting for the first history. */
  waiters: Array<{ resolve: (h: RoomHistory) => void; reject: (e: ChatClientError) => void }>;
  /** Ids waiting to be acknowledged as delivered. */
  deliver: Set<string>;
  typingAt: number;
  /**
   * Live messages held back while a re-join catches up, so the missed ones go
   * first; kept across a re-join the connection cut short, for the next one.
   */
  live: RequestMessage[] | undefined;
  /** The oldest message `loadHistory` returned: paging goes on from there. */
  pagedTo: RequestMessage | undefined;
}

/** The server forwards `typing` at most this often (protocol section 8). */
const TYPING_EVERY_MS = 2_000;
/**
 * A connection that lasts this long resets the reconnect backoff; one that
 * drops sooner (a server that accepts and then drops, a packet it closes the
 * connection for) counts as a failed attempt.
 */
const STABLE_MS = 5_000;
/** Ids per receipt event. */
const RECEIPT_BATCH = 100;

export class RequestChat extends Emitter<RequestChatEvents> {
  private readonly rooms = new Map<string, Room>();
  private readonly seen: BoundedSet<string>;
  private token: TokenSource;
  private closed = false;
  private readonly ackTimeoutMs: number;
  private readonly maxSendAttempts: number;
  private readonly sendTimeoutMs: number;
  private readonly budget: OutboxBudget;
  private readonly maxRooms: number;
  private readonly historySize: number;
  private readonly catchUpPages: number;
  private readonly autoDeliver: boolean;
  private readonly maxPacketBytes: number;
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private readonly backoff: BackoffOptions;
  private readonly maxAttempts: number;
  /** Reconnect attempts since the last connection that lasted STABLE_MS. */
  private attempt = 0;
  private connectedAt = 0;
  /** Counts connections: a join that awaited across a drop and a reconnect sees it changed. */
  private connection = 0;
  /** A reconnect is scheduled. */
  private retrying = false;
  private readonly signal: AbortSignal | undefined;
  private readonly onAbort = () => this.close();
  /** The `roomHistory` that precedes a `joinRoom` acknowledgement, per room. */
  private readonly lastPage = new WeakMap<Room, { messages: RequestMessage[]; hasMore: boolean }>();

  private constructor(
    readonly socket: Socket,
    opts: RequestChatOptions,
  ) {
    super();
    this.token = opts.token;
    this.seen = new BoundedSet(opts.dedupeSize ?? 5000);
    this.ackTimeoutMs = opts.ackTimeoutMs ?? 5_000;
    this.maxSendAttempts = opts.maxSendAttempts ?? 10;
    this.sendTimeoutMs = opts.sendTimeoutMs ?? 120_000;
    this.budget = new OutboxBudget(opts.outboxSize ?? 100);
    this.maxRooms = opts.maxRooms ?? 100;
    this.historySize = opts.historySize ?? 500;
    this.catchUpPages = opts.catchUpPages ?? 5;
    this.autoDeliver = opts.autoDeliver ?? true;
    this.maxPacketBytes = opts.maxPacketBytes ?? 65_536;
    this.backoff = { ...opts.reconnect };
    this.maxAttempts = opts.reconnect?.maxAttempts ?? Number.POSITIVE_INFINITY;
    this.signal = opts.signal;
    this.signal?.addEventListener('abort', this.onAbort);
    this.listen();
  }

  /**
   * Connects to the charla at `url` and resolves once connected. Rejects with
   * the server's refusal (`unauthorized`, `token_expired`), with `timeout`
   * after `reconnect.maxAttempts`, or with `closed` when `signal` aborts; a
   * server that is not up yet is retried with backoff meanwhile.
   */
  static async connect(url: string, opts: RequestChatOptions): Promise<RequestChat> {
    const holder: { chat?: RequestChat } = {};
    const socket = await openSocket(url, opts, () => holder.chat?.token ?? opts.token);
    const chat = new RequestChat(socket, opts);
    holder.chat = chat;
    try {
      await firstConnect(chat, opts.signal);
    } catch (err) {
      chat.close();
      throw err;
    }
    return chat;
  }

  get connected(): boolean {
    return this.socket.connected;
  }

  /**
   * Uses `token` for every later connection. A live connection keeps the
   * identity it was opened with (Socket.IO authenticates a connection once);
   * when the last token was refused, or reconnecting gave up, connects again
   * at once.
   */
  auth(token: TokenSource): void {
    this.token = token;
    if (this.closed || this.socket.active) return;
    this.attempt = 0;
    this.socket.connect();
  }

  /**
   * Joins the room of `requestId` (now, and again after every reconnect) and
   * resolves with its history. Rejects with the server's refusal
   * (`forbidden`, `not_found`), or with `timeout` when not joined within
   * `sendTimeoutMs` (offline time included), and then forgets the room.
   */
  join(requestId: string): Promise<RoomHistory> {
    if (this.closed) return Promise.reject(new ChatClientError('closed'));
    const id = requestId.toLowerCase();
    let room = this.rooms.get(id);
    if (!room) {
      if (this.rooms.size >= this.maxRooms) {
        return Promise.reject(
          new ChatClientError('queue_full', `At most ${this.maxRooms} rooms at once.`),
        );
      }
      room = this.newRoom(id);
      this.rooms.set(id, room);
    } else if (room.joined) {
      return Promise.resolve(this.historyOf(room, [], false));
    }
    const r = room;
    const joined = new Promise<RoomHistory>((resolve, reject) => {
      // Settled by the join or by the timer, whichever comes first; the other is then cancelled.
      const waiter = {
        resolve: (h: RoomHistory) => {
          this.cancel(timer);
          resolve(h);
        },
        reject: (e: ChatClientError) => {
          this.cancel(timer);
          reject(e);
        },
      };
      r.waiters.push(waiter);
      const timer = this.later(this.sendTimeoutMs, () => {
        const i = r.waiters.indexOf(waiter);
        if (i === -1) return;
        r.waiters.splice(i, 1);
        const err = new ChatClientError('timeout', 'The room was not joined in time.', {
          event: 'joinRoom',
        });
        if (!r.everJoined && r.waiters.length === 0) this.forget(r, err);
        reject(err);
      });
    });
    void this.joinRoom(r);
    return joined;
  }

  /** Leaves the room; messages still waiting for it are rejected with `not_joined`. */
  async leave(requestId: string): Promise<void> {
    const room = this.rooms.get(requestId.toLowerCase());
    if (!room) return;
    this.forget(room, new ChatClientError('not_joined', 'The room was left.'));
    if (this.socket.connected) {
      await this.ask('leaveRoom', { requestId: room.requestId }).catch(() => undefined);
    }
  }

  /** The messages this client holds for a joined room, oldest first. */
  messages(requestId: string): RequestMessage[] {
    return this.rooms.get(requestId.toLowerCase())?.messages.all() ?? [];
  }

  /**
   * Sends a message and resolves with it as stored once the server
   * acknowledges it. Retried with the same `clientMessageId` across timeouts
   * and reconnects; messages of one room leave in the order they were sent.
   */
  send(requestId: string, text: string, opts: SendOptions = {}): Promise<RequestMessage> {
    if (this.closed) return Promise.reject(new ChatClientError('closed'));
    const room = this.rooms.get(requestId.toLowerCase());
    if (!room) {
      return Promise.reject(new ChatClientError('not_joined', 'Join the room before sending.'));
    }
    const payload: MessagePayload = {
      requestId: room.requestId,
      message: text,
      clientMessageId: opts.clientMessageId ?? randomId(),
    };
    if (opts.attachments) payload.attachments = opts.attachments;
    try {
      return room.outbox.add(payload);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Messages waiting for an acknowledgement, over every room. */
  get pending(): number {
    return this.budget.queued;
  }

  /** Records "delivered" for messages of others (done automatically unless `autoDeliver: false`). */
  markDelivered(requestId: string, messageIds: string[]): Promise<ReceiptResult> {
    return this.receipt('ackMessages', requestId, messageIds);
  }

  /** Records "read" (and delivered) for messages of others. */
  markRead(requestId: string, messageIds: string[]): Promise<ReceiptResult> {
    return this.receipt('readMessages', requestId, messageIds);
  }

  /** Tells the room this user is typing; sent at most once per 2 s per room. */
  typing(requestId: string): void {
    const room = this.rooms.get(requestId.toLowerCase());
    if (!room?.joined || !this.socket.connected) return;
    const now = Date.now();
    if (now - room.typingAt < TYPING_EVERY_MS) return;
    room.typingAt = now;
    this.socket.emit('typing', { requestId: room.requestId });
  }

  /** Edits one of this user's messages (within the server's edit window). */
  async editMessage(requestId: string, messageId: string, text: string): Promise<RequestMessage> {
    const a = await this.request('editMessage', { requestId, messageId, message: text });
    const message = a.message as RequestMessage;
    this.roomOf(message)?.messages.update(message);
    return message;
  }

  /** Deletes one of this user's messages (within the server's edit window). */
  async deleteMessage(requestId: string, messageId: string): Promise<void> {
    const a = await this.request('deleteMessage', { requestId, messageId });
    const room = this.rooms.get(requestId.toLowerCase());
    if (typeof a.message === 'object' && a.message !== null) {
      room?.messages.update(a.message as RequestMessage);
    }
    room?.messages.removed({
      requestId: room.requestId,
      messageId: messageId.toLowerCase(),
      deletedAt: typeof a.deletedAt === 'string' ? a.deletedAt : new Date().toISOString(),
    });
  }

  /** The inbox: this user's requests, most recent activity first. */
  async listRequests(opts: { before?: string; limit?: number } = {}): Promise<Inbox> {
    const a = await this.request('listRequests', opts);
    return {
      requests: Array.isArray(a.requests) ? (a.requests as Inbox['requests']) : [],
      hasMore: a.hasMore === true,
    };
  }

  /**
   * Older messages of a joined room, oldest first: without `before`, the page
   * before the oldest one held or returned so far, so each call goes further
   * back. Merged into what the client holds while it holds fewer than
   * `historySize` (the newest are kept).
   */
  async loadHistory(
    requestId: string,
    opts: { before?: string; limit?: number } = {},
  ): Promise<{ messages: RequestMessage[]; hasMore: boolean }> {
    const room = this.rooms.get(requestId.toLowerCase());
    const before = opts.before ?? (room && this.pageFrom(room)?._id);
    const a = await this.request('loadHistory', {
      requestId,
      ...(before ? { before } : {}),
      ...(opts.limit ? { limit: opts.limit } : {}),
    });
    const messages = Array.isArray(a.messages) ? (a.messages as RequestMessage[]) : [];
    const hasMore = a.hasMore === true;
    if (room) {
      const oldest = messages[0];
      if (oldest && (!room.pagedTo || byTime(oldest, room.pagedTo) < 0)) room.pagedTo = oldest;
      room.messages.merge(messages);
      if (before === undefined || before === room.messages.oldest()?._id) {
        room.messages.hasMore = hasMore;
      }
    }
    return { messages, hasMore };
  }

  /** Disconnects for good; waiting sends and joins are rejected with `closed`. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const room of [...this.rooms.values()]) {
      this.forget(room, new ChatClientError('closed', 'The client was closed.'));
    }
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.signal?.removeEventListener('abort', this.onAbort);
    this.socket.close();
  }

  private listen(): void {
    const s = this.socket;
    s.on('connect', () => {
      this.connection++;
      this.connectedAt = Date.now();
      this.emit('connect');
      for (const room of this.rooms.values()) void this.joinRoom(room);
    });
    s.on('disconnect', (reason) => {
      for (const room of this.rooms.values()) {
        room.joined = false;
        room.joining = false;
      }
      this.emit('disconnect', reason);
      if (reason === 'io client disconnect') return;
      if (Date.now() - this.connectedAt >= STABLE_MS) this.attempt = 0;
      this.reconnect();
    });
    s.on('connect_error', (err) => {
      // `active` is false when the server refused the handshake: retrying the same token cannot help.
      if (s.active) {
        this.reconnect();
        return;
      }
      this.emit('error', new ChatClientError(err.message || 'unauthorized', err.message));
    });
    s.on('message', (m: RequestMessage) => this.incoming(m));
    s.on('messagesDelivered', (e: ReceiptEvent) => {
      this.roomOf(e)?.messages.applyReceipts(e, 'deliveredTo');
      this.emit('messagesDelivered', e);
    });
    s.on('messageReads', (e: ReceiptEvent) => {
      const messages = this.roomOf(e)?.messages;
      messages?.applyReceipts(e, 'readBy');
      messages?.applyReceipts(e, 'deliveredTo');
      this.emit('messageReads', e);
    });
    s.on('messageUpdated', (m: RequestMessage) => {
      this.roomOf(m)?.messages.update(m);
      this.emit('messageUpdated', m);
    });
    s.on('messageDeleted', (e: MessageDeletedEvent) => {
      this.roomOf(e)?.messages.removed(e);
      this.emit('messageDeleted', e);
    });
    s.on('userTyping', (e: TypingEvent) => this.emit('userTyping', e));
    s.on('requestUpdated', (e: RequestUpdatedEvent) => this.emit('requestUpdated', e));
    s.on('exception', (e: RequestException) => this.emit('exception', e));
    s.on(
      'roomHistory',
      (page: { requestId: string; messages: RequestMessage[]; hasMore: boolean }) => {
        const room = this.rooms.get(String(page?.requestId));
        if (room) this.lastPage.set(room, page);
      },
    );
  }

  /**
   * Connects again after the backoff (doubling from `initialDelayMs`, reset
   * only by a connection that lasts STABLE_MS), unless it was closed; after
   * `reconnect.maxAttempts` in a row, gives up with an `error` (`timeout`)
   * and leaves the socket inactive, so `auth()` starts again.
   */
  private reconnect(): void {
    if (this.closed || this.retrying) return;
    if (this.attempt >= this.maxAttempts) {
      this.socket.disconnect();
      this.emit(
        'error',
        new ChatClientError('timeout', 'Gave up reconnecting (reconnect.maxAttempts).'),
      );
      return;
    }
    const delayMs = backoffDelay(this.attempt, this.backoff);
    this.attempt++;
    this.retrying = true;
    this.emit('reconnecting', { attempt: this.attempt, delayMs });
    this.later(delayMs, () => {
      this.retrying = false;
      if (!this.socket.connected) this.socket.connect();
    });
  }

  /**
   * Joins (or re-joins) `room` on the current connection, then sends what
   * waits for it. During a re-join, live messages of the room wait (at most
   * `historySize`; later ones are emitted at once) until the missed ones are
   * emitted. A re-join the connection cuts short changes nothing and emits
   * nothing: the next connection's re-join starts again from what was held.
   */
  private async joinRoom(room: Room): Promise<void> {
    if (room.joined || room.joining || !this.socket.connected || this.closed) return;
    room.joining = true;
    if (room.everJoined) room.live ??= [];
    const connection = this.connection;
    // Still this room's join: not closed, not left, and on the same connection.
    const current = () =>
      !this.closed &&
      this.rooms.get(room.requestId) === room &&
      this.connection === connection &&
      this.socket.connected;
    for (let attempt = 0; ; attempt++) {
      let answer: Answer | undefined;
      this.lastPage.delete(room);
      try {
        answer = await this.ask('joinRoom', { requestId: room.requestId });
      } catch {
        // No answer: the connection dropped (the next `connect` joins again) or the server is slow.
      }
      if (!current()) return;
      if (answer === undefined) {
        if (attempt + 1 < this.maxSendAttempts) continue;
        room.joining = false;
        this.failRoom(room, new ChatClientError('timeout', 'joinRoom was not acknowledged.'));
        return;
      }
      if (answer.ok === true) break;
      const err = answerError(answer, 'joinRoom');
      if (err.code === 'rate_limited' && attempt + 1 < this.maxSendAttempts) {
        await this.wait(err.retryAfterMs ?? backoffDelay(attempt));
        if (!current()) return;
        continue;
      }
      room.joining = false;
      this.failRoom(room, err);
      return;
    }
    const rejoined = room.everJoined;
    const page = this.lastPage.get(room) ?? { messages: [], hasMore: false };
    this.lastPage.delete(room);
    const held = room.messages.ids();
    let older: RequestMessage[] = [];
    let gap = false;
    if (rejoined && held.size > 0 && page.hasMore) {
      const ask: Ask = (event, payload) => this.ask(event, payload);
      const missed = await catchUp(ask, room.requestId, page, held, this.catchUpPages);
      // Closed, left, or cut short by a drop: what is held stays as it was for the next re-join.
      if (!current()) return;
      older = missed.older;
      gap = missed.gap;
    }
    room.joining = false;
    room.joined = true;
    room.everJoined = true;
    const changes: HistoryChanges = { edited: [], deleted: [] };
    const added = room.messages.merge(older.concat(page.messages), changes);
    if (gap) {
      // What was held before no longer meets what came after: drop it, so
      // what is held has no hole and `loadHistory` pages back from here.
      room.messages.drop(held);
      room.pagedTo = undefined;
    } else if (!rejoined || held.size === 0) {
      room.messages.hasMore = page.hasMore;
    }
    // A message deleted before this client saw it is held, not emitted, nor in `added`.
    const shown = added.filter((m) => !m.deletedAt);
    const history = this.historyOf(room, shown, rejoined, gap);
    const waiters = room.waiters;
    room.waiters = [];
    for (const w of waiters) w.resolve(history);
    this.emit('history', history);
    if (rejoined) {
      for (const m of shown) this.emit('message', m);
      for (const m of changes.edited) this.emit('messageUpdated', m);
      for (const m of changes.deleted) {
        this.emit('messageDeleted', {
          requestId: room.requestId,
          messageId: m._id,
          deletedAt: m.deletedAt as string,
        });
      }
      this.queueDelivered(room, shown);
    }
    // The live messages held meanwhile, after the missed ones (if still in this room, on this connection).
    const live = room.live ?? [];
    room.live = undefined;
    for (const m of live) {
      if (!current()) break;
      this.incoming(m);
    }
    if (current()) room.outbox.pump();
  }

  private failRoom(room: Room, err: ChatClientError): void {
    const rejoin = room.everJoined;
    this.forget(room, err);
    if (rejoin) this.emit('error', err);
  }

  /** Drops a room: its joins and sends are rejected with `err`. */
  private forget(room: Room, err: ChatClientError): void {
    if (this.rooms.get(room.requestId) === room) this.rooms.delete(room.requestId);
    room.joined = false;
    room.live = undefined;
    for (const w of room.waiters) w.reject(err);
    room.waiters = [];
    room.outbox.rejectAll(err);
  }

  private incoming(m: RequestMessage): void {
    if (typeof m?._id !== 'string') return;
    const room = this.rooms.get(m.requestId);
    if (room?.live && room.live.length < this.historySize) {
      room.live.push(m);
      return;
    }
    if (!this.seen.add(m._id)) return;
    if (room) {
      room.messages.merge([m]);
      this.queueDelivered(room, [m]);
    }
    this.emit('message', m);
  }

  /** Where `loadHistory` goes on from: the older of the oldest held and the oldest it returned. */
  private pageFrom(room: Room): RequestMessage | undefined {
    const held = room.messages.oldest();
    if (!held || !room.pagedTo) return held ?? room.pagedTo;
    return byTime(room.pagedTo, held) < 0 ? room.pagedTo : held;
  }

  /** The room an event names, if this client is in it. */
  private roomOf(e: { requestId?: unknown } | null | undefined): Room | undefined {
    return this.rooms.get(String(e?.requestId));
  }

  private newRoom(requestId: string): Room {
    const room: Room = {
      requestId,
      joined: false,
      joining: false,
      everJoined: false,
      messages: new RoomMessages(this.historySize, this.seen),
      outbox: new Outbox(
        {
          canSend: () => room.joined && this.socket.connected && !this.closed,
          connected: () => this.socket.connected,
          ask: (event, payload) => this.ask(event, payload),
          stored: (message) => room.messages.merge([message]),
          rejoin: () => {
            room.joined = false;
            void this.joinRoom(room);
          },
          later: (ms, fn) => {
            this.later(ms, fn);
          },
        },
        {
          budget: this.budget,
          maxAttempts: this.maxSendAttempts,
          timeoutMs: this.sendTimeoutMs,
          maxPacketBytes: this.maxPacketBytes,
        },
      ),
      waiters: [],
      deliver: new Set(),
      typingAt: 0,
      live: undefined,
      pagedTo: undefined,
    };
    return room;
  }

  private queueDelivered(room: Room, messages: RequestMessage[]): void {
    if (!this.autoDeliver || messages.length === 0) return;
    const first = room.deliver.size === 0;
    for (const m of messages) room.deliver.add(m._id);
    if (!first) return;
    // One receipt event for whatever arrives in the same turn.
    this.later(0, () => {
      const ids = [...room.deliver];
      room.deliver.clear();
      if (!room.joined || !this.socket.connected) return;
      for (let i = 0; i < ids.length; i += RECEIPT_BATCH) {
        this.receipt('ackMessages', room.requestId, ids.slice(i, i + RECEIPT_BATCH)).catch(
          () => undefined,
        );
      }
    });
  }

  private async receipt(
    event: 'ackMessages' | 'readMessages',
    requestId: string,
    messageIds: string[],
  ): Promise<ReceiptResult> {
    const a = await this.request(event, { requestId, messages: messageIds });
    return {
      requestId: requestId.toLowerCase(),
      messages: Array.isArray(a.messages) ? (a.messages as string[]) : [],
      at: typeof a.at === 'string' ? a.at : '',
    };
  }

  /** One event with an acknowledgement; the refusal becomes a ChatClientError. */
  private async request(event: string, payload: object): Promise<Answer> {
    if (this.closed) throw new ChatClientError('closed');
    let answer: Answer;
    try {
      answer = await this.ask(event, payload);
    } catch (err) {
      if (err instanceof ChatClientError) throw err;
      // The acknowledgement timed out, or the connection dropped while waiting for it.
      throw this.socket.connected
        ? new ChatClientError('timeout', `"${event}" was not acknowledged in time.`, { event })
        : new ChatClientError('not_connected', `The connection dropped during "${event}".`, {
            event,
          });
    }
    if (answer.ok !== true) throw answerError(answer, event);
    return answer;
  }

  private ask(event: string, payload: object): Promise<Answer> {
    if (!this.socket.connected) {
      return Promise.reject(new ChatClientError('not_connected', 'Not connected.', { event }));
    }
    return this.socket.timeout(this.ackTimeoutMs).emitWithAck(event, payload) as Promise<Answer>;
  }

  private historyOf(
    room: Room,
    added: RequestMessage[],
    rejoined: boolean,
    gap = false,
  ): RoomHistory {
    return {
      requestId: room.requestId,
      messages: room.messages.all(),
      hasMore: room.messages.hasMore,
      added,
      rejoined,
      gap,
    };
  }

  private later(ms: number, fn: () => void): ReturnType<typeof setTimeout> {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  private cancel(t: ReturnType<typeof setTimeout>): void {
    clearTimeout(t);
    this.timers.delete(t);
  }

  private wait(ms: number): Promise<void> {
    return new Promise((resolve) => this.later(ms, resolve));
  }
}
