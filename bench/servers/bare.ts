/**
 * Reference 2, the bare server: what Node can do here. Each chat is framed
 * once and the same bytes are written to every viewer, each socket corked for
 * the event-loop turn. No auth, limits, storage or metrics.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import { frameText } from '../../src/transport/stream-ws.js';

const rooms = new Map<string, Set<Duplex>>();
let corked: Duplex[] = [];
let seq = 0;
const server = createServer();
const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  clientTracking: false,
});

const uncorkAll = () => {
  const list = corked;
  corked = [];
  for (const s of list) s.uncork();
};

server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => {
    const key = (req.url ?? '/').split('?')[0]?.split('/')[3] ?? '';
    let room = rooms.get(key);
    if (!room) {
      room = new Set();
      rooms.set(key, room);
    }
    const members = room;
    members.add(socket);
    ws.send('{"type":"auth","data":{"authenticated":true}}');
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (frame.type !== 'chat') return;
      const bytes = frameText(
        JSON.stringify({
          type: 'chat',
          data: {
            user: 'user',
            message: frame.data.message,
            id: (seq++).toString(16).padStart(24, '0'),
            userId: '1',
            sentAt: new Date().toISOString(),
          },
        }),
      );
      for (const s of members) {
        if (s.writableCorked === 0) {
          s.cork();
          if (corked.push(s) === 1) setImmediate(uncorkAll);
        }
        s.write(bytes);
      }
    });
    ws.on('close', () => members.delete(socket));
  });
});

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`);
});
