/**
 * Group commit of request messages: the messages accepted in one event-loop
 * turn are stored by one `Store.addRequestMessages` call, one transaction,
 * and each promise settles once that transaction is committed (or with its
 * own refusal). While `concurrency` batches are committing, new messages wait
 * and join the next batch: under load, batches grow instead of commits queueing.
 *
 * Ordering: messages are handed to the store in the order `add` was called,
 * and the store keeps that order within each request inside one batch. Two
 * batches committing at once (PostgreSQL) may commit in either order; a
 * client that needs its messages in order waits for each acknowledgement.
 */
import type { Metrics } from '../observability/metrics.js';
import type { AddedRequestMessage, RequestMessageWrite, Store } from '../store/store.js';
import { ChatError } from './errors.js';

interface Waiting {
  write: RequestMessageWrite;
  resolve: (added: AddedRequestMessage) => void;
  reject: (reason: unknown) => void;
}

export interface GroupCommitOptions {
  store: Store;
  metrics: Metrics;
  /** Most messages in one transaction; 1 commits each message alone. */
  maxBatch: number;
  /** Batches committing at once. */
  concurrency?: number;
  /**
   * Messages waiting for a batch, beyond which new ones are refused with
   * `rate_limited` (the store is slower than the clients): 16 batches' worth
   * unless set.
   */
  maxQueued?: number;
}

/** How long a client refused for a full queue is told to wait. */
const BUSY_RETRY_MS = 1_000;

export class GroupCommit {
  private queue: Waiting[] = [];
  private scheduled = false;
  private committing = 0;
  private readonly concurrency: number;
  private readonly maxQueued: number;

  constructor(private readonly options: GroupCommitOptions) {
    this.concurrency = options.concurrency ?? 2;
    this.maxQueued = options.maxQueued ?? 16 * options.maxBatch;
  }

  /** Stores the message with the next batch; resolves once it is durable. */
  add(write: RequestMessageWrite): Promise<AddedRequestMessage> {
    if (this.queue.length >= this.maxQueued) {
      return Promise.reject(
        new ChatError('rate_limited', 'The server is busy storing messages; try again.', {
          retryAfterMs: BUSY_RETRY_MS,
        }),
      );
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ write, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.queue.length === 0 || this.committing >= this.concurrency) return;
    this.scheduled = true;
    // After the I/O of this turn: every message read in it joins the batch.
    setImmediate(() => {
      this.scheduled = false;
      while (this.queue.length > 0 && this.committing < this.concurrency) this.commitNext();
    });
  }

  private commitNext(): void {
    const batch = this.queue.splice(0, this.options.maxBatch);
    this.committing++;
    const { store, metrics } = this.options;
    metrics.requestBatch.observe(batch.length);
    metrics
      .timeCommit('request_message', () => store.addRequestMessages(batch.map((w) => w.write)))
      .then(
        (outcomes) => {
          batch.forEach((w, i) => {
            const outcome = outcomes[i];
            if (outcome?.status === 'fulfilled') w.resolve(outcome.value);
            else w.reject(outcome ? outcome.reason : new Error('no outcome for a batched message'));
          });
        },
        (err) => {
          for (const w of batch) w.reject(err);
        },
      )
      .finally(() => {
        this.committing--;
        this.schedule();
      });
  }
}
