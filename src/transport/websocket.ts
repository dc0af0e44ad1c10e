/**
 * One upgraded RFC 6455 connection, as lean as a connection can be: the
 * decoder (`websocket-receiver.ts`), the close handshake and the heartbeat on
 * the socket itself. One object per connection and no closures per
 * connection, because thousands of idle viewers are the common case. No
 * extensions are negotiated (permessage-deflate would cost memory and defeat
 * writing one shared frame to every viewer).
 *
 * Every way out ends with the socket destroyed within `graceMs` (at most a
 * few seconds), whatever the peer does: a peer that keeps its side of a
 * closed connection open holds no descriptor here.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { type FrameSink, Receiver, type ReceiverLimits } from './websocket-receiver.js';
import { closeFrame, frame, Opcode, PING_FRAME, ProtocolClose } from './websocket-sender.js';

export type { ReceiverLimits } from './websocket-receiver.js';

/** How long the close handshake may take once both close frames have been sent. */
const CLOSED_LINGER_MS = 1_000;

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
 * keeps the protocol: frames, limits, heartbeat and closing.
 */
export abstract class WebSocketConnection implements FrameSink {
  readonly socket: Socket;
  state: ConnectionState = 'open';
  /** Made on the first bytes from the peer. */
  private receiver: Receiver | null = null;
  private closeTimer: NodeJS.Timeout | undefined;
  /** When the peer last sent anything (epoch ms), for the heartbeat. */
  private lastHeard = Date.now();

  constructor(
    socket: Duplex,
    /** Shared by every connection of an endpoint: read, never copied. */
    private readonly limits: ReceiverLimits,
  ) {
    this.socket = socket as Socket;
    (socket as Owned)[kConnection] = this;
    socket.on('error', onSocketError);
    socket.on('data', onSocketData);
    socket.on('end', onSocketEnd);
    socket.on('close', onSocketClose);
    this.socket.setNoDelay(true);
    this.socket.setTimeout(0);
  }

  /** A complete text message, valid UTF-8. */
  protected abstract onText(text: string): void;
  /** A complete binary message. */
  protected abstract onBinary(data: Buffer): void;
  /** Any frame arrived, control and continuation frames too: the place to count them. */
  abstract onFrame(): void;
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
  close(code: number, reason: string, graceMs = 3_000): void {
    if (this.state !== 'open') return;
    this.state = 'closing';
    if (this.socket.writable) this.socket.write(closeFrame(code, reason));
    this.cutAfter(graceMs);
  }

  /**
   * The heartbeat, called every `intervalMs`: pings an open connection, and
   * destroys one that has sent nothing for two intervals (a dead network
   * sends no FIN and no RST). Returns false when it dropped the connection.
   */
  heartbeat(now: number, intervalMs: number): boolean {
    if (this.state !== 'open') return true;
    if (now - this.lastHeard > 2 * intervalMs) {
      this.socket.destroy();
      return false;
    }
    if (this.socket.writable) this.socket.write(PING_FRAME);
    return true;
  }

  /** @internal for the shared socket listeners */
  read(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.lastHeard = Date.now();
    this.receiver ??= new Receiver(this.limits, this);
    this.receiver.push(chunk);
  }

  /** @internal */
  socketClosed(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearTimeout(this.closeTimer);
    this.receiver?.stop();
    this.receiver = null;
    this.onClosed();
  }

  /** @internal */
  socketError(err: Error): void {
    this.onSocketError(err);
  }

  /** @internal FrameSink */
  onMessage(binary: boolean, payload: Buffer): void {
    if (this.state !== 'open') return;
    if (binary) this.onBinary(payload);
    else this.onText(payload.toString('utf8'));
  }

  /**
   * Whether `bytes` more may be queued for the peer; the endpoint's bound on
   * its send buffer, which closes a peer that does not read. Every frame is
   * welcome here.
   */
  protected admits(_bytes: Buffer): boolean {
    return true;
  }

  /** @internal FrameSink: a pong is output like any other, held to the endpoint's bound. */
  onPing(payload: Buffer): void {
    if (this.state !== 'open') return;
    const pong = frame(Opcode.pong, payload);
    if (this.admits(pong)) this.write(pong);
  }

  /** @internal FrameSink: being heard is all a pong is for. */
  onPong(): void {}

  /** @internal FrameSink: the peer's close frame. */
  onClose(code: number): void {
    if (this.state === 'open') {
      // Echo the peer's code, as RFC 6455 section 5.5.1 asks.
      this.state = 'closing';
      const echo = code === ProtocolClose.noStatus ? ProtocolClose.normal : code;
      if (this.socket.writable) this.socket.write(closeFrame(echo, ''));
    }
    // Both close frames are out: the TCP connection goes too (section 7.1.1).
    this.socket.end();
    this.cutAfter(CLOSED_LINGER_MS);
  }

  /** @internal FrameSink */
  onProtocolError(code: number, reason: string): void {
    if (this.state === 'open') {
      this.close(code, reason, CLOSED_LINGER_MS);
      this.socket.end();
    } else {
      this.socket.destroy();
    }
  }

  /** Destroys the socket in `ms`; each step of the close handshake re-arms it shorter. */
  private cutAfter(ms: number): void {
    clearTimeout(this.closeTimer);
    this.closeTimer = setTimeout(onCloseTimeout, ms, this);
    this.closeTimer.unref();
  }
}
