/** Prometheus metrics (served at GET /metrics), one registry per app instance. */
import { Counter, collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import type { ErrorCode } from '../core/errors.js';

export type Chat = 'stream' | 'request';

export class Metrics {
  readonly registry = new Registry();
  readonly connections = new Gauge({
    name: 'charla_connections',
    help: 'Open client connections',
    labelNames: ['chat'] as const,
    registers: [this.registry],
  });
  readonly messagesIn = new Counter({
    name: 'charla_messages_in_total',
    help: 'Chat messages accepted from clients',
    labelNames: ['chat'] as const,
    registers: [this.registry],
  });
  readonly messagesOut = new Counter({
    name: 'charla_messages_out_total',
    help: 'Chat messages written to client connections (one per receiver)',
    labelNames: ['chat'] as const,
    registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'charla_errors_total',
    help: 'Errors answered to clients, by error code',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });
  readonly disconnects = new Counter({
    name: 'charla_disconnects_total',
    help: 'Connections closed by the server, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly webhookDeliveries = new Counter({
    name: 'charla_webhook_deliveries_total',
    help: 'Webhook delivery attempts, by result: delivered, retry (failed, tried again later), failed (out of attempts)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  /** Where the queue depth is read from at scrape time; set by the webhook worker. */
  webhookQueueSource: (() => Promise<number>) | undefined;
  readonly webhookQueueDepth: Gauge = new Gauge({
    name: 'charla_webhook_queue_depth',
    help: 'Webhook events waiting to be sent (due or being retried), across all nodes sharing the store',
    registers: [this.registry],
    collect: async () => {
      // A store that does not answer keeps the last value rather than failing the scrape.
      const value = await this.webhookQueueSource?.().catch(() => undefined);
      if (value !== undefined) this.webhookQueueDepth.set(value);
    },
  });

  constructor() {
    // Includes nodejs_eventloop_lag_seconds and its percentiles.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 20 });
  }

  error(code: ErrorCode): void {
    this.errors.inc({ code });
  }
}
