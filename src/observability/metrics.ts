/** Prometheus metrics (served at GET /metrics), one registry per app instance. */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
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
  readonly streamHistory = new Counter({
    name: 'charla_stream_history_total',
    help: 'History frames sent to joining stream viewers, by where their chats were read: cache (memory) or store',
    labelNames: ['source'] as const,
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

  // Latency histograms, in seconds. Bucket bounds span a local sub-millisecond
  // answer to a node that is seconds behind.
  readonly deliveryLatency = new Histogram({
    name: 'charla_delivery_latency_seconds',
    help: "From a chat message being accepted to its being written to the viewers' sockets (observed once per message per node, not per viewer)",
    labelNames: ['chat'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly storeCommit = new Histogram({
    name: 'charla_store_commit_seconds',
    help: 'Time for the store to commit a write, by operation',
    labelNames: ['op'] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [this.registry],
  });
  readonly requestBatch = new Histogram({
    name: 'charla_request_batch_messages',
    help: 'Request chat: messages stored by one group commit (one transaction)',
    buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500],
    registers: [this.registry],
  });
  readonly ackLatency = new Histogram({
    name: 'charla_ack_latency_seconds',
    help: 'Request chat: from an event arriving to its acknowledgement being sent, by event',
    labelNames: ['event'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });

  constructor() {
    // Includes nodejs_eventloop_lag_seconds and its percentiles.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 20 });
  }

  error(code: ErrorCode): void {
    this.errors.inc({ code });
  }

  /** Times `write`, a store commit of kind `op`, whether it succeeds or not. */
  async timeCommit<T>(op: StoreOp, write: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      return await write();
    } finally {
      this.storeCommit.observe({ op }, (performance.now() - started) / 1000);
    }
  }
}

export type StoreOp = 'stream_messages' | 'request_message' | 'receipts';

/**
 * Now, in epoch milliseconds with sub-millisecond precision. Within one process
 * it is exact; between nodes it is as good as their clocks agree.
 */
export function preciseNow(): number {
  return performance.timeOrigin + performance.now();
}
