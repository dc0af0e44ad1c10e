/**
 * The server side of RFC 6455 for the stream endpoint, as lean as a
 * connection can be: the handshake, a frame reader, and the close handshake
 * on the upgraded socket itself. One object per connection and no closures
 * per connection, because thousands of idle viewers are the common case.
 * No extensions are negotiated (permessage-deflate would cost memory and
 * defeat writing one shared frame to every viewer).
 */
import { isUtf8 } from 'node:buffer';
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const KEY = /^[+/0-9A-Za-z]{22}==$/;

/** Close codes of RFC 6455 section 7.4.1 that charla sends on protocol errors. */
export const ProtocolClose = {
  normal: 1000,
  protocolError: 1002,
  invalidData: 1007,
  messageTooBig: 1009,
} as const;

const Opcode = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

/**
 * Checks an upgrade request (RFC 6455 section 4.2.1). Returns the 101
 * response to write, or an HTTP error response after which the socket ends.
 */
export function handshake(req: IncomingMessage): { accept: boolean; response: string } {
  const key = req.headers['sec-websocket-key'];
  const fail = (status: string, extra = '') => ({
    accept: false,
    response: `HTTP/1.1 ${status}\r\nConnection: close\r\n${extra}Content-Length: 0\r\n\r\n`,
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

/** Builds one unmasked server frame with FIN set (RFC 6455 section 5.2). */
export function frame(opcode: number, payload: string | Buffer): Buffer {
  const length = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  const head = length < 126 ? 2 : length < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(head + length);
  out[0] = 0x80 | opcode;
  if (length < 126) {
    out[1] = length;
  } else if (length < 65536) {
    out[1] = 126;
    out.writeUInt16BE(length, 2);
  } else {
    out[1] = 127;
    out.writeBigUInt64BE(BigInt(length), 2);
  }
  if (typeof payload === 'string') out.write(payload, head, 'utf8');
  else payload.copy(out, head);
  return out;
}

export const frameText = (text: string): Buffer => frame(Opcode.text, text);

function closeFrame(code: number, reason: string): Buffer {
  const payload = Buffer.allocUnsafe(2 + Buffer.byteLength(reason));
  payload.writeUInt16BE(code, 0);
  payload.write(reason, 2, 'utf8');
  return frame(Opcode.close, payload);
}

/** Codes a peer may send in a close frame (RFC 6455 section 7.4). */
function isValidCloseCode(code: number): boolean {
  return (
    (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) ||
    (code >= 3000 && code <= 4999)
  );
}

const kConnection = Symbol('charla.websocket');
type Owned = Socket & { [kConnection]: WebSocketConnection };

// Shared listeners: the socket is `this`, and it knows its connection.
function onSocketData(this: Owned, chunk: Buffer): void {
  this[kConnection].read(chunk);
}
function onSocketEnd(this: Owned): void {
  // The HTTP server's sockets allow half-open. A peer that hangs up without a
  // close handshake is gone (1006): what is queued for it would only fail with
  // EPIPE, so it is dropped. After a handshake our close frame still goes out.
  if (this[kConnection].state === 'open') this.destroy();
  else this.end();
}
function onSocketClose(this: Owned): void {
  this[kConnection].socketClosed();
}
function onSocketError(this: Owned, err: Error): void {
  this[kConnection].socketError(err);
}
function onCloseTimeout(conn: WebSocketConnection): void {
  conn.socket.destroy();
}

export type ConnectionState = 'open' | 'closing' | 'closed';

/**
 * One upgraded connection. Subclasses give meaning to messages; this class
 * keeps the protocol: fragments, control frames, limits and closing.
 */
export abstract class WebSocketConnection {
  readonly socket: Socket;
  state: ConnectionState = 'open';
  /** Bytes of a frame that has not fully arrived yet. */
  private partial: Buffer | null = null;
  /** The data frames of a fragmented message so far. */
  private fragments: Buffer[] | null = null;
  private fragmentOpcode = 0;
  private fragmentBytes = 0;
  /** False after a protocol error: nothing more from this peer is read. */
  private reading = true;
  private closeTimer: NodeJS.Timeout | undefined;

  constructor(
    socket: Duplex,
    /** Largest message accepted, in bytes; larger ones close with 1009. */
    private readonly maxPayload: number,
  ) {
    this.socket = socket as Socket;
    (socket as Owned)[kConnection] = this;
    this.socket.setNoDelay(true);
    this.socket.setTimeout(0);
    socket.on('data', onSocketData);
    socket.on('end', onSocketEnd);
    socket.on('close', onSocketClose);
    socket.on('error', onSocketError);
  }

  /** A complete text message, valid UTF-8. */
  protected abstract onText(text: string): void;
  /** A complete binary message. */
  protected abstract onBinary(data: Buffer): void;
  /** Any frame arrived: the place to count them. False stops reading (the connection closed). */
  protected abstract onFrame(): boolean;
  /** The socket is gone, whatever closed it. Called once. */
  protected abstract onClosed(): void;
  protected abstract onSocketError(err: Error): void;

  /** Writes a whole frame if the connection is open. */
  write(frameBytes: Buffer): void {
    if (this.state === 'open') this.socket.write(frameBytes);
  }

  /**
   * Starts the close handshake: our close frame goes out after what is
   * queued, and the socket is cut if the peer has not answered in `graceMs`.
   */
  close(code: number, reason: string, graceMs = 5_000): void {
    if (this.state !== 'open') return;
    this.state = 'closing';
    this.partial = null;
    this.fragments = null;
    this.socket.write(closeFrame(code, reason));
    this.closeTimer = setTimeout(onCloseTimeout, graceMs, this);
    this.closeTimer.unref();
  }

  /** @internal for the shared socket listeners */
  read(chunk: Buffer): void {
    if (!this.reading) return;
    let buf = chunk;
    if (this.partial) {
      buf = Buffer.concat([this.partial, chunk]);
      this.partial = null;
    }
    let off = 0;
    while (this.reading && this.state !== 'closed') {
      const used = this.readFrame(buf, off);
      if (used === 0) break;
      off += used;
    }
    if (off < buf.length && this.reading && this.state !== 'closed') {
      this.partial = Buffer.from(buf.subarray(off));
    }
  }

  /** @internal */
  socketClosed(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearTimeout(this.closeTimer);
    this.partial = null;
    this.fragments = null;
    this.onClosed();
  }

  /** @internal */
  socketError(err: Error): void {
    this.onSocketError(err);
  }

  /** Reads one frame at `off`; returns the bytes it used, 0 when it has not all arrived. */
  private readFrame(buf: Buffer, off: number): number {
    if (buf.length - off < 2) return 0;
    const b0 = buf[off] as number;
    const b1 = buf[off + 1] as number;
    let length = b1 & 0x7f;
    let head = 2;
    if (length === 126) {
      if (buf.length - off < 4) return 0;
      length = buf.readUInt16BE(off + 2);
      head = 4;
    } else if (length === 127) {
      if (buf.length - off < 10) return 0;
      const big = buf.readBigUInt64BE(off + 2);
      if (big > BigInt(this.maxPayload)) return this.fail(ProtocolClose.messageTooBig, 'too big');
      length = Number(big);
      head = 10;
    }
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    if ((b0 & 0x70) !== 0) return this.fail(ProtocolClose.protocolError, 'reserved bits set');
    if ((b1 & 0x80) === 0) return this.fail(ProtocolClose.protocolError, 'unmasked frame');
    const isControl = opcode >= 8;
    if (isControl && (!fin || length > 125)) {
      return this.fail(ProtocolClose.protocolError, 'bad control frame');
    }
    if (!isControl && this.fragmentBytes + length > this.maxPayload) {
      return this.fail(ProtocolClose.messageTooBig, 'too big');
    }
    const start = off + head + 4;
    if (buf.length < start + length) return 0;
    const payload = buf.subarray(start, start + length);
    const mask = buf.subarray(off + head, start);
    for (let i = 0; i < length; i++) {
      payload[i] = (payload[i] as number) ^ (mask[i & 3] as number);
    }
    this.handleFrame(fin, opcode, payload);
    return head + 4 + length;
  }

  private handleFrame(fin: boolean, opcode: number, payload: Buffer): void {
    switch (opcode) {
      case Opcode.close:
        this.onCloseFrame(payload);
        return;
      case Opcode.ping:
        if (this.state === 'open' && this.onFrame()) this.write(frame(Opcode.pong, payload));
        return;
      case Opcode.pong:
        return;
      case Opcode.text:
      case Opcode.binary:
        if (this.fragments) {
          this.fail(ProtocolClose.protocolError, 'expected a continuation frame');
          return;
        }
        if (fin) {
          this.message(opcode, payload);
          return;
        }
        this.fragmentOpcode = opcode;
        this.fragmentBytes = payload.length;
        this.fragments = [Buffer.from(payload)];
        return;
      case Opcode.continuation: {
        if (!this.fragments) {
          this.fail(ProtocolClose.protocolError, 'unexpected continuation frame');
          return;
        }
        this.fragments.push(Buffer.from(payload));
        this.fragmentBytes += payload.length;
        if (!fin) return;
        const whole = Buffer.concat(this.fragments);
        this.fragments = null;
        this.fragmentBytes = 0;
        this.message(this.fragmentOpcode, whole);
        return;
      }
      default:
        this.fail(ProtocolClose.protocolError, 'unknown opcode');
    }
  }

  private message(opcode: number, payload: Buffer): void {
    if (this.state !== 'open' || !this.onFrame()) return;
    if (opcode === Opcode.binary) {
      this.onBinary(payload);
      return;
    }
    if (!isUtf8(payload)) {
      this.fail(ProtocolClose.invalidData, 'invalid UTF-8');
      return;
    }
    this.onText(payload.toString('utf8'));
  }

  private onCloseFrame(payload: Buffer): void {
    let code: number = ProtocolClose.normal;
    if (payload.length === 1) {
      this.fail(ProtocolClose.protocolError, 'bad close frame');
      return;
    }
    if (payload.length >= 2) {
      code = payload.readUInt16BE(0);
      if (!isValidCloseCode(code) || !isUtf8(payload.subarray(2))) {
        this.fail(ProtocolClose.protocolError, 'bad close frame');
        return;
      }
    }
    if (this.state === 'open') {
      // Echo the peer's code, as RFC 6455 section 5.5.1 asks.
      this.socket.write(closeFrame(code, ''));
      this.state = 'closing';
    }
    this.partial = null;
    this.socket.end();
  }

  private fail(code: number, reason: string): number {
    this.reading = false;
    if (this.state === 'open') {
      this.close(code, reason, 1_000);
      this.socket.end();
    } else {
      this.socket.destroy();
    }
    this.partial = null;
    this.fragments = null;
    return 0;
  }
}
