/**
 * One Engine.IO connection of the request chat, watched from below Socket.IO
 * (README "Security"): every packet the client sends counts toward
 * FLOOD_LIMIT (pings, pongs, noops and CONNECTs to other namespaces as well as
 * events), and every packet queued for it is measured against
 * SEND_BUFFER_MAX_BYTES before it joins the queue, whether it is a reply, a
 * room delivery from this node or one relayed from another.
 */
import type { Socket } from 'socket.io';
import { FloodCounter } from '../core/limits.js';

export type Conn = Socket['conn'];

/** `WebSocket.OPEN`. */
const OPEN = 1;

export type DropReason = 'flood' | 'slow_consumer';

/**
 * How long a connection that was told to close may take to finish its close
 * handshake before its descriptor is released anyway (the `ws` default would
 * hold it for 30 s against a peer that never answers).
 */
export const CLOSE_GRACE_MS = 2_000;

interface WsLike {
  readonly bufferedAmount: number;
  readonly readyState: number;
  terminate(): void;
}

/** A `ws` WebSocket of Engine.IO's WebSocket transport, as the guard below uses it. */
interface GuardedWs extends WsLike {
  _receiver?: unknown;
  on(event: 'ping' | 'pong', listener: (this: GuardedWs, data: Buffer) => void): unknown;
  pong(data: Buffer): void;
  close(code?: number, reason?: string): void;
}

type UpgradeCallback = (ws: GuardedWs, req: unknown) => void;

/** The `ws` server class under Engine.IO: every WebSocket of the request chat comes out of its `handleUpgrade`. */
type WsServerClass = new (
  options: Record<string, unknown>,
) => {
  handleUpgrade(req: unknown, socket: unknown, head: unknown, cb: UpgradeCallback): void;
};

/** What of Engine.IO's server the guard needs: its `ws` server, the class it builds it with, and its `init`. */
export interface EngineLike {
  ws?: object;
  opts: { wsEngine?: unknown };
  init(): void;
}

/** Makes a long-polling transport give up on its next poll after `CLOSE_GRACE_MS` once closed. */
function limitPollingClose(transport: unknown): void {
  const t = transport as { name?: string; closeTimeout?: number };
  if (t.name === 'polling' && typeof t.closeTimeout === 'number') t.closeTimeout = CLOSE_GRACE_MS;
}

/** Counts one frame of a WebSocket; the Wire of its connection, once it has one. */
interface FrameCounter {
  frame(): void;
}

/** Who counts the control frames of each WebSocket: its own counter until a Wire takes it over. */
const frameCounters = new WeakMap<object, FrameCounter>();

function onWsControl(this: GuardedWs): void {
  frameCounters.get(this)?.frame();
}

/** `ws`'s frame parser: `getInfo` reads each frame's header from the unread `_buffers`. */
interface WsReceiver {
  _bufferedBytes: number;
  _buffers: Buffer[];
  getInfo(this: WsReceiver, cb: unknown): void;
}

/**
 * Counts the continuation frames of `ws`'s messages, which `ws` joins without
 * a word: Engine.IO then sees one packet, however many frames it came in.
 * Each header is looked at as `ws` starts on it (a continuation's opcode is 0),
 * once its first two bytes are there.
 */
function countContinuations(ws: GuardedWs): void {
  const receiver = (ws as { _receiver?: Partial<WsReceiver> })._receiver;
  const getInfo = receiver?.getInfo;
  // Another `ws` than the one this was written for: test/hostile-engine-ws.test.ts says so.
  if (!receiver || typeof getInfo !== 'function' || !Array.isArray(receiver._buffers)) return;
  receiver.getInfo = function (this: WsReceiver, cb: unknown) {
    if (this._bufferedBytes >= 2 && ((this._buffers[0]?.[0] ?? 1) & 0x0f) === 0) {
      frameCounters.get(ws)?.frame();
    }
    getInfo.call(this, cb);
  };
}

/**
 * Takes every WebSocket of Engine.IO's transport in hand as `ws` hands it
 * over, before Engine.IO sees it, the probes of polling sessions that upgrade
 * included. `ws` would answer each ping with a pong that nobody checks
 * against the send buffer, and count none of them: a client that pings
 * without reading grows the process by the size of its pings. Here pings,
 * pongs and continuation frames count toward FLOOD_LIMIT (with the
 * connection's packets, once it has a Wire), and a pong is queued only while what waits for the client
 * stays within SEND_BUFFER_MAX_BYTES. A close that Engine.IO starts (a
 * refused upgrade, a failed probe, a closed connection) releases the socket
 * within `CLOSE_GRACE_MS`, not the 30 s `ws` would wait for the peer.
 */
export function guardWebSockets(
  engine: EngineLike,
  limits: { floodLimit: number; sendBufferMaxBytes: number; maxFragments: number },
  onDrop: (reason: DropReason) => void,
): void {
  if (!engine.ws) return;
  const Base = engine.ws.constructor as WsServerClass;
  const max = limits.sendBufferMaxBytes;
  const watch = (ws: GuardedWs) => {
    const flood = new FloodCounter(limits.floodLimit);
    let dropped = false;
    frameCounters.set(ws, {
      frame() {
        if (dropped || !flood.hit(Date.now())) return;
        dropped = true;
        onDrop('flood');
        ws.close(1008, 'flood');
      },
    });
    ws.on('ping', function answer(data) {
      if (this.readyState !== OPEN) return;
      if (this.bufferedAmount + data.length > max) {
        onDrop('slow_consumer');
        this.terminate();
        return;
      }
      this.pong(data);
    });
    ws.on('ping', onWsControl);
    ws.on('pong', onWsControl);
    countContinuations(ws);
  };
  class GuardedServer extends Base {
    constructor(options: Record<string, unknown>) {
      super({
        ...options,
        autoPong: false,
        closeTimeout: CLOSE_GRACE_MS,
        maxFragments: limits.maxFragments,
      });
    }

    override handleUpgrade(req: unknown, socket: unknown, head: unknown, cb: UpgradeCallback) {
      super.handleUpgrade(req, socket, head, (ws, request) => {
        watch(ws);
        cb(ws, request);
      });
    }
  }
  // Engine.IO builds its `ws` server again when the HTTP server starts
  // listening, from `wsEngine`: set, it holds from then on.
  engine.opts.wsEngine = GuardedServer;
  engine.init();
}

interface EnginePacket {
  type: string;
  data?: unknown;
}

/** The WebSocket under the connection, when its transport is one (not long-polling). */
function wsOf(conn: Conn): WsLike | undefined {
  // biome-ignore lint/suspicious/noExplicitAny: Engine.IO internals, read-only.
  const ws = (conn.transport as any)?.socket;
  return typeof ws?.terminate === 'function' ? (ws as WsLike) : undefined;
}

/** The TCP socket under the connection's WebSocket, when it has one. */
function tcpOf(conn: Conn): Tcp | undefined {
  // biome-ignore lint/suspicious/noExplicitAny: Engine.IO and ws internals.
  const tcp = (wsOf(conn) as any)?._socket;
  return typeof tcp?.cork === 'function' ? tcp : undefined;
}

interface Tcp {
  cork(): void;
  uncork(): void;
  readonly destroyed: boolean;
}

/**
 * Up to this many bytes may wait in a client's WebSocket for what Engine.IO
 * holds back to be handed over at the end of a turn (see `Wire.endTurn`):
 * more than one turn's deliveries to a client that reads (a group commit's
 * acknowledgements and inbox updates), while the backlog of one that stopped
 * reading stays in Engine.IO's queue, not yet encoded.
 */
const WRITE_THROUGH_BYTES = 64 * 1024;

/** Wires whose TCP socket is corked until the end of this event-loop turn. */
let corked: Wire[] = [];
const uncorkAll = () => {
  const list = corked;
  corked = [];
  for (const wire of list) wire.endTurn();
};

let turnCount = 0;
let turnScheduled = false;
/** A number that changes from one event-loop turn to the next. */
function currentTurn(): number {
  if (!turnScheduled) {
    turnScheduled = true;
    setImmediate(() => {
      turnScheduled = false;
      turnCount++;
    });
  }
  return turnCount;
}

/** What a packet adds to the queue: string length stands for bytes, as one write per receiver must stay O(1). */
function packetSize(packet: EnginePacket): number {
  const { data } = packet;
  if (typeof data === 'string') return data.length + 1;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return data.byteLength + 1;
  return 1;
}

export class Wire {
  private readonly flood: FloodCounter;
  /** Bytes handed to Engine.IO since its last flush to the transport. */
  private pending = 0;
  private dropped = false;
  /** The event-loop turn of the last packet or check, and what was queued in it. */
  private turn = -1;
  private queuedThisTurn = 0;
  /** What was queued in the last turn that queued anything. */
  private lastBurst = 0;
  /** Bytes waiting when this turn began, beyond those queued in the last busy turn. */
  private unread = 0;
  private cutTimer: NodeJS.Timeout | undefined;
  /** The TCP socket corked for this turn, if any. */
  private corked: Tcp | undefined;
  /** The namespace socket, once joined: its disconnect tells the client not to reconnect. */
  socket: { disconnect(close: boolean): unknown } | undefined;

  constructor(
    private readonly conn: Conn,
    limits: { floodLimit: number; sendBufferMaxBytes: number },
    private readonly onDrop: (reason: DropReason) => void,
  ) {
    this.flood = new FloodCounter(limits.floodLimit);
    const max = limits.sendBufferMaxBytes;
    conn.on('packet', () => this.frame());
    this.countFramesOf(wsOf(conn));
    // The WebSocket a polling connection upgrades to: its pings count with the packets.
    conn.on('upgrade', () => this.countFramesOf(wsOf(conn)));
    // Emitted before the packet is queued: a client over its bound is cut
    // there, and the packet dies with the discarded queue.
    conn.on('packetCreate', (packet: EnginePacket) => {
      if (this.dropped) return;
      const size = packetSize(packet);
      // A client with nothing left unread always gets the next packet, so that
      // one answer larger than the bound on its own (one long message under a
      // small SEND_BUFFER_MAX_BYTES) does not cut a client that reads. See
      // `judgeTurn` for what counts as left unread.
      this.judgeTurn();
      const before = this.unread;
      if (before > 0 && before + size > max) {
        this.dropSlow();
        return;
      }
      this.pending += size;
      this.queuedThisTurn += size;
    });
    conn.on('flush', () => {
      this.pending = 0;
      this.corkForTurn();
    });
    conn.once('close', () => this.scheduleCut());
    // A long-polling connection is closed by answering its waiting poll; with
    // none waiting, Engine.IO holds it (and all it keeps) 30 s for the next
    // poll. A client that polls has one waiting: only one that stopped, or
    // never polled (a bare handshake whose namespace never came), waits here.
    limitPollingClose(conn.transport);
  }

  /** One frame from the client: an Engine.IO packet, or a ping or pong of its WebSocket. */
  frame(): void {
    if (!this.dropped && this.flood.hit(Date.now())) this.dropFlooder();
  }

  private countFramesOf(ws: WsLike | undefined): void {
    if (ws) frameCounters.set(ws, this);
  }

  /**
   * Holds the connection's writes until the end of this event-loop turn, so
   * that what it is sent in the turn (acknowledgements, room deliveries, inbox
   * updates of a whole group commit) leaves in one write instead of one per packet.
   */
  private corkForTurn(): void {
    if (this.corked) return;
    const tcp = tcpOf(this.conn);
    if (!tcp || tcp.destroyed) return;
    tcp.cork();
    this.corked = tcp;
    corked.push(this);
    if (corked.length === 1) setImmediate(uncorkAll);
  }

  /**
   * Ends the turn's cork. Engine.IO's WebSocket transport hands the socket
   * the first packet of a turn and holds the rest until the send callback of
   * that one ("drain"), which comes only after the uncork: two writes per
   * turn, the second a turn late. What it holds is handed over here, before
   * the uncork, so the whole turn leaves in one write. Its queue and the
   * WebSocket's both count in `waiting`, so the bound is as strict; Engine.IO
   * still sees one send, with its callbacks and "drain", per flush, in order.
   * Long-polling is left alone: there, writable means a poll is waiting.
   */
  endTurn(): void {
    const tcp = this.corked;
    if (!tcp) return;
    if (this.pending > 0 && !this.dropped) {
      const transport = this.conn.transport;
      const ws = wsOf(this.conn);
      if (
        transport.name === 'websocket' &&
        !transport.writable &&
        ws?.readyState === OPEN &&
        ws.bufferedAmount <= WRITE_THROUGH_BYTES
      ) {
        transport.writable = true;
        // biome-ignore lint/suspicious/noExplicitAny: Engine.IO's flush is private.
        (this.conn as any).flush();
      }
    }
    this.corked = undefined;
    if (!tcp.destroyed) tcp.uncork();
  }

  /** Bytes waiting for the client: Engine.IO's queue and the WebSocket's. */
  waiting(): number {
    return this.pending + (wsOf(this.conn)?.bufferedAmount ?? 0);
  }

  /**
   * Whether anything more may be built for this client. When what already
   * waits passes `max`, the client is dropped and the answer is not built.
   */
  canSend(max: number): boolean {
    if (this.dropped) return false;
    if (this.waiting() <= max) return true;
    this.dropSlow();
    return false;
  }

  /**
   * Whether the client keeps up, judged as `judgeTurn` says; when what it
   * left unread passes `max`, the client is dropped.
   */
  keepsUp(max: number): boolean {
    if (this.dropped) return false;
    this.judgeTurn();
    if (this.unread <= max) return true;
    this.dropSlow();
    return false;
  }

  /**
   * Once per event-loop turn, notes what the client left unread: the bytes
   * waiting now, less those queued in its last busy turn. The deliveries of
   * one turn (a group commit's acknowledgements, room messages and inbox
   * updates) leave in one write that the kernel may take only in part; a
   * client that reads is still taking them in, but one that does not leaves
   * the turns before unread, and that passes the bound.
   */
  private judgeTurn(): void {
    const turn = currentTurn();
    if (turn === this.turn) return;
    this.turn = turn;
    if (this.queuedThisTurn > 0) this.lastBurst = this.queuedThisTurn;
    this.queuedThisTurn = 0;
    this.unread = Math.max(0, this.waiting() - this.lastBurst);
  }

  /** Cuts a client that does not read: what waits for it is discarded, never sent. */
  dropSlow(): void {
    if (this.dropped) return;
    this.dropped = true;
    this.onDrop('slow_consumer');
    // Terminating first releases the descriptor and the bytes the WebSocket
    // holds now; a close frame could not get past the unread bytes anyway.
    wsOf(this.conn)?.terminate();
    this.conn.close(true);
  }

  private dropFlooder(): void {
    this.dropped = true;
    this.onDrop('flood');
    if (this.socket) this.socket.disconnect(true);
    else this.conn.close();
    this.scheduleCut();
  }

  /** A polite close that is not finished within the grace period is made final. */
  private scheduleCut(): void {
    if (this.cutTimer !== undefined) return;
    this.cutTimer = setTimeout(() => {
      wsOf(this.conn)?.terminate();
      if (this.conn.readyState !== 'closed') this.conn.close(true);
    }, CLOSE_GRACE_MS);
    this.cutTimer.unref();
  }
}
