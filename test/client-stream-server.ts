/**
 * A scripted stream server on `ws` for the StreamChat suites: it speaks the
 * frames of protocol sections 2 and 7 as each test scripts them, including
 * what a healthy charla never does (duplicates, silence, drops).
 */
import type { AddressInfo } from 'node:net';
import { type WebSocket, WebSocketServer } from 'ws';

/** A scripted stream server on `ws`, speaking the frames of protocol sections 2 and 7. */
export class ScriptedServer {
  readonly wss: WebSocketServer;
  readonly urls: string[] = [];
  readonly received: unknown[] = [];
  onConnection: (ws: WebSocket, url: string) => void = () => {};

  constructor() {
    this.wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    this.wss.on('connection', (ws, req) => {
      this.urls.push(req.url ?? '');
      ws.on('message', (d) => this.received.push(JSON.parse(String(d))));
      this.onConnection(ws, req.url ?? '');
    });
  }

  get url(): string {
    return `http://127.0.0.1:${(this.wss.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    return new Promise((r) => this.wss.close(() => r()));
  }
}

export const chatFrame = (id: string, message = `m-${id}`) =>
  JSON.stringify({
    type: 'chat',
    data: { id, user: 'u', userId: '1', message, sentAt: new Date().toISOString() },
  });
export const hex = (n: number) => n.toString(16).padStart(24, '0');
