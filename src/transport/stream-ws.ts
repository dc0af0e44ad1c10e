/**
 * The live-stream WebSocket endpoint `/ws/streams/{key}/` (CONTRACT section 2):
 * connection state, auth, flood and backpressure, on the lean RFC 6455 layer
 * of `websocket.ts`. What a chat means and who receives it is the core's
 * (`core/streams.ts`).
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Limits } from '../config.js';
import { asChatError, ChatError, CloseCode } from '../core/errors.js';
import { bearerToken, type Identity, type TokenVerifier } from '../core/identity.js';
import { FloodCounter } from '../core/limits.js';
import type { StreamStatus, Streams, StreamViewer } from '../core/streams.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import type { StreamMessage } from '../store/store.js';
import { decodeStreamFrame, encodeAuth, encodeChat, encodeError } from './stream-codec.js';
import { frameText, handshake, WebSocketConnection } from './websocket.js';

const PATH = /^\/ws\/streams\/([^/?#]*)\/?$/;
/** setTimeout's ceiling; longer token lifetimes re-arm the timer. */
const MAX_TIMER_MS = 2_147_483_647;
/** How long a connection closed for a full send buffer may linger before it is cut. */
const SLOW_CLOSE_GRACE_MS = 1_000;

/**
 * The transport's frame: a complete, unmasked WebSocket text frame (RFC 6455
 * section 5.2), built once per chat and written as the same bytes to every viewer.
 */
export type StreamFrame = Buffer;

export { frameText };

export function encodeStreamFrame(message: StreamMessage): StreamFrame {
  return frameText(encodeChat(message));
}

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

export class StreamGateway {
  readonly connections = new Set<StreamConnection>();
  private corked: StreamConnection[] = [];
  /** Resolves `closeAll` once the last connection is gone. */
  private drained: (() => void) | undefined;

  constructor(readonly deps: StreamGatewayDeps) {}

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

  async handleUpgrade(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    key: string,
  ): Promise<void> {
    const { accept, response } = handshake(req);
    if (!accept) {
      socket.end(response);
      return;
    }
    const token = tokenOf(req);
    let status: StreamStatus;
    let auth: ConnectAuth;
    try {
      [status, auth] = await Promise.all([
        this.deps.streams.status(key),
        token === undefined ? null : this.verify(token),
      ]);
    } catch (err) {
      this.deps.log.error({ err }, 'stream upgrade failed');
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n');
      return;
    }
    if (socket.destroyed || !socket.writable) return;
    socket.write(response);
    this.open(socket, head, key, status, auth);
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

  /** Closes every connection with 1001 and resolves when they are gone (or cut). */
  async closeAll(timeoutMs: number): Promise<void> {
    if (this.connections.size === 0) return;
    const drained = new Promise<void>((resolve) => {
      this.drained = resolve;
    });
    for (const c of [...this.connections]) c.shutdown(timeoutMs);
    const timer = new Promise<void>((resolve) => setTimeout(resolve, timeoutMs).unref());
    await Promise.race([drained, timer]);
    for (const c of this.connections) c.socket.destroy();
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
  ): void {
    const maxPayload = this.deps.limits.maxFrameBytes;
    if (status !== 'open') {
      const ended = status === 'ended';
      const err = new ChatError(ended ? 'stream_ended' : 'stream_not_found');
      this.deps.metrics.error(err.code);
      const refusal = new Refusal(socket, maxPayload);
      refusal.write(frameText(encodeError(err)));
      refusal.close(ended ? CloseCode.streamEnded : CloseCode.streamNotFound, err.code);
      return;
    }
    const conn = new StreamConnection(this, socket, maxPayload, key);
    this.connections.add(conn);
    this.deps.metrics.connections.inc({ chat: 'stream' });
    this.deps.streams.join(key, conn);
    if (auth && 'error' in auth) conn.sendError(auth.error);
    conn.setIdentity(auth && 'identity' in auth ? auth.identity : null);
    conn.sendText(encodeAuth(conn.identity !== null));
    if (head.length > 0) conn.read(head);
  }

  /** Called once per connection, when it starts closing or its socket is gone. */
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
  protected onFrame(): boolean {
    return false;
  }
  protected onClosed(): void {}
  protected onSocketError(): void {}
}

/** One viewer connection. Methods, not closures, so the per-connection cost stays small. */
class StreamConnection extends WebSocketConnection implements StreamViewer<StreamFrame> {
  identity: Identity | null = null;
  private expiry: NodeJS.Timeout | undefined;
  private readonly flood: FloodCounter;
  /** Frames that arrived while an `auth` was being verified, handled in order after it. */
  private backlog: string[] | null = null;
  private corked = false;
  /** Bytes written while corked in the current turn. */
  private turnBytes = 0;

  constructor(
    private readonly gateway: StreamGateway,
    socket: Duplex,
    maxPayload: number,
    readonly key: string,
  ) {
    super(socket, maxPayload);
    this.flood = new FloodCounter(gateway.deps.limits.floodLimit);
  }

  /**
   * Writes the shared frame. The socket stays corked for the rest of this
   * event-loop turn, so every frame of the turn leaves in one write.
   */
  deliver(frame: StreamFrame): void {
    // A peer that hung up stays in the audience until its socket closes; writing
    // to it would only build a write-after-end error.
    if (this.state !== 'open' || !this.socket.writable) return;
    // What earlier turns left unsent is what this viewer failed to read; the
    // bytes of this turn are still corked and say nothing about the reader.
    if (this.socket.writableLength - this.turnBytes > this.gateway.deps.limits.sendBufferMaxBytes) {
      this.slowClose();
      return;
    }
    if (!this.corked) {
      this.corked = true;
      this.gateway.corkForTurn(this);
    }
    this.turnBytes += frame.length;
    this.socket.write(frame);
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

  sendText(text: string): void {
    this.write(frameText(text));
  }

  sendError(err: ChatError): void {
    this.gateway.deps.metrics.error(err.code);
    this.sendText(encodeError(err));
  }

  setIdentity(identity: Identity | null): void {
    clearTimeout(this.expiry);
    this.expiry = undefined;
    this.identity = identity;
    if (identity?.expiresAt !== undefined) this.armExpiry(identity.expiresAt);
  }

  shutdown(graceMs: number): void {
    this.end(CloseCode.goingAway, 'server shutting down', graceMs);
  }

  protected onFrame(): boolean {
    if (!this.flood.hit(Date.now())) return true;
    this.gateway.deps.metrics.disconnects.inc({ reason: 'flood' });
    this.end(CloseCode.policyViolation, 'flood');
    return false;
  }

  protected onBinary(): void {
    this.sendError(new ChatError('invalid_payload', 'Frames must be JSON text.'));
  }

  protected onText(text: string): void {
    if (this.backlog) this.backlog.push(text);
    else this.handle(text);
  }

  protected onClosed(): void {
    clearTimeout(this.expiry);
    this.gateway.forget(this);
  }

  protected onSocketError(err: Error): void {
    this.gateway.deps.log.debug({ err: err.message, key: this.key }, 'stream socket error');
  }

  /** Leaves the stream at once and starts the close handshake. */
  private end(code: number, reason: string, graceMs?: number): void {
    if (this.state !== 'open') return;
    clearTimeout(this.expiry);
    this.gateway.forget(this);
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
    try {
      const frame = decodeStreamFrame(text);
      if (frame.type === 'auth') {
        void this.authenticate(frame.data.token);
        return;
      }
      if (this.identity?.expiresAt !== undefined && this.identity.expiresAt <= Date.now()) {
        this.expire();
      }
      this.gateway.deps.streams.post(this.key, this.identity, frame.data.message);
    } catch (err) {
      if (!(err instanceof ChatError)) {
        this.gateway.deps.log.error({ err, key: this.key }, 'stream frame failed');
      }
      this.sendError(asChatError(err));
    }
  }

  /** Identity is always the last token presented; frames after it wait for the answer. */
  private async authenticate(token: string): Promise<void> {
    this.backlog = [];
    try {
      this.setIdentity(await this.gateway.deps.verifier.verify(token));
    } catch (err) {
      this.setIdentity(null);
      this.sendError(asChatError(err));
    }
    this.sendText(encodeAuth(this.identity !== null));
    const waiting = this.backlog;
    this.backlog = null;
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

function onExpiry(conn: StreamConnection): void {
  conn.expire();
}
