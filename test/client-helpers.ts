/** Test helpers for the client library: recorders, polling waits, a proxy and a server process. */
import { spawn } from 'node:child_process';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import type { StreamChat, StreamChatMessage } from '../src/client/index.js';
import { type ChildServer, MAIN } from './helpers.js';

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

export { until } from './helpers.js';

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

/**
 * `node dist/src/main.js` as its own process, as `spawnServer` starts it, but
 * with a start-up allowance for a loaded machine, and killed when it does not
 * start in time (a restart test must not leave a server holding its port).
 */
export function spawnCharla(env: Record<string, string>, startMs = 60_000): Promise<ChildServer> {
  const child = spawn(process.execPath, [MAIN], {
    env: { PATH: process.env.PATH ?? '', PORT: '0', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not start within ${startMs} ms:\n${out}`));
    }, startMs);
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const m = /"url":"(http:\/\/[^"]+)".*"msg":"listening"/.exec(out);
      if (!m) return;
      clearTimeout(timer);
      resolve({
        child,
        url: m[1] as string,
        output: () => out,
        stop(signal = 'SIGTERM') {
          if (child.exitCode === null && child.signalCode === null) child.kill(signal);
          return exited;
        },
      });
    });
    child.stderr.on('data', (c: Buffer) => {
      out += c.toString();
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${out}`));
    });
  });
}
