/**
 * A small typed event emitter that runs in browsers and Node alike (no
 * `node:events`). A listener that throws does not stop the others, and does
 * not break the connection that emitted: the error is reported on the next
 * turn, where the host (browser console, Node's uncaughtException) sees it.
 */

/** Event name → listener signature. */
// biome-ignore lint/suspicious/noExplicitAny: listeners of any shape; each map narrows its own.
export type EventMap<Events> = { [E in keyof Events]: (...args: any[]) => void };

export class Emitter<Events extends EventMap<Events>> {
  private readonly listeners = new Map<keyof Events, Set<Events[keyof Events]>>();

  /** Adds `listener`; returns a function that removes it. */
  on<E extends keyof Events>(event: E, listener: Events[E]): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Adds `listener` for the next `event` only. */
  once<E extends keyof Events>(event: E, listener: Events[E]): () => void {
    const wrapped = ((...args: Parameters<Events[E]>) => {
      off();
      listener(...args);
    }) as Events[E];
    const off = this.on(event, wrapped);
    return off;
  }

  off<E extends keyof Events>(event: E, listener: Events[E]): void {
    this.listeners.get(event)?.delete(listener);
  }

  protected emit<E extends keyof Events>(event: E, ...args: Parameters<Events[E]>): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  protected removeAllListeners(): void {
    this.listeners.clear();
  }
}
