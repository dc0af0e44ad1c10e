/**
 * `StreamChat`: the live-stream chat (protocol sections 2 and 7) over a plain
 * WebSocket. Runs in browsers (the global `WebSocket`) and in Node (pass the
 * `ws` package's constructor as `WebSocket`); it imports nothing from Node.
 *
 * What it adds to a bare socket: automatic reconnect with exponential backoff
 * and jitter; after a reconnect the token is presented again and the
 * connection resumes with `?since=<last chat id>`, so a server that keeps
 * history sends what was missed in a `history` frame; chats are de-duplicated
 * by id; chats sent while the connection is down wait in a bounded outbox and
 * leave once, after the connection is authenticated again.
 *
 * Delivery of a chat is at most once: a chat is written to a socket once and
 * never again, because the stream protocol has no idempotency key and a
 * second copy could be stored twice. The sender sees its own chat come back.
 */
import { type BackoffOptions, BoundedSet, backoffDelay } from './bounded.js';
import { Emitter } from './emitter.js';
import { ChatClientError, isErrorPayload } from './errors.js';
import type {
  StreamChatMessage,
  StreamDelete,
  StreamHistory,
  StreamModeration,
  StreamModerationRequest,
  StreamState,
} from './types.js';

/** The part of the WHATWG WebSocket this client uses; `ws` and browsers both provide it. */
interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor: the browser's, or `ws`'s `WebSocket` in Node. */
export type WebSocketConstructor = new (url: string) => object;

/**
 * A token, or a function that returns a fresh one: called on every
 * (re)connect, and when the server says the token expired on an open
 * connection (the stream chat then signs in again by itself).
 */
export type TokenSource = string | (() => string | Promise<string>);

const OPEN = 1;
/** The server says the stream does not exist or has ended: reconnecting cannot help. */
const TERMINAL_CLOSE_CODES = new Set([4404, 4410]);
const TERMINAL_ERRORS = new Set(['stream_not_found', 'stream_ended']);

export interface StreamChatOptions {
  token?: TokenSource;
  /** The WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect backoff; `maxAttempts` consecutive failures end the client (default: never). */
  reconnect?: (BackoffOptions & { maxAttempts?: number }) | false;
  /** How many chat ids are remembered for de-duplication. Default 1000. */
  dedupeSize?: number;
  /** How many chats may wait while the connection is down. Default 100. */
  outboxSize?: number;
}

export interface StreamCloseEvent {
  code: number;
  reason: string;
  /** False when the client stops: `close()` was called, the stream is gone, or attempts ran out. */
  willReconnect: boolean;
}

export interface StreamChatEvents {
  /** The socket is open (the auth state follows in `auth`). */
  open: () => void;
  /** The server's answer to the connection's token: authenticated or anonymous. */
  auth: (authenticated: boolean) => void;
  /** A live chat, never one seen before on this client. */
  chat: (message: StreamChatMessage) => void;
  /** Chats on join, or those missed while disconnected (`resumed`), not seen before. */
  history: (history: StreamHistory) => void;
  stream: (state: StreamState) => void;
  delete: (event: StreamDelete) => void;
  moderation: (event: StreamModeration) => void;
  /** A server `error` frame. */
  error: (error: ChatClientError) => void;
  close: (event: StreamCloseEvent) => void;
  reconnecting: (info: { attempt: number; delayMs: number }) => void;
}

type State = 'connecting' | 'open' | 'waiting' | 'closed';

export class StreamChat extends Emitter<StreamChatEvents> {
  /** Id of the newest chat received: where a resumed connection starts. */
  lastChatId: string | undefined;
  /** Whether the current connection is authenticated (as last told by the server). */
  authenticated = false;

  private readonly endpoint: string;
  private readonly WS: WebSocketConstructor;
  private token: TokenSource | undefined;
  private readonly seen: BoundedSet<string>;
  private readonly outbox: string[] = [];
  private readonly outboxSize: number;
  private readonly reconnectOpts: (BackoffOptions & { maxAttempts?: number }) | false;
  private ws: WebSocketLike | undefined;
  private state: State = 'connecting';
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** The server's first `auth` frame on this connection has arrived. */
  private greeted = false;
  /** `auth` frames sent on this connection whose answer has not arrived. */
  private authPending = 0;
  /** The current connection asked to resume after a chat (`?since=`). */
  private resuming = false;
  /** The server refused the stream itself: no reconnect after this connection closes. */
  private terminal = false;
  /** The next `auth` frame is the server's notice of an expired token, not an answer. */
  private expiredNotice = false;
  private readyWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];

  private constructor(url: string, key: string, opts: StreamChatOptions) {
    super();
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new TypeError('No WebSocket here: pass the `ws` package as the WebSocket option.');
    }
    this.WS = WS;
    this.endpoint = streamEndpoint(url, key);
    this.token = opts.token;
    this.seen = new BoundedSet(opts.dedupeSize ?? 1000);
    this.outboxSize = opts.outboxSize ?? 100;
    this.reconnectOpts = opts.reconnect ?? {};
  }

  /**
   * Connects to stream `key` on the charla at `url` (`http(s)://` or
   * `ws(s)://`, the server's base URL). Returns at once; listen for events,
   * or await `ready()`.
   */
  static connect(url: string, key: string, opts: StreamChatOptions = {}): StreamChat {
    const chat = new StreamChat(url, key, opts);
    chat.open();
    return chat;
  }

  /**
   * Resolves once the connection is open and the server has answered its
   * token (or greeted an anonymous one); rejects if the client stops first.
   */
  ready(): Promise<void> {
    if (this.isSettled()) return Promise.resolve();
    if (this.state === 'closed') return Promise.reject(new ChatClientError('closed'));
    return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  /** Presents `token` now (when connected) and on every reconnect. */
  auth(token: TokenSource): void {
    this.token = token;
    if (this.state === 'open') void this.presentToken();
  }

  /**
   * Sends a chat. While the connection is down or not yet authenticated it
   * waits in the outbox; throws `queue_full` when the outbox is full, and
   * `closed` after `close()`.
   */
  send(message: string): void {
    if (this.state === 'closed') throw new ChatClientError('closed', 'The client is closed.');
    const frame = JSON.stringify({ type: 'chat', data: { message } });
    if (this.outbox.length === 0 && this.canWrite()) {
      this.write(frame);
      return;
    }
    if (this.outbox.length >= this.outboxSize) {
      throw new ChatClientError('queue_full', `At most ${this.outboxSize} chats may wait.`);
    }
    this.outbox.push(frame);
  }

  /**
   * Sends a moderator frame (protocol section 7): delete, timeout, ban,
   * unban, settings or pin. The server answers with the broadcast the action
   * causes, or an `error` (`forbidden` for anyone who is not a moderator).
   * Unlike a chat it never waits in the outbox: an action decided against what
   * was on screen may be stale by the time the connection is back. Throws
   * `not_connected` while the connection is down or its token unanswered,
   * and `closed` after `close()`.
   */
  moderate(request: StreamModerationRequest): void {
    if (this.state === 'closed') throw new ChatClientError('closed', 'The client is closed.');
    if (!this.canWrite()) {
      throw new ChatClientError('not_connected', 'Moderation needs an open connection.');
    }
    const { type, ...data } = request;
    this.write(JSON.stringify({ type, data }));
  }

  /** Chats waiting for the connection. */
  get pending(): number {
    return this.outbox.length;
  }

  get connected(): boolean {
    return this.state === 'open';
  }

  /** Closes for good: no reconnect; waiting chats are dropped. */
  close(): void {
    if (this.state === 'closed') return;
    this.stop({ code: 1000, reason: 'closed by client', willReconnect: false });
    const ws = this.ws;
    this.ws = undefined;
    if (ws) {
      detach(ws);
      ws.close(1000);
    }
  }

  private open(): void {
    this.state = 'connecting';
    this.greeted = false;
    this.expiredNotice = false;
    this.authPending = 0;
    this.authenticated = false;
    this.resuming = this.lastChatId !== undefined;
    const url =
      this.lastChatId === undefined
        ? this.endpoint
        : `${this.endpoint}?since=${encodeURIComponent(this.lastChatId)}`;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url) as unknown as WebSocketLike;
    } catch {
      this.lost(1006, 'could not connect');
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.state = 'open';
      this.emit('open');
      if (this.token !== undefined) void this.presentToken();
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') this.receive(ev.data);
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      this.lost(ev.code, ev.reason);
    };
  }

  private async presentToken(): Promise<void> {
    const ws = this.ws;
    const source = this.token;
    if (!ws || source === undefined) return;
    this.authPending++;
    let token: string;
    try {
      token = typeof source === 'function' ? await source() : source;
    } catch {
      if (this.ws !== ws) return;
      // No token now: the connection stays as it is, anonymous until a later auth().
      this.authPending--;
      this.settle();
      return;
    }
    if (this.ws !== ws || ws.readyState !== OPEN) return;
    ws.send(JSON.stringify({ type: 'auth', data: { token } }));
  }

  private receive(text: string): void {
    let frame: { type?: unknown; data?: unknown };
    try {
      frame = JSON.parse(text) as { type?: unknown; data?: unknown };
    } catch {
      return;
    }
    const data = frame.data as Record<string, unknown> | undefined;
    if (typeof data !== 'object' || data === null) return;
    switch (frame.type) {
      case 'auth': {
        this.authenticated = data.authenticated === true;
        if (!this.greeted) this.greeted = true;
        else if (this.expiredNotice) this.expiredNotice = false;
        else if (this.authPending > 0) this.authPending--;
        this.emit('auth', this.authenticated);
        this.settle();
        return;
      }
      case 'chat': {
        const m = data as unknown as StreamChatMessage;
        if (typeof m.id !== 'string' || !this.seen.add(m.id)) return;
        this.lastChatId = m.id;
        this.emit('chat', m);
        return;
      }
      case 'history': {
        const all = Array.isArray(data.messages) ? (data.messages as StreamChatMessage[]) : [];
        const fresh = all.filter((m) => typeof m?.id === 'string' && this.seen.add(m.id));
        const last = all.at(-1);
        if (last && typeof last.id === 'string') this.lastChatId = newest(this.lastChatId, last.id);
        this.emit('history', {
          messages: fresh,
          gap: data.gap === true,
          resumed: this.resuming,
        });
        return;
      }
      case 'stream':
        this.emit('stream', data as unknown as StreamState);
        return;
      case 'delete':
        this.emit('delete', data as unknown as StreamDelete);
        return;
      case 'moderation':
        this.emit('moderation', data as unknown as StreamModeration);
        return;
      case 'error': {
        if (!isErrorPayload(data)) return;
        const err = ChatClientError.fromPayload(data);
        if (TERMINAL_ERRORS.has(err.code)) this.terminal = true;
        this.emit('error', err);
        if (err.code === 'token_expired' && this.authPending === 0 && this.greeted) {
          // The token ran out on an open connection: the server's `auth: false`
          // that follows is its notice, not an answer. A token function is
          // asked for a fresh token at once.
          this.expiredNotice = true;
          if (typeof this.token === 'function') void this.presentToken();
        }
        return;
      }
    }
  }

  private isSettled(): boolean {
    return this.state === 'open' && this.greeted && this.authPending === 0;
  }

  /** Once the auth state is known, the outbox leaves and `ready()` resolves. */
  private settle(): void {
    if (!this.isSettled()) return;
    this.attempt = 0;
    while (this.outbox.length > 0 && this.canWrite()) {
      this.write(this.outbox.shift() as string);
    }
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.resolve();
  }

  private canWrite(): boolean {
    return this.isSettled() && this.ws?.readyState === OPEN;
  }

  private write(frame: string): void {
    this.ws?.send(frame);
  }

  private lost(code: number, reason: string): void {
    if (this.state === 'closed') return;
    this.state = 'waiting';
    this.authenticated = false;
    const opts = this.reconnectOpts;
    const max = opts === false ? 0 : (opts.maxAttempts ?? Number.POSITIVE_INFINITY);
    if (this.terminal || TERMINAL_CLOSE_CODES.has(code) || this.attempt >= max) {
      this.stop({ code, reason, willReconnect: false });
      return;
    }
    this.emit('close', { code, reason, willReconnect: true });
    const delayMs = backoffDelay(this.attempt, opts === false ? {} : opts);
    this.attempt++;
    this.emit('reconnecting', { attempt: this.attempt, delayMs });
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.state === 'waiting') this.open();
    }, delayMs);
  }

  private stop(event: StreamCloseEvent): void {
    this.state = 'closed';
    clearTimeout(this.timer);
    this.timer = undefined;
    this.outbox.length = 0;
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.reject(new ChatClientError('closed', 'The client stopped.'));
    this.emit('close', event);
  }
}

function detach(ws: WebSocketLike): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {};
}

/**
 * The later of two ObjectIds. Their first 8 hex digits are seconds, so a
 * plain comparison of equal-length hex strings orders them by time.
 */
function newest(a: string | undefined, b: string): string {
  return a === undefined || b.toLowerCase() > a.toLowerCase() ? b : a;
}

/** `ws(s)://host/ws/streams/{key}/` from the server's base URL. */
export function streamEndpoint(base: string, key: string): string {
  const u = new URL(base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  const path = u.pathname.replace(/\/+$/, '');
  return `${u.protocol}//${u.host}${path}/ws/streams/${encodeURIComponent(key)}/`;
}
