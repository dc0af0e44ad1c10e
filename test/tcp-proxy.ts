/**
 * A TCP proxy in front of a real service, so a test can take the service away
 * from charla (and give it back) without touching the service that other tests
 * and programs on the machine share.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

export class TcpProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private held: Array<() => void> | undefined;
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
        client.pipe(upstream).pipe(client);
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
