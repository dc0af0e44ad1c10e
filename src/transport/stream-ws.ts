/**
 * The live-stream WebSocket endpoint `/ws/streams/{key}/` (protocol section 2):
 * connection state, auth, flood and backpressure, on the lean RFC 6455 layer
 * of `websocket.ts`. What a chat means and who receives it is the core's
 * (`core/streams.ts`).
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Limits } from '../config.js';
import { asChatError, ChatError, CloseCode } from '../core/errors.js';
import { bearerToken, type Identity, type TokenVerifier } from '../core/identity.js';
import { isObjectId, normalizeId } from '../core/ids.js';
import { FloodCounter } from '../core/limits.js';
import type { StreamMessage } from '../core/messages.js';
import type {
  ModerationRequest,
  StreamBroadcast,
  StreamInfo,
  StreamStatus,
  Streams,
  StreamViewer,
} from '../core/streams.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import {
  chatData,
  claimedType,
  decodeStreamFrame,
  encodeAuth,
  encodeBroadcast,
  encodeChat,
  encodeError,
  encodeHistory,
  encodeStreamInfo,
  type StreamClientFrame,
} from './stream-codec.js';
import { type FlushSlot, type StreamFlow, StreamFlusher } from './stream-flush.js';
import { type ReceiverLimits, WebSocketConnection } from './websocket.js';
import { abortHandshake, handshake, httpResponse, unguard } from './websocket-handshake.js';
import { frameText } from './websocket-sender.js';

const PATH = /^\/ws\/streams\/([^/?#]*)\/?$/;
/** setTimeout's ceiling; longer token lifetimes re-arm the timer. */
const MAX_TIMER_MS = 2_147_483_647;
/** How long a connection closed for a full send buffer may linger before it is cut. */
const SLOW_CLOSE_GRACE_MS = 1_000;
/** How long a refused connection (unknown or ended stream) may take to hear why. */
const REFUSAL_GRACE_MS = 2_000;

/**
 * The transport's frame: a complete, unmasked WebSocket text frame (RFC 6455
 * section 5.2), built once per chat and written as the same bytes to every viewer.
 */
export type StreamFrame = Buffer;

export { frameText };

export function encodeStreamFrame(message: StreamMessage): StreamFrame {
  return frameText(encodeChat(message));
}

export function encodeStreamBroadcast(broadcast: StreamBroadcast): StreamFrame {
  return frameText(encodeBroadcast(broadcast));
}

/** Room left in the send buffer next to a `history` frame (the frames around it). */
const HISTORY_HEADROOM_BYTES = 4096;

export interface StreamGatewayDeps {
  streams: Streams<StreamFrame>;
  verifier: TokenVerifier;
  limits: Limits;
  metrics: Metrics;
  log: Logger;
}

type ConnectAuth = { identity: Identity } | { error: ChatError } | null;

/** The token of an upgrade request: `Authorization: Bearer …`, else `?token=`. */
export function tokenOf(req: IncomingMessage): string | undefined {
  const bearer = bearerToken(req.headers.authorization);
  if (bearer !== undefined) return bearer;
  const q = req.url?.indexOf('?') ?? -1;
  if (q === -1 || req.url === undefined) return undefined;
  return new URLSearchParams(req.url.slice(q + 1)).get('token') ?? undefined;
}

/**
 * `?since=<chat id>` of a resuming viewer. A malformed value is passed on as
 * it is: it names no chat, so the viewer gets the usual history with a gap.
 */
export function sinceOf(req: IncomingMessage): string | undefined {
  const q = req.url?.indexOf('?') ?? -1;
  if (q === -1 || req.url === undefined) return undefined;
  const since = new URLSearchParams(req.url.slice(q + 1)).get('since') ?? undefined;
  return since !== undefined && isObjectId(since) ? normalizeId(since) : since;
}

export class StreamGateway {
  /** Every connection whose socket is not closed yet, closing ones included. */
  readonly connections = new Set<StreamConnection>();
  /** The decoder's limits, one object shared by every connection. */
  readonly receiverLimits: ReceiverLimits;
  /** Write coalescing of busy streams (`stream-flush.ts`). */
  readonly flusher: StreamFlusher;
  private corked: StreamConnection[] = [];
  /** Resolves `closeAll` once the last connection is gone. */
  private drained: (() => void) | undefined;
  private readonly heartbeat: NodeJS.Timeout;
  private closing = false;

  constructor(readonly deps: StreamGatewayDeps) {
    this.receiverLimits = {
      maxPayload: deps.limits.maxFrameBytes,
      maxFragments: deps.limits.maxFragments,
    };
    this.flusher = new StreamFlusher({
      flushMs: deps.limits.streamFlushMs,
      busyShare: deps.limits.streamFlushBusyShare,
    });
    this.heartbeat = setInterval(() => this.beat(), deps.limits.pingIntervalMs);
    this.heartbeat.unref();
  }

  /** The raw stream key when `url` is a stream endpoint, else undefined. */
  match(url: string | undefined): string | undefined {
    if (!url) return undefined;
    const q = url.indexOf('?');
    const m = PATH.exec(q === -1 ? url : url.slice(0, q));
    if (!m) return undefined;
    try {
      return decodeURIComponent(m[1] as string);
    } catch {
      return m[1];
    }
  }

  /**
   * Completes or refuses an upgrade to `/ws/streams/{key}/`. The socket must
   * already be guarded (`websocket-handshake.ts`): the checks below wait on
   * storage and on the token, and the peer may reset meanwhile.
   */
  async handleUpgrade(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    key: string,
  ): Promise<void> {
    const { accept, response } = handshake(req);
    if (!accept) {
      abortHandshake(socket, response);
      return;
    }
    if (this.closing) {
      abortHandshake(socket, httpResponse('503 Service Unavailable'));
      return;
    }
    const token = tokenOf(req);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), this.deps.limits.handshakeTimeoutMs);
    });
    let checked: [StreamStatus, ConnectAuth] | undefined;
    try {
      checked = await Promise.race([
        Promise.all([
          this.deps.streams.status(key),
          token === undefined ? null : this.verify(token),
        ]),
        deadline,
      ]);
    } catch (err) {
      this.deps.log.error({ err }, 'stream upgrade failed');
    } finally {
      clearTimeout(timer);
    }
    // Gone during the checks: reset, or ended (its FIN came while only
    // `guard`'s listener was on it, so the connection would never hear it).
    if (socket.destroyed || !socket.writable || socket.readableEnded) {
      socket.destroy();
      return;
    }
    if (checked === undefined || this.closing) {
      abortHandshake(socket, httpResponse('503 Service Unavailable'));
      return;
    }
    socket.write(response);
    this.open(socket, head, key, checked[0], checked[1], sinceOf(req));
  }

  /**
   * Corks `conn`'s socket until the end of this event-loop turn, so every frame
   * written to it in this turn leaves in one write.
   */
  corkForTurn(conn: StreamConnection): void {
    conn.socket.cork();
    this.corked.push(conn);
    if (this.corked.length === 1) setImmediate(this.uncorkAll);
  }

  private readonly uncorkAll = (): void => {
    const corked = this.corked;
    this.corked = [];
    for (const conn of corked) conn.uncork();
  };

  /**
   * Refuses new upgrades, closes every connection with 1001 and resolves
   * when every socket is closed (those still open after `timeoutMs` are cut).
   */
  async closeAll(timeoutMs: number): Promise<void> {
    this.closing = true;
    clearInterval(this.heartbeat);
    if (this.connections.size === 0) return;
    const drained = new Promise<void>((resolve) => {
      this.drained = resolve;
    });
    for (const c of [...this.connections]) c.shutdown(timeoutMs);
    let timer: NodeJS.Timeout | undefined;
    const cut = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
    });
    await Promise.race([drained, cut]);
    clearTimeout(timer);
    for (const c of this.connections) c.socket.destroy();
    await drained;
  }

  /** Pings every open connection and drops those that stopped answering. */
  private beat(): void {
    const now = Date.now();
    for (const c of this.connections) {
      if (!c.heartbeat(now, this.deps.limits.pingIntervalMs)) {
        this.deps.metrics.disconnects.inc({ reason: 'heartbeat' });
      }
    }
  }

  private async verify(token: string): Promise<ConnectAuth> {
    try {
      return { identity: await this.deps.verifier.verify(token) };
    } catch (err) {
      return { error: asChatError(err) };
    }
  }

  private open(
    socket: Duplex,
    head: Buffer,
    key: string,
    status: StreamStatus,
    auth: ConnectAuth,
    since: string | undefined,
  ): void {
    if (status !== 'open') {
      const ended = status === 'ended';
      const err = new ChatError(ended ? 'stream_ended' : 'stream_not_found');
      this.deps.metrics.error(err.code);
      const refusal = new Refusal(socket, this.receiverLimits);
      unguard(socket);
      refusal.write(frameText(encodeError(err)));
      refusal.close(
        ended ? CloseCode.streamEnded : CloseCode.streamNotFound,
        err.code,
        REFUSAL_GRACE_MS,
      );
      return;
    }
    const conn = new StreamConnection(this, socket, key);
    unguard(socket);
    this.connections.add(conn);
    this.deps.metrics.connections.inc({ chat: 'stream' });
    if (auth && 'error' in auth) conn.sendError(auth.error);
    conn.setIdentity(auth && 'identity' in auth ? auth.identity : null);
    conn.sendText(encodeAuth(conn.identity !== null));
    // The `stream` and `history` frames follow, once the history is read.
    this.deps.streams.join(key, conn, since);
    if (head.length > 0) conn.read(head);
  }

  /** Called once per connection, when its socket is closed. */
  forget(conn: StreamConnection): void {
    if (!this.connections.delete(conn)) return;
    this.deps.streams.leave(conn.key, conn);
    this.deps.metrics.connections.dec({ chat: 'stream' });
    if (this.connections.size === 0) this.drained?.();
  }
}

/** A connection to a stream that cannot be watched: it only hears why, then closes. */
class Refusal extends WebSocketConnection {
  protected onText(): void {}
  protected onBinary(): void {}
  onFrame(): void {}
  protected onClosed(): void {}
  protected onSocketError(): void {}
}

/** One viewer connection. Methods, not closures, so the per-connection cost stays small. */
class StreamConnection extends WebSocketConnection implements StreamViewer<StreamFrame>, FlushSlot {
  identity: Identity | null = null;
  /** The stream's write coalescing; null when it is off (STREAM_FLUSH_MS=0). */
  private flow: StreamFlow | null;
  flushFrom = -1;
  flushTo = -1;
  flushOwn: Buffer[] | null = null;
  private expiry: NodeJS.Timeout | undefined;
  private readonly flood: FloodCounter;
  /**
   * Frames that arrived while an `auth` was being verified, handled in order
   * after it. Reading pauses meanwhile, so this holds at most one read's worth.
   */
  private backlog: string[] | null = null;
  private corked = false;
  /** The chat or moderation being handled; the next waits for it. */
  private work: Promise<void> = Promise.resolve();
  /** Frames in `work` not yet answered: an error found at once waits behind them. */
  private pending = 0;
  /** Bytes of shared frames queued while corked in the current turn. */
  private turnBytes = 0;

  constructor(
    private readonly gateway: StreamGateway,
    socket: Duplex,
    readonly key: string,
  ) {
    super(socket, gateway.receiverLimits);
    this.flood = new FloodCounter(gateway.deps.limits.floodLimit);
    this.flow = gateway.flusher.join(key);
  }

  /**
   * Writes the shared frame; false when the viewer was skipped. The socket
   * stays corked for the rest of this event-loop turn, so every frame of the
   * turn leaves in one write.
   */
  deliver(frame: StreamFrame): boolean {
    if (!this.admits(frame)) return false;
    if (this.flow) {
      this.flow.queue(this, frame);
      return true;
    }
    if (!this.corked) {
      this.corked = true;
      this.gateway.corkForTurn(this);
    }
    this.turnBytes += frame.length;
    this.socket.write(frame);
    return true;
  }

  uncork(): void {
    this.corked = false;
    this.turnBytes = 0;
    this.socket.uncork();
  }

  streamEnded(): void {
    this.sendError(new ChatError('stream_ended'));
    this.end(CloseCode.streamEnded, 'stream_ended');
  }

  /**
   * The `stream` and `history` frames. The history is cut to what fits the
   * send buffer, oldest chats first, with `gap` set: a joiner is never closed
   * for the size of its own history.
   */
  welcome(info: StreamInfo, history: StreamMessage[], gap: boolean): void {
    if (this.state !== 'open') return;
    this.sendText(encodeStreamInfo(info));
    const chats = history.map((m) => {
      const json = JSON.stringify(chatData(m));
      return { json, bytes: Buffer.byteLength(json) };
    });
    const budget =
      this.gateway.deps.limits.sendBufferMaxBytes -
      this.socket.writableLength -
      HISTORY_HEADROOM_BYTES;
    let bytes = 0;
    let first = chats.length;
    while (first > 0 && bytes + (chats[first - 1]?.bytes as number) + 1 <= budget) {
      first -= 1;
      bytes += (chats[first]?.bytes as number) + 1;
    }
    const kept = (first === 0 ? chats : chats.slice(first)).map((c) => c.json);
    this.sendText(encodeHistory(kept, gap || first > 0));
  }

  sendText(text: string): void {
    const bytes = frameText(text);
    if (!this.admits(bytes)) return;
    // Behind chats queued for this viewer, it waits for them and goes out in the
    // same write at the flow's next flush: its frames keep their order, and a
    // refused chat in a busy room costs no system call of its own.
    if (this.flow?.queueOwn(this, bytes)) return;
    this.socket.write(bytes);
  }

  /**
   * Whether `frame` may be queued: the connection is open, and what earlier
   * turns left unsent plus this frame stays within SEND_BUFFER_MAX_BYTES. A
   * viewer that would pass the bound is closed (1013) instead.
   *
   * The shared frames of the current turn (or of a busy stream's flush
   * interval, `stream-flush.ts`) are not counted: they say nothing about the
   * reader and cost this connection only a reference each (every viewer holds
   * the same bytes). Once written, whatever of them the reader has not taken
   * counts.
   */
  protected override admits(frame: Buffer): boolean {
    // A peer that hung up stays in the audience until its socket closes; writing
    // to it would only build a write-after-end error.
    if (this.state !== 'open' || !this.socket.writable) return false;
    // A flow's queued chats are the same shared buffers for every viewer, and
    // its socket is not corked: what the socket holds is what earlier writes left.
    const unread = this.socket.writableLength - (this.flow ? 0 : this.turnBytes);
    if (unread + frame.length <= this.gateway.deps.limits.sendBufferMaxBytes) return true;
    this.slowClose();
    return false;
  }

  sendError(err: ChatError): void {
    this.gateway.deps.metrics.error(err.code);
    this.sendText(encodeError(err));
  }

  setIdentity(identity: Identity | null): void {
    clearTimeout(this.expiry);
    this.expiry = undefined;
    this.identity = identity;
    if (identity?.expiresAt !== undefined && this.state === 'open') {
      this.armExpiry(identity.expiresAt);
    }
  }

  shutdown(graceMs: number): void {
    this.end(CloseCode.goingAway, 'server shutting down', graceMs);
  }

  onFrame(): void {
    if (!this.flood.hit(Date.now()) || this.state !== 'open') return;
    this.gateway.deps.metrics.disconnects.inc({ reason: 'flood' });
    this.end(CloseCode.policyViolation, 'flood');
  }

  protected onBinary(): void {
    this.answerInOrder(new ChatError('invalid_payload', 'Frames must be JSON text.'));
  }

  /** Sends `err` (and then `after`'s frame) after the answers of the frames that came before it. */
  private answerInOrder(err: ChatError, after?: () => void): void {
    const answer = () => {
      this.refused(err);
      if (after && this.state === 'open') after();
    };
    if (this.pending === 0) answer();
    else this.work = this.work.then(answer);
  }

  protected onText(text: string): void {
    if (this.backlog) this.backlog.push(text);
    else this.handle(text);
  }

  protected onClosed(): void {
    clearTimeout(this.expiry);
    this.expiry = undefined;
    this.backlog = null;
    this.flow?.release(this);
    this.flow = null;
    this.gateway.forget(this);
  }

  protected onSocketError(err: Error): void {
    this.gateway.deps.log.debug({ err: err.message, key: this.key }, 'stream socket error');
  }

  /**
   * Leaves the stream at once and starts the close handshake; the gateway
   * forgets the connection when its socket is closed.
   */
  private end(code: number, reason: string, graceMs?: number): void {
    if (this.state !== 'open') return;
    clearTimeout(this.expiry);
    this.expiry = undefined;
    this.gateway.deps.streams.leave(this.key, this);
    this.flow?.take(this);
    this.close(code, reason, graceMs);
  }

  private armExpiry(expiresAt: number): void {
    const delay = expiresAt - Date.now();
    this.expiry = setTimeout(onExpiry, Math.max(0, Math.min(delay, MAX_TIMER_MS)), this);
  }

  /** @internal the token's `exp` has passed, or a timer fired early. */
  expire(): void {
    const expiresAt = this.identity?.expiresAt;
    if (expiresAt === undefined || this.state !== 'open') return;
    if (expiresAt > Date.now()) {
      this.armExpiry(expiresAt);
      return;
    }
    this.setIdentity(null);
    this.sendError(new ChatError('token_expired'));
    this.sendText(encodeAuth(false));
  }

  private handle(text: string): void {
    let frame: StreamClientFrame;
    try {
      frame = decodeStreamFrame(text);
    } catch (err) {
      // Every `auth` is answered with `auth`: a malformed one leaves the connection anonymous.
      if (claimedType(text) !== 'auth') {
        this.answerInOrder(asChatError(err));
        return;
      }
      this.setIdentity(null);
      this.answerInOrder(asChatError(err), () => this.sendText(encodeAuth(false)));
      return;
    }
    if (frame.type === 'auth') {
      void this.authenticate(frame.data.token);
      return;
    }
    if (this.identity?.expiresAt !== undefined && this.identity.expiresAt <= Date.now()) {
      this.expire();
    }
    const identity = this.identity;
    const streams = this.gateway.deps.streams;
    // Frames of one connection are handled in the order they came (the flood limit bounds the chain).
    this.pending++;
    this.work = this.work.then(() =>
      (frame.type === 'chat'
        ? streams.post(this.key, identity, frame.data.message)
        : identity === null
          ? Promise.reject(new ChatError('forbidden', 'Only moderators may do this.'))
          : streams.moderate(this.key, identity, moderationOf(frame))
      ).then(this.answered, (err: unknown) => {
        this.answered();
        this.refused(err);
      }),
    );
  }

  private readonly answered = () => {
    this.pending--;
  };

  private refused(err: unknown): void {
    if (!(err instanceof ChatError)) {
      this.gateway.deps.log.error({ err, key: this.key }, 'stream frame failed');
    }
    if (this.state === 'open') this.sendError(asChatError(err));
  }

  /** Identity is always the last token presented; frames after it wait for the answer. */
  private async authenticate(token: string): Promise<void> {
    this.backlog = [];
    this.socket.pause();
    let identity: Identity | null = null;
    let error: ChatError | undefined;
    try {
      identity = await this.gateway.deps.verifier.verify(token);
    } catch (err) {
      error = asChatError(err);
    }
    // A connection that closed meanwhile keeps nothing: no identity, no timer.
    if (this.state !== 'open') return;
    this.setIdentity(identity);
    if (error) this.sendError(error);
    this.sendText(encodeAuth(identity !== null));
    const waiting = this.backlog ?? [];
    this.backlog = null;
    this.socket.resume();
    for (const text of waiting) {
      if (this.state !== 'open') return;
      if (this.backlog) (this.backlog as string[]).push(text);
      else this.handle(text);
    }
  }

  private slowClose(): void {
    this.gateway.deps.metrics.disconnects.inc({ reason: 'slow_consumer' });
    this.end(CloseCode.tryAgainLater, 'send buffer full', SLOW_CLOSE_GRACE_MS);
  }
}

function moderationOf(
  frame: Exclude<StreamClientFrame, { type: 'auth' | 'chat' }>,
): ModerationRequest {
  switch (frame.type) {
    case 'delete':
      return { type: 'delete', id: frame.data.id.toLowerCase() };
    case 'timeout':
      return { type: 'timeout', ...frame.data };
    case 'ban':
      return { type: 'ban', ...frame.data };
    case 'unban':
      return { type: 'unban', ...frame.data };
    case 'settings':
      return { type: 'settings', settings: frame.data };
    case 'pin':
      return { type: 'pin', id: frame.data.id?.toLowerCase() ?? null };
  }
}

function onExpiry(conn: StreamConnection): void {
  conn.expire();
}
