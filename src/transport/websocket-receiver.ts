/**
 * The frame decoder of RFC 6455 (section 5): bytes in, in whatever pieces the
 * network cuts them, and frames, messages or one protocol error out. It knows
 * nothing of sockets, so it is tested on raw bytes alone.
 *
 * What a peer can make it hold is bounded: at most `maxPayload` bytes of the
 * message being received (however many fragments it comes in, and empty ones
 * are not kept), at most `maxFragments` frames per message, and a partial
 * header or control frame. Every byte is copied at most once, so a frame
 * that arrives a few bytes at a time costs what it costs whole. Text is
 * checked as UTF-8 as it arrives, and refused at the first invalid byte.
 */
import { isUtf8 } from 'node:buffer';
import { Utf8Validator } from './utf8.js';
import { Opcode, ProtocolClose } from './websocket-sender.js';

export interface ReceiverLimits {
  /** Largest message, all fragments together, in bytes; larger ones are 1009. */
  maxPayload: number;
  /** Most frames one message may come in; more are 1009. */
  maxFragments: number;
}

/** Where the receiver's output goes; the connection implements it. */
export interface FrameSink {
  /** Every frame, control and continuation frames included, once its header is read. */
  onFrame(): void;
  /** A complete message; text has been checked to be UTF-8. */
  onMessage(binary: boolean, payload: Buffer): void;
  onPing(payload: Buffer): void;
  onPong(): void;
  /** The peer's close frame, with its code (1005 when it carried none). Nothing is read after it. */
  onClose(code: number): void;
  /** The peer broke the protocol; nothing more is read. `code` is the close code to answer with. */
  onProtocolError(code: number, reason: string): void;
}

const INFO = 0;
const LENGTH_16 = 1;
const LENGTH_64 = 2;
const MASK = 3;
const DATA = 4;

/** A leftover this small is copied, so it does not keep the socket's whole read buffer alive. */
const SMALL_LEFTOVER = 1024;

/** Codes a peer may send in a close frame (RFC 6455 section 7.4). */
export function isValidCloseCode(code: number): boolean {
  return (
    (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) ||
    (code >= 3000 && code <= 4999)
  );
}

export class Receiver {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private state = INFO;
  private stopped = false;

  // The frame being read.
  private fin = false;
  private opcode = 0;
  private length = 0;
  /** Payload bytes of the frame still to come. */
  private remaining = 0;
  private m0 = 0;
  private m1 = 0;
  private m2 = 0;
  private m3 = 0;

  // The data message being assembled (opcode 0: none).
  private messageOpcode = 0;
  private fragments = 0;
  private message: Buffer | null = null;
  private messageBytes = 0;
  private utf8: Utf8Validator | null = null;

  constructor(
    private readonly limits: ReceiverLimits,
    private readonly sink: FrameSink,
  ) {}

  /** Bytes held for frames and messages not complete yet. */
  get heldBytes(): number {
    return this.buffered + (this.message?.length ?? 0);
  }

  /** Stops reading and lets go of everything held. */
  stop(): void {
    this.stopped = true;
    this.chunks = [];
    this.buffered = 0;
    this.message = null;
    this.utf8 = null;
  }

  push(chunk: Buffer): void {
    if (this.stopped || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (!this.stopped) {
      if (this.state === INFO) {
        if (this.buffered < 2) break;
        this.readInfo();
      } else if (this.state === LENGTH_16) {
        if (this.buffered < 2) break;
        this.setLength(this.consume(2).readUInt16BE(0));
      } else if (this.state === LENGTH_64) {
        if (this.buffered < 8) break;
        const big = this.consume(8).readBigUInt64BE(0);
        if (big > BigInt(this.limits.maxPayload)) {
          this.error(ProtocolClose.messageTooBig, 'message too big');
          break;
        }
        this.setLength(Number(big));
      } else if (this.state === MASK) {
        if (this.buffered < 4) break;
        const m = this.consume(4);
        this.m0 = m[0] as number;
        this.m1 = m[1] as number;
        this.m2 = m[2] as number;
        this.m3 = m[3] as number;
        this.state = DATA;
      } else if (!this.readData()) {
        break;
      }
    }
    if (this.stopped) return;
    const first = this.chunks[0];
    if (this.chunks.length === 1 && first !== undefined && first.length < SMALL_LEFTOVER) {
      this.chunks[0] = Buffer.from(first);
    }
  }

  private readInfo(): void {
    const head = this.consume(2);
    const b0 = head[0] as number;
    const b1 = head[1] as number;
    this.sink.onFrame();
    if (this.stopped) return;
    this.fin = (b0 & 0x80) !== 0;
    this.opcode = b0 & 0x0f;
    const length = b1 & 0x7f;
    if ((b0 & 0x70) !== 0) {
      this.error(ProtocolClose.protocolError, 'reserved bits set');
      return;
    }
    if ((b1 & 0x80) === 0) {
      this.error(ProtocolClose.protocolError, 'unmasked frame');
      return;
    }
    switch (this.opcode) {
      case Opcode.close:
      case Opcode.ping:
      case Opcode.pong:
        if (!this.fin || length > 125) {
          this.error(ProtocolClose.protocolError, 'bad control frame');
          return;
        }
        break;
      case Opcode.text:
      case Opcode.binary:
        if (this.messageOpcode !== 0) {
          this.error(ProtocolClose.protocolError, 'expected a continuation frame');
          return;
        }
        this.messageOpcode = this.opcode;
        this.fragments = 0;
        break;
      case Opcode.continuation:
        if (this.messageOpcode === 0) {
          this.error(ProtocolClose.protocolError, 'unexpected continuation frame');
          return;
        }
        break;
      default:
        this.error(ProtocolClose.protocolError, 'unknown opcode');
        return;
    }
    if (this.opcode < 8 && ++this.fragments > this.limits.maxFragments) {
      this.error(ProtocolClose.messageTooBig, 'too many fragments');
      return;
    }
    if (length === 126) this.state = LENGTH_16;
    else if (length === 127) this.state = LENGTH_64;
    else this.setLength(length);
  }

  private setLength(length: number): void {
    if (this.opcode < 8 && this.messageBytes + length > this.limits.maxPayload) {
      this.error(ProtocolClose.messageTooBig, 'message too big');
      return;
    }
    this.length = length;
    this.remaining = length;
    this.state = MASK;
  }

  /** Reads what has arrived of the payload; false when it must wait for more bytes. */
  private readData(): boolean {
    if (this.opcode >= 8) {
      if (this.buffered < this.length) return false;
      const payload = this.length === 0 ? Buffer.alloc(0) : this.consume(this.length);
      this.unmask(payload, 0);
      this.state = INFO;
      this.control(payload);
      return true;
    }
    const first = this.chunks[0];
    if (
      this.fin &&
      this.fragments === 1 &&
      this.remaining === this.length &&
      (this.length === 0 || (first !== undefined && first.length >= this.length))
    ) {
      // The common case: a whole single-frame message in one read. No copy.
      const payload = this.length === 0 ? Buffer.alloc(0) : this.consume(this.length);
      this.unmask(payload, 0);
      this.state = INFO;
      this.messageOpcode = 0;
      if (this.opcode === Opcode.text && !isUtf8(payload)) {
        this.error(ProtocolClose.invalidData, 'invalid UTF-8');
        return true;
      }
      this.sink.onMessage(this.opcode === Opcode.binary, payload);
      return true;
    }
    while (this.remaining > 0 && this.buffered > 0) {
      const chunk = this.chunks[0] as Buffer;
      const piece = this.consume(Math.min(chunk.length, this.remaining));
      this.unmask(piece, this.length - this.remaining);
      this.remaining -= piece.length;
      if (this.messageOpcode === Opcode.text) {
        this.utf8 ??= new Utf8Validator();
        if (!this.utf8.write(piece)) {
          this.error(ProtocolClose.invalidData, 'invalid UTF-8');
          return true;
        }
      }
      this.append(piece);
    }
    if (this.remaining > 0) return false;
    this.state = INFO;
    if (this.fin) this.endMessage();
    return true;
  }

  private endMessage(): void {
    const binary = this.messageOpcode === Opcode.binary;
    const payload = this.message?.subarray(0, this.messageBytes) ?? Buffer.alloc(0);
    const complete = binary || (this.utf8?.end() ?? true);
    this.messageOpcode = 0;
    this.fragments = 0;
    this.message = null;
    this.messageBytes = 0;
    if (!complete) {
      this.error(ProtocolClose.invalidData, 'invalid UTF-8');
      return;
    }
    this.sink.onMessage(binary, payload);
  }

  /** Adds a piece to the message, growing its buffer by doubling (never past `maxPayload`). */
  private append(piece: Buffer): void {
    const needed = this.messageBytes + piece.length;
    if (this.message === null || needed > this.message.length) {
      const size = Math.min(
        this.limits.maxPayload,
        Math.max(needed, 2 * (this.message?.length ?? 0), 256),
      );
      const grown = Buffer.allocUnsafe(size);
      this.message?.copy(grown, 0, 0, this.messageBytes);
      this.message = grown;
    }
    piece.copy(this.message, this.messageBytes);
    this.messageBytes = needed;
  }

  private control(payload: Buffer): void {
    if (this.opcode === Opcode.ping) {
      this.sink.onPing(payload);
    } else if (this.opcode === Opcode.pong) {
      this.sink.onPong();
    } else if (payload.length === 0) {
      this.stop();
      this.sink.onClose(ProtocolClose.noStatus);
    } else {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 0;
      if (!isValidCloseCode(code) || !isUtf8(payload.subarray(2))) {
        this.error(ProtocolClose.protocolError, 'bad close frame');
        return;
      }
      this.stop();
      this.sink.onClose(code);
    }
  }

  /** XORs the masking key over `data`, the payload bytes from `offset` on (section 5.3). */
  private unmask(data: Buffer, offset: number): void {
    let k0 = this.m0;
    let k1 = this.m1;
    let k2 = this.m2;
    let k3 = this.m3;
    for (let r = offset & 3; r > 0; r--) {
      const t = k0;
      k0 = k1;
      k1 = k2;
      k2 = k3;
      k3 = t;
    }
    const n = data.length;
    let i = 0;
    for (; i + 3 < n; i += 4) {
      data[i] = (data[i] as number) ^ k0;
      data[i + 1] = (data[i + 1] as number) ^ k1;
      data[i + 2] = (data[i + 2] as number) ^ k2;
      data[i + 3] = (data[i + 3] as number) ^ k3;
    }
    if (i < n) data[i] = (data[i] as number) ^ k0;
    if (i + 1 < n) data[i + 1] = (data[i + 1] as number) ^ k1;
    if (i + 2 < n) data[i + 2] = (data[i + 2] as number) ^ k2;
  }

  /** Takes `n` buffered bytes: a view when they lie in one chunk, else one copy. */
  private consume(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0] as Buffer;
    if (n === first.length) {
      this.chunks.shift();
      return first;
    }
    if (n < first.length) {
      this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0] as Buffer;
      const take = Math.min(c.length, n - off);
      c.copy(out, off, 0, take);
      off += take;
      if (take === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(take);
    }
    return out;
  }

  private error(code: number, reason: string): void {
    this.stop();
    this.sink.onProtocolError(code, reason);
  }
}
