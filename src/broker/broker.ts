/**
 * Fan-out between the nodes of a deployment. One implementation per backend
 * (`memory.ts` for a single node, later `redis.ts`); `app.ts` picks one.
 *
 * Guarantees every implementation gives:
 * - Every subscriber of a topic, on every node, receives the publications of
 *   that topic in one order that all of them share. The publishing node gets
 *   its own publications through the same path, never by a shortcut, so its
 *   local subscribers see the same order as everyone else's.
 * - At most once: a node cut off from the broker misses what is published
 *   meanwhile. Durable history is the Store's job, not the Broker's.
 * - Payloads are opaque strings; the broker never parses them.
 */
import type { ServerOptions } from 'socket.io';

export type Unsubscribe = () => void;

/** Called when publications may have been missed; see `Broker.onMissed`. */
export type MissedListener = (since: number | undefined) => void;

/** The earlier of two `since` times of missed publications, either of which may be unknown. */
export function earliestSince(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  return b === undefined ? a : Math.min(a, b);
}

/** A Socket.IO adapter: how the request chat's rooms reach the sockets of every node. */
export type RoomAdapter = ServerOptions['adapter'];

export interface Broker {
  publish(topic: string, payload: string): void;
  /**
   * As `publish`, resolving with how many subscribers received it: on Redis
   * the subscribed connections, one per node; in memory the handlers. Rejects
   * when the publication was dropped (the broker is unreachable).
   */
  publishCounted(topic: string, payload: string): Promise<number>;
  subscribe(topic: string, onMessage: (payload: string) => void): Unsubscribe;
  /**
   * Resolves once this node's subscription to `topic` has taken effect: what
   * is published after that is heard. Resolves at once when not subscribed.
   */
  subscribed(topic: string): Promise<void>;
  /**
   * Resolves once this node has heard every publication the broker handled
   * before this call, on every topic it subscribes to. A publication stored
   * after it was published, and found by a read of the store made before
   * this call, is then heard already, never after the read's result is used.
   */
  caughtUp(): Promise<void>;
  /**
   * Calls `listener` whenever publications may have been missed here: this
   * node, or another node of the deployment, was cut off from the broker and
   * is back, its subscriptions in effect again. What nodes keep in memory
   * from publications (a stream's rules, who is in a room) is to be read
   * again from the store then. Never called by a broker that loses nothing.
   *
   * `since` (epoch ms, undefined when not known) is when that node last knew
   * its publications and subscriptions in effect, less a margin for clocks
   * and for changes stamped a moment before they were published: what was
   * stored from then on may have been missed, to be sent again from the
   * store (edits, deletions), bounded by that time.
   */
  onMissed(listener: MissedListener): Unsubscribe;
  /** Socket.IO's adapter on the same backend; undefined keeps Socket.IO's in-process rooms. */
  roomAdapter(): RoomAdapter | undefined;
  /** Resolves when the broker is reachable; for readiness. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
