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
 * leave once, after the connection is authenticated again; a server that goes
 * silent is noticed (its pings stop) and left for a new connection.
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

/**
 * A WebSocket constructor: the browser's, or `ws`'s `WebSocket` in Node. It
 * is given no subprotocols (`[]`) and `ws`'s options (`maxPayload`), which a
 * browser and Node's built-in `WebSocket` ignore.
 */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { maxPayload?: number },
) => object;

/**
 * `ws`'s events beyond the WHATWG ones: its pings are visible only through
 * them, and `terminate()` drops a socket whose peer no longer answers.
 */
interface PingEvents {
  on(event: 'ping', listener: () => void): unknown;
  terminate(): void;
}

/**
 * A token, or a function that returns a fresh one: called on every
 * (re)connect, and when the server says the token expired on an open
 * connection (the stream chat then signs in again by itself).
 */
export type TokenSource = string | (() => string | Promise<string>);

const OPEN = 1;
const CLOSED = 3;
/** The server says the stream does not exist or has ended: reconnecting cannot help. */
const TERMINAL_CLOSE_CODES = new Set([4404, 4410]);
const TERMINAL_ERRORS = new Set(['stream_not_found', 'stream_ended']);
/** A connection that stayed open this long was a success: the backoff starts again. */
const STABLE_MS = 5_000;
/** How long `close()` waits for the server's closing handshake before dropping the socket. */
const CLOSE_GRACE_MS = 1_000;

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
  /**
   * How long the server may stay silent (no frame, no ping) before the
   * connection is taken for dead and replaced, in ms; 0: never. It covers
   * the opening handshake too. Default 60 000: charla pings every 25 s
   * (`PING_INTERVAL_SECONDS`). Only with the `ws` package, the one socket
   * that shows pings: browsers and Node's built-in `WebSocket` hide them, so
   * there it is off.
   */
  idleTimeoutMs?: number;
  /**
   * The largest frame accepted from the server, in bytes (`ws`'s
   * `maxPayload`); a larger one closes the connection. Default 4 MiB:
   * a `history` frame of HISTORY_MAX_PAGE (500) chats of
   * STREAM_MESSAGE_MAX_CHARS (500) weighs up to about 2 MB. Only with the
   * `ws` package: browsers and Node's built-in `WebSocket` ignore it.
   */
  maxPayload?: number;
  /**
   * How long a call of the token function may take, in ms; 0: no limit.
   * One that takes longer counts as failed: the connection stays anonymous
   * and the function is asked again after a backoff. Default 30 000.
   */
  tokenTimeoutMs?: number;
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
  private readonly idleTimeoutMs: number;
  private readonly maxPayload: number;
  private readonly tokenTimeoutMs: number;
  private ws: WebSocketLike | undefined;
  private state: State = 'connecting';
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** When the current connection opened: one that stays up `STABLE_MS` resets the backoff. */
  private openedAt: number | undefined;
  /** Fires when the server has been silent for `idleTimeoutMs`. */
  private idleTimer: ReturnType<typeof setTimeout> | undefined;
  /** Failed calls of the token function in a row, and the timer of the next one. */
  private tokenAttempt = 0;
  private tokenTimer: ReturnType<typeof setTimeout> | undefined;
  /** The server's first `auth` frame on this connection has arrived. */
  private greeted = false;
  /** `auth` frames sent on this connection whose answer has not arrived. */
  private authPending = 0;
  /**
   * Bumped by every call of the token function, `auth()` and a new
   * connection: a token fetched under an older number is dropped, so a call
   * that never settles holds nothing up once it is superseded.
   */
  private tokenSeq = 0;
  /** The token function's current call has not answered yet. */
  private fetching = false;
  /** Ends the token function's current call after `tokenTimeoutMs`. */
  private fetchTimer: ReturnType<typeof setTimeout> | undefined;
  /** The current connection follows a joined one; `since` is the chat id it resumes after. */
  private resuming = false;
  private since: string | undefined;
  /** A `history` frame has arrived on some connection: the later ones resume, since or not. */
  private joined = false;
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
    const idle = opts.idleTimeoutMs ?? 60_000;
    // setTimeout takes at most 2^31 - 1 ms; past it, it would fire at once.
    this.idleTimeoutMs = idle > 0 ? Math.min(idle, 2 ** 31 - 1) : 0;
    this.maxPayload = opts.maxPayload ?? 4 * 1024 * 1024;
    const tokenTimeout = opts.tokenTimeoutMs ?? 30_000;
    this.tokenTimeoutMs = tokenTimeout > 0 ? Math.min(tokenTimeout, 2 ** 31 - 1) : 0;
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

  /**
   * Presents `token` now (when connected) and on every reconnect; a token
   * the token function is still fetching is dropped. `undefined` signs out:
   * the stream protocol has no frame for it, so a connection that is (or may
   * be about to be) authenticated is replaced by an anonymous one at once;
   * chats waiting in the outbox then leave anonymously, and the server
   * refuses them (`not_authenticated`).
   */
  auth(token: TokenSource | undefined): void {
    this.token = token;
    this.tokenAttempt = 0;
    clearTimeout(this.tokenTimer);
    this.tokenTimer = undefined;
    this.dropFetch();
    if (this.state !== 'open') return;
    if (token !== undefined) {
      void this.presentToken();
    } else if (this.authenticated || this.authPending > 0) {
      this.signOut();
    } else {
      this.settle();
    }
  }

  /**
   * Sends a chat. While the connection is down or its token unanswered, or,
   * with a token, not authenticated, it waits in the outbox; throws
   * `queue_full` when the outbox is full, and `closed` after `close()`.
   */
  send(message: string): void {
    if (this.state === 'closed') throw new ChatClientError('closed', 'The client is closed.');
    const frame = JSON.stringify({ type: 'chat', data: { message } });
    if (this.outbox.length === 0 && this.canChat()) {
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
    if (ws) closeSocket(ws);
  }

  private open(): void {
    this.state = 'connecting';
    this.greeted = false;
    this.expiredNotice = false;
    this.authPending = 0;
    this.dropFetch();
    this.authenticated = false;
    this.openedAt = undefined;
    this.since = this.lastChatId;
    this.resuming = this.joined || this.since !== undefined;
    const url =
      this.since === undefined
        ? this.endpoint
        : `${this.endpoint}?since=${encodeURIComponent(this.since)}`;
    let ws: WebSocketLike;
    try {
      // No subprotocols: `[]`, as a browser would send `undefined` as one.
      ws = new this.WS(url, [], { maxPayload: this.maxPayload }) as unknown as WebSocketLike;
    } catch {
      this.lost(1006, 'could not connect');
      return;
    }
    this.ws = ws;
    // The idle timer runs from now: a server that accepts and never upgrades is silent too.
    this.heard();
    ws.onopen = () => {
      this.state = 'open';
      this.openedAt = Date.now();
      this.heard();
      this.emit('open');
      if (this.token !== undefined && this.ws === ws) void this.presentToken();
    };
    ws.onmessage = (ev) => {
      this.heard();
      if (typeof ev.data === 'string') this.receive(ev.data);
    };
    if (hasPings(ws)) {
      ws.on('ping', () => {
        if (this.ws === ws) this.heard();
      });
    }
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
    this.dropFetch();
    if (!ws || source === undefined) return;
    let token = source;
    if (typeof source === 'function') {
      // A later call, `auth()` or connection bumps `tokenSeq`: this answer is
      // then stale (it could sign in the previous user) and is dropped.
      const seq = this.tokenSeq;
      this.fetching = true;
      try {
        token = await this.fetchToken(source);
      } catch (err) {
        if (seq !== this.tokenSeq) return;
        this.dropFetch();
        if (this.ws === ws) this.retryToken(ws, err);
        this.settle();
        return;
      }
      if (seq !== this.tokenSeq) return;
      this.dropFetch();
    }
    if (this.ws !== ws || ws.readyState !== OPEN) return;
    this.tokenAttempt = 0;
    this.authPending++;
    ws.send(JSON.stringify({ type: 'auth', data: { token } }));
  }

  /** Calls the token function, failing it after `tokenTimeoutMs`. */
  private fetchToken(source: () => string | Promise<string>): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      if (this.tokenTimeoutMs > 0) {
        const ms = this.tokenTimeoutMs;
        this.fetchTimer = setTimeout(() => reject(new Error(`no token after ${ms} ms`)), ms);
      }
      Promise.resolve().then(source).then(resolve, reject);
    });
  }

  /** Forgets the token function's current call: its answer, if any, is dropped. */
  private dropFetch(): void {
    this.tokenSeq++;
    this.fetching = false;
    clearTimeout(this.fetchTimer);
    this.fetchTimer = undefined;
  }

  /**
   * `auth(undefined)` on a connection signed in (or about to be): the
   * protocol cannot sign it out, so it is replaced by an anonymous one now,
   * with no backoff; it is no failure.
   */
  private signOut(): void {
    const ws = this.ws;
    this.ws = undefined;
    if (ws) closeSocket(ws);
    this.state = 'waiting';
    this.authenticated = false;
    this.clearConnectionTimers();
    this.openedAt = undefined;
    this.emit('close', { code: 1000, reason: 'signed out', willReconnect: true });
    // A listener may have called close().
    if (this.state === 'waiting') this.open();
  }

  /**
   * No token now: the connection stays anonymous (chats wait in the outbox)
   * and the token function is asked again after a backoff.
   */
  private retryToken(ws: WebSocketLike, cause: unknown): void {
    const detail = cause instanceof Error ? cause.message : String(cause);
    this.emit(
      'error',
      new ChatClientError('not_authenticated', `The token function failed: ${detail}`, {
        event: 'auth',
      }),
    );
    if (this.ws !== ws || this.tokenTimer !== undefined) return;
    const opts = this.reconnectOpts === false ? {} : this.reconnectOpts;
    const delayMs = backoffDelay(this.tokenAttempt++, opts);
    this.tokenTimer = setTimeout(() => {
      this.tokenTimer = undefined;
      if (this.ws === ws && this.state === 'open') void this.presentToken();
    }, delayMs);
  }

  /** The server spoke: the connection is alive for another `idleTimeoutMs`. */
  private heard(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    const ws = this.ws;
    if (!ws || this.idleTimeoutMs <= 0 || !hasPings(ws)) return;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      if (this.ws !== ws) return;
      // A dead peer never answers a closing handshake: the socket goes at once.
      this.ws = undefined;
      detach(ws);
      ws.terminate();
      this.lost(1006, this.state === 'open' ? 'server silent' : 'no handshake');
    }, this.idleTimeoutMs);
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
        // After a drop with no chat id to resume from, the server sends its
        // usual newest chats: any missed before them would go unannounced.
        const unanchored = this.resuming && this.since === undefined && all.length > 0;
        this.joined = true;
        this.emit('history', {
          messages: fresh,
          gap: data.gap === true || unanchored,
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
        if (
          err.code === 'token_expired' &&
          this.authPending === 0 &&
          !this.fetching &&
          this.greeted
        ) {
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
    return this.state === 'open' && this.greeted && this.authPending === 0 && !this.fetching;
  }

  /**
   * Once the auth state is known `ready()` resolves, and the outbox leaves
   * if chats may: with a token, only on an authenticated connection.
   */
  private settle(): void {
    if (!this.isSettled()) return;
    while (this.outbox.length > 0 && this.canChat()) {
      this.write(this.outbox.shift() as string);
    }
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.resolve();
  }

  private canWrite(): boolean {
    return this.isSettled() && this.ws?.readyState === OPEN;
  }

  /**
   * A chat written now would be taken as its sender's. Without a token it
   * goes anonymous, and the server's `not_authenticated` says so.
   */
  private canChat(): boolean {
    return this.canWrite() && (this.authenticated || this.token === undefined);
  }

  private write(frame: string): void {
    this.ws?.send(frame);
  }

  private lost(code: number, reason: string): void {
    if (this.state === 'closed') return;
    this.state = 'waiting';
    this.authenticated = false;
    this.clearConnectionTimers();
    // A connection that closes soon after its greeting is a failure too, or a
    // server that accepts and drops would be retried without backoff.
    if (this.openedAt !== undefined && Date.now() - this.openedAt >= STABLE_MS) this.attempt = 0;
    this.openedAt = undefined;
    const opts = this.reconnectOpts;
    const max = opts === false ? 0 : (opts.maxAttempts ?? Number.POSITIVE_INFINITY);
    if (this.terminal || TERMINAL_CLOSE_CODES.has(code) || this.attempt >= max) {
      this.stop({ code, reason, willReconnect: false });
      return;
    }
    this.emit('close', { code, reason, willReconnect: true });
    // A listener may have called close().
    if (this.state !== 'waiting') return;
    const delayMs = backoffDelay(this.attempt, opts === false ? {} : opts);
    this.attempt++;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.state === 'waiting') this.open();
    }, delayMs);
    this.emit('reconnecting', { attempt: this.attempt, delayMs });
  }

  private clearConnectionTimers(): void {
    clearTimeout(this.idleTimer);
    clearTimeout(this.tokenTimer);
    this.idleTimer = undefined;
    this.tokenTimer = undefined;
    this.tokenAttempt = 0;
    this.dropFetch();
  }

  private stop(event: StreamCloseEvent): void {
    this.state = 'closed';
    clearTimeout(this.timer);
    this.timer = undefined;
    this.clearConnectionTimers();
    this.outbox.length = 0;
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.reject(new ChatClientError('closed', 'The client stopped.'));
    this.emit('close', event);
  }
}

function hasPings(ws: WebSocketLike): ws is WebSocketLike & PingEvents {
  const w = ws as Partial<PingEvents>;
  return typeof w.on === 'function' && typeof w.terminate === 'function';
}

function detach(ws: WebSocketLike): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {};
}

/**
 * Closes a socket the client no longer listens to. A server that has stopped
 * reading never answers the closing handshake, and `ws` would keep the socket
 * (and Node) for 30 s: where it can, the socket is dropped after a grace.
 */
function closeSocket(ws: WebSocketLike): void {
  detach(ws);
  ws.close(1000);
  if (!hasPings(ws) || ws.readyState === CLOSED) return;
  const grace = setTimeout(() => ws.terminate(), CLOSE_GRACE_MS);
  ws.onclose = () => clearTimeout(grace);
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
