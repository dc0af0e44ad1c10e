/**
 * The request-chat load (scenario 5), run inside a load-generator process:
 * per request one LAB socket sends with a bounded window of messages awaiting
 * their acknowledgement, and the owning teacher's socket receives them. An
 * acknowledgement means the message is stored, so acks/s is durable messages/s.
 */
import { io, type Socket } from 'socket.io-client';
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
  cpuPercent: number;
}

const MAX_SAMPLES = 200_000;

function connect(port: number, token: string): Promise<Socket> {
  const socket = io(`http://127.0.0.1:${port}`, {
    auth: { token },
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
  });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  });
}

async function join(socket: Socket, requestId: string): Promise<void> {
  const ack = await socket.timeout(10_000).emitWithAck('joinRoom', { requestId });
  if (!ack?.ok) throw new Error(`joinRoom: ${JSON.stringify(ack)}`);
}

export async function runRequest(
  job: RequestJob,
  waitForStart: () => Promise<void>,
): Promise<RequestReport> {
  const pairs = await Promise.all(
    job.requests.map(async (requestId) => {
      const [lab, teacher] = await Promise.all([
        connect(job.port, job.labToken),
        connect(job.port, job.teacherToken),
      ]);
      await Promise.all([join(lab, requestId), join(teacher, requestId)]);
      return { requestId, lab, teacher };
    }),
  );
  const watchers = await Promise.all(
    Array.from({ length: job.watchers ?? 0 }, async () => {
      const w = await connect(job.port, job.labToken);
      for (const requestId of job.requests) await join(w, requestId);
      return w;
    }),
  );
  await waitForStart();

  let measuring = false;
  let stop = false;
  let acks = 0;
  let errors = 0;
  let delivered = 0;
  const latencies: number[] = [];
  let inFlight = 0;
  let drained: () => void = () => {};

  for (const receiver of [...pairs.map((p) => p.teacher), ...watchers]) {
    receiver.on('message', () => {
      if (measuring) delivered++;
    });
  }
  let seq = 0;
  const send = (lab: Socket, requestId: string) => {
    const start = performance.now();
    const counted = measuring;
    inFlight++;
    const n = seq++;
    const payload = { requestId, message: `bench ${n}`, clientMessageId: `${job.runId}-${n}` };
    lab.emit('message', payload, (res: { ok?: boolean }) => {
      inFlight--;
      if (counted && measuring) {
        if (res?.ok) {
          acks++;
          if (latencies.length < MAX_SAMPLES) latencies.push(performance.now() - start);
        } else {
          errors++;
        }
      }
      if (stop) {
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
  const nextDue = new Map<Socket, number>();
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
    cpuPercent,
  };
}
