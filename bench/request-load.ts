/**
 * The request-chat load (scenario 5), run inside a load-generator process:
 * per request one LAB socket sends with a bounded window of messages awaiting
 * their acknowledgement, and the owning teacher's socket receives them. An
 * acknowledgement means the message is stored, so acks/s is durable messages/s.
 *
 * The sockets are sioraw.ts's raw Socket.IO clients: every message brings each
 * socket of its LAB sender and of the teacher a `requestUpdated` (all 50 LAB
 * sockets are one user, as are the 50 teacher sockets), and a generator that
 * decoded each of those would be the bottleneck rather than the server.
 */
import { SioRawClient } from './sioraw.js';
import { measureWindow, sleep } from './window.js';

export interface RequestJob {
  mode: 'request';
  port: number;
  requests: string[];
  labToken: string;
  teacherToken: string;
  /** Messages awaiting their acknowledgement, per sending socket. */
  window: number;
  /** Prefix of the clientMessageIds, distinct per run: every message is new. */
  runId: string;
  warmupMs: number;
  durationMs: number;
  /** Extra LAB sockets that join every room and only listen: a wide fan-out. */
  watchers?: number;
  /**
   * Messages/s over all senders; each sender paces its share and never has
   * more than `window` awaiting acknowledgement. Absent: as fast as acks come.
   */
  rate?: number;
}

export interface RequestReport {
  mode: 'request';
  acksInWindow: number;
  windowMs: number;
  /** Send → acknowledgement, ms, for messages sent inside the window. */
  latencies: number[];
  errors: number;
  /** Messages the teachers (and watchers) received inside the window. */
  deliveredInWindow: number;
  /** `requestUpdated` events all sockets received inside the window. */
  updatesInWindow: number;
  cpuPercent: number;
}

const MAX_SAMPLES = 200_000;

/** The events counted, by index in SioRawClient's `counts`. */
const MESSAGE = 0;
const UPDATED = 1;

export async function connect(
  port: number,
  token: string,
  onEvent?: (index: number) => void,
): Promise<SioRawClient> {
  const socket = new SioRawClient({
    port,
    auth: { token },
    count: ['message', 'requestUpdated'],
    ...(onEvent ? { onEvent } : {}),
  });
  await socket.connect();
  return socket;
}

async function join(socket: SioRawClient, requestId: string): Promise<void> {
  const ack = await socket.emitWithAck('joinRoom', { requestId });
  if (!ack.ok) throw new Error(`joinRoom: ${JSON.stringify(ack.args)}`);
}

export async function runRequest(
  job: RequestJob,
  waitForStart: () => Promise<void>,
): Promise<RequestReport> {
  let measuring = false;
  let delivered = 0;
  let updates = 0;
  // Counted as they arrive: a received `message` is a delivery (teachers and
  // watchers; a LAB sender is never sent its own), any `requestUpdated` an update.
  const onEvent = (index: number) => {
    if (!measuring) return;
    if (index === MESSAGE) delivered++;
    else if (index === UPDATED) updates++;
  };
  const pairs = await Promise.all(
    job.requests.map(async (requestId) => {
      const [lab, teacher] = await Promise.all([
        connect(job.port, job.labToken, onEvent),
        connect(job.port, job.teacherToken, onEvent),
      ]);
      await Promise.all([join(lab, requestId), join(teacher, requestId)]);
      return { requestId, lab, teacher };
    }),
  );
  const watchers = await Promise.all(
    Array.from({ length: job.watchers ?? 0 }, async () => {
      const w = await connect(job.port, job.labToken, onEvent);
      for (const requestId of job.requests) await join(w, requestId);
      return w;
    }),
  );
  await waitForStart();

  let stop = false;
  let acks = 0;
  let errors = 0;
  const latencies: number[] = [];
  let inFlight = 0;
  let drained: () => void = () => {};

  let seq = 0;
  const send = (lab: SioRawClient, requestId: string) => {
    const start = performance.now();
    const counted = measuring;
    inFlight++;
    const n = seq++;
    const payload = { requestId, message: `bench ${n}`, clientMessageId: `${job.runId}-${n}` };
    lab.emit('message', payload, (res) => {
      inFlight--;
      if (counted && measuring) {
        if (res.ok) {
          acks++;
          if (latencies.length < MAX_SAMPLES) latencies.push(performance.now() - start);
        } else {
          errors++;
        }
      }
      if (lab.closed && !stop) {
        // The server closed this sender: an error, whenever it happened, and no more sends.
        if (!(counted && measuring)) errors++;
        if (inFlight === 0) drained();
      } else if (stop) {
        if (inFlight === 0) drained();
      } else if (interval === 0) {
        send(lab, requestId);
      } else {
        // Paced: the next message is due one interval after the last was due,
        // or now when the acknowledgement came later than that.
        const due = (nextDue.get(lab) ?? 0) + interval;
        const now = performance.now();
        nextDue.set(lab, Math.max(due, now));
        setTimeout(() => send(lab, requestId), Math.max(0, due - now));
      }
    });
  };
  const interval = job.rate ? (1000 * pairs.length) / job.rate : 0;
  const nextDue = new Map<SioRawClient, number>();
  pairs.forEach(({ lab, requestId }, k) => {
    // Spread the paced senders over one interval rather than all at once.
    const offset = (interval * k) / pairs.length;
    nextDue.set(lab, performance.now() + offset);
    for (let i = 0; i < job.window; i++) {
      if (interval === 0) send(lab, requestId);
      else setTimeout(() => send(lab, requestId), offset);
    }
  });

  const { windowMs, cpuPercent } = await measureWindow(
    job.warmupMs,
    job.durationMs,
    () => {
      measuring = true;
    },
    () => {
      measuring = false;
    },
  );
  stop = true;
  await Promise.race([new Promise<void>((r) => (drained = r)), sleep(5_000)]);
  for (const { lab, teacher } of pairs) {
    lab.close();
    teacher.close();
  }
  for (const w of watchers) w.close();
  return {
    mode: 'request',
    acksInWindow: acks,
    windowMs,
    latencies,
    errors,
    deliveredInWindow: delivered,
    updatesInWindow: updates,
    cpuPercent,
  };
}
