/**
 * `requestUpdated` (protocol section 8) from the node that stored a change to
 * every socket, on every node, of each user it concerns, with write
 * coalescing of busy requests (`REQUEST_UPDATE_FLUSH_MS`).
 *
 * Each update is published once on the Broker topic `inbox`, with the rooms
 * it is for; every node, the publishing one included, hands what the broker
 * gives it to its own sockets. Coalescing happens there, on the receiving
 * node, per request and target (a user's room, or all lab users but some):
 * while a request is busy only the newest update per target is kept, and
 * what is kept goes out at the next flush, so a socket gets the same last
 * value it would get without coalescing (the last one to reach its node),
 * only fewer of the ones before. Coalescing where the updates are stored
 * instead would let one node's held update overtake another node's newer one.
 *
 * A request is busy for a target when that target was already sent an update
 * of the request since the last flush; a quiet one's update goes out at once,
 * so a lone update is never delayed, and a busy one's waits at most one flush
 * interval. While a request has an update waiting, every newer one for it
 * waits too, whatever its target, and they leave in the order they arrived:
 * a socket in two targets (a lab user's `lab:` and `user:` rooms) never gets
 * an older count after a newer one.
 */
import type { Broker, Unsubscribe } from '../broker/broker.js';
import type { RequestMessage } from '../core/messages.js';

export const INBOX_TOPIC = 'inbox';

export interface RequestUpdate {
  requestId: string;
  lastMessage: RequestMessage | null;
  unread: number;
}

/** Who gets an update: the sockets in any of `rooms`, less those in any of `except`. */
export interface UpdateTarget {
  rooms: string[];
  except: string[];
}

interface Frame extends UpdateTarget {
  update: RequestUpdate;
}

/** Delivers one update to this node's sockets in `target` (Socket.IO's local broadcast). */
export type Deliver = (target: UpdateTarget, update: RequestUpdate) => void;

export interface CoalesceOptions {
  /** The flush interval; 0: every update goes out at once. */
  flushMs: number;
  /**
   * Requests tracked plus updates held, at most; past it everything held goes
   * out at once and tracking starts over, so memory stays bounded whatever the rate.
   */
  maxTracked: number;
}

/** One request's coalescing state on this node, for the current flush interval. */
interface Tracked {
  /** Targets sent an update of this request since the last flush. */
  sent: Set<string>;
  /** The newest update per target still to send, oldest arrival first; null when none waits. */
  held: Map<string, Frame> | null;
}

const isStrings = (x: unknown) => Array.isArray(x) && x.every((r) => typeof r === 'string');

/** What another node published, checked before it is used: the topic is shared by every node. */
function isFrame(x: unknown): x is Frame {
  const f = x as Partial<Frame> | null;
  return (
    typeof f === 'object' &&
    f !== null &&
    isStrings(f.rooms) &&
    isStrings(f.except) &&
    typeof f.update === 'object' &&
    f.update !== null &&
    typeof f.update.requestId === 'string'
  );
}

const keyOf = (f: UpdateTarget) => `${f.rooms.join(',')}\u0000${f.except.join(',')}`;

/**
 * Per-node coalescing of one request's updates; pure of Socket.IO and the
 * Broker, so tests drive it with a recording `deliver`.
 */
export class UpdateCoalescer {
  private readonly tracked = new Map<string, Tracked>();
  private heldCount = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly options: CoalesceOptions,
    private readonly deliver: Deliver,
  ) {}

  /** Updates waiting for the next flush. */
  get held(): number {
    return this.heldCount;
  }

  offer(frame: Frame): void {
    if (this.options.flushMs <= 0) {
      this.deliver(frame, frame.update);
      return;
    }
    const id = frame.update.requestId;
    const key = keyOf(frame);
    const t = this.tracked.get(id);
    if (t?.held) {
      // Moved to the end: held updates leave in the order of their arrival.
      if (!t.held.delete(key)) this.heldCount++;
      t.held.set(key, frame);
    } else if (t?.sent.has(key)) {
      t.held = new Map([[key, frame]]);
      this.heldCount++;
    } else {
      this.deliver(frame, frame.update);
      if (t) t.sent.add(key);
      else this.tracked.set(id, { sent: new Set([key]), held: null });
      this.timer ??= setTimeout(() => this.flush(), this.options.flushMs).unref();
    }
    if (this.tracked.size + this.heldCount > this.options.maxTracked) this.flush();
  }

  /**
   * Sends every held update and starts a new interval: a request that sent
   * nothing in the one that ended is forgotten (quiet again).
   */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const tracked = [...this.tracked];
    this.tracked.clear();
    this.heldCount = 0;
    for (const [id, t] of tracked) {
      if (!t.held) continue;
      for (const frame of t.held.values()) this.deliver(frame, frame.update);
      this.tracked.set(id, { sent: new Set(t.held.keys()), held: null });
    }
    if (this.tracked.size > 0) {
      this.timer = setTimeout(() => this.flush(), this.options.flushMs).unref();
    }
  }

  /** Drops what is held (the sockets are going away) and stops the timer. */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.tracked.clear();
    this.heldCount = 0;
  }
}

/** The inbox updates of the whole deployment, as this node publishes and delivers them. */
export class RequestUpdates {
  private readonly coalescer: UpdateCoalescer;
  private readonly unsubscribe: Unsubscribe;
  /**
   * This node's last publication and its frame: when the broker hands it back
   * (at once, in one process) it is not parsed again.
   */
  private last: { payload: string; frame: Frame } | undefined;

  constructor(
    private readonly broker: Broker,
    options: CoalesceOptions,
    deliver: Deliver,
    onBadFrame: (err: unknown) => void,
  ) {
    this.coalescer = new UpdateCoalescer(options, deliver);
    this.unsubscribe = broker.subscribe(INBOX_TOPIC, (payload) => {
      const last = this.last;
      if (last !== undefined && payload === last.payload) {
        this.coalescer.offer(last.frame);
        return;
      }
      let frame: unknown;
      try {
        frame = JSON.parse(payload);
      } catch (err) {
        onBadFrame(err);
        return;
      }
      if (isFrame(frame)) this.coalescer.offer(frame);
      else onBadFrame(new Error('not an inbox update'));
    });
  }

  /** Sends `update` to the sockets of `target` on every node. */
  publish(target: UpdateTarget, update: RequestUpdate): void {
    this.publishCounts(update.requestId, update.lastMessage, [[target, update.unread]]);
  }

  /**
   * Sends one update of a request to each target, all with the same last
   * message and each with its own unread count. The last message is the
   * bulk of every payload: it is encoded once for all of them, and each
   * payload is `JSON.stringify` of its frame built around it.
   */
  publishCounts(
    requestId: string,
    lastMessage: RequestMessage | null,
    counts: ReadonlyArray<readonly [UpdateTarget, number]>,
  ): void {
    const idJson = JSON.stringify(requestId);
    const lastJson = JSON.stringify(lastMessage);
    for (const [target, unread] of counts) {
      const frame: Frame = {
        rooms: target.rooms,
        except: target.except,
        update: { requestId, lastMessage, unread },
      };
      const payload = `{"rooms":${JSON.stringify(target.rooms)},"except":${JSON.stringify(target.except)},"update":{"requestId":${idJson},"lastMessage":${lastJson},"unread":${JSON.stringify(unread)}}}`;
      this.last = { payload, frame };
      this.broker.publish(INBOX_TOPIC, payload);
    }
  }

  close(): void {
    this.unsubscribe();
    this.coalescer.close();
  }
}
