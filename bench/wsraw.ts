/**
 * A WebSocket client as light as a load generator needs: it does the upgrade
 * itself on a raw TCP socket and walks frame headers, counting every frame and
 * decoding only a sample of payloads, so the generator is not the bottleneck.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';

export interface RawOptions {
  port: number;
  path: string;
  /** Loopback source address, to spread many connections over more port ranges. */
  localAddress?: string;
  /** Called for every `sampleEvery`-th text frame with its payload. */
  onSample?: (payload: Buffer) => void;
  sampleEvery?: number;
  /** Called for every text frame; keep it trivial. */
  onFrame?: () => void;
  /** Called with the payload of every other text frame (charla's `stream`, `history`, `error`, …). */
  onOther?: (payload: Buffer) => void;
  /**
   * Called with every text frame's payload instead of the stream chat's
   * counting above, for other protocols (Socket.IO). The buffer is only valid
   * during the call.
   */
  onText?: (payload: Buffer) => void;
  onClose?: () => void;
}

/** Client frames must be masked (RFC 6455 5.3); a zero key leaves the payload as it is. */
export function clientTextFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  const n = payload.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const frame = Buffer.alloc(head + 4 + n);
  frame[0] = 0x81;
  if (n < 126) frame[1] = 0x80 | n;
  else if (n < 65536) {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(n, 2);
  } else {
    frame[1] = 0x80 | 127;
    frame.writeBigUInt64BE(BigInt(n), 2);
  }
  payload.copy(frame, head + 4);
  return frame;
}

export class RawClient {
  readonly socket: net.Socket;
  /** `chat` and `auth` frames received. */
  frames = 0;
  /** Any other text frame (charla's classroom frames, errors). */
  others = 0;
  private upgraded = false;
  private pending: Buffer | null = null;
  private readonly sampleEvery: number;
  private readonly ready: Promise<void>;

  constructor(private readonly opts: RawOptions) {
    this.sampleEvery = opts.sampleEvery ?? 0;
    this.socket = net.connect({
      port: opts.port,
      host: '127.0.0.1',
      ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
    });
    this.socket.setNoDelay(true);
    this.ready = new Promise((resolve, reject) => {
      this.socket.once('error', reject);
      this.socket.once('connect', () => {
        this.socket.write(
          `GET ${opts.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        );
      });
      this.socket.on('data', (chunk: Buffer) => {
        if (this.upgraded) return this.onData(chunk);
        const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) {
          this.pending = buf;
          return;
        }
        if (!buf.subarray(0, 12).toString().includes('101')) {
          reject(new Error(`upgrade refused: ${buf.subarray(0, 40).toString()}`));
          this.socket.destroy();
          return;
        }
        this.upgraded = true;
        this.pending = null;
        resolve();
        if (end + 4 < buf.length) this.onData(buf.subarray(end + 4));
      });
    });
    this.socket.on('close', () => opts.onClose?.());
    this.socket.on('error', () => {});
  }

  opened(): Promise<void> {
    return this.ready;
  }

  send(text: string): void {
    this.socket.write(clientTextFrame(text));
  }

  destroy(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let buf = chunk;
    if (this.pending) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let off = 0;
    const len = buf.length;
    while (off + 2 <= len) {
      const b1 = buf[off + 1] as number;
      let size = b1 & 0x7f;
      let head = 2;
      if (size === 126) {
        if (off + 4 > len) break;
        size = buf.readUInt16BE(off + 2);
        head = 4;
      } else if (size === 127) {
        if (off + 10 > len) break;
        size = Number(buf.readBigUInt64BE(off + 2));
        head = 10;
      }
      if (off + head + size > len) break;
      const opcode = (buf[off] as number) & 0x0f;
      if (opcode === 1 && this.opts.onText) {
        this.opts.onText(buf.subarray(off + head, off + head + size));
        off += head + size;
        continue;
      }
      // `{"type":"` is 9 bytes: the next one tells `chat` and `auth` (counted)
      // from charla's other frames (`stream`, `history`, `error`, …, counted apart).
      const kind = buf[off + head + 9];
      if (opcode === 1 && kind !== 0x63 && kind !== 0x61) {
        this.others++;
        this.opts.onOther?.(buf.subarray(off + head, off + head + size));
      } else if (opcode === 1) {
        this.frames++;
        this.opts.onFrame?.();
        if (this.sampleEvery > 0 && this.frames % this.sampleEvery === 0) {
          this.opts.onSample?.(buf.subarray(off + head, off + head + size));
        }
      } else if (opcode === 8) {
        this.socket.end();
      }
      off += head + size;
    }
    if (off < len) this.pending = Buffer.from(buf.subarray(off));
  }
}

/** Extracts the send time stamped by a poster (`<seq>|<ms>|…`) from a chat frame's JSON. */
export function stampOf(payload: Buffer): number | undefined {
  const text = payload.toString('latin1');
  const i = text.indexOf('"message":"');
  if (i === -1) return undefined;
  const start = text.indexOf('|', i) + 1;
  const end = text.indexOf('|', start);
  if (start === 0 || end === -1) return undefined;
  const t = Number(text.slice(start, end));
  return Number.isFinite(t) ? t : undefined;
}

export const nowMs = () => performance.timeOrigin + performance.now();
