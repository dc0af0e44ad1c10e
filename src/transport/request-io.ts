/**
 * The request chat over Socket.IO v4 (protocol section 3), on the HTTP
 * server's port at `/socket.io/`. This file maps events to the core
 * (`core/requests.ts`) and answers; rooms and their fan-out are Socket.IO's,
 * spread across nodes by the adapter the Broker provides.
 */
import type { Server as HttpServer } from 'node:http';
import { type ExtendedError, Server, type Socket } from 'socket.io';
import { type Broker, earliestSince, type RoomAdapter } from '../broker/broker.js';
import type { Limits } from '../config.js';
import { asChatError, ChatError } from '../core/errors.js';
import { Gate } from '../core/gate.js';
import { bearerToken, hasRole, type Identity, type TokenVerifier } from '../core/identity.js';
import { isObjectId, normalizeId } from '../core/ids.js';
import { startEarly } from '../core/limits.js';
import type { Page, RequestMessage, RequestSummary } from '../core/messages.js';
import type { InboxUpdates, Requests } from '../core/requests.js';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import {
  decodeRequestEvent,
  isRequestEvent,
  isRoomless,
  type RequestEvent,
  type RoomEvent,
} from './request-codec.js';
import { type RequestUpdate, RequestUpdates, type UpdateTarget } from './request-updates.js';
import {
  CLOSE_GRACE_MS,
  type Conn,
  type EngineLike,
  guardWebSockets,
  Wire,
} from './request-wire.js';

export const SOCKET_IO_PATH = '/socket.io';
/** setTimeout's ceiling; longer token lifetimes re-arm the timer. */
const MAX_TIMER_MS = 2_147_483_647;
/**
 * History reads (`joinRoom`, `loadHistory`) past HISTORY_READS_RUNNING +
 * HISTORY_READS_WAITING per socket are refused with `rate_limited`: reads that
 * pile up would hold their pages in memory however the client behaves.
 */
const HISTORY_RETRY_AFTER_MS = 250;

type Ack = (response: unknown) => void;

export interface RequestChatDeps {
  requests: Requests;
  verifier: TokenVerifier;
  limits: Limits;
  metrics: Metrics;
  log: Logger;
  /** Socket.IO adapter spreading rooms across nodes; the in-memory one when absent. */
  adapter?: RoomAdapter | undefined;
  /** Carries `requestUpdated` to every node (request-updates.ts). */
  broker: Broker;
}

interface SocketData {
  identity: Identity;
}

interface ReceiptEvent {
  requestId: string;
  userId: string;
  messages: string[];
  at: string;
}

/** Server → client events (protocol section 3). */
interface ServerEvents {
  roomHistory(page: { requestId: string } & Page<RequestMessage>): void;
  message(message: RequestMessage): void;
  messagesDelivered(receipts: ReceiptEvent): void;
  messageReads(receipts: ReceiptEvent): void;
  userTyping(typing: { requestId: string; userId: string; username: string }): void;
  messageUpdated(message: RequestMessage): void;
  messageDeleted(deleted: { requestId: string; messageId: string; deletedAt: string }): void;
  requestUpdated(update: RequestUpdate): void;
  exception(error: {
    event: string;
    error_code: string;
    message: string;
    requestId?: string;
  }): void;
}

type ChatSocket = Socket<Record<string, never>, ServerEvents, Record<string, never>, SocketData>;

const REQUEST_ROOM = 'request:';
export const roomOf = (requestId: string) => `${REQUEST_ROOM}${requestId}`;
/**
 * Every socket of a user who acts as a TEACHER only (not also LAB), so that
 * an owner change can take all of them out of the request's room at once, on
 * every node, through the adapter.
 */
export const teacherRoomOf = (userId: string) => `teacher:${userId}`;
/** Every socket of a user, whatever their role: their inbox updates reach all of them. */
export const userRoomOf = (userId: string) => `user:${userId}`;
/** Every socket of a lab user: the one place a count meant only for lab staff may go. */
export const labRoomOf = (userId: string) => `lab:${userId}`;
/** Every lab socket, on every node: a new message reaches each of their inboxes. */
export const LAB_ROOM = 'role:LAB';

/** What the gateway keeps per socket besides Socket.IO's own state. */
interface Session {
  wire: Wire;
  historyReads: Gate;
}

/** The handshake's token: `auth: {token}`, `Authorization: Bearer`, or `?token=`. */
function handshakeToken(socket: ChatSocket): string | undefined {
  const { auth, headers, query } = socket.handshake;
  if (typeof auth?.token === 'string' && auth.token !== '') return auth.token;
  const bearer = bearerToken(headers.authorization);
  if (bearer !== undefined) return bearer;
  const q = query.token;
  return typeof q === 'string' && q !== '' ? q : undefined;
}

/** Socket.IO hands the client `connect_error` with `message` = our code and `data` = the payload. */
function refusal(err: ChatError): ExtendedError {
  const e = new Error(err.code) as ExtendedError;
  e.data = err.toPayload();
  return e;
}

export class RequestChat {
  readonly io: Server<Record<string, never>, ServerEvents, Record<string, never>, SocketData>;
  private readonly wires = new WeakMap<Conn, Wire>();
  private readonly sessions = new WeakMap<ChatSocket, Session>();
  /**
   * Engine.IO connections not yet joined to the namespace. Each costs a few KB
   * for up to HANDSHAKE_TIMEOUT_SECONDS, and a long-polling handshake costs its
   * client one request on a kept-alive connection: past HANDSHAKES_PENDING_MAX
   * new handshakes are refused (403) until some join or go, so a flood of them
   * is bounded in memory. Connected clients are not affected.
   */
  private readonly pending = new Set<Conn>();
  /** Engine.IO connections with a socket, connected or having its token checked. */
  private readonly claimed = new WeakSet<Conn>();
  private readonly stopOwnerChanges: () => void;
  private readonly stopMissed: () => void;
  /**
   * The recovery pass under way (rooms checked, missed changes sent), and
   * what recoveries announced during it ask of one more pass after it: one
   * at a time, however many nodes recover at once.
   */
  private resyncing: Promise<void> | undefined;
  private resyncAgain: { since: number | undefined } | undefined;
  private closed = false;
  private readonly updates: RequestUpdates;
  /**
   * The most a history page may weigh, as JSON: half the send buffer, so a
   * client that has read what it was sent can always take a whole page.
   */
  private readonly historyBytes: number;

  constructor(
    server: HttpServer,
    private readonly deps: RequestChatDeps,
  ) {
    this.io = new Server(server, {
      path: SOCKET_IO_PATH,
      serveClient: false,
      // Other upgrade paths (the stream chat's) belong to other listeners.
      destroyUpgrade: false,
      perMessageDeflate: false,
      maxHttpBufferSize: deps.limits.maxFrameBytes,
      // A client silent for two intervals is gone: a ping goes out after one
      // interval and the pong is awaited for one more.
      pingInterval: deps.limits.pingIntervalMs,
      pingTimeout: deps.limits.pingIntervalMs,
      // Engine.IO open but no namespace joined, or a transport upgrade left
      // half done. The close then starts, and a peer that does not answer it
      // is cut CLOSE_GRACE_MS later: it starts early enough for the cut to
      // come within the handshake time (when that is 4 s or more).
      connectTimeout: startEarly(deps.limits.handshakeTimeoutMs, CLOSE_GRACE_MS),
      upgradeTimeout: startEarly(deps.limits.handshakeTimeoutMs, CLOSE_GRACE_MS),
      // Tokens, not cookies, authenticate: any origin may connect with one.
      cors: { origin: '*' },
      // Asked for handshakes only, never for a connection's later requests.
      allowRequest: (_req, answer) =>
        answer(
          'too many handshakes under way',
          this.pending.size < deps.limits.handshakesPendingMax,
        ),
      ...(deps.adapter ? { adapter: deps.adapter } : {}),
    });
    // Everything the request chat sends is JSON (attachments are links, never
    // bytes), so the encoder's search of each outgoing packet for binary data,
    // a walk over every field of every message, would find nothing: each
    // packet is encoded straight to its one string. The room adapter, local or
    // Redis, encodes with this same encoder.
    const encoder = this.io.encoder as unknown as {
      encode(packet: unknown): string[];
      encodeAsString(packet: unknown): string;
    };
    encoder.encode = (packet) => [encoder.encodeAsString(packet)];
    this.io.use((socket, next) => {
      // One socket per connection. Socket.IO closes a connection that sends a
      // second CONNECT once the first is done, but not while the first one's
      // token is being checked: a burst of CONNECTs would open as many
      // sockets, each in the user's rooms, on one connection.
      const { conn } = socket;
      if (this.claimed.has(conn)) {
        conn.close();
        return next(refusal(new ChatError('invalid_payload', 'One socket per connection.')));
      }
      this.claimed.add(conn);
      const token = handshakeToken(socket);
      if (token === undefined) {
        this.claimed.delete(conn);
        return next(refusal(new ChatError('unauthorized')));
      }
      deps.verifier.verify(token).then(
        (identity) => {
          socket.data.identity = identity;
          next();
        },
        (err: unknown) => {
          this.claimed.delete(conn);
          const e = asChatError(err);
          deps.metrics.error(e.code);
          next(refusal(e.code === 'token_expired' ? e : new ChatError('unauthorized')));
        },
      );
    });
    this.historyBytes = Math.floor(deps.limits.sendBufferMaxBytes / 2);
    guardWebSockets(this.io.engine as unknown as EngineLike, deps.limits, (reason) =>
      deps.metrics.disconnects.inc({ reason }),
    );
    // Watched from the Engine.IO handshake on, before any namespace is joined.
    this.io.engine.on('connection', (conn: Conn) => {
      this.pending.add(conn);
      conn.once('close', () => this.pending.delete(conn));
      this.wires.set(
        conn,
        new Wire(conn, deps.limits, (reason) => deps.metrics.disconnects.inc({ reason })),
      );
    });
    this.io.on('connection', (socket) => this.open(socket));
    this.updates = new RequestUpdates(
      deps.broker,
      {
        flushMs: deps.limits.requestUpdateFlushMs,
        maxTracked: deps.limits.requestUpdateTrackedMax,
      },
      // Every node hands the update to its own sockets only.
      ({ rooms, except }, update) =>
        this.io.local.to(rooms).except(except).emit('requestUpdated', update),
      (err) => deps.log.warn({ err }, 'malformed inbox update from the broker'),
    );
    this.stopOwnerChanges = deps.requests.onOwnerChange(({ requestId, previousOwnerId }) => {
      // The adapter carries this to every node. A user who is also LAB keeps
      // access and is not in the teacher room.
      this.io.in(teacherRoomOf(previousOwnerId)).socketsLeave(roomOf(requestId));
    });
    this.stopMissed = deps.broker.onMissed((since) => this.resync(since));
  }

  /**
   * A node was cut off from Redis and is back: room broadcasts made meanwhile
   * may not have reached the sockets here. Rooms are checked first (a socket
   * that may no longer be in one leaves it), then the changes it missed are
   * sent again.
   */
  private resync(since: number | undefined): void {
    if (this.resyncing) {
      this.resyncAgain = { since: earliestSince(this.resyncAgain?.since, since) };
      return;
    }
    this.resyncing = this.resyncPass(since).finally(() => {
      this.resyncing = undefined;
      const again = this.resyncAgain;
      this.resyncAgain = undefined;
      if (again && !this.closed) this.resync(again.since);
    });
  }

  private async resyncPass(since: number | undefined): Promise<void> {
    try {
      await this.recheckRooms();
    } catch (err) {
      this.deps.log.error({ err }, 'checking request rooms again failed');
    }
    if (since !== undefined) await this.resendChanges(since);
  }

  /**
   * Sends the sockets of each request room here, and only here (every node
   * does the same for its own), `messageUpdated` or `messageDeleted` for each
   * message of the room's newest history page edited or deleted since
   * `since`: as the edit or deletion sent them live. A socket that heard one
   * live hears it again; both carry the message's state, so nothing changes.
   * One room at a time, so that a recovery does not crowd the store.
   */
  private async resendChanges(since: number): Promise<void> {
    const rooms = [...this.io.of('/').adapter.rooms.keys()].filter((r) =>
      r.startsWith(REQUEST_ROOM),
    );
    for (const room of rooms) {
      if (this.closed) return;
      const requestId = room.slice(REQUEST_ROOM.length);
      try {
        const changed = await this.deps.requests.changedSince(requestId, since);
        const local = this.io.local.to(room);
        for (const m of changed) {
          if (m.deletedAt !== undefined) {
            local.emit('messageDeleted', { requestId, messageId: m._id, deletedAt: m.deletedAt });
          } else local.emit('messageUpdated', m);
        }
      } catch (err) {
        this.deps.log.error({ err, requestId }, 'sending missed request changes failed');
      }
    }
  }

  /**
   * A node was cut off from Redis and is back: an owner change made while it
   * was away may not have taken the previous owner's sockets out of the room
   * on every node. Each teacher socket here is asked again, from the store,
   * whether it may stay in each request room it is in; one that may not leaves.
   */
  private async recheckRooms(): Promise<void> {
    const asked = new Map<string, Promise<boolean>>();
    const allowed = (identity: Identity, requestId: string) => {
      const key = `${identity.userId}\u0000${requestId}`;
      let answer = asked.get(key);
      if (answer === undefined) {
        answer = this.deps.requests.authorize(identity, requestId).then(
          () => true,
          (err: unknown) => {
            const code = asChatError(err).code;
            if (code === 'forbidden' || code === 'not_found') return false;
            throw err;
          },
        );
        asked.set(key, answer);
      }
      return answer;
    };
    const leaving: Array<Promise<void>> = [];
    for (const socket of this.io.of('/').sockets.values()) {
      const identity = socket.data.identity;
      // Lab staff may act in every request; only teachers lose access.
      if (hasRole(identity, 'LAB')) continue;
      for (const room of socket.rooms) {
        if (!room.startsWith(REQUEST_ROOM)) continue;
        const requestId = room.slice(REQUEST_ROOM.length);
        leaving.push(
          allowed(identity, requestId).then(async (ok) => {
            if (!ok) await socket.leave(room);
          }),
        );
      }
    }
    await Promise.all(leaving);
  }

  /** Disconnects every local socket (clients reconnect elsewhere) and stops. */
  async close(): Promise<void> {
    this.closed = true;
    this.stopOwnerChanges();
    this.stopMissed();
    this.updates.close();
    // Told, as a server disconnect (not a lost transport): this node's sockets
    // only, never the other nodes' through the adapter.
    this.io.local.disconnectSockets(true);
    await this.io.close();
  }

  private open(socket: ChatSocket): void {
    const { deps } = this;
    this.pending.delete(socket.conn);
    const wire =
      this.wires.get(socket.conn) ??
      new Wire(socket.conn, deps.limits, (reason) => deps.metrics.disconnects.inc({ reason }));
    wire.socket = socket;
    const historyReads = new Gate(
      deps.limits.historyReadsRunning,
      deps.limits.historyReadsWaiting,
      () =>
        new ChatError(
          'rate_limited',
          `At most ${deps.limits.historyReadsRunning + deps.limits.historyReadsWaiting} history reads at a time per connection.`,
          { retryAfterMs: HISTORY_RETRY_AFTER_MS },
        ),
    );
    this.sessions.set(socket, { wire, historyReads });
    const { identity } = socket.data;
    if (hasRole(identity, 'TEACHER') && !hasRole(identity, 'LAB')) {
      void socket.join(teacherRoomOf(identity.userId));
    }
    void socket.join(userRoomOf(identity.userId));
    if (hasRole(identity, 'LAB')) void socket.join([LAB_ROOM, labRoomOf(identity.userId)]);
    let expiry: NodeJS.Timeout | undefined;
    const armExpiry = () => {
      const at = socket.data.identity.expiresAt;
      if (at === undefined) return;
      const ms = at - Date.now();
      if (ms > 0) {
        expiry = setTimeout(armExpiry, Math.min(ms, MAX_TIMER_MS));
        return;
      }
      this.fail(socket, 'auth', new ChatError('token_expired'), undefined, undefined);
      deps.metrics.disconnects.inc({ reason: 'token_expired' });
      socket.disconnect(true);
    };
    armExpiry();
    deps.metrics.connections.inc({ chat: 'request' });
    socket.on('disconnect', () => {
      this.claimed.delete(socket.conn);
      clearTimeout(expiry);
      deps.metrics.connections.dec({ chat: 'request' });
    });

    // Every event goes through here; no per-event listeners are registered.
    // Flooding is counted per Engine.IO packet, below (request-wire.ts).
    socket.use((packet, _next) => {
      const [event, ...args] = packet as unknown[];
      const raw = typeof args.at(-1) === 'function' ? (args.pop() as Ack) : undefined;
      const ack = raw && this.timedAck(isRequestEvent(event) ? event : 'unknown', raw);
      if (!isRequestEvent(event)) {
        const name = typeof event === 'string' ? event.slice(0, 64) : String(event);
        this.fail(socket, name, new ChatError('unknown_type', 'Unknown event.'), undefined, ack);
        return;
      }
      void this.handle(socket, event, args[0], ack);
    });
  }

  private async handle(
    socket: ChatSocket,
    event: RequestEvent,
    payload: unknown,
    ack: Ack | undefined,
  ): Promise<void> {
    let requestId: string | undefined = rawRequestId(payload);
    const session = this.sessions.get(socket);
    const max = this.deps.limits.sendBufferMaxBytes;
    // Nothing is read or built for a client that is not reading what it was
    // sent; what one turn sent it (a group commit's deliveries) it may still be reading.
    if (!session?.wire.keepsUp(max)) return;
    if (isRoomless(event)) {
      await this.handleInbox(socket, session, payload, ack);
      return;
    }
    try {
      const p = decodeRequestEvent(event as RoomEvent, payload);
      requestId = p.requestId;
      const identity = socket.data.identity;
      if (identity.expiresAt !== undefined && identity.expiresAt <= Date.now()) {
        throw new ChatError('token_expired');
      }
      const room = roomOf(p.requestId);
      if (event !== 'joinRoom' && !socket.rooms.has(room)) throw new ChatError('not_in_room');
      const { requests } = this.deps;

      switch (event) {
        case 'joinRoom': {
          const joined = await session.historyReads.run(async () => {
            // Joining after the socket left would put it back in the room, for good.
            if (!socket.connected) return false;
            await requests.authorize(identity, p.requestId);
            if (!socket.connected) return false;
            await socket.join(room);
            try {
              // An owner change committed while this join was authorized sent its
              // leave before the socket was in the room: ask again now it is.
              await requests.authorize(identity, p.requestId);
              const page = await requests.history(
                p.requestId,
                { limit: this.deps.limits.historyPage },
                this.historyBytes,
              );
              if (!session.wire.canSend(max)) return false;
              socket.emit('roomHistory', { requestId: p.requestId, ...page });
              return true;
            } catch (err) {
              // A socket whose join failed is not in the room (README "Security").
              await socket.leave(room);
              throw err;
            }
          });
          if (joined) ack?.({ ok: true, requestId: p.requestId });
          return;
        }
        case 'leaveRoom': {
          await socket.leave(room);
          ack?.({ ok: true, requestId: p.requestId });
          return;
        }
        case 'message': {
          const m = p as ReturnType<typeof decodeRequestEvent<'message'>>;
          const sent = await requests.send(
            identity,
            m.requestId,
            m.message,
            m.clientMessageId,
            m.attachments,
          );
          if (!sent.duplicate) {
            socket.to(room).emit('message', sent.message);
            const local = this.io.sockets.adapter.rooms.get(room)?.size ?? 1;
            this.deps.metrics.messagesOut.inc({ chat: 'request' }, Math.max(0, local - 1));
          }
          ack?.({ ok: true, message: sent.message });
          if (sent.updates) this.pushUpdates(sent.updates);
          return;
        }
        case 'typing': {
          // Room membership is the authorization: an owner change takes the
          // previous owner's sockets out of the room on every node.
          const forwarded = await requests.typing(identity, p.requestId);
          if (forwarded) {
            socket.to(room).emit('userTyping', {
              requestId: p.requestId,
              userId: identity.userId,
              username: identity.username,
            });
          }
          ack?.({ ok: true, requestId: p.requestId, forwarded });
          return;
        }
        case 'editMessage': {
          const e = p as ReturnType<typeof decodeRequestEvent<'editMessage'>>;
          const { message } = await requests.edit(identity, e.requestId, e.messageId, e.message);
          this.io.to(room).emit('messageUpdated', message);
          ack?.({ ok: true, message });
          return;
        }
        case 'deleteMessage': {
          const d = p as ReturnType<typeof decodeRequestEvent<'deleteMessage'>>;
          const { message, updates } = await requests.remove(identity, d.requestId, d.messageId);
          const deleted = {
            requestId: d.requestId,
            messageId: d.messageId,
            deletedAt: message.deletedAt as string,
          };
          this.io.to(room).emit('messageDeleted', deleted);
          ack?.({ ok: true, ...deleted, message });
          if (updates) this.pushUpdates(updates);
          return;
        }
        case 'ackMessages':
        case 'readMessages': {
          const r = p as ReturnType<typeof decodeRequestEvent<'ackMessages'>>;
          const kind = event === 'ackMessages' ? 'delivered' : 'read';
          const { messages, at } = await requests.receipts(identity, r.requestId, kind, r.messages);
          if (messages.length > 0) {
            const name = kind === 'delivered' ? 'messagesDelivered' : 'messageReads';
            socket
              .to(room)
              .emit(name, { requestId: r.requestId, userId: identity.userId, messages, at });
          }
          ack?.({ ok: true, requestId: r.requestId, messages, at });
          if (kind === 'read' && messages.length > 0) {
            // The reader's count changed: every socket of theirs hears it.
            const summary = await requests.summary(identity, r.requestId);
            if (summary) this.pushSummary(identity.userId, summary);
          }
          return;
        }
        case 'loadHistory': {
          const h = p as ReturnType<typeof decodeRequestEvent<'loadHistory'>>;
          if (!ack) {
            throw new ChatError(
              'invalid_payload',
              'loadHistory answers through an acknowledgement.',
            );
          }
          const limit = requests.pageLimit(h.limit);
          const page = await session.historyReads.run(async () => {
            if (!socket.connected) return undefined;
            await requests.authorize(identity, h.requestId);
            if (!socket.connected) return undefined;
            return requests.history(h.requestId, { before: h.before, limit }, this.historyBytes);
          });
          if (page && session.wire.canSend(max)) ack({ ok: true, requestId: h.requestId, ...page });
          return;
        }
      }
    } catch (err) {
      this.fail(socket, event, err, requestId, ack);
    }
  }

  /** `listRequests`: the user's inbox, through the acknowledgement. */
  private async handleInbox(
    socket: ChatSocket,
    session: Session,
    payload: unknown,
    ack: Ack | undefined,
  ): Promise<void> {
    const max = this.deps.limits.sendBufferMaxBytes;
    try {
      const q = decodeRequestEvent('listRequests', payload);
      if (!ack) {
        throw new ChatError('invalid_payload', 'listRequests answers through an acknowledgement.');
      }
      const identity = socket.data.identity;
      if (identity.expiresAt !== undefined && identity.expiresAt <= Date.now()) {
        throw new ChatError('token_expired');
      }
      const { requests } = this.deps;
      const limit = requests.pageLimit(q.limit);
      const page = await session.historyReads.run(async () => {
        if (!socket.connected) return undefined;
        return requests.inbox(identity, { before: q.before, limit });
      });
      if (page && session.wire.canSend(max)) ack({ ok: true, ...page });
    } catch (err) {
      this.fail(socket, 'listRequests', err, undefined, ack);
    }
  }

  /**
   * `requestUpdated` to every socket, on every node, of each user who may act
   * in the request: the owner and the lab users with counters of their own by
   * name, every other lab user with the count they all share. One publication
   * per named user plus one for the rest, each encoded once per node.
   */
  private pushUpdates(u: InboxUpdates): void {
    const named = [userRoomOf(u.ownerId), ...u.readers.map((r) => labRoomOf(r.userId))];
    const counts: Array<[UpdateTarget, number]> = [
      [{ rooms: [LAB_ROOM], except: named }, u.labUnread],
      [{ rooms: [userRoomOf(u.ownerId)], except: [] }, u.ownerUnread],
    ];
    for (const r of u.readers)
      counts.push([{ rooms: [labRoomOf(r.userId)], except: [] }, r.unread]);
    this.updates.publishCounts(u.requestId, u.lastMessage, counts);
  }

  private pushSummary(userId: string, s: RequestSummary): void {
    this.updates.publish(
      { rooms: [userRoomOf(userId)], except: [] },
      { requestId: s.requestId, lastMessage: s.lastMessage, unread: s.unread },
    );
  }

  /** `ack`, observing the time from the event's arrival to its acknowledgement. */
  private timedAck(event: RequestEvent | 'unknown', ack: Ack): Ack {
    const started = performance.now();
    return (answer) => {
      this.deps.metrics.ackLatency.observe({ event }, (performance.now() - started) / 1000);
      ack(answer);
    };
  }

  /** Answers a refused event with `exception`, and through the acknowledgement when given. */
  private fail(
    socket: ChatSocket,
    event: string,
    err: unknown,
    requestId: string | undefined,
    ack: Ack | undefined,
  ): void {
    const e = asChatError(err);
    if (!(err instanceof ChatError)) {
      this.deps.log.error({ err, event }, 'request chat event failed');
    }
    this.deps.metrics.error(e.code);
    const wire = this.sessions.get(socket)?.wire;
    if (wire && !wire.keepsUp(this.deps.limits.sendBufferMaxBytes)) return;
    const payload = e.toPayload();
    socket.emit('exception', { event, ...payload, ...(requestId ? { requestId } : {}) });
    ack?.({ ok: false, ...payload });
  }
}

/** The request id a payload names, when it is well-formed; for `exception` payloads. */
function rawRequestId(payload: unknown): string | undefined {
  if (typeof payload !== 'object' || payload === null) return undefined;
  const p = payload as { requestId?: unknown; resquestId?: unknown };
  const id = p.requestId ?? p.resquestId;
  return isObjectId(id) ? normalizeId(id) : undefined;
}
