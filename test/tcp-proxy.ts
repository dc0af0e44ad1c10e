/**
 * A TCP proxy in front of a real service, so a test can take the service away
 * from charla (and give it back) without touching the service that other tests
 * and programs on the machine share.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

/** Who sent the bytes: the program connecting through the proxy, or the service behind it. */
export type Side = 'client' | 'service';

/** One direction of one connection: what it carries, and what waits while its side is paused. */
interface Way {
  from: Side;
  to: Socket;
  waiting: Buffer[];
  /** The sender ended while some of it waited: the end goes after it. */
  ended: boolean;
  /** Paused on its own, by `pauseAt`: the other connections go on. */
  held: boolean;
}

/** What `pauseAt` looks for, and how often it has passed (or stopped) so far. */
interface Mark {
  side: Side;
  text: Buffer;
  /** Chunks that carried it: the first one stopped, the rest went on. */
  seen: number;
}

export class TcpProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private held: Array<() => void> | undefined;
  private readonly ways = new Set<Way>();
  private readonly paused = { client: false, service: false };
  private mark: Mark | undefined;
  port = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  /** Listens (again, on the same port once it has one) and forwards every connection. */
  async start(): Promise<void> {
    const server = createServer((client) => {
      this.sockets.add(client);
      client.on('close', () => this.sockets.delete(client));
      client.on('error', () => client.destroy());
      const forward = () => {
        if (client.destroyed) return;
        const upstream = connect(this.targetPort, this.targetHost);
        this.sockets.add(upstream);
        upstream.on('close', () => this.sockets.delete(upstream));
        for (const s of [client, upstream]) {
          s.on('error', () => {
            client.destroy();
            upstream.destroy();
          });
        }
        this.carry(client, upstream, 'client');
        this.carry(upstream, client, 'service');
      };
      // Held: what the client sends waits, unread, until `release()`.
      if (this.held) this.held.push(forward);
      else forward();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.port = (server.address() as { port: number }).port;
  }

  /** Connections made from now on are accepted and get no answer until `release()`: the service stalls. */
  hold(): void {
    this.held ??= [];
  }

  /** The held connections reach the service, with what they sent meanwhile. */
  release(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const forward of held) forward();
  }

  /**
   * What `side` sends, on the open connections and on new ones, waits in the
   * proxy, in order, until `resume(side)`: the other direction goes on.
   */
  pause(side: Side): void {
    this.paused[side] = true;
  }

  /**
   * The first connection on which `side` sends `text` from now on (a query,
   * say) waits from that chunk on, in the proxy, until `resume(side)`; the
   * other connections go on, the same text on them too. `seen()` counts
   * the chunks that carried it.
   */
  pauseAt(side: Side, text: string): void {
    this.mark = { side, text: Buffer.from(text), seen: 0 };
  }

  /** How many chunks carried the text of the last `pauseAt`. */
  seen(): number {
    return this.mark?.seen ?? 0;
  }

  resume(side: Side): void {
    this.paused[side] = false;
    for (const way of this.ways) {
      if (way.from !== side) continue;
      way.held = false;
      for (const chunk of way.waiting.splice(0)) if (!way.to.destroyed) way.to.write(chunk);
      if (way.ended) way.to.end();
    }
  }

  /** Bytes `side` sent that wait while it is paused. */
  waiting(side: Side): number {
    let n = 0;
    for (const way of this.ways) if (way.from === side) for (const c of way.waiting) n += c.length;
    return n;
  }

  private carry(from: Socket, to: Socket, side: Side): void {
    const way: Way = { from: side, to, waiting: [], ended: false, held: false };
    this.ways.add(way);
    from.on('data', (chunk: Buffer) => {
      const mark = this.mark;
      if (mark?.side === side && chunk.includes(mark.text)) {
        if (mark.seen++ === 0) way.held = true;
      }
      if (this.paused[side] || way.held) way.waiting.push(chunk);
      else if (!to.destroyed) to.write(chunk);
    });
    from.on('end', () => {
      if (way.waiting.length > 0) way.ended = true;
      else to.end();
    });
    from.on('close', () => this.ways.delete(way));
  }

  /** The service is gone: open connections drop and new ones are refused. */
  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise((r) => server.close(r));
  }

  async stop(): Promise<void> {
    await this.cut();
  }
}
