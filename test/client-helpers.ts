/** Test helpers for the client library: recorders and polling waits. */
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import type { StreamChat, StreamChatMessage } from '../src/client/index.js';

/** Records every event a StreamChat emits, in order. */
export class Recorder {
  readonly chats: StreamChatMessage[] = [];
  readonly events: Array<[string, unknown]> = [];

  constructor(readonly chat: StreamChat) {
    chat.on('chat', (m) => {
      this.chats.push(m);
      this.events.push(['chat', m]);
    });
    for (const e of ['open', 'auth', 'history', 'stream', 'delete', 'error', 'close'] as const) {
      chat.on(e, (x: unknown) => this.events.push([e, x]));
    }
  }

  texts(): string[] {
    return this.chats.map((m) => m.message);
  }

  of(event: string): any[] {
    return this.events.filter(([e]) => e === event).map(([, x]) => x);
  }
}

export async function until(pred: () => boolean, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * A TCP proxy in front of charla that can swallow what the server sends
 * (while still forwarding what the client sends) and drop every connection.
 */
export class BlackholeProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  blackholeDownstream = false;
  port = 0;

  constructor(private readonly targetPort: number) {}

  async start(): Promise<void> {
    const server = createServer((client) => {
      const upstream = tcpConnect(this.targetPort, '127.0.0.1');
      for (const sock of [client, upstream]) {
        this.sockets.add(sock);
        sock.on('close', () => this.sockets.delete(sock));
        sock.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.on('data', (chunk: Buffer) => upstream.write(chunk));
      upstream.on('data', (chunk: Buffer) => {
        if (!this.blackholeDownstream) client.write(chunk);
      });
      client.on('end', () => upstream.end());
      upstream.on('end', () => client.end());
    });
    // Again on the same port after a stop, so clients come back through it.
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', () => resolve()));
    this.server = server;
    this.port = (server.address() as { port: number }).port;
  }

  dropConnections(): void {
    for (const sock of this.sockets) sock.destroy();
  }

  async stop(): Promise<void> {
    this.dropConnections();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise((r) => server.close(r));
  }
}
