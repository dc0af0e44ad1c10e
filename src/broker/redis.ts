/**
 * The Broker across nodes, on Redis pub/sub: one connection publishes, one
 * subscribes. Redis delivers the messages of a channel to every subscriber in
 * the order it received the PUBLISHes, and this node hears its own
 * publications only from Redis, so all nodes share that one order.
 *
 * Channels are `prefix + topic`, so deployments can share a Redis. Two
 * deployments' prefixes must not be prefixes of one another.
 *
 * Losing Redis: local clients stay connected; what is published meanwhile is
 * dropped (at most once, as the interface says), `ping()` rejects so the node
 * reports not ready, and ioredis reconnects by itself and resubscribes. The
 * loss and the recovery are logged once each.
 */

import { randomUUID } from 'node:crypto';
import { createAdapter } from '@socket.io/redis-adapter';
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '../observability/log.js';
import type { Broker, MissedListener, RoomAdapter, Unsubscribe } from './broker.js';
import { endConnection } from './redis-connection.js';

type Handler = (payload: string) => void;

export interface RedisBrokerOptions {
  url: string;
  /** `REDIS_PREFIX`: the start of every channel name. */
  prefix: string;
  log: Logger;
}

/**
 * A node back in touch with Redis says so here, once its subscriptions are in
 * effect again, as JSON `{node, since}`: every node, itself included, then
 * knows that publications made from `since` on may have been missed (its own
 * were dropped, and it missed the others'), reads again what it keeps of
 * them, and sends its clients the changes stored since then.
 */
const RECOVERED_TOPIC = 'broker:recovered';

/**
 * How much earlier than the last sign of a working connection publications
 * may have been missed: a change is stamped (and stored) a moment before it
 * is published, and the nodes' clocks differ by a little.
 */
const MISSED_MARGIN_MS = 10_000;

/** A recovery announced on RECOVERED_TOPIC: which node, and since when it may have missed publications. */
interface Recovery {
  node: string;
  since: number | undefined;
}

/** What another node announced; a bare node id (no `since`) is understood too. */
function parseRecovery(payload: string): Recovery {
  try {
    const r: unknown = JSON.parse(payload);
    if (typeof r === 'object' && r !== null && typeof (r as Recovery).node === 'string') {
      const since = (r as Recovery).since;
      return { node: (r as Recovery).node, since: Number.isFinite(since) ? since : undefined };
    }
  } catch {
    // Not JSON: a bare node id.
  }
  return { node: payload, since: undefined };
}

/** How long `ping()` waits for PONG before calling Redis unreachable. */
const PING_TIMEOUT_MS = 2_000;

type Health = 'connecting' | 'up' | 'down';

export class RedisBroker implements Broker {
  private readonly pub: Redis;
  private readonly sub: Redis;
  private readonly prefix: string;
  private readonly log: Logger;
  private readonly topics = new Map<string, Set<Handler>>();
  /** Each subscribed topic's SUBSCRIBE, settled once Redis answered it. */
  private readonly subscribing = new Map<string, Promise<void>>();
  private health: Health = 'connecting';
  /** Publications dropped during the current outage; reported on recovery. */
  private dropped = 0;
  private closed = false;
  private readonly missedListeners = new Set<MissedListener>();
  /** When the subscriber last heard a message, and the publisher last had an answer (epoch ms). */
  private heardAt = Date.now();
  private answeredAt = Date.now();
  /** While cut off: from when publications may have been missed (see `onMissed`). */
  private missedSince: number | undefined;
  /** This node, in its announcements of a recovery, so that it does not act on its own twice. */
  private readonly node = randomUUID();
  /** Back from an outage, and not yet told its listeners: not ready until then. */
  private catchingUp = false;

  constructor(options: RedisBrokerOptions) {
    this.prefix = options.prefix;
    this.log = options.log;
    const common: RedisOptions = {
      // RESP2 works with every Redis a deployment may run (HELLO needs 6+).
      protocol: 2,
      // Keep trying forever, at most every 2 s: Redis coming back must be enough.
      retryStrategy: (times) => Math.min(times * 100, 2_000),
      // Queued commands wait for the connection rather than failing after N retries:
      // subscriptions made while Redis is away apply when it returns.
      maxRetriesPerRequest: null,
    };
    // Names let an operator (or a test) find this node's connections in CLIENT LIST.
    const name = `${options.prefix.replace(/[^A-Za-z0-9_:.-]/g, '_')}${process.pid}`;
    this.pub = new Redis(options.url, { ...common, connectionName: `${name}:pub` });
    this.sub = new Redis(options.url, { ...common, connectionName: `${name}:sub` });
    this.sub.on('message', (channel: string, payload: string) => this.onMessage(channel, payload));
    for (const conn of [this.pub, this.sub]) {
      conn.on('ready', () => this.onReady());
      conn.on('error', (err: Error) => this.onLost(err));
      conn.on('close', () => this.onLost());
    }
    this.subscribe(RECOVERED_TOPIC, (payload) => {
      const recovery = parseRecovery(payload);
      if (recovery.node !== this.node) this.missed(recovery.since);
    });
  }

  publish(topic: string, payload: string): void {
    // Before the first connection commands queue and go out once connected;
    // after a loss they are dropped rather than delivered late, out of turn.
    if (this.health !== 'connecting' && this.pub.status !== 'ready') {
      this.dropped++;
      return;
    }
    this.pub.publish(this.prefix + topic, payload).then(this.answered, (err: unknown) => {
      this.dropped++;
      this.onLost(err as Error);
    });
  }

  async publishCounted(topic: string, payload: string): Promise<number> {
    if (this.health !== 'connecting' && this.pub.status !== 'ready') {
      this.dropped++;
      throw new Error(`redis is ${this.pub.status}`);
    }
    try {
      // PUBLISH answers how many connections received it: one per subscribed node.
      const count = await this.pub.publish(this.prefix + topic, payload);
      this.answered();
      return count;
    } catch (err) {
      this.dropped++;
      this.onLost(err as Error);
      throw err;
    }
  }

  subscribe(topic: string, onMessage: Handler): Unsubscribe {
    let handlers = this.topics.get(topic);
    if (!handlers) {
      handlers = new Set();
      this.topics.set(topic, handlers);
      // Commands on one connection run in order, so a SUBSCRIBE after an
      // UNSUBSCRIBE of the same channel leaves it subscribed.
      const done = this.sub.subscribe(this.prefix + topic).then(() => {});
      done.catch((err: unknown) => this.onLost(err as Error));
      this.subscribing.set(topic, done);
    }
    const set = handlers;
    set.add(onMessage);
    return () => {
      if (!set.delete(onMessage) || set.size > 0 || this.topics.get(topic) !== set) return;
      this.topics.delete(topic);
      this.subscribing.delete(topic);
      if (!this.closed) {
        this.sub
          .unsubscribe(this.prefix + topic)
          .catch((err: unknown) => this.onLost(err as Error));
      }
    };
  }

  /** The SUBSCRIBE of `topic` was answered: Redis delivers it what is published from then on. */
  subscribed(topic: string): Promise<void> {
    return this.subscribing.get(topic) ?? Promise.resolve();
  }

  /**
   * Redis answers a PING on the subscriber connection after every message it
   * sent there before, and ioredis hands them over in order: once PONG is
   * back, they have all been heard.
   */
  async caughtUp(): Promise<void> {
    await this.sub.ping();
  }

  onMissed(listener: MissedListener): Unsubscribe {
    this.missedListeners.add(listener);
    return () => this.missedListeners.delete(listener);
  }

  /**
   * Socket.IO's official Redis adapter on this broker's two connections, its
   * channels under the same prefix. Room broadcasts inherit the broker's
   * behaviour when Redis is lost: local sockets still get them, other nodes miss them.
   */
  roomAdapter(): RoomAdapter {
    const onError = (err: unknown) => this.onLost(err as Error);
    return createAdapter(handled(this.pub, onError), handled(this.sub, onError), {
      key: `${this.prefix}socket.io`,
    });
  }

  async ping(): Promise<void> {
    if (this.pub.status !== 'ready' || this.sub.status !== 'ready') {
      throw new Error(
        `redis is ${this.pub.status === 'ready' ? this.sub.status : this.pub.status}`,
      );
    }
    if (this.catchingUp) throw new Error('redis is back; resubscribing');
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.pub.ping(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error('redis did not answer PING')), PING_TIMEOUT_MS);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.topics.clear();
    this.subscribing.clear();
    await Promise.all([this.pub, this.sub].map(endConnection));
  }

  private onMessage(channel: string, payload: string): void {
    this.heardAt = Date.now();
    if (!channel.startsWith(this.prefix)) return;
    const handlers = this.topics.get(channel.slice(this.prefix.length));
    if (!handlers) return;
    for (const handler of handlers) handler(payload);
  }

  private onReady(): void {
    if (this.pub.status !== 'ready' || this.sub.status !== 'ready' || this.health === 'up') return;
    if (this.health === 'down') {
      this.log.info({ dropped: this.dropped }, 'redis connection recovered');
      // ioredis sends the SUBSCRIBEs again before 'ready' is emitted: once
      // this PING is answered they are in effect. This node catches up then
      // (and reports ready only after that), and tells the others to.
      this.catchingUp = true;
      this.sub.ping().then(
        () => {
          // Lost again meanwhile: the next recovery announces, from the same `since`.
          if (this.closed || this.health !== 'up') return;
          this.catchingUp = false;
          const since = this.missedSince;
          this.missedSince = undefined;
          this.heardAt = Date.now();
          this.answeredAt = this.heardAt;
          this.missed(since);
          const recovery: Recovery = { node: this.node, since };
          this.publish(RECOVERED_TOPIC, JSON.stringify(recovery));
        },
        (err: unknown) => this.onLost(err as Error),
      );
    }
    this.health = 'up';
    this.dropped = 0;
  }

  private missed(since: number | undefined): void {
    for (const listener of this.missedListeners) listener(since);
  }

  private readonly answered = (): void => {
    this.answeredAt = Date.now();
  };

  private onLost(err?: Error): void {
    if (this.closed || this.health === 'down') return;
    if (this.health === 'up' && this.pub.status === 'ready' && this.sub.status === 'ready') return;
    this.health = 'down';
    // Kept from an earlier loss whose recovery was not announced yet.
    this.missedSince ??= Math.min(this.heardAt, this.answeredAt) - MISSED_MARGIN_MS;
    this.log.warn(
      { err: err?.message },
      'redis connection lost; serving local clients, fan-out paused',
    );
  }
}

/**
 * `conn` as the Socket.IO adapter gets it: the adapter sends its commands
 * (room broadcasts, its SUBSCRIBEs, the UNSUBSCRIBEs of its close) without
 * handling their failure. While Redis is away they wait, and fail together
 * when the node closes; unhandled, each would be a rejection that ends a
 * process run with Node's default `--unhandled-rejections=throw`.
 */
function handled(conn: Redis, onError: (err: unknown) => void): Redis {
  // One wrapper per method, made once: a room broadcast makes no closure of its own.
  const wrapped = new Map<PropertyKey, (...args: unknown[]) => unknown>();
  return new Proxy(conn, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property, target);
      // The constructor stays itself: the adapter reads its name to tell a Cluster.
      if (typeof value !== 'function' || property === 'constructor') return value;
      let wrapper = wrapped.get(property);
      if (wrapper === undefined) {
        wrapper = (...args: unknown[]) => {
          const result: unknown = Reflect.apply(
            Reflect.get(target, property, target) as (...a: unknown[]) => unknown,
            target,
            args,
          );
          if (result instanceof Promise) result.catch(onError);
          return result;
        };
        wrapped.set(property, wrapper);
      }
      return wrapper;
    },
  });
}
