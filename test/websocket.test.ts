/**
 * The RFC 6455 layer on raw bytes: a real socket, a client that writes
 * frames byte by byte as a hostile peer might, and a connection that records
 * what it was given.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { WebSocketConnection } from '../src/transport/websocket.js';
import { handshake } from '../src/transport/websocket-handshake.js';

const MAX = 1024;

class Recorder extends WebSocketConnection {
  readonly got: Array<[string, string | number]> = [];
  constructor(socket: Duplex) {
    super(socket, { maxPayload: MAX, maxFragments: 16 });
  }
  protected onText(text: string): void {
    this.got.push(['text', text]);
  }
  protected onBinary(data: Buffer): void {
    this.got.push(['binary', data.length]);
  }
  onFrame(): void {}
  protected onClosed(): void {
    this.got.push(['closed', 0]);
  }
  protected onSocketError(): void {}
}

let server: Server;
let port = 0;
const connections: Recorder[] = [];

before(async () => {
  server = createServer();
  server.on('upgrade', (req, socket) => {
    const { accept, response } = handshake(req);
    socket.write(response);
    if (accept) connections.push(new Recorder(socket));
    else socket.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
});
after(() => new Promise<void>((r) => server.close(() => r())));

/** A masked client frame (RFC 6455 5.2) with a fixed, non-zero mask. */
function clientFrame(opcode: number, payload: Buffer | string, fin = true, rsv = 0): Buffer {
  const data = Buffer.from(payload);
  const mask = Buffer.from([0x12, 0x34, 0x56, 0x78]);
  const n = data.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const out = Buffer.alloc(head + 4 + n);
  out[0] = (fin ? 0x80 : 0) | rsv | opcode;
  if (n < 126) out[1] = 0x80 | n;
  else if (n < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(n, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(n), 2);
  }
  mask.copy(out, head);
  for (let i = 0; i < n; i++) out[head + 4 + i] = (data[i] as number) ^ (mask[i & 3] as number);
  return out;
}

interface Peer {
  socket: net.Socket;
  received: () => Buffer;
  closed: Promise<void>;
  conn: Recorder;
}

async function connect(headers = 'Sec-WebSocket-Version: 13\r\n'): Promise<Peer> {
  const socket = net.connect(port, '127.0.0.1');
  let data = Buffer.alloc(0);
  socket.on('data', (c: Buffer) => {
    data = Buffer.concat([data, c]);
  });
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  socket.on('error', () => {});
  const count = connections.length;
  socket.write(
    `GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${headers}\r\n`,
  );
  await until(() => data.includes('\r\n\r\n'));
  const end = data.indexOf('\r\n\r\n') + 4;
  const head = data.subarray(0, end).toString();
  data = data.subarray(end);
  if (!head.startsWith('HTTP/1.1 101')) throw new Error(head);
  assert.match(head, /Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/);
  await until(() => connections.length > count);
  return { socket, received: () => data, closed, conn: connections.at(-1) as Recorder };
}

async function until(check: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The close code in the server's close frame, if it sent one. */
function closeCode(bytes: Buffer): number | undefined {
  const i = bytes.indexOf(0x88);
  return i === -1 ? undefined : bytes.readUInt16BE(i + 2);
}

describe('handshake', () => {
  it('computes the accept key of RFC 6455 section 1.3', async () => {
    const p = await connect();
    p.socket.destroy();
  });
  it('refuses other or missing versions with 426', async () => {
    for (const [headers, status] of [
      ['Sec-WebSocket-Version: 8\r\n', '426'],
      ['', '426'],
    ] as const) {
      await assert.rejects(connect(headers), new RegExp(`HTTP/1.1 ${status}`));
    }
  });
});

describe('frames', () => {
  it('reads masked text split at every byte, fragments, and binary', async () => {
    const p = await connect();
    const bytes = Buffer.concat([
      clientFrame(1, 'hola ñandú'),
      clientFrame(1, 'uno ', false),
      clientFrame(0, 'dos ', false),
      clientFrame(0, 'tres'),
      clientFrame(2, Buffer.alloc(300)),
      clientFrame(1, 'x'.repeat(200)),
    ]);
    for (const b of bytes) {
      p.socket.write(Buffer.from([b]));
      await new Promise((r) => setImmediate(r));
    }
    await until(() => p.conn.got.length === 4);
    assert.deepEqual(p.conn.got, [
      ['text', 'hola ñandú'],
      ['text', 'uno dos tres'],
      ['binary', 300],
      ['text', 'x'.repeat(200)],
    ]);
    p.socket.destroy();
  });

  it('answers ping with pong, and a close with the same code', async () => {
    const p = await connect();
    p.socket.write(clientFrame(9, 'abc'));
    await until(() => p.received().length >= 5);
    assert.deepEqual([...p.received().subarray(0, 5)], [0x8a, 3, 0x61, 0x62, 0x63]);
    const code = Buffer.alloc(2);
    code.writeUInt16BE(4000);
    p.socket.write(clientFrame(8, code));
    await p.closed;
    assert.equal(closeCode(p.received()), 4000);
    await until(() => p.conn.state === 'closed');
    assert.deepEqual(p.conn.got, [['closed', 0]]);
  });

  const refusals: Array<[string, () => Buffer, number]> = [
    ['an unmasked frame', () => Buffer.from([0x81, 0x02, 0x68, 0x69]), 1002],
    ['reserved bits', () => clientFrame(1, 'hi', true, 0x40), 1002],
    ['an unknown opcode', () => clientFrame(3, 'hi'), 1002],
    ['a fragmented ping', () => clientFrame(9, 'hi', false), 1002],
    ['a continuation without a start', () => clientFrame(0, 'hi'), 1002],
    [
      'a new message inside a fragmented one',
      () => Buffer.concat([clientFrame(1, 'a', false), clientFrame(1, 'b')]),
      1002,
    ],
    ['invalid UTF-8', () => clientFrame(1, Buffer.from([0xc3, 0x28])), 1007],
    ['a message over the limit', () => clientFrame(1, 'x'.repeat(MAX + 1)), 1009],
    [
      'fragments over the limit',
      () => Buffer.concat([clientFrame(1, 'x'.repeat(MAX), false), clientFrame(0, 'x')]),
      1009,
    ],
    [
      'a 64-bit length past the limit, before its payload arrives',
      () => {
        const b = Buffer.alloc(14);
        b[0] = 0x81;
        b[1] = 0x80 | 127;
        b.writeBigUInt64BE(2n ** 40n, 2);
        return b;
      },
      1009,
    ],
    ['a close frame with a reserved code', () => clientFrame(8, Buffer.from([0x03, 0xed])), 1002],
  ];
  for (const [what, bytes, code] of refusals) {
    it(`closes on ${what} with ${code} and delivers nothing`, async () => {
      const p = await connect();
      p.socket.write(bytes());
      p.socket.write(clientFrame(1, 'after the error'));
      await p.closed;
      assert.equal(closeCode(p.received()), code);
      await until(() => p.conn.state === 'closed');
      assert.deepEqual(p.conn.got, [['closed', 0]]);
    });
  }
});
