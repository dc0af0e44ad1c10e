/**
 * "Every chat published so far is stored", agreed by every node, for the
 * reads of the store that make a `history` frame.
 *
 * Why: a chat is published at once and stored a moment later, in a batch, by
 * the node that accepted it. A node reading the store for a history hears on
 * the stream's topic only what is published after its subscription took
 * effect: a chat published before that and stored after the read would be in
 * neither the history nor the live chats. Storing this node's own batch first
 * is not enough; the other nodes' must be stored too.
 *
 * How: once its subscriptions took effect, the node publishes a request on
 * `streams:settle`; PUBLISH answers how many nodes heard it. Every node that
 * hears one stores what it accepted so far and answers. A chat is queued for
 * storage before it is published, and Redis handles its PUBLISH before the
 * request's (or the reader hears it live), so each node has it queued by the
 * time it hears the request. When every node that heard the request has
 * answered, every chat published before it is stored, or its write failed and
 * was logged: a read now, with the live chats heard since the subscription,
 * misses none.
 *
 * Bounds: the wait ends after `maxMs` (STREAM_HISTORY_SETTLE_MS) at most; a
 * node that has not answered by then (stalled on its database, or gone) makes
 * it answer false, and the caller flags its history `gap: true`. At most one
 * request is in flight and one more waits behind it, shared by every caller
 * that asked meanwhile, however many viewers join. Nothing here is on the
 * fan-out path: chats are published as before.
 */
import type { Broker, Unsubscribe } from '../broker/broker.js';
import type { Logger } from '../observability/log.js';

const SETTLE_TOPIC = 'streams:settle';

/** What flows on the settle topic. */
type SettleEvent = { kind: 'request'; token: string } | { kind: 'stored'; token: string };

export interface SettleDeps {
  broker: Broker;
  log: Logger;
  /** This node's id, unique among the nodes. */
  node: string;
  /** Resolves when every chat this node accepted so far is stored (or failed and was logged). */
  flush: () => Promise<void>;
  /** The longest wait for every node's answer. */
  maxMs: number;
}

interface Waiting {
  answers: number;
  /** How many nodes heard the request; undefined until PUBLISH has answered. */
  nodes: number | undefined;
  done: (settled: boolean) => void;
}

export class StoreSettle {
  private readonly unsubscribe: Unsubscribe;
  private readonly waiting = new Map<string, Waiting>();
  private running: Promise<boolean> | undefined;
  private queued: Promise<boolean> | undefined;
  private sequence = 0;

  constructor(private readonly deps: SettleDeps) {
    this.unsubscribe = deps.broker.subscribe(SETTLE_TOPIC, (payload) => this.onEvent(payload));
  }

  /**
   * Resolves true once every chat any node published before this call is
   * stored; false when that was not confirmed within `maxMs`. The caller's
   * subscription to the stream's topic must have taken effect first.
   */
  settled(): Promise<boolean> {
    // The one waiting starts after this call: it covers this caller too.
    if (this.queued) return this.queued;
    if (!this.running) return this.start();
    // The one in flight was requested before this call and may not cover it.
    const queued = this.running.then(() => {
      this.queued = undefined;
      return this.start();
    });
    this.queued = queued;
    return queued;
  }

  /** Stops answering and ends the waits (false); for shutdown. */
  close(): void {
    this.unsubscribe();
    for (const w of this.waiting.values()) w.done(false);
  }

  private start(): Promise<boolean> {
    const run = this.request().finally(() => {
      if (this.running === run) this.running = undefined;
    });
    this.running = run;
    return run;
  }

  private async request(): Promise<boolean> {
    const token = `${this.deps.node}:${++this.sequence}`;
    let timer: NodeJS.Timeout | undefined;
    const answered = new Promise<boolean>((resolve) => {
      const done = (settled: boolean) => {
        clearTimeout(timer);
        this.waiting.delete(token);
        resolve(settled);
      };
      // Registered before publishing: on the memory broker answers may come at once.
      this.waiting.set(token, { answers: 0, nodes: undefined, done });
      timer = setTimeout(() => done(false), this.deps.maxMs);
      timer.unref();
    });
    // Not awaited: a Redis that does not answer (stalled, or not up yet, its
    // commands queued) must not hold the caller past `maxMs`.
    void this.ask(token);
    return answered;
  }

  private async ask(token: string): Promise<void> {
    try {
      await this.deps.broker.subscribed(SETTLE_TOPIC);
      const event: SettleEvent = { kind: 'request', token };
      const nodes = await this.deps.broker.publishCounted(SETTLE_TOPIC, JSON.stringify(event));
      const w = this.waiting.get(token);
      if (w) {
        w.nodes = nodes;
        // Not even this node heard it: its own subscription is not in effect.
        if (nodes < 1) w.done(false);
        else if (w.answers >= nodes) w.done(true);
      }
    } catch (err) {
      this.deps.log.warn({ err }, 'asking the nodes to store their chats failed');
      this.waiting.get(token)?.done(false);
    }
  }

  private onEvent(payload: string): void {
    const event = parseSettleEvent(payload);
    if (event === undefined) {
      this.deps.log.warn({ bytes: payload.length }, 'ignored a malformed settle event');
      return;
    }
    if (event.kind === 'request') {
      const answer: SettleEvent = { kind: 'stored', token: event.token };
      void this.deps
        .flush()
        .then(() => this.deps.broker.publish(SETTLE_TOPIC, JSON.stringify(answer)));
      return;
    }
    const w = this.waiting.get(event.token);
    if (w === undefined) return;
    w.answers++;
    if (w.nodes !== undefined && w.answers >= w.nodes) w.done(true);
  }
}

function parseSettleEvent(payload: string): SettleEvent | undefined {
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { kind, token } = value as Record<string, unknown>;
  if ((kind === 'request' || kind === 'stored') && typeof token === 'string') {
    return { kind, token };
  }
  return undefined;
}
