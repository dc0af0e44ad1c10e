/**
 * Webhooks over HTTP: one signed POST per attempt (Standard Webhooks headers,
 * protocol section 9). Success is a 2xx status within the timeout; the
 * answer's body is drained up to a bound and never kept.
 */
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { Webhook } from 'standardwebhooks';
import type { WebhookSender } from '../core/webhooks.js';

/** Bytes of a receiver's answer read before the connection is dropped instead. */
const MAX_RESPONSE_BYTES = 64 * 1024;

export interface HttpWebhookSenderOptions {
  url: string;
  /** `whsec_…` */
  secret: string;
  timeoutMs: number;
  /** Sockets kept to the receiver; the worker's concurrency. */
  maxSockets: number;
}

export class HttpWebhookSender implements WebhookSender {
  private readonly url: URL;
  private readonly signer: Webhook;
  private readonly agent: HttpAgent;

  constructor(private readonly options: HttpWebhookSenderOptions) {
    this.url = new URL(options.url);
    this.signer = new Webhook(options.secret);
    const agentOptions = { keepAlive: true, maxSockets: options.maxSockets };
    this.agent =
      this.url.protocol === 'https:' ? new HttpsAgent(agentOptions) : new HttpAgent(agentOptions);
  }

  send(id: string, body: string, signal: AbortSignal): Promise<void> {
    const now = new Date();
    // Encoded once: measured and written as the same bytes the signature covers.
    const bytes = Buffer.from(body);
    const headers = {
      'content-type': 'application/json',
      'content-length': String(bytes.length),
      'user-agent': 'charla-webhooks',
      'webhook-id': id,
      'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
      'webhook-signature': this.signer.sign(id, now, body),
    };
    const request = this.url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err?: Error) => {
        if (settled) return;
        settled = true;
        if (err) reject(err);
        else resolve();
      };
      const req = request(this.url, { method: 'POST', headers, agent: this.agent, signal });
      // The deadline covers connecting, sending and the answer's status line and
      // body alike: a receiver that trickles is cut there.
      const timer = setTimeout(() => {
        const err = new Error(`no answer within ${this.options.timeoutMs} ms`);
        settle(err);
        req.destroy(err);
      }, this.options.timeoutMs);
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) settle();
        else settle(new Error(`HTTP ${status}`));
        let bytes = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > MAX_RESPONSE_BYTES) res.destroy();
        });
        res.on('error', () => {});
        res.on('close', () => clearTimeout(timer));
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        settle(signal.aborted ? new Error('stopped') : err);
      });
      req.end(bytes);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}
