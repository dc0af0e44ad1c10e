/**
 * The pending-send queue of one room of `RequestChat`. A message leaves with
 * a `clientMessageId` and is sent again, with the same id, until the server
 * acknowledges it (the server stores a repeat once and answers with the
 * original): after an acknowledgement timeout, on a retryable refusal, and
 * after a reconnect. A connection that drops while the message is in flight
 * uses up an attempt, and the third drop within DROP_SOON_MS of the message
 * leaving gives it up: the server closes the connection at once for a packet
 * over its MAX_FRAME_BYTES, and that packet must not be sent forever, nor hold
 * up the room's later ones. A later drop is more likely a lost
 * acknowledgement (the message may be stored) and counts only as an attempt. One message of
 * a room is in flight at a time, so the
 * room's messages are stored in the order they were sent. Every room's queue
 * draws on one `OutboxBudget`, so the messages waiting over all rooms are
 * bounded.
 */
import { backoffDelay } from './bounded.js';
import { ChatClientError } from './errors.js';
import { type Answer, type Ask, answerError } from './request-answer.js';
import type { Attachment, RequestMessage } from './types.js';

/** Drops of the connection soon after one message left before it is given up. */
const MAX_DROPS = 3;
/** A drop this soon after the message left may be the server's cut for its size. */
const DROP_SOON_MS = 1_000;

/** Refusals that a later attempt may get past. */
const RETRYABLE = new Set(['rate_limited', 'internal_error', 'not_in_room']);

export interface MessagePayload {
  requestId: string;
  message: string;
  clientMessageId: string;
  attachments?: Attachment[];
}

interface Pending {
  payload: MessagePayload;
  attempts: number;
  /** Times the connection dropped within DROP_SOON_MS of this message leaving. */
  drops: number;
  /** When the last attempt left. */
  sentAt: number;
  inFlight: boolean;
  expired: boolean;
  timer: ReturnType<typeof setTimeout>;
  resolve: (m: RequestMessage) => void;
  reject: (e: ChatClientError) => void;
}

/** How many messages may wait over every room, and how many do. */
export class OutboxBudget {
  queued = 0;
  constructor(readonly size: number) {}
}

/** What a room's queue needs from the client around it. */
export interface OutboxHost {
  /** The room is joined on a live connection: a message may leave now. */
  canSend(): boolean;
  connected(): boolean;
  ask: Ask;
  /** The server acknowledged `message`: the room holds it from now on. */
  stored(message: RequestMessage): void;
  /** The server lost the room's join: join again (the queue resumes once joined). */
  rejoin(): void;
  /** Runs `fn` after `ms` unless the client was closed meanwhile. */
  later(ms: number, fn: () => void): void;
}

export interface OutboxOptions {
  budget: OutboxBudget;
  /** Attempts that reach the server before a message is given up. */
  maxAttempts: number;
  /** The longest a message may wait in all, offline time included, in ms. */
  timeoutMs: number;
  /** The largest `message` packet that may leave, in bytes (the server's MAX_FRAME_BYTES). */
  maxPacketBytes: number;
}

/** Bytes of the Socket.IO packet that carries `payload`: `42<ack id>["message",{…}]`. */
export function packetBytes(payload: MessagePayload): number {
  return new TextEncoder().encode(JSON.stringify(['message', payload])).length + 12;
}

export class Outbox {
  private readonly queue: Pending[] = [];
  private sending = false;

  constructor(
    private readonly host: OutboxHost,
    private readonly opts: OutboxOptions,
  ) {}

  /**
   * Queues `payload` and resolves with the message as stored. Throws
   * (synchronously, nothing queued) `queue_full` when the budget is spent, and
   * `message_too_long` when its packet is over `maxPacketBytes`.
   */
  add(payload: MessagePayload): Promise<RequestMessage> {
    const { budget, maxPacketBytes } = this.opts;
    if (budget.queued >= budget.size) {
      throw new ChatClientError('queue_full', `At most ${budget.size} messages may wait.`);
    }
    const bytes = packetBytes(payload);
    if (bytes > maxPacketBytes) {
      throw new ChatClientError(
        'message_too_long',
        `The message is ${bytes} bytes as sent; at most ${maxPacketBytes} (maxPacketBytes).`,
        { event: 'message' },
      );
    }
    return new Promise<RequestMessage>((resolve, reject) => {
      const p: Pending = {
        payload,
        attempts: 0,
        drops: 0,
        sentAt: 0,
        inFlight: false,
        expired: false,
        resolve,
        reject,
        timer: setTimeout(() => {
          p.expired = true;
          // One in flight is settled by its answer (or by its acknowledgement timeout).
          if (!p.inFlight)
            this.settle(p, new ChatClientError('timeout', 'Not acknowledged in time.'));
        }, this.opts.timeoutMs),
      };
      this.queue.push(p);
      budget.queued++;
      this.pump();
    });
  }

  /** Sends the oldest waiting message, one at a time, until none waits. */
  pump(): void {
    if (this.sending || !this.host.canSend()) return;
    const p = this.queue[0];
    if (!p) return;
    this.sending = true;
    p.inFlight = true;
    p.attempts++;
    p.sentAt = Date.now();
    this.host.ask('message', p.payload).then(
      (answer) => this.answered(p, answer),
      () => this.answered(p, undefined),
    );
  }

  /** Rejects every waiting message with `err` (the room was left, or the client closed). */
  rejectAll(err: ChatClientError): void {
    for (const p of [...this.queue]) this.settle(p, err);
  }

  private answered(p: Pending, answer: Answer | undefined): void {
    this.sending = false;
    p.inFlight = false;
    if (this.queue[0] !== p) {
      this.pump();
      return;
    }
    if (answer?.ok === true && typeof answer.message === 'object' && answer.message !== null) {
      const message = answer.message as RequestMessage;
      this.host.stored(message);
      this.settle(p, message);
      this.pump();
      return;
    }
    const dropped = answer === undefined && !this.host.connected();
    if (dropped && Date.now() - p.sentAt <= DROP_SOON_MS) p.drops++;
    const err =
      answer === undefined
        ? dropped
          ? new ChatClientError(
              'not_connected',
              `The connection dropped while the message was in flight${p.drops >= MAX_DROPS ? `, ${p.drops} times right after it left (the server closes it for a packet over its MAX_FRAME_BYTES)` : ''}. It may have been stored: sending it again with the same clientMessageId is safe.`,
              { event: 'message' },
            )
          : new ChatClientError('timeout', 'The message was not acknowledged in time.')
        : answerError(answer, 'message');
    const retryable = answer === undefined || RETRYABLE.has(err.code);
    if (p.expired || !retryable || p.attempts >= this.opts.maxAttempts || p.drops >= MAX_DROPS) {
      this.settle(p, err);
      this.pump();
      return;
    }
    if (err.code === 'not_in_room') {
      // The server lost the join (an owner change, or a node that restarted): join again, then send.
      this.host.rejoin();
      return;
    }
    // Lost with the connection: it goes again after the re-join (the attempt counts).
    if (dropped) return;
    this.host.later(err.retryAfterMs ?? backoffDelay(p.attempts - 1, { initialDelayMs: 250 }), () =>
      this.pump(),
    );
  }

  private settle(p: Pending, result: RequestMessage | ChatClientError): void {
    const i = this.queue.indexOf(p);
    if (i === -1) return;
    this.queue.splice(i, 1);
    this.opts.budget.queued--;
    clearTimeout(p.timer);
    if (result instanceof ChatClientError) p.reject(result);
    else p.resolve(result);
  }
}
