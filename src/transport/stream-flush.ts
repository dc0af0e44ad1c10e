/**
 * Adaptive write coalescing for the stream chat (what Centrifugo calls write
 * delay). Every socket write costs a system call and a pass through Node's
 * stream machinery, whatever it carries; in a big room the chats arrive one
 * per event-loop turn, so corking per turn batches nothing and one core is
 * saturated by writes of one frame each.
 *
 * Each stream has a flow: the frames of the current window, in order, and the
 * viewers that have some of them queued. A viewer's queue is a range of that
 * log, never a copy: at a flush every viewer gets one write, and viewers with
 * the same range (nearly all of them) share one concatenated buffer.
 *
 * - Quiet stream: the flow flushes at the end of the event-loop turn, so a
 *   lone chat is never delayed (the same as corking per turn).
 * - Busy stream (its flushes took at least `busyShare` of a core's time over
 *   a window): the flow flushes at most every `flushMs`. It is quiet again
 *   below half that share (hysteresis, so a room at the edge does not flap).
 * - A room so big that one flush costs more than half of `flushMs` (10,000
 *   viewers take 15 to 100 ms of CPU by machine, nearly all of it the kernel's
 *   work for one write each) waits twice as long as its last flush
 *   took: its writes then never take more than half of the core, where a
 *   fixed window would let them take all of it and every chat would queue
 *   behind the last. The wait grows with the room, not with the load.
 */
import type { Socket } from 'node:net';

/** What the flow keeps on each viewer, so that a queued viewer costs no object of its own. */
export interface FlushSlot {
  readonly socket: Socket;
  /** Index in the flow's log of the first frame queued for this viewer; -1: none. */
  flushFrom: number;
  /** Index of the last frame queued for this viewer. */
  flushTo: number;
  /**
   * Frames that go before its range: its own (an error, an `auth`), each
   * after the log's frames queued for it before; null when there are none.
   */
  flushOwn: Buffer[] | null;
}

export interface FlushOptions {
  /** Longest wait of a busy stream's frames; 0 turns coalescing off. */
  flushMs: number;
  /** Share of wall time spent flushing (0–1) from which a stream is busy. */
  busyShare: number;
  /** CPU milliseconds used by this process so far (a clock a test can drive). */
  cpuMs?: () => number;
}

/** The most of the time that one busy stream's flushes may take. */
const MAX_FLUSH_SHARE = 0.5;
/** The longest a big room's chats wait, however long its flushes take. */
const MAX_GAP_MS = 1_000;

function processCpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

/** The shortest window over which a stream's share of time is judged. */
const MIN_WINDOW_MS = 250;

/** One per gateway: the flows of the streams that have viewers on this node. */
export class StreamFlusher {
  private readonly flows = new Map<string, StreamFlow>();

  constructor(readonly options: FlushOptions) {}

  get enabled(): boolean {
    return this.options.flushMs > 0;
  }

  /** The flow of `key` for one more viewer, or null when coalescing is off. */
  join(key: string): StreamFlow | null {
    if (!this.enabled) return null;
    let flow = this.flows.get(key);
    if (!flow) {
      flow = new StreamFlow(this.options, () => this.flows.delete(key));
      this.flows.set(key, flow);
    }
    flow.viewers++;
    return flow;
  }

  /** Streams whose flow is busy (coalescing) now. */
  get busyStreams(): number {
    let n = 0;
    for (const flow of this.flows.values()) if (flow.busy) n++;
    return n;
  }

  /** Streams with a flow on this node. */
  get size(): number {
    return this.flows.size;
  }
}

function flushFlow(flow: StreamFlow): void {
  flow.flush();
}

export class StreamFlow {
  /** Viewers holding this flow; at zero it is forgotten. */
  viewers = 0;
  busy: boolean;
  /** The frames of the current window, in order, and the total bytes through each. */
  private frames: Buffer[] = [];
  private ends: number[] = [];
  private readonly queued = new Set<FlushSlot>();
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private lastFlush = Number.NEGATIVE_INFINITY;
  private windowStart = performance.now();
  /**
   * CPU milliseconds spent flushing since `windowStart`. CPU, not wall time:
   * on a shared machine a flush that was preempted did not cost more, and
   * counting the wait would call a stream busy that only has slow neighbours.
   */
  private spent = 0;
  /** CPU milliseconds of the last flush. */
  private lastCost = 0;
  private readonly windowMs: number;
  private readonly cpuMs: () => number;

  constructor(
    private readonly options: FlushOptions,
    private readonly forget: () => void,
  ) {
    this.busy = options.busyShare <= 0;
    this.windowMs = Math.max(MIN_WINDOW_MS, 4 * options.flushMs);
    this.cpuMs = options.cpuMs ?? processCpuMs;
  }

  /** How long a busy stream waits after a flush before the next. */
  get gapMs(): number {
    return Math.max(this.options.flushMs, Math.min(MAX_GAP_MS, this.lastCost / MAX_FLUSH_SHARE));
  }

  /** Bytes queued for `slot` and not yet handed to its socket. */
  queuedBytes(slot: FlushSlot): number {
    let own = 0;
    for (const f of slot.flushOwn ?? []) own += f.length;
    if (slot.flushFrom < 0) return own;
    const before = slot.flushFrom > 0 ? (this.ends[slot.flushFrom - 1] as number) : 0;
    return own + (this.ends[slot.flushTo] as number) - before;
  }

  /**
   * Queues a frame of the viewer's own after what is queued for it, to go out
   * in the same write at the next flush: in a busy room a refused chat then
   * costs no write of its own. False when nothing is queued for it (no flush
   * is due): the caller writes it now.
   */
  queueOwn(slot: FlushSlot, frame: Buffer): boolean {
    if (slot.flushFrom < 0 && slot.flushOwn === null) return false;
    const own = slot.flushOwn ?? [];
    // Its range so far goes before the frame; chats queued later start a new one.
    for (let i = slot.flushFrom; i >= 0 && i <= slot.flushTo; i++)
      own.push(this.frames[i] as Buffer);
    own.push(frame);
    slot.flushOwn = own;
    slot.flushFrom = -1;
    this.queued.add(slot);
    return true;
  }

  /**
   * Queues `frame` for `slot`. A fan-out hands the same Buffer to every
   * viewer in turn: a Buffer other than the log's last one is the next chat.
   */
  queue(slot: FlushSlot, frame: Buffer): void {
    let i = this.frames.length - 1;
    if (i < 0 || this.frames[i] !== frame) {
      i = this.frames.push(frame) - 1;
      this.ends.push((i > 0 ? (this.ends[i - 1] as number) : 0) + frame.length);
      if (i === 0) this.schedule();
    }
    if (slot.flushFrom >= 0 && slot.flushTo === i) return;
    if (slot.flushFrom < 0) {
      slot.flushFrom = i;
      this.queued.add(slot);
    } else if (slot.flushTo !== i - 1) {
      // Not the next frame after its range: write what it has, then start over,
      // so that its queue stays one range and its order is kept.
      this.take(slot);
      slot.flushFrom = i;
      this.queued.add(slot);
    }
    slot.flushTo = i;
  }

  /** Writes what is queued for `slot` now: before a frame of its own, or its close. */
  take(slot: FlushSlot): void {
    const own = slot.flushOwn;
    if (slot.flushFrom < 0 && own === null) return;
    const from = slot.flushFrom;
    const to = slot.flushTo;
    slot.flushFrom = -1;
    slot.flushOwn = null;
    this.queued.delete(slot);
    if (!slot.socket.writable) return;
    if (own !== null) for (const f of own) slot.socket.write(f);
    for (let i = from; i >= 0 && i <= to; i++) slot.socket.write(this.frames[i] as Buffer);
  }

  /** The viewer is gone: what was queued for it is dropped, and it lets go of the flow. */
  release(slot: FlushSlot): void {
    if (slot.flushFrom >= 0 || slot.flushOwn !== null) {
      slot.flushFrom = -1;
      slot.flushOwn = null;
      this.queued.delete(slot);
    }
    if (--this.viewers > 0) return;
    clearTimeout(this.timer);
    clearImmediate(this.immediate);
    this.timer = undefined;
    this.immediate = undefined;
    this.frames = [];
    this.ends = [];
    this.forget();
  }

  /** @internal Every queued viewer gets its range in one write; the window starts over. */
  flush(): void {
    const start = performance.now();
    const cpu = this.cpuMs();
    this.timer = undefined;
    this.immediate = undefined;
    this.lastFlush = start;
    const frames = this.frames;
    const ends = this.ends;
    this.frames = [];
    this.ends = [];
    const last = frames.length - 1;
    // Ranges that reach the end of the log, by where they start: in a busy
    // room nearly every viewer has the whole log, so this holds one buffer.
    const joined = new Map<number, Buffer>();
    for (const slot of this.queued) {
      const from = slot.flushFrom;
      const to = slot.flushTo;
      const own = slot.flushOwn;
      slot.flushFrom = -1;
      if (!slot.socket.writable) {
        slot.flushOwn = null;
        continue;
      }
      if (own === null) {
        slot.socket.write(rangeOf(frames, ends, joined, from, to, last));
        continue;
      }
      // Its own frames, then its range: one write (a writev) all the same.
      slot.flushOwn = null;
      slot.socket.cork();
      for (const f of own) slot.socket.write(f);
      if (from >= 0) slot.socket.write(rangeOf(frames, ends, joined, from, to, last));
      slot.socket.uncork();
    }
    this.queued.clear();
    this.lastCost = this.cpuMs() - cpu;
    this.spent += this.lastCost;
    this.judge(performance.now());
  }

  private schedule(): void {
    const now = performance.now();
    // A stream that went still is judged before its next chat waits on it.
    this.judge(now);
    const wait = this.busy ? this.lastFlush + this.gapMs - now : 0;
    if (wait >= 1) this.timer = setTimeout(flushFlow, wait, this);
    else this.immediate = setImmediate(flushFlow, this);
  }

  /** At the end of each window: busy from `busyShare` of the time flushing, quiet below half. */
  private judge(now: number): void {
    const elapsed = now - this.windowStart;
    if (elapsed < this.windowMs) return;
    const share = this.spent / elapsed;
    if (this.busy) {
      if (share < this.options.busyShare / 2) this.busy = false;
    } else if (share >= this.options.busyShare) {
      this.busy = true;
    }
    this.windowStart = now;
    this.spent = 0;
  }
}

/** The bytes of frames `from`..`to`; a range to the end of the log is joined once per start. */
function rangeOf(
  frames: Buffer[],
  ends: number[],
  joined: Map<number, Buffer>,
  from: number,
  to: number,
  last: number,
): Buffer {
  if (from === to) return frames[from] as Buffer;
  if (to !== last) return concat(frames, ends, from, to);
  let bytes = joined.get(from);
  if (!bytes) {
    bytes = concat(frames, ends, from, to);
    joined.set(from, bytes);
  }
  return bytes;
}

function concat(frames: Buffer[], ends: number[], from: number, to: number): Buffer {
  const before = from > 0 ? (ends[from - 1] as number) : 0;
  const out = Buffer.allocUnsafe((ends[to] as number) - before);
  let at = 0;
  for (let i = from; i <= to; i++) {
    const f = frames[i] as Buffer;
    f.copy(out, at);
    at += f.length;
  }
  return out;
}
