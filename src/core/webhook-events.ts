/**
 * Webhook events to the platform (protocol section 9): their types, their
 * `data`, and the outbox rows that carry them. A row is built here, before
 * the write that causes it, and the store commits both in one transaction.
 */
import { randomBytes } from 'node:crypto';
import type { RequestMessage } from './messages.js';

export const WEBHOOK_TYPES = [
  'request.message.created',
  'request.message.read',
  'request.message.unread',
  'stream.message.deleted',
  'stream.user.banned',
  'stream.user.timed_out',
  'stream.ended',
] as const;

export type WebhookType = (typeof WEBHOOK_TYPES)[number];

export interface MessagesRead {
  requestId: string;
  userId: string;
  /** The ids whose read receipt this call recorded, in the request's order. */
  messages: string[];
  at: string;
}

export interface StreamMessageDeleted {
  key: string;
  id: string;
  by: string;
}

export interface StreamUserBanned {
  key: string;
  userId: string;
  by: string;
  reason?: string;
}

export interface StreamUserTimedOut extends StreamUserBanned {
  seconds: number;
}

/** The `data` of each event type. */
export interface WebhookData {
  'request.message.created': RequestMessage;
  'request.message.read': MessagesRead;
  'request.message.unread': RequestMessage;
  'stream.message.deleted': StreamMessageDeleted;
  'stream.user.banned': StreamUserBanned;
  'stream.user.timed_out': StreamUserTimedOut;
  'stream.ended': { key: string };
}

/** A row to add to the outbox. */
export interface OutboxEntry {
  /** The `webhook-id`, the same on every attempt: `msg_` and 32 hex digits. */
  id: string;
  type: WebhookType;
  /** `data`, as JSON text: stored and sent byte for byte. */
  data: string;
  /** ISO-8601; also the body's `timestamp`. */
  createdAt: string;
  /** ISO-8601: not sent before this. */
  dueAt: string;
  /**
   * A message id: the event is dropped instead of sent when, at `dueAt`,
   * someone has read that message (`request.message.unread`).
   */
  unlessRead: string | null;
}

/** An outbox row as the delivery worker and the failed-event API see it. */
export interface OutboxEvent {
  id: string;
  type: WebhookType;
  data: string;
  createdAt: string;
  /** Attempts made so far. */
  attempts: number;
  lastError: string | null;
  lastAttemptAt: string | null;
}

/** Random bytes drawn ahead, 10 per id: one system call per 409 ids rather than one each. */
let randomPool = Buffer.alloc(0);
let randomAt = 0;

/**
 * `msg_`, 12 hex digits of the time in milliseconds, then 20 random hex
 * digits (80 bits). Ids made later sort later, so the outbox's primary-key
 * index grows at its end instead of at random pages: a commit of many
 * events dirties a few index pages, not one per event.
 */
export function newWebhookId(): string {
  const now = Date.now();
  if (randomAt + 10 > randomPool.length) {
    randomPool = randomBytes(4096);
    randomAt = 0;
  }
  const random = randomPool.toString('hex', randomAt, randomAt + 10);
  randomAt += 10;
  return `msg_${now.toString(16).padStart(12, '0')}${random}`;
}

/** An event due now (or at `dueAt`) with `data` for its type. */
export function outboxEntry<T extends WebhookType>(
  type: T,
  data: WebhookData[T],
  opts: { at?: Date; dueAt?: Date; unlessRead?: string } = {},
): OutboxEntry {
  return outboxEntryOf(type, JSON.stringify(data), opts);
}

/**
 * `outboxEntry` with `data` already serialised: one message's events
 * (created, then the unread check) share the text instead of each
 * serialising the message again.
 */
export function outboxEntryOf(
  type: WebhookType,
  data: string,
  opts: { at?: Date; dueAt?: Date; unlessRead?: string } = {},
): OutboxEntry {
  const at = opts.at ?? new Date();
  return {
    id: newWebhookId(),
    type,
    data,
    createdAt: at.toISOString(),
    dueAt: (opts.dueAt ?? at).toISOString(),
    unlessRead: opts.unlessRead ?? null,
  };
}

/**
 * The JSON body POSTed for an event, `{type, timestamp, data}`. Built from
 * the stored row alone, so every attempt sends the same bytes.
 */
export function webhookBody(event: Pick<OutboxEvent, 'type' | 'createdAt' | 'data'>): string {
  return `{"type":${JSON.stringify(event.type)},"timestamp":${JSON.stringify(event.createdAt)},"data":${event.data}}`;
}

/**
 * Typed builders for the stream events. Moderation commits these with its
 * own writes (pass them to the store call that records the action) or, for
 * an action with no write of its own, through `Webhooks.enqueue`.
 */
export const streamEvents = {
  messageDeleted: (data: StreamMessageDeleted) => outboxEntry('stream.message.deleted', data),
  userBanned: (data: StreamUserBanned) => outboxEntry('stream.user.banned', data),
  userTimedOut: (data: StreamUserTimedOut) => outboxEntry('stream.user.timed_out', data),
  ended: (key: string) => outboxEntry('stream.ended', { key }),
};
