/**
 * A real `socket.io-client` v4 socket for tests, recording every event it
 * receives so a test can assert both what arrived and what did not.
 */
import { io, type ManagerOptions, type Socket, type SocketOptions } from 'socket.io-client';

export type Options = Partial<ManagerOptions & SocketOptions>;

export class RequestClient {
  readonly events: Array<[string, any]> = [];

  private constructor(readonly socket: Socket) {
    socket.onAny((event: string, payload: unknown) => this.events.push([event, payload]));
  }

  /** Connects with `auth: {token}` (unless `options` say otherwise) and waits for it. */
  static async connect(url: string, token: string | undefined, options: Options = {}) {
    const socket = io(url, {
      transports: ['websocket'],
      reconnection: false,
      forceNew: true,
      ...(token === undefined ? {} : { auth: { token } }),
      ...options,
    });
    const client = new RequestClient(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('connect_error', (err) => {
        socket.close();
        reject(err);
      });
    });
    return client;
  }

  /** The `connect_error` a connection attempt ends with (fails the test if it connects). */
  static async refusal(url: string, options: Options): Promise<Error & { data?: any }> {
    const socket = io(url, {
      transports: ['websocket'],
      reconnection: false,
      forceNew: true,
      ...options,
    });
    try {
      return await new Promise((resolve, reject) => {
        socket.once('connect', () => reject(new Error('the connection was accepted')));
        socket.once('connect_error', resolve);
      });
    } finally {
      socket.close();
    }
  }

  /** Emits with an acknowledgement and resolves with its argument. */
  ask(event: string, payload?: unknown): Promise<any> {
    const s = this.socket.timeout(5_000);
    return payload === undefined ? s.emitWithAck(event) : s.emitWithAck(event, payload);
  }

  /** Payloads received for `event`, in order. */
  of(event: string): any[] {
    return this.events.filter(([e]) => e === event).map(([, p]) => p);
  }

  /** Resolves with the first `event` payload matching `pred`, already received or not. */
  async next(event: string, pred: (p: any) => boolean = () => true, ms = 5_000): Promise<any> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.of(event).find(pred);
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`no "${event}" within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Resolves with the reason once the socket is disconnected. */
  disconnected(ms = 5_000): Promise<string> {
    if (!this.socket.connected) return Promise.resolve('already disconnected');
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`still connected after ${ms} ms`)), ms);
      this.socket.once('disconnect', (reason) => {
        clearTimeout(t);
        resolve(reason);
      });
    });
  }

  close(): void {
    this.socket.close();
  }
}

/** Lets in-flight events land, so a test can assert that nothing more arrives. */
export const settle = (ms = 150) => new Promise((r) => setTimeout(r, ms));
