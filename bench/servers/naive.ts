/**
 * Reference 1, the naive server: `ws` with one `JSON.stringify` and one
 * `send` per viewer. Speaks the stream protocol's happy path only.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type WebSocket, WebSocketServer } from 'ws';

const rooms = new Map<string, Set<WebSocket>>();
let seq = 0;
const server = createServer();
const wss = new WebSocketServer({ server, perMessageDeflate: false });

wss.on('connection', (ws, req) => {
  const url = new URL(req.url ?? '/', 'http://x');
  const key = url.pathname.split('/')[3] ?? '';
  let room = rooms.get(key);
  if (!room) {
    room = new Set();
    rooms.set(key, room);
  }
  const members = room;
  members.add(ws);
  const user = url.searchParams.get('token') || req.headers.authorization ? 'user' : null;
  ws.send(JSON.stringify({ type: 'auth', data: { authenticated: user !== null } }));
  ws.on('message', (data) => {
    const frame = JSON.parse(String(data));
    if (frame.type !== 'chat') return;
    const chat = {
      type: 'chat',
      data: {
        user,
        message: frame.data.message,
        id: (seq++).toString(16).padStart(24, '0'),
        userId: '1',
        sentAt: new Date().toISOString(),
      },
    };
    for (const viewer of members) viewer.send(JSON.stringify(chat));
  });
  ws.on('close', () => members.delete(ws));
});

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`);
});
