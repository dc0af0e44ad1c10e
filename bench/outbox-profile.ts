/**
 * Where a request-chat server's CPU goes with the webhook outbox on: a CPU
 * profile (`--request-cpu-prof`) as µs per ack by part of the work.
 *
 *   node dist/bench/outbox-profile.js FILE.cpuprofile ACKS_PER_SEC [PART,PART…]
 *
 * Each sample goes to the innermost frame of its stack that belongs to the
 * outbox's parts (signing, the inserts, claims, removals, undici, the sender,
 * the worker), else to the innermost that belongs to the rest (the store,
 * socket.io, charla); so the SQLite work under `claimWebhooks` counts as the
 * claim, and a `writev` under undici as undici. Only the busy middle of the
 * run counts (100 ms slices more than 30% busy, less a second at each end),
 * so that start-up and the idle tail stay out; ACKS_PER_SEC is the run's
 * rate, as the bench printed it.
 */
import { readFileSync } from 'node:fs';

interface Frame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface Node {
  id: number;
  callFrame: Frame;
  children?: number[];
}

interface Profile {
  nodes: Node[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

type Rule = [string, (f: Frame) => boolean];

const OUTBOX: Rule[] = [
  ['GC', (f) => f.functionName === '(garbage collector)'],
  ['idle', (f) => f.functionName === '(idle)'],
  ['(program)', (f) => f.functionName === '(program)'],
  ['sign (standardwebhooks)', (f) => /standardwebhooks|fast-sha256|@stablelib/.test(f.url)],
  ['outbox insert', (f) => /insertOutbox/.test(f.functionName)],
  ['outbox claim', (f) => /claimWebhooks|refreshUnread|checkUnread/.test(f.functionName)],
  ['outbox removal', (f) => /completeWebhooks|removeDelivered/.test(f.functionName)],
  ['outbox rows built', (f) => /webhook-events/.test(f.url) || f.functionName === 'messageCreated'],
  ['undici', (f) => /node_modules\/undici/.test(f.url)],
  ['sender (webhook-sender.ts)', (f) => /webhook-sender/.test(f.url)],
  ['worker (webhooks.ts)', (f) => /core\/webhooks/.test(f.url)],
];

const REST: Rule[] = [
  [
    'store (messages, commits)',
    (f) => /store\/sqlite|store\/postgres|better-sqlite3|node_modules\/pg/.test(f.url),
  ],
  ['socket.io / engine.io / ws', (f) => /socket\.io|engine\.io|node_modules\/ws\//.test(f.url)],
  ['charla, other', (f) => /\/src\//.test(f.url)],
];

export function outboxBreakdown(p: Profile, acksPerSec: number, detail: string[] = []): string {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const find = (id: number, rules: Rule[]): string | undefined => {
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const frame = byId.get(cur)?.callFrame;
      if (!frame) return undefined;
      for (const [name, test] of rules) if (test(frame)) return name;
    }
    return undefined;
  };
  const memo = new Map<number, string>();
  const part = (id: number): string => {
    let name = memo.get(id);
    if (name === undefined) {
      name = find(id, OUTBOX) ?? find(id, REST) ?? 'node, other';
      memo.set(id, name);
    }
    return name;
  };
  const times: number[] = [];
  let t = p.startTime;
  for (const dt of p.timeDeltas) {
    t += dt;
    times.push(t);
  }
  const slices = new Map<number, [busy: number, all: number]>();
  p.samples.forEach((id, i) => {
    const k = Math.floor(((times[i] ?? 0) - p.startTime) / 1e5);
    const s = slices.get(k) ?? [0, 0];
    slices.set(k, s);
    s[1]++;
    if (part(id) !== 'idle') s[0]++;
  });
  const busy = [...slices].filter(([, [b, n]]) => b / n > 0.3).map(([k]) => k);
  const from = p.startTime + (Math.min(...busy) + 10) * 1e5;
  const to = p.startTime + (Math.max(...busy) - 10) * 1e5;
  const parts = new Map<string, number>();
  const fns = new Map<string, Map<string, number>>();
  let busyUs = 0;
  p.samples.forEach((id, i) => {
    const at = times[i] ?? 0;
    if (at < from || at > to) return;
    const name = part(id);
    if (name === 'idle') return;
    const dt = p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0;
    busyUs += dt;
    parts.set(name, (parts.get(name) ?? 0) + dt);
    const f = byId.get(id)?.callFrame;
    const fn = `${f?.functionName || '(anonymous)'} ${f?.url.replace(/^.*\/(src|node_modules)\//, '$1/')}:${(f?.lineNumber ?? 0) + 1}`;
    const m = fns.get(name) ?? new Map<string, number>();
    fns.set(name, m);
    m.set(fn, (m.get(fn) ?? 0) + dt);
  });
  const acks = (acksPerSec * (to - from)) / 1e6;
  const perAck = (us: number) => (us / acks).toFixed(1).padStart(7);
  const lines = [
    `${((to - from) / 1e6).toFixed(1)} s, ${perAck(busyUs)} µs per ack at ${acksPerSec} acks/s`,
  ];
  for (const [name, us] of [...parts].sort((a, b) => b[1] - a[1])) {
    lines.push(`${perAck(us)} µs  ${((100 * us) / busyUs).toFixed(1).padStart(5)}%  ${name}`);
  }
  for (const name of detail) {
    lines.push(`-- ${name}`);
    for (const [fn, us] of [...(fns.get(name) ?? [])].sort((a, b) => b[1] - a[1]).slice(0, 12)) {
      lines.push(`${perAck(us)} µs  ${fn}`);
    }
  }
  return lines.join('\n');
}

if (process.argv[1]?.endsWith('outbox-profile.js')) {
  const [file, rate, detail] = process.argv.slice(2);
  if (!file || !rate) {
    console.error('usage: outbox-profile.js FILE.cpuprofile ACKS_PER_SEC [PART,PART…]');
    process.exit(2);
  }
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  console.log(outboxBreakdown(profile, Number(rate), detail?.split(',') ?? []));
}
