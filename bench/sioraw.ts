/**
 * A Socket.IO v4 client as light as a load generator needs, over the raw
 * WebSocket of wsraw.ts: Engine.IO v4 on `transport=websocket` only, the
 * default namespace, text packets. It decodes acknowledgements (their id and
 * whether they start `{"ok":true`) and the few packets the handshake needs;
 * every event is counted by the first bytes of its name, never parsed, so a
 * socket that receives many events costs the generator little.
 *
 * Packets (Engine.IO type, then Socket.IO type): `0{…}` open, `2` ping → `3`
 * pong, `40{auth}` connect → `40{"sid"}` or `44{error}`, `42["name",…]` event,
 * `42<id>["name",…]` event awaiting an acknowledgement, `43<id>[…]` acknowledgement.
 */
import { RawClient } from './wsraw.js';

/** What an acknowledgement said: `ok` when its first argument starts `{"ok":true`. */
export interface RawAck {
  ok: boolean;
  /** The acknowledgement's JSON arguments (`[…]`), only when asked for with `decode`. */
  args?: unknown[];
}

export interface SioRawOptions {
  port: number;
  /** The `auth` payload of the namespace CONNECT. */
  auth: Record<string, unknown>;
  /** Event names whose arrivals are counted in `counts` (by prefix, never parsed). */
  count?: string[];
  /** Called for every counted event with its index in `count`; keep it trivial. */
  onEvent?: (index: number) => void;
}

const OK_PREFIX = Buffer.from('[{"ok":true');
const CHAR_0 = 0x30;
const CHAR_9 = 0x39;

export class SioRawClient {
  /** Arrivals of each `count` event, in the order given. */
  readonly counts: number[];
  /** Events not in `count` (e.g. `roomHistory`, `exception`). */
  others = 0;
  private readonly raw: RawClient;
  /** `42["name"` of each counted event, compared against the packet's first bytes. */
  private readonly prefixes: Buffer[];
  private readonly acks = new Map<number, { decode: boolean; done: (ack: RawAck) => void }>();
  private nextId = 0;
  private connected!: (ok: boolean, detail: string) => void;
  private readonly ready: Promise<void>;
  private isClosed = false;

  constructor(private readonly opts: SioRawOptions) {
    this.prefixes = (opts.count ?? []).map((name) => Buffer.from(`42["${name}"`));
    this.counts = this.prefixes.map(() => 0);
    this.ready = new Promise((resolve, reject) => {
      this.connected = (ok, detail) => (ok ? resolve() : reject(new Error(detail)));
    });
    // Seen by whoever awaits `connect()`; a close after connecting settles nothing.
    this.ready.catch(() => {});
    this.raw = new RawClient({
      port: opts.port,
      path: '/socket.io/?EIO=4&transport=websocket',
      onText: (payload) => this.onPacket(payload),
      onClose: () => {
        this.isClosed = true;
        this.connected(false, 'closed before connecting');
        for (const { done } of this.acks.values()) done({ ok: false });
        this.acks.clear();
      },
    });
    this.raw.opened().catch((err: Error) => this.connected(false, err.message));
  }

  /** Resolves once the namespace accepted the CONNECT (its `auth`). */
  connect(): Promise<void> {
    return this.ready;
  }

  /** Whether the connection has closed: every acknowledgement still awaited has failed. */
  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * Emits `name` with `data`, and calls `done` with its acknowledgement, or
   * with `{ok: false}` once the connection closed (never from inside `emit`).
   */
  emit(name: string, data: unknown, done: (ack: RawAck) => void, decode = false): void {
    if (this.isClosed) {
      setImmediate(() => done({ ok: false }));
      return;
    }
    const id = this.nextId++;
    this.acks.set(id, { decode, done });
    this.raw.send(`42${id}${JSON.stringify([name, data])}`);
  }

  emitWithAck(name: string, data: unknown, timeoutMs = 10_000): Promise<RawAck> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${name}: no acknowledgement`)), timeoutMs);
      this.emit(
        name,
        data,
        (ack) => {
          clearTimeout(t);
          resolve(ack);
        },
        true,
      );
    });
  }

  close(): void {
    this.raw.destroy();
  }

  private onPacket(p: Buffer): void {
    const engine = p[0];
    if (engine === 0x34 /* 4: message */) {
      const kind = p[1];
      if (kind === 0x32 /* 2: event */) this.onEvent(p);
      else if (kind === 0x33 /* 3: ack */) this.onAck(p);
      else if (kind === 0x30 /* 0: connected */) this.connected(true, '');
      else if (kind === 0x34 /* 4: connect error */) {
        this.connected(false, `connect refused: ${p.toString('utf8', 2)}`);
      } else if (kind === 0x31 /* 1: disconnect */) this.raw.destroy();
    } else if (engine === 0x32 /* 2: ping */) {
      this.raw.send('3');
    } else if (engine === 0x30 /* 0: open */) {
      this.raw.send(`40${JSON.stringify(this.opts.auth)}`);
    } else if (engine === 0x31 /* 1: close */) {
      this.raw.destroy();
    }
  }

  private onEvent(p: Buffer): void {
    const { prefixes } = this;
    for (let i = 0; i < prefixes.length; i++) {
      const prefix = prefixes[i] as Buffer;
      if (
        p.length >= prefix.length &&
        p.compare(prefix, 0, prefix.length, 0, prefix.length) === 0
      ) {
        this.counts[i] = (this.counts[i] ?? 0) + 1;
        this.opts.onEvent?.(i);
        return;
      }
    }
    this.others++;
  }

  private onAck(p: Buffer): void {
    let i = 2;
    let id = 0;
    while (i < p.length) {
      const c = p[i] as number;
      if (c < CHAR_0 || c > CHAR_9) break;
      id = id * 10 + (c - CHAR_0);
      i++;
    }
    const waiting = this.acks.get(id);
    if (!waiting) return;
    this.acks.delete(id);
    const ok =
      p.length - i >= OK_PREFIX.length &&
      p.compare(OK_PREFIX, 0, OK_PREFIX.length, i, i + OK_PREFIX.length) === 0;
    if (waiting.decode) waiting.done({ ok, args: JSON.parse(p.toString('utf8', i)) as unknown[] });
    else waiting.done({ ok });
  }
}
