/**
 * The opening handshake of RFC 6455 (section 4.2) on an upgraded HTTP socket,
 * and how a refused one ends. From the moment Node hands charla an upgrade
 * until a connection owns the socket, nothing else listens on it: `guard`
 * must come first, before any `await`, or a reset in between is an unhandled
 * `'error'` that ends the process.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const KEY = /^[+/0-9A-Za-z]{22}==$/;

/** How long a refused upgrade may take to flush its answer before the socket is cut. */
const ABORT_LINGER_MS = 2_000;

export interface Handshake {
  accept: boolean;
  /** The 101 response to write, or the HTTP error to end the socket with. */
  response: string;
}

export function httpResponse(status: string, extra = ''): string {
  return `HTTP/1.1 ${status}\r\nConnection: close\r\n${extra}Content-Length: 0\r\n\r\n`;
}

/** Checks an upgrade request (RFC 6455 section 4.2.1). */
export function handshake(req: IncomingMessage): Handshake {
  const key = req.headers['sec-websocket-key'];
  const fail = (status: string, extra = '') => ({
    accept: false,
    response: httpResponse(status, extra),
  });
  if (req.method !== 'GET') return fail('405 Method Not Allowed');
  if (req.headers.upgrade?.toLowerCase() !== 'websocket') return fail('400 Bad Request');
  if (req.headers['sec-websocket-version'] !== '13') {
    return fail('426 Upgrade Required', 'Sec-WebSocket-Version: 13\r\n');
  }
  if (typeof key !== 'string' || !KEY.test(key)) return fail('400 Bad Request');
  const digest = createHash('sha1')
    .update(key + GUID)
    .digest('base64');
  return {
    accept: true,
    response: `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${digest}\r\n\r\n`,
  };
}

function destroyOnError(this: Duplex): void {
  this.destroy();
}

/** The first thing done with an upgraded socket: a reset or a write error destroys it quietly. */
export function guard(socket: Duplex): void {
  socket.on('error', destroyOnError);
}

/** Hands the socket to a connection that listens for errors itself. */
export function unguard(socket: Duplex): void {
  socket.off('error', destroyOnError);
}

/**
 * Answers a refused upgrade and releases the socket: destroyed once the
 * answer is flushed, or after a short linger if the peer does not read it,
 * so a peer that keeps its side open holds no descriptor.
 */
export function abortHandshake(socket: Duplex, response: string): void {
  if (socket.destroyed) return;
  socket.once('finish', socket.destroy);
  setTimeout(() => socket.destroy(), ABORT_LINGER_MS).unref();
  socket.end(response);
}
