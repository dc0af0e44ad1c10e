/**
 * Webhooks over HTTP: one signed POST per attempt (Standard Webhooks headers,
 * protocol section 9). Success is a 2xx status within the timeout; the
 * answer's body is drained up to a bound and never kept.
 *
 * The requests go through undici `Client`s, one kept-alive connection each
 * and one request at a time on it (no pipelining: a receiver behind a proxy
 * that mishandles pipelined requests, or one that answers out of turn, could
 * pair an answer with the wrong event). A send takes the first connection
 * with nothing under way, so sends one after another reuse one connection and
 * at most `maxSockets` are ever open. Each attempt is a request of its own:
 * undici never sends a POST twice by itself, so every attempt the receiver
 * sees is one the worker made and counted.
 */
import { Webhook } from 'standardwebhooks';
import { Client, type Dispatcher } from 'undici';
import type { WebhookSender } from '../core/webhooks.js';

/** Bytes of a receiver's answer read before the connection is dropped instead. */
const MAX_RESPONSE_BYTES = 64 * 1024;

const noAnswer = () => new Error('no answer');

export interface HttpWebhookSenderOptions {
  url: string;
  /** `whsec_…` */
  secret: string;
  timeoutMs: number;
  /** Connections kept to the receiver; the worker's concurrency. */
  maxSockets: number;
}

export class HttpWebhookSender implements WebhookSender {
  private readonly origin: string;
  private readonly path: string;
  private readonly signer: Webhook;
  /** Opened as needed, at most `maxSockets`; `busy[i]`: sends under way on `clients[i]`. */
  private readonly clients: Client[] = [];
  private readonly busy: number[] = [];
  /**
   * The sends under way per stop signal: one listener per signal (the
   * worker passes the same one to every send), not one added and removed per send.
   */
  private readonly stoppers = new WeakMap<AbortSignal, Set<() => void>>();

  constructor(private readonly options: HttpWebhookSenderOptions) {
    const url = new URL(options.url);
    this.path = `${url.pathname}${url.search}`;
    this.origin = url.origin;
    this.signer = new Webhook(options.secret);
  }

  /** The first idle connection, a new one while fewer than `maxSockets`, else the least busy. */
  private pick(): number {
    let best = -1;
    for (let i = 0; i < this.clients.length; i++) {
      if (this.busy[i] === 0) return i;
      if (best < 0 || (this.busy[i] ?? 0) < (this.busy[best] ?? 0)) best = i;
    }
    if (this.clients.length < this.options.maxSockets || best < 0) {
      this.clients.push(
        new Client(this.origin, {
          pipelining: 1,
          connectTimeout: this.options.timeoutMs,
          // Backstops only: the deadline in `send` cuts every attempt first.
          headersTimeout: this.options.timeoutMs + 1_000,
          bodyTimeout: this.options.timeoutMs + 1_000,
        }),
      );
      this.busy.push(0);
      return this.clients.length - 1;
    }
    return best;
  }

  /** Calls `stop` when `signal` aborts; the function returned forgets it. */
  private onAbort(signal: AbortSignal, stop: () => void): () => void {
    let sends = this.stoppers.get(signal);
    if (!sends) {
      const all = new Set<() => void>();
      sends = all;
      this.stoppers.set(signal, all);
      signal.addEventListener(
        'abort',
        () => {
          for (const f of [...all]) f();
          all.clear();
        },
        { once: true },
      );
    }
    const set = sends;
    set.add(stop);
    return () => set.delete(stop);
  }

  send(id: string, body: string, signal: AbortSignal): Promise<void> {
    // Encoded once: measured, signed and written as the same bytes.
    const bytes = Buffer.from(body);
    const now = new Date();
    const timestamp = Math.floor(now.getTime() / 1000);
    const headers = {
      'content-type': 'application/json',
      'user-agent': 'charla-webhooks',
      'webhook-id': id,
      'webhook-timestamp': String(timestamp),
      'webhook-signature': this.signer.sign(id, now, body),
    };
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(new Error('stopped'));
        return;
      }
      // Known once undici hands the request to a connection; a cut asked for
      // before that is applied then.
      let controller: Dispatcher.DispatchController | undefined;
      let cut: Error | undefined;
      const abort = (err: Error) => {
        cut ??= err;
        controller?.abort(err);
      };
      // The final status decides: null for a 2xx, else its error; undefined until it comes.
      let outcome: Error | null | undefined;
      let finished = false;
      // The connection counts as busy until undici is done with the request,
      // even when the deadline settled it before.
      const slot = this.pick();
      this.busy[slot] = (this.busy[slot] ?? 0) + 1;
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        this.busy[slot] = (this.busy[slot] ?? 1) - 1;
      };
      // The request is over: its answer read in full, or the request cut. It
      // settles only then, so that its connection is free for the next send.
      // `reason` is made only when no final status came: an Error captures a
      // stack, which cost about a tenth of a whole send when made every time.
      const finish = (reason: () => Error) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        forget();
        if (outcome === null) resolve();
        else reject(outcome ?? reason());
      };
      const onStop = () => {
        const err = new Error('stopped');
        finish(() => err);
        abort(err);
      };
      // The deadline covers connecting, sending and the answer's status line and
      // body alike: a receiver that trickles is cut there, even after a 2xx.
      const timer = setTimeout(() => {
        const err = new Error(`no answer within ${this.options.timeoutMs} ms`);
        finish(() => err);
        abort(err);
      }, this.options.timeoutMs);
      const forget = this.onAbort(signal, onStop);
      let received = 0;
      (this.clients[slot] as Client).dispatch(
        { path: this.path, method: 'POST', headers, body: bytes },
        {
          onRequestStart(c) {
            controller = c;
            if (cut) c.abort(cut);
          },
          onResponseStart(_c, status) {
            // 1xx answers are interim; the final status follows.
            if (status < 200) return;
            outcome = status < 300 ? null : new Error(`HTTP ${status}`);
          },
          onResponseData(c, chunk) {
            received += chunk.length;
            if (received > MAX_RESPONSE_BYTES) c.abort(new Error('answer too long'));
          },
          onResponseEnd() {
            release();
            finish(noAnswer);
          },
          onResponseError(_c, err) {
            release();
            finish(() => (signal.aborted ? new Error('stopped') : err));
          },
        },
      );
    });
  }

  close(): void {
    for (const client of this.clients) void client.destroy().catch(() => {});
  }
}
