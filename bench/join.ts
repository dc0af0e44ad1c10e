/**
 * History on join, alone: how long charla's core takes from a viewer's join
 * to its `stream` and `history` frames being encoded, at a fixed rate of
 * joins (each viewer leaves as soon as it is welcomed) while chats keep
 * arriving. In-process, on a real SQLite file, without sockets or tokens: the
 * network, the handshake and the token check are the churn scenario's.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as joinPath } from 'node:path';
import { pino } from 'pino';
import { createApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import type { Identity } from '../src/core/identity.js';
import type { StreamMessage } from '../src/core/messages.js';
import type { StreamInfo, StreamViewer } from '../src/core/streams.js';
import { chatData, encodeHistory, encodeStreamInfo } from '../src/transport/stream-codec.js';
import { frameText } from '../src/transport/websocket-sender.js';
import { latencyStats } from './report.js';

export interface JoinSpec {
  /** Joins per second. */
  rate: number;
  /** Chats per second posted meanwhile. */
  chatRate: number;
  durationMs: number;
  /** charla's environment on top of these defaults (e.g. STREAM_HISTORY_CACHE_STREAMS=0). */
  env?: Record<string, string>;
}

/** A viewer that encodes its `stream` and `history` frames as a connection does. */
class Joiner implements StreamViewer<Buffer> {
  welcomedAt = 0;
  bytes = 0;
  constructor(private readonly done: (j: Joiner) => void) {}
  deliver(): boolean {
    return true;
  }
  streamEnded(): void {}
  welcome(info: StreamInfo, history: StreamMessage[], gap: boolean): void {
    const chats = history.map((m) => JSON.stringify(chatData(m)));
    this.bytes =
      frameText(encodeStreamInfo(info)).length + frameText(encodeHistory(chats, gap)).length;
    this.welcomedAt = performance.now();
    this.done(this);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function joinScenario(spec: JoinSpec) {
  const dir = mkdtempSync(joinPath(tmpdir(), 'charla-join-'));
  const app = await createApp(
    loadConfig({
      DATABASE_URL: `sqlite:${joinPath(dir, 'join.db')}`,
      JWT_SECRET: 'bench-secret-that-is-long-enough-for-hs256',
      API_KEY: 'bench',
      LOG_LEVEL: 'silent',
      STREAM_RATE_LIMIT: '100000000/1s',
      ...spec.env,
    }),
    { log: pino({ level: 'silent' }) },
  );
  const streams = app.streams;
  const key = 'joins';
  const poster: Identity = { userId: 'p', username: 'poster', roles: [], expiresAt: undefined };
  try {
    await streams.put(key, { title: 'joins', ownerId: null });
    for (let i = 0; i < 200; i++) await streams.post(key, poster, `before ${i}`);
    await streams.flush();
    // One viewer stays, as on a stream with an audience.
    const stay = new Joiner(() => {});
    streams.join(key, stay);
    await sleep(50);

    const latencies: number[] = [];
    let joins = 0;
    let pending = 0;
    const start = performance.now();
    let due = 0;
    let chatsDue = 0;
    let last = start;
    let n = 0;
    while (performance.now() - start < spec.durationMs) {
      const now = performance.now();
      due += ((now - last) / 1000) * spec.rate;
      chatsDue += ((now - last) / 1000) * spec.chatRate;
      last = now;
      for (; chatsDue >= 1; chatsDue--) {
        streams.post(key, poster, `during ${n++}`).catch(() => {});
      }
      for (; due >= 1; due--) {
        const at = performance.now();
        pending++;
        const viewer = new Joiner((j) => {
          latencies.push(j.welcomedAt - at);
          pending--;
          // Leaves at once, as a churning client does after its first frames.
          setImmediate(() => streams.leave(key, j));
        });
        streams.join(key, viewer);
        joins++;
      }
      await sleep(1);
    }
    const elapsed = performance.now() - start;
    for (let i = 0; i < 200 && pending > 0; i++) await sleep(10);
    streams.leave(key, stay);
    const lat = latencyStats(latencies);
    return {
      joinsPerSec: (joins / elapsed) * 1000,
      p50: lat.p50,
      p99: lat.p99,
      max: lat.max,
      unanswered: pending,
    };
  } finally {
    await app.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}
