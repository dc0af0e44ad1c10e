/**
 * A real webhook receiver for tests: an HTTP server on port 0 that verifies
 * every request with the `standardwebhooks` package, records it, and answers
 * as told: 2xx, 500, a dropped connection, or no answer at all (a timeout),
 * at random from a seed the test prints, so a failing run can be replayed.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Webhook } from 'standardwebhooks';

export const newWebhookSecret = () => `whsec_${randomBytes(32).toString('base64')}`;

/** Chances (0..1) of each failure; the rest of the time the answer is 204. */
export interface Faults {
  error500?: number;
  drop?: number;
  hang?: number;
}

export interface Attempt {
  id: string;
  body: string;
  /** Parsed body: `{type, timestamp, data}`. */
  event: { type: string; timestamp: string; data: any };
  answer: 'ok' | 'error500' | 'drop' | 'hang';
  at: number;
}

/** mulberry32: a small seeded generator, enough to replay a run. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class WebhookReceiver {
  /** Every verified request, in arrival order. */
  readonly attempts: Attempt[] = [];
  /** Requests whose signature or headers did not verify. */
  readonly rejected: string[] = [];
  faults: Faults;
  /** Answers given before the random ones, in order: each kind of failure surely happens. */
  script: Array<Attempt['answer']> = [];
  readonly seed: number;
  private readonly random: () => number;
  private readonly sockets = new Set<Socket>();
  private readonly verifier: Webhook;

  private constructor(
    private readonly server: Server,
    readonly url: string,
    readonly secret: string,
    faults: Faults,
    seed: number,
  ) {
    this.faults = faults;
    this.seed = seed;
    this.random = seeded(seed);
    this.verifier = new Webhook(secret);
    server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    server.on('request', (req, res) => this.handle(req, res));
  }

  static async start(
    opts: { secret?: string; faults?: Faults; seed?: number } = {},
  ): Promise<WebhookReceiver> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return new WebhookReceiver(
      server,
      `http://127.0.0.1:${port}/hooks`,
      opts.secret ?? newWebhookSecret(),
      opts.faults ?? {},
      opts.seed ?? Math.floor(Math.random() * 2 ** 31),
    );
  }

  /** Attempts answered 2xx, by webhook-id. */
  delivered(): Map<string, Attempt> {
    const byId = new Map<string, Attempt>();
    for (const a of this.attempts) if (a.answer === 'ok' && !byId.has(a.id)) byId.set(a.id, a);
    return byId;
  }

  /** Attempts answered 2xx of `type`. */
  deliveredOf(type: string): Attempt[] {
    return [...this.delivered().values()].filter((a) => a.event.type === type);
  }

  /** How many 2xx answers each webhook-id got. */
  okCounts(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const a of this.attempts) {
      if (a.answer === 'ok') counts.set(a.id, (counts.get(a.id) ?? 0) + 1);
    }
    return counts;
  }

  async until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > deadline) {
        throw new Error(
          `timed out waiting for ${what} (seed ${this.seed}, ${this.attempts.length} attempts)`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const id = String(req.headers['webhook-id'] ?? '');
      try {
        this.verifier.verify(body, {
          'webhook-id': id,
          'webhook-timestamp': String(req.headers['webhook-timestamp'] ?? ''),
          'webhook-signature': String(req.headers['webhook-signature'] ?? ''),
        });
      } catch (err) {
        this.rejected.push(`${id}: ${(err as Error).message}`);
        res.writeHead(401).end();
        return;
      }
      const answer = this.pick();
      this.attempts.push({ id, body, event: JSON.parse(body), answer, at: Date.now() });
      if (answer === 'ok') res.writeHead(204).end();
      else if (answer === 'error500') res.writeHead(500).end('{"error":"try again"}');
      else if (answer === 'drop') req.socket.destroy();
      // 'hang': no answer; the sender's timeout cuts it.
    });
  }

  private pick(): Attempt['answer'] {
    const scripted = this.script.shift();
    if (scripted !== undefined) return scripted;
    const r = this.random();
    const { error500 = 0, drop = 0, hang = 0 } = this.faults;
    if (r < error500) return 'error500';
    if (r < error500 + drop) return 'drop';
    if (r < error500 + drop + hang) return 'hang';
    return 'ok';
  }
}
