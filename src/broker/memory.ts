/**
 * The single-node Broker: delivery is a synchronous call, so the order of
 * `publish` calls is the order every subscriber sees.
 */
import type { Broker, MissedListener, RoomAdapter, Unsubscribe } from './broker.js';

type Handler = (payload: string) => void;

export class MemoryBroker implements Broker {
  private readonly topics = new Map<string, Set<Handler>>();

  publish(topic: string, payload: string): void {
    const handlers = this.topics.get(topic);
    if (!handlers) return;
    for (const handler of handlers) handler(payload);
  }

  async publishCounted(topic: string, payload: string): Promise<number> {
    const count = this.topics.get(topic)?.size ?? 0;
    this.publish(topic, payload);
    return count;
  }

  subscribe(topic: string, onMessage: Handler): Unsubscribe {
    let handlers = this.topics.get(topic);
    if (!handlers) {
      handlers = new Set();
      this.topics.set(topic, handlers);
    }
    handlers.add(onMessage);
    return () => {
      handlers.delete(onMessage);
      if (handlers.size === 0 && this.topics.get(topic) === handlers) this.topics.delete(topic);
    };
  }

  /** A subscription takes effect as it is made. */
  async subscribed(_topic: string): Promise<void> {}

  /** Delivery is synchronous: nothing is ever on its way. */
  async caughtUp(): Promise<void> {}

  /** Nothing is ever missed in one process. */
  onMissed(_listener: MissedListener): Unsubscribe {
    return () => {};
  }

  roomAdapter(): RoomAdapter | undefined {
    return undefined;
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    this.topics.clear();
  }
}
