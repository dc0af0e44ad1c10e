/**
 * The webhook sender's CPU per send, in this process, against a receiver in a
 * child process (a bare node:http server that drains the body and answers
 * 204), so that only the sending side is counted. Rounds of this build's
 * `HttpWebhookSender` alternate with those of other built trees, so that a
 * shared machine's load falls on all alike.
 *
 *   node dist/bench/webhook-send.js [--baseline NAME=DIR,…] [--sends N] [--rounds N]
 *       [--parallel N] [--sockets N] [--body BYTES]
 *
 * Prints per build the median µs of CPU (user + system, this process) per
 * signed send and the sends per second, over the rounds.
 */
import { fork } from 'node:child_process';
import { createServer } from 'node:http';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { WebhookSender } from '../src/core/webhooks.js';
import { HttpWebhookSender } from '../src/transport/webhook-sender.js';

if (process.argv[2] === 'receiver') {
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(204).end());
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    process.send?.(typeof address === 'object' && address ? address.port : 0);
  });
  process.on('disconnect', () => process.exit(0));
} else {
  const { values } = parseArgs({
    options: {
      baseline: { type: 'string' },
      sends: { type: 'string', default: '20000' },
      rounds: { type: 'string', default: '7' },
      parallel: { type: 'string', default: '8' },
      sockets: { type: 'string', default: '32' },
      body: { type: 'string', default: '400' },
    },
  });
  const sends = Number(values.sends);
  const rounds = Number(values.rounds);
  const parallel = Number(values.parallel);
  const maxSockets = Number(values.sockets);

  type Make = (url: string) => WebhookSender & { close(): void };
  const options = (url: string) => ({
    url,
    secret: `whsec_${Buffer.alloc(32, 7).toString('base64')}`,
    timeoutMs: 10_000,
    maxSockets,
  });
  const builds: Array<[string, Make]> = [['this', (url) => new HttpWebhookSender(options(url))]];
  for (const spec of (values.baseline ?? '').split(',').filter(Boolean)) {
    const eq = spec.indexOf('=');
    const [name, dir] = eq < 0 ? ['baseline', spec] : [spec.slice(0, eq), spec.slice(eq + 1)];
    const mod = await import(
      pathToFileURL(resolve(dir, 'dist/src/transport/webhook-sender.js')).href
    );
    builds.push([name, (url) => new mod.HttpWebhookSender(options(url))]);
  }

  const child = fork(new URL(import.meta.url).pathname, ['receiver'], { stdio: 'inherit' });
  const port = await new Promise<number>((r) => child.once('message', (m) => r(Number(m))));
  const url = `http://127.0.0.1:${port}/hook`;

  // A request chat message as its event carries it, padded to the size asked for.
  const body = (i: number) => {
    const head = `{"type":"request.message.created","timestamp":"2026-12-03T08:00:00.000Z","data":{"id":"${i}","requestId":"r1","senderId":"u1","text":"`;
    return `${head}${'x'.repeat(Math.max(0, Number(values.body) - head.length - 4))}"}}`;
  };
  const signal = new AbortController().signal;

  async function round(make: Make): Promise<{ cpuUs: number; perSec: number }> {
    const sender = make(url);
    let next = 0;
    const lane = async () => {
      while (next < sends) {
        const i = next++;
        await sender.send(`msg_${i.toString(16).padStart(32, '0')}`, body(i), signal);
      }
    };
    // Connections opened and warmed before the count starts.
    next = sends - parallel * 50;
    await Promise.all(Array.from({ length: parallel }, lane));
    next = 0;
    const cpu = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: parallel }, lane));
    const ns = Number(process.hrtime.bigint() - t0);
    const used = process.cpuUsage(cpu);
    sender.close();
    return { cpuUs: (used.user + used.system) / sends, perSec: (sends * 1e9) / ns };
  }

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
  const seen = new Map<string, Array<{ cpuUs: number; perSec: number }>>();
  // One unrecorded round each first: JIT and the receiver's warm-up.
  for (const [, make] of builds) await round(make);
  for (let r = 0; r < rounds; r++) {
    for (const [name, make] of r % 2 === 0 ? builds : [...builds].reverse()) {
      const x = await round(make);
      seen.set(name, [...(seen.get(name) ?? []), x]);
      console.log(
        `round ${r + 1} ${name}: ${x.cpuUs.toFixed(1)} µs CPU/send, ${x.perSec.toFixed(0)} sends/s`,
      );
    }
  }
  console.log(
    `\n${sends} sends per round, ${parallel} at a time, ${maxSockets} sockets at most, ${Number(values.body)}-byte bodies; medians of ${rounds} rounds:`,
  );
  for (const [name, xs] of seen) {
    const cpu = xs.map((x) => x.cpuUs);
    console.log(
      `${name.padEnd(10)} ${median(cpu).toFixed(1)} µs CPU/send (min ${Math.min(...cpu).toFixed(1)}, max ${Math.max(...cpu).toFixed(1)}), ${median(xs.map((x) => x.perSec)).toFixed(0)} sends/s`,
    );
  }
  child.disconnect();
}
